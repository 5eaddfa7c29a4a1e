"""Outlines drawn by annotators -> label volumes on the series grid -> one consolidated volume.

* Coordinates are the worker template's image coordinates: ``[x, y]`` with ``[0, 0]`` the top-left corner
  of the top-left pixel (Cornerstone3D's ``worldToImageCoords``, and DICOM SCOORD's convention), so pixel
  ``(row r, column c)`` is inside an outline when its centre ``(c + 0.5, r + 0.5)`` is.
* Outlines of one structure on one slice combine by the even-odd rule: an outline inside another cuts a
  hole (a ring is its outer and inner contour), as in RT Structure Sets.
* Painted regions arrive as the outlines of their pixels with ``"source": "brush"`` (the worker template's
  brush): they fill by the same rule among themselves, and a structure's slice is the union of its painted
  and its drawn regions (painting over an outline adds to it, it never cuts a hole).
* Structures that overlap in one worker's answer: the later structure in the label set wins the voxel.
* Fusion is a per-voxel **majority vote**: a voxel takes the structure more than half the workers gave it,
  else background. STAPLE would weight each worker by a sensitivity and specificity it estimates from the
  same voxels; with the 1-5 workers a Ground Truth object gets it has too little to estimate them from,
  and with 3 workers the majority is already the median answer, which one outlier cannot move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np


def rasterise(outlines: Iterable[Sequence[Sequence[float]]], rows: int, cols: int) -> np.ndarray:
    """A ``(rows, cols)`` bool mask of the pixels whose centres lie inside the outlines (even-odd rule)."""
    inside = np.zeros((rows, cols), dtype=bool)
    yc = np.arange(rows, dtype=np.float64) + 0.5
    xc = np.arange(cols, dtype=np.float64) + 0.5
    for outline in outlines:
        pts = np.asarray(outline, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[0] < 3 or pts.shape[1] != 2:
            continue
        x0, y0 = pts[:, 0], pts[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        crossing = np.zeros((rows, cols), dtype=bool)
        for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
            if ay == by:
                continue  # a horizontal edge never crosses a horizontal ray
            spans = (yc >= min(ay, by)) & (yc < max(ay, by))  # half-open: a vertex is counted once
            if not spans.any():
                continue
            xs = ax + (yc[spans] - ay) * (bx - ax) / (by - ay)  # where the edge meets each row's centre line
            crossing[spans] ^= xc[None, :] < xs[:, None]  # a ray from the pixel centre towards +x crosses it
        inside ^= crossing
    return inside


def worker_volume(rois: Iterable[Mapping[str, Any]], sop_order: Sequence[str], shape: tuple[int, int, int],
                  structures: Sequence[str]) -> np.ndarray:
    """One worker's freehand outlines (drawn or painted) as a ``shape`` (slices, rows, cols) label volume: value
    ``i + 1`` for ``structures[i]``; slice ``k`` is the instance ``sop_order[k]``. Outlines of other instances or
    labels are left out."""
    slice_of = {sop: k for k, sop in enumerate(sop_order)}
    grouped: dict[tuple[int, int], dict[str, list[Sequence[Sequence[float]]]]] = {}
    for roi in rois:
        if roi.get("type") != "freehand" or roi.get("label") not in structures:
            continue
        k = slice_of.get(str(roi.get("sopInstanceUID")))
        if k is not None:
            by_source = grouped.setdefault((structures.index(roi["label"]) + 1, k), {})
            by_source.setdefault(roi.get("source") or "drawn", []).append(roi["points"])
    volume = np.zeros(shape, dtype=np.uint8)
    for (value, k), by_source in sorted(grouped.items()):  # ascending value: a later structure wins overlaps
        region = np.zeros(shape[1:], dtype=bool)
        for outlines in by_source.values():
            region |= rasterise(outlines, shape[1], shape[2])
        volume[k][region] = value
    return volume


def fuse(volumes: Sequence[np.ndarray], n_structures: int) -> np.ndarray:
    """The per-voxel majority of the workers' label volumes: a structure more than half gave, else 0."""
    if not volumes:
        raise ValueError("no label volumes to fuse")
    stack = np.stack(volumes)
    out = np.zeros(stack.shape[1:], dtype=np.uint8)
    for value in range(1, n_structures + 1):
        out[(stack == value).sum(axis=0) * 2 > len(volumes)] = value
    return out


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float | None:
    """Dice of structure ``value`` between two label volumes; None when neither has it (nothing to compare)."""
    x, y = a == value, b == value
    total = int(x.sum()) + int(y.sum())
    return None if total == 0 else 2.0 * int((x & y).sum()) / total


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def agreement(volumes: Mapping[str, np.ndarray], fused: np.ndarray, structures: Sequence[str]) -> dict[str, Any]:
    """Per structure: the mean Dice between every two workers (inter-annotator Dice) and each worker's Dice
    to the consolidated volume; ``object``: the mean inter-annotator Dice over the structures."""
    per: dict[str, Any] = {}
    for i, name in enumerate(structures, start=1):
        pairs = [dice(volumes[a], volumes[b], i) for a, b in combinations(sorted(volumes), 2)]
        per[name] = {"interAnnotatorDice": _mean(pairs),
                     "workerDice": {w: rounded(dice(v, fused, i)) for w, v in sorted(volumes.items())},
                     "voxels": int((fused == i).sum())}
    return {"structures": per, "object": _mean(p["interAnnotatorDice"] for p in per.values())}


def rounded(value: float | None) -> float | None:
    """``value`` to 4 decimals; None stays None."""
    return None if value is None else round(value, 4)
