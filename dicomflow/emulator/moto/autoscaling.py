"""Application Auto Scaling of asynchronous endpoints, played by the emulator as AWS documents it.

The emulator keeps one :class:`~dicomflow.emulator.moto.async_fleet.Fleet` per async endpoint that has
received a request. A scaler thread looks at each every :data:`TICK_S` seconds (and at once when a request
arrives):

* **Metrics** to CloudWatch (moto), namespace ``AWS/SageMaker``, dimension ``EndpointName``:
  ``ApproximateBacklogSize`` (queued + running), ``ApproximateBacklogSizePerInstance`` (while an instance
  serves), ``HasBacklogWithoutCapacity`` (1 when requests wait and no instance serves or starts) and
  ``ApproximateAgeOfOldestRequest``; every :data:`METRICS_S` seconds and on every change, while there is
  anything to report.
* **The registration**: a scalable target ``endpoint/<name>/variant/<variant>`` with dimension
  ``sagemaker:variant:DesiredInstanceCount`` (moto's Application Auto Scaling state, so boto3,
  CloudFormation and ``dicomflow deploy --min-instances`` all reach it) bounds the instance count to
  ``[MinCapacity, MaxCapacity]``. Without one, the variant runs ``InitialInstanceCount`` instances from its
  first request on.
* **Target tracking** on the customized metric ``ApproximateBacklogSizePerInstance``: the wanted count is
  ``ceil(backlog / TargetValue)``. Scale-out waits ``ScaleOutCooldown`` after the previous one; scale-in
  needs the lower count to have held for ``ScaleInCooldown`` seconds and as long since the previous
  scale-in (AWS: a low alarm over 15 one-minute datapoints, then the cooldown); ``DisableScaleIn`` is
  honoured. With no instance the metric does not exist: scaling from zero is the step policy's job.
* **Step scaling** runs when a CloudWatch alarm that names the policy in ``AlarmActions`` is in ``ALARM``.
  The emulator evaluates alarms on its own endpoint metrics at every tick on the latest value (not over
  ``Period`` x ``EvaluationPeriods``: scaling from zero takes about a second plus the process start here,
  several minutes on AWS) and records their state in CloudWatch. ``StepAdjustments`` apply to
  ``value - Threshold`` (``ChangeInCapacity``, ``ExactCapacity``, ``PercentChangeInCapacity``), with the
  policy's ``Cooldown``.
* ``DescribeEndpoint`` shows the variant's ``CurrentInstanceCount`` (serving) and ``DesiredInstanceCount``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dicomflow.emulator.moto.async_fleet import Fail, Fleet, Run

log = logging.getLogger("dicomflow.autoscaling")

NAMESPACE = "AWS/SageMaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
BACKLOG_PER_INSTANCE = "ApproximateBacklogSizePerInstance"
TICK_S = 0.5
METRICS_S = 5.0
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t, "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t, "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


@dataclass
class Memory:
    """What the decisions remember between ticks (monotonic seconds)."""

    last_out: float = -math.inf
    last_in: float = -math.inf
    lower_since: float | None = None
    last_step: dict[str, float] = field(default_factory=dict)


@dataclass
class _Tracked:
    fleet: Fleet
    account: str
    region: str
    variant: str
    memory: Memory = field(default_factory=Memory)
    last_metrics: float = -math.inf
    last_reported: tuple[float, ...] | None = None
    desired: int = 0


_tracked: dict[str, _Tracked] = {}
_lock = threading.Lock()
_wake = threading.Event()
_stopping = threading.Event()
_thread: threading.Thread | None = None


# ---- decisions (pure) -------------------------------------------------------------------------

def tracking_count(backlog: int, target_value: float) -> int:
    """Instances target tracking on ApproximateBacklogSizePerInstance wants for ``backlog``."""
    return math.ceil(backlog / target_value) if backlog > 0 else 0


def step_count(current: int, config: dict[str, Any], over: float) -> int | None:
    """The count a step policy sets when its alarm's value is ``over`` its threshold (None: no step applies)."""
    for step in config.get("StepAdjustments") or []:
        lower = float(step.get("MetricIntervalLowerBound", -math.inf))
        upper = float(step.get("MetricIntervalUpperBound", math.inf))
        if lower <= over < upper:
            adjustment = int(step["ScalingAdjustment"])
            kind = config.get("AdjustmentType") or "ChangeInCapacity"
            if kind == "ExactCapacity":
                return adjustment
            if kind == "PercentChangeInCapacity":
                change = current * adjustment / 100
                change = math.ceil(change) if change > 0 else math.floor(change)
                magnitude = int(config.get("MinAdjustmentMagnitude") or 0)
                if magnitude and 0 < abs(change) < magnitude:
                    change = magnitude if change > 0 else -magnitude
                return current + change
            return current + adjustment
    return None


def decide(now: float, current: int, backlog: int, minimum: int, maximum: int, tracking: list[dict[str, Any]],
           steps: list[tuple[str, dict[str, Any], float]], memory: Memory) -> int:
    """The instance count to run now. ``tracking``: target-tracking configurations; ``steps``: (policy name,
    step configuration, alarm value minus threshold) of the step policies whose alarm is in ALARM."""
    proposals: list[int] = []
    lower: int | None = None
    wants_lower = False
    for config in tracking:
        spec = config.get("CustomizedMetricSpecification") or {}
        if spec.get("MetricName") != BACKLOG_PER_INSTANCE or current == 0:
            continue
        want = tracking_count(backlog, float(config["TargetValue"]))
        if want > current:
            if now - memory.last_out >= float(config.get("ScaleOutCooldown", 300)):
                proposals.append(want)
        elif want < current and not config.get("DisableScaleIn"):
            wants_lower = True
            cooldown = float(config.get("ScaleInCooldown", 300))
            if memory.lower_since is None:
                memory.lower_since = now
            if now - memory.lower_since >= cooldown and now - memory.last_in >= cooldown:
                lower = want if lower is None else max(lower, want)
    if not wants_lower:
        memory.lower_since = None
    for name, config, over in steps:
        if now - memory.last_step.get(name, -math.inf) < float(config.get("Cooldown", 300)):
            continue
        count = step_count(current, config, over)
        if count is not None and count != current:
            memory.last_step[name] = now
            proposals.append(count)
    desired = current
    if any(p > current for p in proposals):
        desired = max(proposals)
    elif lower is not None:
        desired = lower
    elif proposals:
        desired = min(proposals)
    desired = max(minimum, min(maximum, desired))
    if desired > current:
        memory.last_out = now
    elif desired < current:
        memory.last_in, memory.lower_since = now, None
    return desired


# ---- moto state -------------------------------------------------------------------------------

def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def _registration(t: _Tracked) -> tuple[Any, list[Any]]:
    """(scalable target or None, its scaling policies) from moto's Application Auto Scaling state."""
    from moto.applicationautoscaling.models import applicationautoscaling_backends

    backend = applicationautoscaling_backends[t.account][t.region]
    rid = resource_id(t.fleet.name, t.variant)
    target = backend.targets.get(DIMENSION, {}).get(rid)
    if target is None or target.service_namespace != "sagemaker":
        return None, []
    policies = [p for p in backend.policies.values()
                if p.service_namespace == "sagemaker" and p.resource_id == rid and p.scalable_dimension == DIMENSION]
    return target, policies


def _metric_values(fleet: Fleet) -> dict[str, float]:
    backlog, current, serving = fleet.counts()
    values = {"ApproximateBacklogSize": float(backlog),
              "HasBacklogWithoutCapacity": 1.0 if backlog and not current else 0.0,
              "ApproximateAgeOfOldestRequest": round(fleet.oldest_age(), 3)}
    if serving:
        values[BACKLOG_PER_INSTANCE] = backlog / serving
    return values


def _cloudwatch(t: _Tracked) -> Any:
    from moto.cloudwatch.models import cloudwatch_backends

    return cloudwatch_backends[t.account][t.region]


def _publish(t: _Tracked, values: dict[str, float], now: float) -> None:
    key = (values["ApproximateBacklogSize"], values["HasBacklogWithoutCapacity"], values.get(BACKLOG_PER_INSTANCE, -1))
    idle = not values["ApproximateBacklogSize"] and BACKLOG_PER_INSTANCE not in values
    if key == t.last_reported and (idle or now - t.last_metrics < METRICS_S):
        return
    from moto.core.utils import utcnow

    stamp = utcnow()
    dims = [{"Name": "EndpointName", "Value": t.fleet.name}]
    try:
        _cloudwatch(t).put_metric_data(NAMESPACE, [
            {"MetricName": name, "Value": value, "Timestamp": stamp, "Dimensions": dims,
             "Unit": "Seconds" if name == "ApproximateAgeOfOldestRequest" else "Count"}
            for name, value in values.items()])
    except Exception:  # metrics must never stop scaling
        log.exception("could not publish the metrics of %s", t.fleet.name)
    t.last_metrics, t.last_reported = now, key


def _firing_steps(t: _Tracked, policies: list[Any], values: dict[str, float]) -> list[tuple[str, dict, float]]:
    """Evaluate the alarms on this endpoint's metrics; (policy, step config, value - threshold) of those firing."""
    steps = {p.policy_arn: p for p in policies if p.policy_type == "StepScaling"}
    firing: list[tuple[str, dict, float]] = []
    try:
        alarms = list(_cloudwatch(t).alarms.values())
    except Exception:
        return firing
    for alarm in alarms:
        dims = {d.name: d.value for d in alarm.dimensions}
        if (alarm.namespace != NAMESPACE or dims.get("EndpointName") != t.fleet.name
                or alarm.metric_name not in values or alarm.comparison_operator not in _COMPARE):
            continue
        value, threshold = values[alarm.metric_name], float(alarm.threshold)
        state = "ALARM" if _COMPARE[alarm.comparison_operator](value, threshold) else "OK"
        if state != alarm.state_value:
            alarm.update_state(f"Threshold Crossed: latest datapoint [{value}] evaluated by the local cloud",
                               "{}", state)
        if state == "ALARM" and alarm.actions_enabled:
            for arn in alarm.alarm_actions or []:
                policy = steps.get(arn)
                if policy is not None:
                    firing.append((policy.policy_name, policy.step_scaling_policy_configuration or {},
                                   value - threshold))
    return firing


def _show(t: _Tracked, serving: int, desired: int) -> None:
    """Current and desired instance counts on the endpoint's variant (DescribeEndpoint)."""
    from moto.sagemaker.models import sagemaker_backends

    endpoint = sagemaker_backends[t.account][t.region].endpoints.get(t.fleet.name)
    for variant in getattr(endpoint, "production_variants", None) or []:
        if variant.get("VariantName") == t.variant:
            variant["CurrentInstanceCount"], variant["DesiredInstanceCount"] = serving, desired


def _tick(t: _Tracked, now: float) -> None:
    fleet = t.fleet
    values = _metric_values(fleet)
    _publish(t, values, now)
    if fleet.external():
        return
    backlog, current, serving = fleet.counts()
    target, policies = _registration(t)
    if target is None:
        desired = fleet.view.instance_count if backlog or current else 0
    else:
        tracking = [p.target_tracking_scaling_policy_configuration or {} for p in policies
                    if p.policy_type == "TargetTrackingScaling"]
        desired = decide(now, current, backlog, int(target.min_capacity or 0), int(target.max_capacity or 0),
                         tracking, _firing_steps(t, policies, values), t.memory)
    if desired != current:
        log.info("endpoint %s: %d -> %d instance(s) (backlog %d)", fleet.name, current, desired, backlog)
        fleet.scale_to(desired)
    t.desired = desired
    _show(t, serving, desired)


def _loop() -> None:
    while not _stopping.is_set():
        _wake.wait(TICK_S)
        _wake.clear()
        now = time.monotonic()
        with _lock:
            tracked = list(_tracked.values())
        for t in tracked:
            try:
                _tick(t, now)
            except Exception:
                log.exception("scaling endpoint %s", t.fleet.name)


# ---- the fleets -------------------------------------------------------------------------------

def _key(account: str, region: str, name: str) -> str:
    return f"{account}/{region}/{name}"


def fleet(view: Any, per_instance: int, run: Run, fail: Fail) -> Fleet:
    """The endpoint's fleet (created on its first request); the scaler is woken to serve it."""
    global _thread
    key = _key(view.account_id, view.region, view.name)
    with _lock:
        t = _tracked.get(key)
        if t is None:
            t = _tracked[key] = _Tracked(Fleet(view, per_instance, run, fail, wake), view.account_id,
                                         view.region, view.variant)
        if _thread is None:
            _thread = threading.Thread(target=_loop, name="autoscaling", daemon=True)
            _thread.start()
    _wake.set()
    return t.fleet


def wake() -> None:
    _wake.set()


def replace(account: str, region: str, name: str, view: Any, per_instance: int) -> None:
    """UpdateEndpoint: the endpoint's instances drain and new ones start from the new config."""
    with _lock:
        t = _tracked.get(_key(account, region, name))
    if t is not None:
        t.fleet.replace(view, per_instance)
        t.variant = view.variant
        _wake.set()


def close(account: str, region: str, name: str) -> None:
    """DeleteEndpoint: queued requests fail, instances drain and stop."""
    with _lock:
        t = _tracked.pop(_key(account, region, name), None)
    if t is not None:
        t.fleet.close(f"ServerError: endpoint {name} was deleted before the request ran")


def stop_all() -> None:
    """Stop every instance now (the emulator is shutting down)."""
    _stopping.set()
    _wake.set()
    with _lock:
        tracked = list(_tracked.values())
        _tracked.clear()
    for t in tracked:
        t.fleet.kill()
