"""DICOM pixel data -> float32 arrays with their patient-space geometry.

Conventions
-----------
* A single-frame image (CR/DX, one slice) is returned as a 2D array ``(Y, X)`` = (rows, columns).
* A series (or a multi-frame instance) is returned as a 3D array ``(Z, Y, X)``: slices ordered by
  their position along the slice normal ``row_direction x column_direction`` (ascending).
* Values are modality values: MONOCHROME1 is inverted (so higher = brighter, as MONOCHROME2) and
  RescaleSlope / RescaleIntercept are applied. Colour images are converted to luminance.
* :class:`Geometry` holds ``spacing`` in array axis order (``(z, y, x)`` or ``(y, x)``, mm), the
  ``origin`` (LPS mm of the first voxel), ``direction`` (3x3, columns = x (row) direction,
  y (column) direction, slice normal) and ``affine`` (4x4) mapping a voxel index
  ``(x, y, z, 1)`` - column, row, slice - to LPS mm, the DICOM/ITK convention.

Compressed transfer syntaxes are decoded by pydicom's plugins: JPEG 2000 and JPEG baseline by
Pillow, RLE natively, JPEG-LS by ``pyjpegls``, JPEG lossless / extended (12-bit) by ``pylibjpeg`` +
``pylibjpeg-libjpeg``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomflow.dicom import geometry as _geometry
from dicomflow.dicom.elements import stored_value
from dicomflow.dicom.errors import InvalidImageError, NotAnImageError

#: Relative tolerance on slice spacing before a series is called irregular (gap / missing slice).
SPACING_TOLERANCE = 0.1
_ORIENTATION_TOLERANCE = 1e-3


class GeometryError(_geometry.GeometryError):
    """The instances do not form one regular volume (gap, duplicate, mixed orientation or size)."""


@dataclass(frozen=True)
class Geometry:
    """Where the array's voxels are in patient space (see the module docstring for conventions)."""

    spacing: tuple[float, ...]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sop_instance_uids: tuple[str, ...] = ()
    frame_of_reference_uid: str | None = None
    has_patient_geometry: bool = True
    shape: tuple[int, ...] = field(default=())

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping ``(x, y, z, 1)`` voxel indices (column, row, slice) to LPS mm."""
        sp = tuple(reversed(self.spacing))  # (x, y[, z])
        sx, sy = sp[0], sp[1]
        sz = sp[2] if len(sp) > 2 else 1.0
        aff = np.eye(4)
        aff[:3, :3] = self.direction @ np.diag([sx, sy, sz])
        aff[:3, 3] = self.origin
        return aff

    def to_dict(self) -> dict:
        """JSON-able summary (no pixel data, no PHI)."""
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }


def read(path: str | Path, *, header_only: bool = False) -> Dataset:
    """Read one DICOM file; a file that is not DICOM raises :class:`NotAnImageError`."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except (pydicom.errors.InvalidDicomError, EOFError) as exc:
        raise NotAnImageError(f"{Path(path).name} is not a readable DICOM file ({exc})") from exc


def is_image(ds: Dataset) -> bool:
    """True when the dataset describes an image (Rows/Columns present); works on header-only reads."""
    return "Rows" in ds and "Columns" in ds


#: Image Pixel attributes every image must carry (Type 1 in the Image Pixel module).
_REQUIRED_PIXEL_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated")


def _require_image(ds: Dataset) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        modality = ds.get("Modality", "?")
        raise NotAnImageError(f"DICOM object (Modality {modality}) has no pixel data: not an image")
    for keyword in _REQUIRED_PIXEL_ATTRIBUTES:
        value = ds.get(keyword)
        if value is None or value == "" or not isinstance(value, int) or value <= 0:
            tag = pydicom.datadict.tag_for_keyword(keyword)
            raise InvalidImageError(
                f"instance {ds.get('SOPInstanceUID', '?')} lacks a valid {keyword} "
                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) (got {value!r}); the image cannot be decoded without it: "
                "fix the object at its source")


_NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
_TRANSFER_SYNTAX, _PIXEL_DATA, _ORIENTATION_TAG = 0x00020010, 0x7FE00010, 0x00200037
#: Samples per pixel, photometric interpretation, frames, rows, columns, bits allocated / stored,
#: pixel representation, rescale intercept / slope: what decoding and modality values depend on.
_PIXEL_FORMAT_TAGS = (0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100, 0x00280101,
                      0x00280103, 0x00281052, 0x00281053)


def _pixel_format_key(ds: Dataset) -> tuple:
    """What decoding ``ds`` depends on, compared without converting a value."""
    meta = getattr(ds, "file_meta", None)
    syntax = stored_value(meta, _TRANSFER_SYNTAX) if meta is not None else None
    return (syntax, *(stored_value(ds, tag) for tag in _PIXEL_FORMAT_TAGS))


@dataclass(frozen=True)
class _NativeFormat:
    """An uncompressed little-endian grayscale frame: 8/16/32 bits allocated, ``stored`` of them used."""

    rows: int
    cols: int
    dtype: np.dtype
    stored: int

    def frame(self, data: object) -> np.ndarray | None:
        """The frame's allocated values straight from the PixelData bytes (a view); None if they fall short."""
        count = self.rows * self.cols
        if not isinstance(data, bytes | bytearray) or len(data) < count * self.dtype.itemsize:
            return None
        return np.frombuffer(data, dtype=self.dtype, count=count).reshape(self.rows, self.cols)

    @property
    def masked(self) -> bool:
        """Whether bits above BitsStored must be cleared or sign-extended."""
        return self.stored != self.dtype.itemsize * 8

    def stored_values(self, arr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Bits above BitsStored masked (unsigned) or sign-extended (signed), as ``ds.pixel_array`` does;
        into ``out`` when given (same shape and dtype)."""
        if not self.masked:
            return arr
        shift = self.dtype.type(self.dtype.itemsize * 8 - self.stored)
        if self.dtype.kind == "i":
            shifted = np.left_shift(arr, shift, out=out)
            return np.right_shift(shifted, shift, out=shifted)
        return np.bitwise_and(arr, self.dtype.type((1 << self.stored) - 1), out=out)


def _native_format(ds: Dataset) -> _NativeFormat | None:
    """The :class:`_NativeFormat` of ``ds``; None for anything else (compressed, big endian, colour, multi-frame)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        if (int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1
                or allocated not in (8, 16, 32) or not 0 < stored <= allocated):
            return None
    except (TypeError, ValueError, AttributeError):
        return None
    return _NativeFormat(rows, cols, np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}"), stored)


def _native_pixels(ds: Dataset) -> np.ndarray | None:
    """Stored values of an uncompressed little-endian grayscale image straight from its bytes.

    The common case of a series (one 8/16/32-bit frame per instance), read with ``np.frombuffer``
    and masked / sign-extended to BitsStored exactly as ``ds.pixel_array`` does, at a tenth of the
    cost. ``None`` for anything else (compressed, big endian, colour, multi-frame, odd sizes).
    """
    fmt = _native_format(ds)
    frame = fmt.frame(ds.PixelData) if fmt is not None else None
    return None if frame is None else fmt.stored_values(frame)


def pixels(ds: Dataset) -> np.ndarray:
    """Modality values of one instance as float32: ``(Y, X)`` or ``(frames, Y, X)``.

    MONOCHROME1 is inverted over the stored bit range, then RescaleSlope/Intercept applied.
    """
    _require_image(ds)
    arr = _native_pixels(ds)
    try:
        if arr is None:
            arr = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError per plugin
        raise InvalidImageError(_decode_failure(ds, exc)) from exc
    return _modality_values(arr, ds)


def _decode_failure(ds: Dataset, exc: BaseException) -> str:
    """What failed when the pixel data would not decode, and the fix: a missing plugin or a broken object."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    name = getattr(ts, "name", None) or str(ts or "no transfer syntax")
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    where = f"instance {ds.get('SOPInstanceUID', '?')}"
    available = False
    if ts is not None:
        try:
            from pydicom.pixels import get_decoder

            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError, ImportError):
            available = False
        if not getattr(ts, "is_compressed", True):
            available = True  # native pixel data needs no plugin
    if available:
        return (f"cannot decode the pixel data of {where} ({name}): {first}; the decoder is installed, so the "
                "pixel data or its header (Rows, Columns, BitsAllocated, NumberOfFrames) is corrupt or truncated: "
                "resend the object from its source")
    return (f"cannot decode the pixel data of {where} ({name}): {first}; no decoder for this transfer syntax is "
            "installed (pylibjpeg + pylibjpeg-libjpeg for JPEG lossless/extended, pyjpegls for JPEG-LS, Pillow for "
            "JPEG baseline/2000), or ask the PACS for an uncompressed transfer syntax")


def _modality_values(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values of ``ds`` (one frame or a stack of frames) -> float32 modality values."""
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples > 1:
        # pydicom converts YBR to RGB by default; reduce to luminance (ITU-R BT.601).
        arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return arr.astype(np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 16))
        if int(ds.get("PixelRepresentation", 0)) == 0:
            arr = (2**bits - 1) - arr.astype(np.int64)
        else:
            arr = -1 - arr.astype(np.int64)
    out = arr.astype(np.float32)
    slope, intercept = _rescale(ds)
    if slope != 1.0 or intercept != 0.0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def _rescale(ds: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent; a zero or non-finite value is refused, not guessed."""
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = ds.get(keyword)
        try:
            value = default if raw is None or raw == "" else float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            raise InvalidImageError(f"instance {ds.get('SOPInstanceUID', '?')} has {keyword} {raw!r}, not a finite "
                                    "number; modality values cannot be computed: fix the header at its source")
        values.append(value)
    if values[0] == 0.0:
        raise InvalidImageError(f"instance {ds.get('SOPInstanceUID', '?')} has RescaleSlope 0: every pixel would "
                                "equal the intercept; the header is wrong (fix it at its source; it is not read as 1)")
    return values[0], values[1]


def _series_pixels(series: list[Dataset], size: tuple[int, int]) -> np.ndarray:
    """``(Z, Y, X)`` modality values of single-frame instances, in the given order.

    When every instance has the pixel format and rescale of the first (compared as stored, nothing
    converted) and that format is uncompressed, it is read once and each slice is one copy of its
    bytes; the masking and modality step then run once on the stack. Otherwise (or if a slice's
    bytes fall short) every instance goes through :func:`pixels`. The values are the same.
    """
    first = series[0]
    key = _pixel_format_key(first)
    fmt = _native_format(first) if all(_pixel_format_key(ds) == key for ds in series[1:]) else None
    if fmt is not None and (fmt.rows, fmt.cols) == size:
        volume = _native_volume(series, fmt) if fmt.dtype.itemsize <= 2 else None
        if volume is not None:
            return volume
        stack = np.empty((len(series), *size), dtype=fmt.dtype)
        for i, ds in enumerate(series):
            frame = fmt.frame(stored_value(ds, _PIXEL_DATA))
            if frame is None:
                break
            stack[i] = frame
        else:
            return _modality_values(fmt.stored_values(stack), first)
    volume = np.empty((len(series), *size), dtype=np.float32)
    for i, ds in enumerate(series):
        volume[i] = pixels(ds)
    return volume


def _native_volume(series: list[Dataset], fmt: _NativeFormat) -> np.ndarray | None:
    """8/16-bit native frames of one format straight into the float32 volume: one pass over the bytes, the
    masking through a one-slice scratch, the modality step in place. Values equal :func:`_modality_values`'
    (every 8/16-bit value is exact in float32). None if a slice's bytes fall short."""
    volume = np.empty((len(series), fmt.rows, fmt.cols), dtype=np.float32)
    scratch = np.empty((fmt.rows, fmt.cols), dtype=fmt.dtype) if fmt.masked else None
    for i, ds in enumerate(series):
        frame = fmt.frame(stored_value(ds, _PIXEL_DATA))
        if frame is None:
            return None
        volume[i] = frame if scratch is None else fmt.stored_values(frame, out=scratch)
    first = series[0]
    if str(first.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        top = 2 ** int(first.get("BitsStored", 16)) - 1 if fmt.dtype.kind == "u" else -1
        np.subtract(np.float32(top), volume, out=volume)
    slope, intercept = _rescale(first)
    if slope != 1.0:
        volume *= np.float32(slope)
    if intercept != 0.0:
        volume += np.float32(intercept)
    return volume


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm; missing or zero spacing (e.g. RG1_UNCR's 0\\0) -> 1.0."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            dy, dx = float(value[0]), float(value[1])
            if dy > 0 and dx > 0:
                return dy, dx
    return 1.0, 1.0


def _orientation(ds: Dataset) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        raise GeometryError("ImageOrientationPatient is degenerate (row and column directions parallel)")
    return np.stack([row, col, normal], axis=1)


def _orientations(datasets: list[Dataset]) -> list[np.ndarray | None]:
    """:func:`_orientation` of each instance, computed once when all store the same ImageOrientationPatient."""
    stored = [stored_value(ds, _ORIENTATION_TAG) for ds in datasets]
    if stored[0] is not None and all(value == stored[0] for value in stored[1:]):
        return [_orientation(datasets[0])] * len(datasets)
    return [_orientation(ds) for ds in datasets]


def _position(ds: Dataset) -> np.ndarray | None:
    """ImagePositionPatient as 3 finite floats; None when absent; GeometryError when present but unusable."""
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or ipp == "":
        return None
    try:
        values = np.array([float(v) for v in (ipp if isinstance(ipp, Sequence) else [ipp])], dtype=float)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.shape != (3,) or not np.isfinite(values).all():
        raise GeometryError(f"instance {ds.get('SOPInstanceUID', '?')} has ImagePositionPatient {list(ipp)!r}, not "
                            "three finite numbers; the slice cannot be placed: fix the header at its source")
    return values


def _slice_names(datasets: Sequence[Dataset], indices: Sequence[int], limit: int = 5) -> str:
    shown = [f"#{datasets[i].get('InstanceNumber', '?')} ({datasets[i].get('SOPInstanceUID', '?')})"
             for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(shown) + more


def load_image(datasets: Dataset | Sequence[Dataset]) -> tuple[np.ndarray, Geometry]:
    """Decode one image or one series into a float32 array and its :class:`Geometry`.

    One single-frame dataset -> ``(Y, X)``; several datasets (one series) or one multi-frame
    dataset -> ``(Z, Y, X)`` ordered along the slice normal. Raises :class:`NotAnImageError` for
    objects without pixel data and :class:`GeometryError` when the slices do not form one regular
    volume (different sizes or orientations, duplicate positions, gaps).
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    datasets = list(datasets)
    if not datasets:
        raise GeometryError("no DICOM instances given: a series needs at least one image")
    for ds in datasets:
        _require_image(ds)
    if len(datasets) == 1:
        ds = datasets[0]
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return _load_multiframe(ds)
        return _load_single(ds)
    return _load_series(datasets)


def _load_single(ds: Dataset) -> tuple[np.ndarray, Geometry]:
    arr = pixels(ds)
    direction = _orientation(ds)
    position = _position(ds)
    dy, dx = _pixel_spacing(ds)
    geom = Geometry(
        spacing=(dy, dx),
        origin=tuple(position) if position is not None else (0.0, 0.0, 0.0),
        direction=direction if direction is not None else np.eye(3),
        sop_instance_uids=(str(ds.get("SOPInstanceUID", "")),),
        frame_of_reference_uid=ds.get("FrameOfReferenceUID"),
        has_patient_geometry=direction is not None and position is not None,
        shape=tuple(arr.shape),
    )
    return arr, geom


def _slice_spacing(positions: np.ndarray, what: str) -> float:
    """Uniform spacing of sorted positions; raise on duplicates or gaps."""
    if len(positions) < 2:
        return 1.0
    steps = np.diff(positions)
    median = float(np.median(steps))
    if np.any(steps < 1e-4) or median <= 0:
        dup = int(np.argmin(steps))
        raise GeometryError(
            f"{what}: duplicate slice position {positions[dup]:.3f} mm (two instances at the same place); "
            "remove the duplicate instance or export one series at a time"
        )
    worst = int(np.argmax(np.abs(steps - median)))
    if abs(steps[worst] - median) > SPACING_TOLERANCE * median:
        raise GeometryError(
            f"{what}: irregular slice spacing: {steps[worst]:.3f} mm between slices {worst} and {worst + 1} "
            f"where the series uses {median:.3f} mm (a missing slice?); resend the complete series"
        )
    return median


def _load_series(datasets: list[Dataset]) -> tuple[np.ndarray, Geometry]:
    first = datasets[0]
    size = (int(first.Rows), int(first.Columns))
    for ds in datasets:
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise GeometryError(
                f"mixed image sizes in one series: {size[0]}x{size[1]} and {int(ds.Rows)}x{int(ds.Columns)}; "
                "a volume needs slices of one size"
            )
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise GeometryError("a series of multi-frame instances is not supported: pass one instance")
    orientations = _orientations(datasets)
    positions = [_position(ds) for ds in datasets]
    placed = [o is not None and p is not None for o, p in zip(orientations, positions, strict=True)]
    has_geometry = all(placed)
    if any(placed) and not has_geometry:
        missing = [i for i, ok in enumerate(placed) if not ok]
        raise GeometryError(
            f"{len(missing)} of {len(datasets)} slices lack ImagePositionPatient/ImageOrientationPatient "
            f"({_slice_names(datasets, missing)}) while the others have them; their place in the volume is unknown "
            "and is not guessed from InstanceNumber: resend the series with complete geometry")
    dy, dx = _pixel_spacing(first)
    if has_geometry:
        direction = orientations[0]
        for o in orientations[1:]:
            if np.abs(o - direction).max() > _ORIENTATION_TOLERANCE:
                raise GeometryError(
                    "mixed slice orientations in one series (ImageOrientationPatient differs); "
                    "a volume needs parallel slices"
                )
        # the same order as the pre-label Lambda's (dicomflow.dicom.geometry), which takes the normal of
        # the first orientation; the others were just checked against it
        order = np.array(_geometry.slice_order([list(p) for p in positions],
                                               [first.ImageOrientationPatient] * len(datasets)))
        distance = np.array([float(p @ direction[:, 2]) for p in positions])
        dz = _slice_spacing(distance[order], "series")
        origin = tuple(positions[order[0]])
    else:
        # No slice has patient geometry: order by InstanceNumber, spacing from the header; the
        # Geometry says so (has_patient_geometry False) and the inference response reports it.
        numbers = [_instance_number(ds, i) for i, ds in enumerate(datasets)]
        order = np.argsort(numbers, kind="stable")
        if len(set(numbers)) != len(numbers):
            raise GeometryError("series without ImagePositionPatient has duplicate InstanceNumbers")
        dz = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
        direction, origin = np.eye(3), (0.0, 0.0, 0.0)
    ordered = [datasets[i] for i in order]
    volume = _series_pixels(ordered, size)
    geom = Geometry(
        spacing=(dz, dy, dx),
        origin=tuple(float(v) for v in origin),
        direction=direction,
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for ds in ordered),
        frame_of_reference_uid=first.get("FrameOfReferenceUID"),
        has_patient_geometry=has_geometry,
        shape=tuple(volume.shape),
    )
    return volume, geom


def _instance_number(ds: Dataset, default: int) -> int:
    raw = ds.get("InstanceNumber")
    try:
        return int(raw) if raw not in (None, "") else default
    except (TypeError, ValueError):
        raise GeometryError(f"instance {ds.get('SOPInstanceUID', '?')} has InstanceNumber {raw!r}, not an integer, "
                            "and the series has no ImagePositionPatient to order it by") from None


def _load_multiframe(ds: Dataset) -> tuple[np.ndarray, Geometry]:
    arr = pixels(ds)  # (frames, Y, X)
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    direction = _orientation(ds)
    dy, dx = _pixel_spacing(ds)
    if direction is None and "PlaneOrientationSequence" in shared:
        direction = _orientation(shared.PlaneOrientationSequence[0])
    if "PixelMeasuresSequence" in shared:
        dy, dx = _pixel_spacing(shared.PixelMeasuresSequence[0])
    positions = []
    for item in per_frame:
        if "PlanePositionSequence" in item:
            positions.append(_position(item.PlanePositionSequence[0]))
        if direction is None and "PlaneOrientationSequence" in item:
            direction = _orientation(item.PlaneOrientationSequence[0])
        if "PixelMeasuresSequence" in item:
            dy, dx = _pixel_spacing(item.PixelMeasuresSequence[0])
    known = [p for p in positions if p is not None]
    has_geometry = direction is not None and len(known) == arr.shape[0]
    if known and not has_geometry:
        raise GeometryError(
            f"multi-frame instance {ds.get('SOPInstanceUID', '?')}: {len(known)} of {arr.shape[0]} frames have a "
            "PlanePositionSequence (and the orientation is "
            f"{'known' if direction is not None else 'missing'}); frames are not placed by guess: fix the object")
    if has_geometry:
        distance = np.array([float(p @ direction[:, 2]) for p in positions])
        order = np.argsort(distance, kind="stable")
        dz = _slice_spacing(distance[order], "multi-frame instance")
        arr = arr[order]
        origin = tuple(float(v) for v in positions[order[0]])
    else:
        dz = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
        direction, origin = np.eye(3), (0.0, 0.0, 0.0)
    geom = Geometry(
        spacing=(dz, dy, dx),
        origin=origin,
        direction=direction,
        sop_instance_uids=(str(ds.get("SOPInstanceUID", "")),),
        frame_of_reference_uid=ds.get("FrameOfReferenceUID"),
        has_patient_geometry=has_geometry,
        shape=tuple(arr.shape),
    )
    return np.ascontiguousarray(arr, dtype=np.float32), geom


def load_files(paths: Sequence[str | Path]) -> tuple[np.ndarray, Geometry]:
    """:func:`load_image` over DICOM files on disk."""
    return load_image([read(p) for p in paths])


#: How far a label volume's NIfTI affine may be from the image's (mm, and direction cosines).
AFFINE_TOLERANCE_MM = 0.1
AFFINE_TOLERANCE_COSINE = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_label_volume(path: str | Path, geometry: Geometry) -> np.ndarray:
    """A label volume on the voxels of an image with ``geometry``: NIfTI (.nii / .nii.gz) or DICOM SEG.

    A NIfTI label must be stored as NIfTI stores it, ``(X, Y, Z)`` with a RAS affine, and that affine
    must place its voxels where the image's are (within :data:`AFFINE_TOLERANCE_MM`): a label of
    another grid is refused with both affines, never transposed, flipped or resampled to fit. A DICOM
    SEG is matched to the image slices by SOP Instance UID; a voxel's value is its segment number.
    """
    path = Path(path)
    target = tuple(geometry.shape)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(str(path))
        data = np.squeeze(np.asarray(image.dataobj))
        if data.shape != target[::-1]:
            raise GeometryError(f"label volume {path.name} has shape {data.shape} (X, Y, Z), the image "
                                f"{target[::-1]}: they must cover the same voxels")
        expected = _LPS_TO_RAS @ geometry.affine
        actual = np.asarray(image.affine, dtype=float)
        off = np.abs(actual - expected)
        if off[:3, 3].max() > AFFINE_TOLERANCE_MM or off[:3, :3].max() > AFFINE_TOLERANCE_COSINE * max(
                1.0, float(np.abs(expected[:3, :3]).max())):
            raise GeometryError(
                f"label volume {path.name} is not on the image's grid: its affine {np.round(actual, 3).tolist()} "
                f"against the image's {np.round(expected, 3).tolist()} (RAS); write it on the series' own grid")
        return np.rint(data.transpose(2, 1, 0)).astype(np.uint8)
    from dicomflow.dicom.seg import read_seg
    from dicomflow.dicom.structures import StructureError

    try:
        data, _ = read_seg(pydicom.dcmread(str(path)), list(geometry.sop_instance_uids))
    except StructureError as exc:
        raise GeometryError(f"{path.name}: {exc}") from None
    if data.shape != target:
        raise GeometryError(f"{path.name}: SEG frames {data.shape[1:]} do not match the image's {target[1:]}")
    return data


def save_label_nifti(label: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a ``(Z, Y, X)`` label volume as NIfTI in the NIfTI convention ((X, Y, Z), RAS affine)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(label, dtype=np.uint8).transpose(2, 1, 0), _LPS_TO_RAS @ geometry.affine)
    nib.save(img, str(path))
