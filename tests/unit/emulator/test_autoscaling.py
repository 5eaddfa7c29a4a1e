"""The emulator's scaling decisions (pure): target tracking, step policies, cooldowns, bounds."""

from __future__ import annotations

from dicomflow.emulator.moto.autoscaling import Memory, decide, step_count, tracking_count

TRACK = {"TargetValue": 5.0, "ScaleInCooldown": 10, "ScaleOutCooldown": 4,
         "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance"}}
FROM_ZERO = {"AdjustmentType": "ChangeInCapacity", "Cooldown": 3,
             "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]}


def test_tracking_wants_one_instance_per_target_backlog() -> None:
    assert [tracking_count(n, 5.0) for n in (0, 1, 5, 6, 11)] == [0, 1, 1, 2, 3]


def test_step_adjustments() -> None:
    assert step_count(0, FROM_ZERO, 0.0) == 1
    assert step_count(0, FROM_ZERO, -0.5) is None  # below the threshold: no step applies
    assert step_count(3, {"AdjustmentType": "ExactCapacity", "StepAdjustments": [{"ScalingAdjustment": 2}]}, 1) == 2
    pct = {"AdjustmentType": "PercentChangeInCapacity", "MinAdjustmentMagnitude": 2,
           "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 10}]}
    assert step_count(4, pct, 1.0) == 6  # 10% of 4 rounds up to 1, raised to the minimum magnitude 2


def test_from_zero_only_by_the_step_policy() -> None:
    memory = Memory()
    assert decide(0.0, 0, 7, 0, 4, [TRACK], [], memory) == 0  # target tracking has no metric at 0 instances
    assert decide(0.0, 0, 7, 0, 4, [TRACK], [("zero", FROM_ZERO, 0.0)], memory) == 1
    assert decide(1.0, 0, 7, 0, 4, [TRACK], [("zero", FROM_ZERO, 0.0)], memory) == 0  # its cooldown (3 s)


def test_scale_out_honours_cooldown_and_maximum() -> None:
    memory = Memory()
    assert decide(0.0, 1, 12, 0, 2, [TRACK], [], memory) == 2  # wants 3, capped at the maximum 2
    memory = Memory()
    assert decide(0.0, 1, 8, 0, 4, [TRACK], [], memory) == 2
    assert decide(2.0, 2, 20, 0, 4, [TRACK], [], memory) == 2  # within ScaleOutCooldown (4 s)
    assert decide(5.0, 2, 20, 0, 4, [TRACK], [], memory) == 4


def test_scale_in_needs_the_lower_count_held_for_the_cooldown() -> None:
    memory = Memory()
    assert decide(0.0, 2, 0, 0, 4, [TRACK], [], memory) == 2
    assert decide(9.0, 2, 0, 0, 4, [TRACK], [], memory) == 2
    assert decide(10.0, 2, 0, 0, 4, [TRACK], [], memory) == 0
    memory = Memory()
    decide(0.0, 2, 0, 0, 4, [TRACK], [], memory)
    decide(5.0, 2, 9, 0, 4, [TRACK], [], memory)  # the backlog came back: the low period starts again
    assert decide(12.0, 2, 0, 0, 4, [TRACK], [], memory) == 2
    assert decide(12.0, 2, 0, 1, 4, [{**TRACK, "DisableScaleIn": True}], [], Memory()) == 2


def test_bounds_win() -> None:
    assert decide(0.0, 0, 0, 1, 3, [], [], Memory()) == 1
    assert decide(0.0, 5, 0, 1, 3, [], [], Memory()) == 3
