"""Evaluation metrics and the metric lines SageMaker scrapes from the log.

Every metric is printed as ``name=value;`` on one line per epoch (e.g.
``epoch=3; train_loss=0.412345; val_mean_auroc=0.812500;``); :data:`METRIC_DEFINITIONS` holds the
matching regexes for ``sagemaker.estimator.Estimator(metric_definitions=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

METRIC_NAMES = (
    "epoch", "train_loss", "val_loss", "val_mean_auroc", "val_mean_dice", "best_metric",
    "test_mean_dice", "test_mean_jaccard", "images_per_second", "skipped_items",
)
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
#: ``[{"Name": ..., "Regex": ...}]`` for the SageMaker estimator.
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"\b{name}={_NUMBER};"} for name in METRIC_NAMES]


def format_metrics(values: Mapping[str, float | int]) -> str:
    """``name=value;`` pairs joined by spaces; floats with 6 decimals, NaN as ``nan``."""
    parts = []
    for name, value in values.items():
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            parts.append(f"{name}={int(value)};")
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{name}=nan;")
        else:
            parts.append(f"{name}={float(value):.6f};")
    return " ".join(parts)


def auroc(scores: Sequence[float], targets: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN if only one class present."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64) > 0.5
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def multilabel_auroc(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Per-class AUROC for ``(N, C)`` scores/targets; classes with one value only are NaN."""
    return {label: auroc(scores[:, i], targets[:, i]) for i, label in enumerate(labels)}


def nanmean(values: Sequence[float]) -> float:
    """Mean over the non-NaN values; NaN if there are none."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else float("nan")


def overlap_metrics(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[int, dict[str, float]]:
    """Dice, Jaccard, sensitivity, specificity and volume error (% of the true volume; voxel counts too)
    per foreground class ``1..n_classes`` of integer maps.

    A class absent from both prediction and truth scores Dice/Jaccard 1 (nothing to find, nothing found).
    """
    out: dict[int, dict[str, float]] = {}
    for c in range(1, n_classes + 1):
        p, t = pred == c, truth == c
        tp = float(np.logical_and(p, t).sum())
        fp = float(np.logical_and(p, ~t).sum())
        fn = float(np.logical_and(~p, t).sum())
        tn = float(p.size - tp - fp - fn)
        union = tp + fp + fn
        out[c] = {
            "dice": 1.0 if union == 0 else 2 * tp / (2 * tp + fp + fn),
            "jaccard": 1.0 if union == 0 else tp / union,
            "sensitivity": float("nan") if tp + fn == 0 else tp / (tp + fn),
            "specificity": float("nan") if tn + fp == 0 else tn / (tn + fp),
            "volume_error_pct": float("nan") if tp + fn == 0 else 100.0 * (fp - fn) / (tp + fn),
            "true_voxels": tp + fn,
            "predicted_voxels": tp + fp,
        }
    return out


def segmentation_report(per_volume: Mapping[str, Mapping[int, Mapping[str, float]]], labels: Sequence[str]
                        ) -> dict:
    """The JSON test report: per volume, per class means, best and worst volume by mean Dice."""
    volumes = []
    for vid, classes in per_volume.items():
        named = {labels[c - 1]: dict(m) for c, m in classes.items()}
        true = sum(m.get("true_voxels", 0.0) for m in classes.values())
        predicted = sum(m.get("predicted_voxels", 0.0) for m in classes.values())
        volumes.append({"id": vid, "classes": named,
                        "mean_dice": nanmean([m["dice"] for m in classes.values()]),
                        "mean_jaccard": nanmean([m["jaccard"] for m in classes.values()]),
                        "total_volume_error_pct": 100.0 * (predicted - true) / true if true else float("nan")})
    per_class = {}
    for label in labels:
        per_class[label] = {
            key: nanmean([v["classes"][label][key] for v in volumes])
            for key in ("dice", "jaccard", "sensitivity", "specificity")
        }
        per_class[label]["mean_abs_volume_error_pct"] = nanmean(
            [abs(v["classes"][label].get("volume_error_pct", float("nan"))) for v in volumes])
    report = {
        "volumes": volumes,
        "classes": per_class,
        "mean_dice": nanmean([v["mean_dice"] for v in volumes]),
        "mean_jaccard": nanmean([v["mean_jaccard"] for v in volumes]),
        "mean_abs_total_volume_error_pct": nanmean([abs(v["total_volume_error_pct"]) for v in volumes]),
        "count": len(volumes),
    }
    if volumes:
        ranked = sorted(volumes, key=lambda v: (math.isnan(v["mean_dice"]), -v["mean_dice"]))
        report["best_volume"] = {"id": ranked[0]["id"], "mean_dice": ranked[0]["mean_dice"]}
        report["worst_volume"] = {"id": ranked[-1]["id"], "mean_dice": ranked[-1]["mean_dice"]}
    return report
