"""What a model saw in training, and whether an input is like it (the out-of-distribution check).

A *profile* describes one input volume: voxel spacing, field of view and intensity statistics (the
stored values after the rescale, before the model's own normalisation). The training job keeps the
range of every profile statistic over its training items, and the range of each structure's true
volume, in the artifact (``reference``). At inference, :func:`unlike_training` names each statistic of
the input, and each predicted volume, that lies outside its training range widened by ``MARGIN`` times
the range's own width on either side (the width is at least ``MIN_RELATIVE_WIDTH`` of the value, so a
range of identical values still tolerates small differences). A non-empty answer is the warning; the
result itself is never changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dicomflow.dicom.structures import Structure

MARGIN = 1.0
MIN_RELATIVE_WIDTH = 0.25
AXES = ("z", "y", "x")
#: Percentiles come from a regular sample of about this many values: the 1st and 99th are then within
#: ~0.1 percentile point (binomial error at 16 k), far inside the margin of a training range, for a
#: quarter of the time a 256² image's own percentiles take (~0.35 against 1.4 ms).
PERCENTILE_SAMPLE = 16_384


def quality(reference: Mapping[str, Any] | None, expected: Mapping[str, Any] | None,
            profile: Mapping[str, float], volumes: Mapping[str, float] | None) -> dict[str, Any]:
    """The ``quality`` block of a result: how far off the model is expected to be (its test-split errors)
    and whether this input is unlike its training data (``outOfDistribution``: true, false, or None when
    the model cannot tell), with the reasons."""
    reasons = unlike_training(reference, profile, volumes)
    return {"outOfDistribution": None if reasons is None else bool(reasons), "reasons": reasons or [],
            "expected": dict(expected or {}), "input": {k: round(v, 6) for k, v in profile.items()}}


def input_profile(array: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """The statistics of one input volume (flat names: ``spacing_z_mm``, ``fov_x_mm``, ``intensity_p99`` ...)."""
    values = np.asarray(array).ravel()
    sample = values[:: max(1, values.size // PERCENTILE_SAMPLE)]  # see PERCENTILE_SAMPLE
    p1, p50, p99 = np.percentile(sample, [1, 50, 99])
    profile = {"intensity_mean": float(values.mean(dtype=np.float64)),
               "intensity_std": float(values.std(dtype=np.float64)),
               "intensity_p1": float(p1), "intensity_median": float(p50), "intensity_p99": float(p99)}
    shape = array.shape[-len(spacing):]
    for axis, size, step in zip(AXES[-len(spacing):], shape, spacing, strict=True):
        profile[f"spacing_{axis}_mm"] = float(step)
        profile[f"fov_{axis}_mm"] = float(size * step)
    return profile


def voxel_counts(label: np.ndarray, structures: Sequence[Structure]) -> dict[str, int]:
    """Voxels of each structure in a label volume (one comparison per structure: ``np.bincount`` would first
    widen every voxel to int64)."""
    label = np.asarray(label)
    return {st.name: int(np.count_nonzero(label == st.value)) for st in structures}


def structure_volumes(label: np.ndarray, spacing: Sequence[float], structures: Sequence[Structure]
                      ) -> dict[str, float]:
    """mm³ of each structure and of all together (``total``)."""
    voxel = float(np.prod([float(s) for s in spacing]))
    volumes = {name: n * voxel for name, n in voxel_counts(label, structures).items()}
    volumes["total"] = float(sum(volumes.values()))
    return volumes


def _range(values: Sequence[float]) -> dict[str, float]:
    return {"min": float(min(values)), "max": float(max(values))}


def reference_ranges(profiles: Sequence[Mapping[str, float]],
                     volumes: Sequence[Mapping[str, float]] = ()) -> dict[str, Any]:
    """The artifact's ``reference``: the range of every profile statistic and structure volume seen in training."""
    if not profiles:
        return {"items": 0, "profile": {}, "volumesMm3": {}}
    keys = sorted(set.intersection(*(set(p) for p in profiles)))
    names = sorted(set.intersection(*(set(v) for v in volumes))) if volumes else []
    return {"items": len(profiles), "margin": MARGIN,
            "profile": {k: _range([p[k] for p in profiles]) for k in keys},
            "volumesMm3": {n: _range([v[n] for v in volumes]) for n in names}}


def _outside(value: float, bounds: Mapping[str, float]) -> tuple[float, float] | None:
    low, high = bounds["min"], bounds["max"]
    width = max(high - low, MIN_RELATIVE_WIDTH * max(abs(low), abs(high)))
    allowed = (low - MARGIN * width, high + MARGIN * width)
    return None if allowed[0] <= value <= allowed[1] else allowed


def unlike_training(reference: Mapping[str, Any] | None, profile: Mapping[str, float],
                    volumes: Mapping[str, float] | None = None) -> list[str] | None:
    """One sentence per way the input (``profile``) or a predicted volume is far outside the training
    range; empty when it is like the training data; None when the model records no reference to compare."""
    if not reference or not reference.get("items"):
        return None
    reasons = []
    for key, bounds in reference.get("profile", {}).items():
        if key in profile and (allowed := _outside(profile[key], bounds)) is not None:
            reasons.append(f"{key.replace('_', ' ')} {profile[key]:.4g} is outside the training range "
                           f"{bounds['min']:.4g}-{bounds['max']:.4g} (tolerated {allowed[0]:.4g}-{allowed[1]:.4g})")
    for name, bounds in reference.get("volumesMm3", {}).items():
        if volumes and name in volumes and (allowed := _outside(volumes[name], bounds)) is not None:
            reasons.append(f"predicted {name} volume {volumes[name]:.0f} mm³ is implausible: training volumes "
                           f"{bounds['min']:.0f}-{bounds['max']:.0f} mm³ (tolerated {max(allowed[0], 0):.0f}-"
                           f"{allowed[1]:.0f})")
    return reasons
