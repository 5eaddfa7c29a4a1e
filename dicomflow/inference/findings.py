"""Model outputs -> findings: per-class probabilities, per-structure volumes in mm³."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dicomflow.dicom.structures import parse_structures
from dicomflow.modeling.reference import voxel_counts

POSITIVE_THRESHOLD = 0.5


def probabilities(logits: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """Logits of one image (shape ``(classes,)``) -> probabilities (sigmoid: multi-label; softmax)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if activation == "softmax":
        e = np.exp(x - x.max())
        return e / e.sum()
    if activation != "sigmoid":
        raise ValueError(f"unknown activation {activation!r}; use 'sigmoid' or 'softmax'")
    return 1.0 / (1.0 + np.exp(-x))


def classification_findings(probs: np.ndarray, labels: Sequence[str],
                            threshold: float = POSITIVE_THRESHOLD) -> dict:
    """Per-class probabilities, the classes at or above ``threshold`` and the top class."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(probs) != len(labels):
        raise ValueError(f"model gave {len(probs)} outputs for {len(labels)} labels")
    per_class = {name: round(float(p), 6) for name, p in zip(labels, probs, strict=True)}
    top = int(np.argmax(probs))
    return {
        "probabilities": per_class,
        "positive": [name for name, p in per_class.items() if p >= threshold],
        "threshold": threshold,
        "top": {"label": labels[top], "index": top, "probability": per_class[labels[top]]},
    }


def segmentation_volumes(label_volume: np.ndarray, spacing: Sequence[float], labels: Sequence[str]) -> dict:
    """Volume in mm³ of each labelled structure and their total (voxel count × voxel volume)."""
    voxel = float(np.prod([float(s) for s in spacing]))
    voxels = voxel_counts(label_volume, parse_structures(labels))
    volumes = {name: round(n * voxel, 3) for name, n in voxels.items()}
    volumes["total"] = round(sum(volumes.values()), 3)
    return {"volumesMm3": volumes, "voxelVolumeMm3": round(voxel, 6), "voxels": voxels}
