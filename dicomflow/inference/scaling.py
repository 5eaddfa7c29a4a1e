"""Autoscaling of an asynchronous endpoint, as AWS documents it for async inference.

:func:`register_async_scaling` registers the endpoint's variant with Application Auto Scaling
(``sagemaker:variant:DesiredInstanceCount`` between ``minimum`` and ``maximum``) and adds

* a target-tracking policy on the customized metric ``ApproximateBacklogSizePerInstance`` (namespace
  ``AWS/SageMaker``, dimension ``EndpointName``): about ``backlog_per_instance`` queued requests per
  instance;
* for ``minimum == 0``, scale-from-zero: a step policy (+1 instance) run by a CloudWatch alarm on
  ``HasBacklogWithoutCapacity >= 1`` (target tracking cannot leave zero: its metric needs an instance).

The same calls reach AWS and the local cloud, which honours them (``dicomflow.emulator.moto.autoscaling``).
:func:`scaling_status` reads the instance counts and the latest backlog back, both places alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.errors import DicomflowError

NAMESPACE = "AWS/SageMaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
MAX_INSTANCES = 100


class ScalingError(DicomflowError):
    """Autoscaling could not be registered or read; the message says why."""


@dataclass(frozen=True)
class ScalingPlan:
    minimum: int
    maximum: int
    backlog_per_instance: float = 5.0
    scale_in_cooldown: int = 600
    scale_out_cooldown: int = 300
    alarm_period: int = 60  # seconds, CloudWatch's standard resolution

    def check(self) -> None:
        if not 0 <= self.minimum <= self.maximum:
            raise ScalingError(f"--min-instances {self.minimum} / --max-instances {self.maximum}: need "
                               "0 <= min <= max")
        if not 1 <= self.maximum <= MAX_INSTANCES:
            raise ScalingError(f"--max-instances must be 1..{MAX_INSTANCES}, got {self.maximum}")
        if self.backlog_per_instance <= 0:
            raise ScalingError("--backlog-per-instance must be greater than 0")
        if self.scale_in_cooldown < 0 or self.scale_out_cooldown < 0:
            raise ScalingError("cooldowns must be 0 or more seconds")


def resource_id(endpoint: str, variant: str = "AllTraffic") -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_names(endpoint: str) -> tuple[str, str, str]:
    """(target-tracking policy, scale-from-zero step policy, its alarm)."""
    return f"{endpoint}-backlog-tracking", f"{endpoint}-scale-from-zero", f"{endpoint}-has-backlog-without-capacity"


def register_async_scaling(endpoint: str, plan: ScalingPlan, variant: str = "AllTraffic") -> dict[str, Any]:
    """Register the variant and its policies (idempotent: a second call updates them); returns their ARNs."""
    plan.check()
    rid = resource_id(endpoint, variant)
    tracking, step, alarm = policy_names(endpoint)
    scaling = aws.client("application-autoscaling")
    dims = [{"Name": "EndpointName", "Value": endpoint}]
    out: dict[str, Any] = {"resourceId": rid, "minInstances": plan.minimum, "maxInstances": plan.maximum}
    try:
        scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIMENSION,
                                         MinCapacity=plan.minimum, MaxCapacity=plan.maximum)
        out["targetTrackingPolicyArn"] = scaling.put_scaling_policy(
            PolicyName=tracking, ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIMENSION,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": plan.backlog_per_instance,
                "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance",
                                                  "Namespace": NAMESPACE, "Dimensions": dims,
                                                  "Statistic": "Average"},
                "ScaleInCooldown": plan.scale_in_cooldown, "ScaleOutCooldown": plan.scale_out_cooldown,
            })["PolicyARN"]
        if plan.minimum == 0:
            arn = scaling.put_scaling_policy(
                PolicyName=step, ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIMENSION,
                PolicyType="StepScaling",
                StepScalingPolicyConfiguration={
                    "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                    "Cooldown": plan.scale_out_cooldown,
                    "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
                })["PolicyARN"]
            aws.client("cloudwatch").put_metric_alarm(
                AlarmName=alarm, MetricName="HasBacklogWithoutCapacity", Namespace=NAMESPACE, Statistic="Average",
                Dimensions=dims, Period=plan.alarm_period, EvaluationPeriods=2, DatapointsToAlarm=2, Threshold=1,
                ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing",
                AlarmDescription=f"scale {endpoint} from zero when requests wait", AlarmActions=[arn])
            out["scaleFromZeroPolicyArn"], out["alarm"] = arn, alarm
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise ScalingError(f"registering autoscaling for {endpoint} failed: {err.get('Code')}: "
                           f"{err.get('Message')}") from None
    return out


def _latest(endpoint: str, metric: str) -> float | None:
    """The largest value of ``metric`` in the latest one-minute period with data (CloudWatch's resolution)."""
    now = datetime.now(UTC)
    points = aws.client("cloudwatch").get_metric_statistics(
        Namespace=NAMESPACE, MetricName=metric, Dimensions=[{"Name": "EndpointName", "Value": endpoint}],
        StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1), Period=60,
        Statistics=["Maximum"])["Datapoints"]
    if not points:
        return None
    return float(max(points, key=lambda p: p["Timestamp"])["Maximum"])


def scaling_status(endpoint: str) -> dict[str, Any]:
    """Status, instance counts, scaling bounds and the backlog (largest of the latest minute) of one endpoint."""
    sm = aws.client("sagemaker")
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        raise ScalingError(f"endpoint {endpoint}: {exc.response.get('Error', {}).get('Message')}") from None
    variant = (desc.get("ProductionVariants") or [{}])[0]
    row: dict[str, Any] = {"endpoint": endpoint, "status": desc.get("EndpointStatus"),
                           "variant": variant.get("VariantName"),
                           "instances": variant.get("CurrentInstanceCount"),
                           "desiredInstances": variant.get("DesiredInstanceCount")}
    targets = aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id(endpoint, row["variant"] or "AllTraffic")],
        ScalableDimension=DIMENSION)["ScalableTargets"]
    if targets:
        row["minInstances"], row["maxInstances"] = targets[0]["MinCapacity"], targets[0]["MaxCapacity"]
    row["backlog"] = _latest(endpoint, "ApproximateBacklogSize")
    return row


def list_endpoints() -> list[dict[str, Any]]:
    """:func:`scaling_status` of every endpoint, newest first."""
    sm = aws.client("sagemaker")
    names = [e["EndpointName"] for page in sm.get_paginator("list_endpoints").paginate(
        SortBy="CreationTime", SortOrder="Descending") for e in page["Endpoints"]]
    return [scaling_status(name) for name in names]
