"""Each structure's key slice: the slice where its cross-section is largest, the outline of that cross-section
(contourpy's marching squares at half the way between outside and inside) and its area.

Coordinates are DICOM's image coordinates (PS3.3 C.10.5.1.2: column, row, with (0, 0) the top left corner of
the top left pixel, so a pixel's centre is at +0.5). The area is the section's pixel count times the pixel
spacing, the same counting as the volumes (:mod:`dicomflow.inference.findings`); the outline, which cuts the
corners of the pixel staircase, encloses slightly less. A section with holes is outlined by its outer boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import contourpy
import numpy as np


@dataclass(frozen=True)
class KeySection:
    """One structure's largest cross-section: its slice index, outline (N x 2, closed: the first point is the
    last) and area."""

    slice_index: int
    outline: np.ndarray
    pixels: int
    area_mm2: float


def boundaries(mask: np.ndarray) -> list[np.ndarray]:
    """Every closed boundary of a 2D boolean ``mask`` (outer ones and holes) in DICOM image coordinates
    (column, row), each N x 2 with the first point repeated last."""
    padded = np.pad(mask.astype(np.float64), 1)  # a section touching the edge still closes
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    return [line - 1.0 + 0.5 for line in lines]  # back from the padding, then to DICOM's corner origin


def outline(mask: np.ndarray) -> np.ndarray:
    """The longest closed boundary of a 2D boolean ``mask`` in DICOM image coordinates (column, row)."""
    return max(boundaries(mask), key=len)


def slice_outlines(label: np.ndarray, structures: Sequence[tuple[int, str]], sop_uids: Sequence[str]
                   ) -> list[dict]:
    """Every structure's boundaries on every slice of the (slices, rows, cols) ``label`` as the worker template's
    freehand outlines (``{"sopInstanceUID", "label", "points"}``; slice k is ``sop_uids[k]``): outlines inside
    another of the same structure are its holes (even-odd, as the consolidation rasterises them)."""
    out = []
    for k, sop in enumerate(sop_uids):
        for value, name in structures:
            mask = label[k] == value
            if mask.any():
                out.extend({"sopInstanceUID": sop, "label": name,
                            "points": [[round(float(x), 2), round(float(y), 2)] for x, y in line[:-1]]}
                           for line in boundaries(mask) if len(line) > 3)
    return out


def key_sections(label: np.ndarray, values: Sequence[int], pixel_spacing: Sequence[Sequence[float]]
                 ) -> dict[int, KeySection]:
    """For each label value in ``values`` present in the (slices, rows, cols) ``label``, its largest section;
    ``pixel_spacing[k]`` is slice k's (row, column) spacing in mm."""
    out = {}
    for value in values:
        counts = (label == value).sum(axis=(1, 2))
        if not counts.any():
            continue
        k = int(np.argmax(counts))
        rows, cols = (float(v) for v in pixel_spacing[k])
        out[value] = KeySection(k, outline(label[k] == value), int(counts[k]), float(counts[k]) * rows * cols)
    return out
