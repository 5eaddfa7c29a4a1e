"""The out-of-distribution check: training ranges, the widened tolerance, and what it names."""

from __future__ import annotations

import numpy as np
import pytest

from dicomflow.dicom.structures import parse_structures
from dicomflow.modeling.reference import (
    input_profile,
    quality,
    reference_ranges,
    structure_volumes,
    unlike_training,
)

STRUCTURES = parse_structures(["anterior", "posterior"])


def _volume(mean: float, seed: int, shape=(8, 16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 50.0, shape).astype(np.float32)


def _reference() -> dict:
    profiles = [input_profile(_volume(1000 + 20 * i, i), (2.0, 1.0, 1.0)) for i in range(5)]
    volumes = [{"anterior": 600.0 + 10 * i, "posterior": 500.0, "total": 1100.0 + 10 * i} for i in range(5)]
    return reference_ranges(profiles, volumes)


def test_profile_names_spacing_field_of_view_and_intensities() -> None:
    p = input_profile(np.arange(8 * 4 * 2, dtype=np.float32).reshape(8, 4, 2), (2.5, 1.0, 0.5))
    assert p["spacing_z_mm"] == 2.5 and p["fov_z_mm"] == 20.0 and p["fov_x_mm"] == 1.0
    assert p["intensity_mean"] == pytest.approx(31.5) and p["intensity_p1"] < p["intensity_median"] < p["intensity_p99"]


def test_an_input_like_the_training_data_raises_nothing() -> None:
    ref = _reference()
    assert ref["items"] == 5
    like = input_profile(_volume(1040, 99), (2.0, 1.0, 1.0))
    assert unlike_training(ref, like, {"anterior": 620.0, "posterior": 505.0, "total": 1125.0}) == []


@pytest.mark.parametrize(("change", "named"), [
    ({"mean": 5000.0}, "intensity mean"),
    ({"spacing": (6.0, 1.0, 1.0)}, "spacing z mm"),
    ({"shape": (8, 64, 64)}, "fov y mm"),
    ({"total": 16381.0}, "predicted total volume 16381"),
])
def test_each_way_of_being_unlike_is_named(change, named) -> None:
    ref = _reference()
    array = _volume(change.get("mean", 1040.0), 7, change.get("shape", (8, 16, 16)))
    profile = input_profile(array, change.get("spacing", (2.0, 1.0, 1.0)))
    reasons = unlike_training(ref, profile, {"total": change.get("total", 1120.0)})
    assert any(named in r for r in reasons), reasons


def test_a_model_without_a_reference_cannot_tell() -> None:
    q = quality(None, None, input_profile(_volume(1000, 1), (1, 1, 1)), None)
    assert q["outOfDistribution"] is None and q["reasons"] == []


def test_structure_volumes_count_each_value() -> None:
    label = np.zeros((2, 2, 2), np.uint8)
    label[0, 0, :] = 1
    label[1, 1, 1] = 2
    assert structure_volumes(label, (2.0, 1.0, 1.0), STRUCTURES) == {"anterior": 4.0, "posterior": 2.0, "total": 6.0}
