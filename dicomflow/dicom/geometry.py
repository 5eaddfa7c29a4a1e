"""Slice geometry without numpy: the slice normal and the order of slices along it.

Used by the pre-label Lambda (order the WADO-URIs of a series) and by volume assembly, so both
agree on which slice comes first. Positions follow DICOM: ``ImagePositionPatient`` (x, y, z of the
first voxel, mm) and ``ImageOrientationPatient`` (row then column direction cosines); the normal is
row x column, and a slice's position along it is the dot product with its ``ImagePositionPatient``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dicomflow.errors import DicomflowError

ORIENTATION_TOLERANCE = 1e-3


class GeometryError(DicomflowError):
    """Slices whose geometry cannot be ordered (the message names the problem)."""


Vector = tuple[float, float, float]


def _floats(values: Sequence[float | str], n: int, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} {values!r} is not numeric") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise GeometryError(f"{name} needs {n} finite numbers, got {values!r}")
    return out


def slice_normal(orientation: Sequence[float | str]) -> Vector:
    """Unit normal (row x column) of an ``ImageOrientationPatient``; rejects degenerate cosines."""
    r0, r1, r2, c0, c1, c2 = _floats(orientation, 6, "ImageOrientationPatient")
    n = (r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0)
    norm = math.sqrt(sum(v * v for v in n))
    if norm < 0.5:  # orthonormal rows/columns give |n| = 1
        raise GeometryError(f"ImageOrientationPatient {list(orientation)!r} has parallel or zero direction cosines")
    return (n[0] / norm, n[1] / norm, n[2] / norm)


def slice_position(position: Sequence[float | str], normal: Vector) -> float:
    """Distance of a slice along ``normal`` (mm), from its ``ImagePositionPatient``."""
    x, y, z = _floats(position, 3, "ImagePositionPatient")
    return x * normal[0] + y * normal[1] + z * normal[2]


def slice_order(positions: Sequence[Sequence[float | str] | None],
                orientations: Sequence[Sequence[float | str] | None],
                instance_numbers: Sequence[int | str | None] | None = None) -> list[int]:
    """Indices of the slices sorted by position along their common normal (ascending).

    If no slice has a position and an orientation, the order is ``InstanceNumber`` (then input
    order). If some have them and others not, the order is unknown: :class:`GeometryError` names
    the slices (geometry is never guessed). Slices of one series must share an orientation; a
    mixed series raises :class:`GeometryError`.
    """
    n = len(positions)
    if len(orientations) != n or (instance_numbers is not None and len(instance_numbers) != n):
        raise GeometryError("positions, orientations and instance numbers must have one entry per slice")
    if n == 0:
        return []
    placed = [not (p is None or len(p) == 0 or o is None or len(o) == 0)
              for p, o in zip(positions, orientations, strict=True)]
    if not any(placed):
        return _by_instance_number(n, instance_numbers)
    if not all(placed):
        missing = [i for i, ok in enumerate(placed) if not ok]
        names = ", ".join(f"#{instance_numbers[i] if instance_numbers is not None else i + 1}" for i in missing[:5])
        raise GeometryError(f"{len(missing)} of {n} slices lack ImagePositionPatient/ImageOrientationPatient "
                            f"({names}{' ...' if len(missing) > 5 else ''}) while the others have them; "
                            "the slice order is unknown: resend the series with complete geometry")
    normal = slice_normal(orientations[0])  # type: ignore[arg-type]
    for o in orientations[1:]:
        other = slice_normal(o)  # type: ignore[arg-type]
        if abs(abs(sum(a * b for a, b in zip(normal, other, strict=True))) - 1.0) > ORIENTATION_TOLERANCE:
            raise GeometryError("slices of the series have different orientations; split it into stacks")
    keys = [slice_position(p, normal) for p in positions]  # type: ignore[arg-type]
    return sorted(range(n), key=lambda i: (keys[i], i))


def _by_instance_number(n: int, instance_numbers: Sequence[int | str | None] | None) -> list[int]:
    if instance_numbers is None:
        return list(range(n))

    def key(i: int) -> tuple[int, float, int]:
        raw = instance_numbers[i]
        try:
            return (0, float(raw), i)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return (1, 0.0, i)

    return sorted(range(n), key=key)


def slice_positions(positions: Sequence[Sequence[float | str]], orientation: Sequence[float | str]) -> list[float]:
    """Positions (mm) of each slice along the normal of ``orientation``."""
    normal = slice_normal(orientation)
    return [slice_position(p, normal) for p in positions]
