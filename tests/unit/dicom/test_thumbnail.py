"""Thumbnails follow the display pipeline: MONOCHROME1 and rescaled encodings of one picture look the same,
the header's window is applied, colour stays colour, and the bytes (and so the key) are deterministic."""

from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomflow.demo import synthetic
from dicomflow.dicom.thumbnail import display_grey, thumbnail_key, thumbnail_png
from dicomflow.dicom.volume import NotAnImageError


def _chest() -> Dataset:
    return synthetic.chest_radiographs(1, seed=2, size=64)[0].dataset


def _with_stored(ds: Dataset, stored: np.ndarray) -> Dataset:
    out = copy.deepcopy(ds)
    out.PixelData = stored.astype(np.uint16).tobytes()
    return out


def test_a_monochrome1_encoding_of_the_same_picture_gives_the_same_thumbnail() -> None:
    ds = _chest()
    bits = int(ds.BitsStored)
    mono1 = _with_stored(ds, (2**bits - 1) - ds.pixel_array.astype(np.int64))
    mono1.PhotometricInterpretation = "MONOCHROME1"
    diff = np.abs(display_grey(mono1).astype(int) - display_grey(ds).astype(int))
    assert diff.max() <= 1  # the same grey levels, but for the rounding of 255 * x against 255 * (1 - x)
    plain_bright = display_grey(ds).mean()
    mono1_shown_as_mono2 = copy.deepcopy(mono1)
    mono1_shown_as_mono2.PhotometricInterpretation = "MONOCHROME2"  # ignoring the photometric would invert it
    assert abs(display_grey(mono1_shown_as_mono2).mean() - (255 - plain_bright)) < 2


def test_a_rescaled_encoding_of_the_same_values_gives_the_same_thumbnail() -> None:
    ds = _chest()
    scaled = _with_stored(ds, ds.pixel_array.astype(np.int64) // 2)  # stored halved, slope 2: the same values
    scaled.RescaleSlope, scaled.RescaleIntercept = 2, 0
    even = _with_stored(ds, (ds.pixel_array.astype(np.int64) // 2) * 2)
    assert np.array_equal(display_grey(scaled), display_grey(even))


def test_the_header_window_is_applied() -> None:
    ds = _chest()
    values = ds.pixel_array.astype(np.float64)
    centre, width = float(np.percentile(values, 50)), float(np.ptp(values) / 4)
    windowed = copy.deepcopy(ds)
    windowed.WindowCenter, windowed.WindowWidth = centre, width
    grey = display_grey(windowed)
    assert np.all(grey[values <= centre - 0.5 - (width - 1) / 2] == 0)
    assert np.all(grey[values > centre - 0.5 + (width - 1) / 2] == 255)
    assert not np.array_equal(grey, display_grey(ds))  # without the window: the percentile range


def test_ct_window_and_colour_and_frames() -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.WindowCenter, ct.WindowWidth = 40, 400  # a soft-tissue window in HU (rescale applied first)
    grey = display_grey(ct)
    assert grey.shape == (128, 128) and grey.dtype == np.uint8 and 0 < grey.mean() < 255
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    assert display_grey(rgb).shape == (100, 100, 3)
    frames = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    assert display_grey(frames).shape == (64, 64)


def test_png_bytes_are_small_deterministic_and_content_addressed() -> None:
    ds = _chest()
    png = thumbnail_png(ds, size=32)
    assert png == thumbnail_png(copy.deepcopy(ds), size=32)
    image = Image.open(io.BytesIO(png))
    assert image.size == (32, 32) and image.mode == "L" and not image.text  # no text chunks: no patient data
    key = thumbnail_key(png)
    assert key.startswith("thumbnails/") and key.endswith(".png") and len(key) == len("thumbnails/") + 64 + 4
    assert thumbnail_key(thumbnail_png(_with_stored(ds, ds.pixel_array // 2), size=32)) != key


def test_an_object_without_pixels_is_refused() -> None:
    sr = Dataset()
    sr.SOPInstanceUID = "1.2.3"
    with pytest.raises(NotAnImageError, match="has no pixel data"):
        display_grey(sr)
