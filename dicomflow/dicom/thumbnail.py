"""A DICOM image as a radiologist would first see it, small: an 8-bit PNG thumbnail.

The grey levels follow the standard display pipeline (PS3.4 N.2): stored values -> Modality LUT
(RescaleSlope/Intercept or a Modality LUT Sequence) -> VOI (the first WindowCenter/WindowWidth with the
linear function of C.11.2.1.2, else a VOI LUT Sequence, else the 0.5-99.5 percentile range of the image)
-> MONOCHROME1 shown inverted. A colour image keeps its colours. Multi-frame images show their middle
frame. The PNG holds no text chunks (no patient data) and the same image always gives the same bytes, so
its SHA-256 names it (:func:`thumbnail_key`).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicomflow.dicom.errors import InvalidImageError, NotAnImageError

DEFAULT_SIZE = 256


def _first(value: object) -> float:
    """The first of a multi-valued element (several windows: the first is the default one)."""
    return float(value[0]) if isinstance(value, MultiValue | list | tuple) else float(value)  # type: ignore[arg-type]


def display_grey(ds: Dataset) -> np.ndarray:
    """The displayed image as uint8 ``(Y, X)`` (grey) or ``(Y, X, 3)`` (colour)."""
    if "PixelData" not in ds:
        raise NotAnImageError(f"instance {ds.get('SOPInstanceUID', '?')} has no pixel data: nothing to show")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom's decoders raise several types
        raise InvalidImageError(f"cannot decode the pixel data of {ds.get('SOPInstanceUID', '?')}: "
                                f"{str(exc)[:200]}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if frames > 1:
        stored = stored[frames // 2]
    if samples > 1:
        return np.ascontiguousarray(stored.astype(np.uint8) if stored.dtype != np.uint8 else stored)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) >= 1:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        shown = np.clip(((values - (c - 0.5)) / (w - 1) + 0.5), 0.0, 1.0)
    elif "VOILUTSequence" in ds:
        lut = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        shown = np.clip(lut / float(2**bits - 1), 0.0, 1.0)
    else:
        low, high = np.percentile(values, [0.5, 99.5])
        shown = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        shown = 1.0 - shown
    return np.round(shown * 255.0).astype(np.uint8)


def thumbnail_png(ds: Dataset, size: int = DEFAULT_SIZE) -> bytes:
    """The displayed image scaled to fit ``size`` x ``size`` (aspect kept), as PNG bytes."""
    image = Image.fromarray(display_grey(ds))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def thumbnail_key(png: bytes, prefix: str = "thumbnails/") -> str:
    """The content-addressed S3 key of a thumbnail: the same picture is stored once."""
    return f"{prefix}{hashlib.sha256(png).hexdigest()}.png"
