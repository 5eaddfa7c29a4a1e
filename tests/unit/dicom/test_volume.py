"""dicomflow.dicom.volume: decoding, MONOCHROME1, rescale, slice ordering and geometry checks."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from model_helpers import as_retrieved
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomflow.demo import synthetic
from dicomflow.dicom.volume import (
    GeometryError,
    NotAnImageError,
    load_image,
    load_label_volume,
    save_label_nifti,
)


@pytest.fixture(scope="module")
def series() -> synthetic.SyntheticSeries:
    return synthetic.hippocampus_series(1, seed=3, shape=(12, 20, 16))[0]


def _copies(datasets: list[Dataset]) -> list[Dataset]:
    return [copy.deepcopy(ds) for ds in datasets]


def test_shuffled_slices_are_ordered_along_the_normal(series) -> None:
    ordered, geom = load_image(series.datasets)
    shuffled = _copies(series.datasets)
    random.Random(1).shuffle(shuffled)
    again, geom2 = load_image(shuffled)
    assert ordered.shape == (12, 20, 16) and ordered.dtype == np.float32
    np.testing.assert_array_equal(ordered, again)
    assert geom2.sop_instance_uids == geom.sop_instance_uids
    # ascending position along the normal; affine maps slice index k to the k-th position
    normal = geom.direction[:, 2]
    positions = [float(np.asarray(ds.ImagePositionPatient, float) @ normal) for ds in series.datasets]
    first = np.asarray(geom.origin) @ normal
    assert first == pytest.approx(min(positions))
    last = geom.affine @ np.array([0, 0, 11, 1.0])
    assert float(last[:3] @ normal) == pytest.approx(max(positions))
    assert geom.spacing[0] == pytest.approx(series.spacing[0])


def test_gap_duplicate_mixed_size_and_orientation_raise(series) -> None:
    gap = _copies(series.datasets)
    del gap[5]
    with pytest.raises(GeometryError, match="irregular slice spacing"):
        load_image(gap)
    dup = _copies(series.datasets) + [copy.deepcopy(series.datasets[3])]
    with pytest.raises(GeometryError, match="duplicate slice position"):
        load_image(dup)
    mixed = _copies(series.datasets)
    mixed[2].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(GeometryError, match="orientation"):
        load_image(mixed)
    sized = _copies(series.datasets[:3])
    small = synthetic.hippocampus_series(1, seed=3, shape=(12, 10, 16))[0].datasets[0]
    with pytest.raises(GeometryError, match="mixed image sizes"):
        load_image(sized + [small])
    with pytest.raises(GeometryError):
        load_image([])


def test_monochrome1_is_inverted_and_rescale_applied() -> None:
    ds = synthetic.chest_radiographs(1, seed=0, size=32)[0].dataset
    base, _ = load_image(ds)
    inv = copy.deepcopy(ds)
    inv.PhotometricInterpretation = "MONOCHROME1"
    inverted, geom = load_image(inv)
    assert inverted.shape == (32, 32)
    np.testing.assert_allclose(inverted, (2 ** int(ds.BitsStored) - 1) - base)
    scaled = copy.deepcopy(ds)
    scaled.RescaleSlope, scaled.RescaleIntercept = 2, -1024
    values, _ = load_image(scaled)
    np.testing.assert_allclose(values, base * 2 - 1024)


@pytest.mark.parametrize("name", [
    "CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG-LL.dcm",
    "JPGExtended.dcm", "693_J2KR.dcm",
])
def test_real_compressed_samples_decode(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    array, geom = load_image(ds)
    assert array.ndim == 2 and array.dtype == np.float32 and np.isfinite(array).all()
    assert array.std() > 0
    assert len(geom.spacing) == 2


def test_compressed_matches_uncompressed() -> None:
    a, _ = load_image(pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm")))
    b, _ = load_image(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    np.testing.assert_array_equal(a, b)


def test_ct_rescale_gives_hounsfield_units() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    array, _ = load_image(ds)
    raw = ds.pixel_array.astype(np.float32)
    np.testing.assert_allclose(array, raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_multiframe_enhanced_mr() -> None:
    array, geom = load_image(pydicom.dcmread(get_testdata_file("emri_small.dcm")))
    assert array.shape == (10, 64, 64) and len(geom.spacing) == 3


def test_sr_is_not_an_image() -> None:
    sr = Dataset()
    sr.Modality = "SR"
    with pytest.raises(NotAnImageError, match="no pixel data"):
        load_image(sr)


def test_label_nifti_round_trip_and_a_label_off_the_grid_is_refused(series, tmp_path) -> None:
    _, geom = load_image(series.datasets)
    path = tmp_path / "label.nii.gz"
    save_label_nifti(series.label_volume, geom, path)
    back = load_label_volume(path, geom)
    np.testing.assert_array_equal(back, series.label_volume)
    with pytest.raises(GeometryError, match="same voxels"):
        load_label_volume(path, replace(geom, shape=(5, 5, 5)))
    shifted = replace(geom, origin=(geom.origin[0] + 2.0, geom.origin[1], geom.origin[2]))
    with pytest.raises(GeometryError, match="not on the image's grid"):
        load_label_volume(path, shifted)  # the same shape 2 mm off: never taken as aligned
    import nibabel as nib  # a (Z, Y, X) array with an identity affine: the shape guess of old is refused

    nib.save(nib.Nifti1Image(series.label_volume, np.eye(4)), tmp_path / "zyx.nii.gz")
    with pytest.raises(GeometryError):
        load_label_volume(tmp_path / "zyx.nii.gz", geom)


def _seg(series: synthetic.SyntheticSeries, sources: list[Dataset], label: np.ndarray) -> Dataset:
    """A DICOM SEG (highdicom, BINARY, one segment per class) of ``label`` over ``sources`` (in that order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="synthetic", version="1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Hippocampus,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, name in ((1, "anterior"), (2, "posterior"))
    ]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=label, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="dicomflow", manufacturer_model_name="tests",
        software_versions="0", device_serial_number="0")


def test_label_dicom_seg_matches_the_label_volume(series, tmp_path) -> None:
    image, geom = load_image(series.datasets)
    assert series.label_volume.max() == 2 and (series.label_volume == 0).all(axis=(1, 2)).any()  # empty slices too
    # the SEG lists its frames in the order of its own source list (here reversed): alignment is by SOP UID
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series.datasets}
    ordered = [by_uid[uid] for uid in geom.sop_instance_uids]
    seg = _seg(series, ordered[::-1], np.ascontiguousarray(series.label_volume[::-1]))
    path = tmp_path / "label.dcm"
    seg.save_as(path)
    label = load_label_volume(path, geom)
    assert label.dtype == np.uint8 and label.shape == image.shape
    np.testing.assert_array_equal(label, series.label_volume)


def _with_pixels(name: str, raw: np.ndarray | None = None, signed: int | None = None) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    if signed is not None:
        ds.PixelRepresentation = signed
    if raw is not None:
        ds.PixelData = raw.tobytes()
    return ds


def _high_bits_set(name: str, value: int) -> np.ndarray:
    raw = np.frombuffer(pydicom.dcmread(get_testdata_file(name)).PixelData, "<u2").copy()
    raw[:64] = value  # bits above BitsStored: masked (unsigned) or sign-extended (signed) by pydicom
    return raw


@pytest.mark.parametrize("make", [
    lambda: _with_pixels("CT_small.dcm"),  # 16/16 signed, explicit VR
    lambda: _with_pixels("MR_small_implicit.dcm"),  # implicit VR
    lambda: _with_pixels("OBXXXX1A.dcm"),  # 8-bit
    lambda: _with_pixels("MR2_UNCI.dcm", _high_bits_set("MR2_UNCI.dcm", 0xF00F)),  # 12 of 16 bits, unsigned
    lambda: _with_pixels("MR2_UNCI.dcm", _high_bits_set("MR2_UNCI.dcm", 0x0F00), signed=1),  # 12 bits, signed
], ids=["ct-signed", "implicit", "8-bit", "12-bit-unsigned", "12-bit-signed"])
def test_native_pixel_reader_matches_pydicom(make) -> None:
    from dicomflow.dicom.volume import _native_pixels

    ds = make()
    fast = _native_pixels(ds)
    assert fast is not None
    reference = ds.pixel_array
    assert fast.dtype == reference.dtype
    np.testing.assert_array_equal(fast, reference)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "SC_rgb.dcm", "rtdose.dcm", "JPEG2000.dcm"])
def test_native_pixel_reader_leaves_other_encodings_to_pydicom(name: str) -> None:
    from dicomflow.dicom.volume import _native_pixels

    assert _native_pixels(pydicom.dcmread(get_testdata_file(name))) is None


def _variant(series: synthetic.SyntheticSeries, how: str) -> list[Dataset]:
    datasets = _copies(series.datasets)
    for k, ds in enumerate(datasets):
        raw = np.frombuffer(ds.PixelData, "<u2").copy()
        if how == "signed-high-bits":
            ds.PixelRepresentation = 1
            raw[:5] |= 0xF000
        elif how == "rescaled":
            ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-1024"
        elif how == "monochrome1":
            ds.PhotometricInterpretation = "MONOCHROME1"
        elif how == "rescale-per-slice":
            ds.RescaleSlope, ds.RescaleIntercept = f"{1 + k / 10:.1f}", "0"
        elif how == "all-at-once":  # signed, high bits set, MONOCHROME1 and rescaled
            ds.PixelRepresentation, ds.PhotometricInterpretation = 1, "MONOCHROME1"
            ds.RescaleSlope, ds.RescaleIntercept = "0.7", "12.5"
            raw[:5] |= 0xF000
        ds.PixelData = raw.tobytes()
    return datasets


@pytest.mark.parametrize("how", ["plain", "signed-high-bits", "rescaled", "monochrome1", "rescale-per-slice",
                                 "all-at-once"])
def test_series_decoded_once_matches_each_instance_decoded(series, how: str, monkeypatch) -> None:
    from dicomflow.dicom import volume as volume_module
    from dicomflow.dicom.volume import pixels

    decoded_alone = []
    monkeypatch.setattr(volume_module, "pixels", lambda ds: decoded_alone.append(ds) or pixels(ds))
    datasets = as_retrieved(_variant(series, how))
    random.Random(1).shuffle(datasets)
    volume, geom = load_image(datasets)
    # one format for the whole series, unless the rescale differs from slice to slice
    assert len(decoded_alone) == (len(datasets) if how == "rescale-per-slice" else 0)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in as_retrieved(_variant(series, how))}
    expected = np.stack([pixels(by_uid[uid]) for uid in geom.sop_instance_uids])
    assert volume.dtype == np.float32
    np.testing.assert_array_equal(volume, expected)


def test_series_with_a_short_slice_is_a_clear_error(series) -> None:
    datasets = as_retrieved(series.datasets)
    datasets[5].PixelData = datasets[5].PixelData[:-2]
    with pytest.raises(NotAnImageError, match="cannot decode the pixel data.*corrupt or truncated"):
        load_image(datasets)


def test_a_series_partly_without_positions_is_refused_naming_the_slices(series) -> None:
    datasets = _copies(series.datasets)
    random.Random(4).shuffle(datasets)
    for i, ds in enumerate(datasets):
        ds.InstanceNumber = i + 1  # shuffled numbers: ordering by them would silently scramble the volume
    del datasets[3].ImagePositionPatient
    with pytest.raises(GeometryError, match=r"1 of 12 slices lack ImagePositionPatient.*#4") as info:
        load_image(datasets)
    assert str(datasets[3].SOPInstanceUID) in str(info.value)


def test_a_series_without_any_position_is_ordered_by_instance_number_and_says_so(series) -> None:
    datasets = _copies(series.datasets)
    for ds in datasets:
        del ds.ImagePositionPatient
    reversed_order = list(reversed(datasets))
    array, geom = load_image(reversed_order)
    assert not geom.has_patient_geometry
    assert geom.sop_instance_uids == tuple(str(ds.SOPInstanceUID) for ds in datasets)  # by InstanceNumber
    np.testing.assert_array_equal(array, load_image(datasets)[0])


@pytest.mark.parametrize(("keyword", "value", "needle"), [
    ("Rows", None, r"lacks a valid Rows \(0028,0010\)"),
    ("Columns", 0, r"lacks a valid Columns \(0028,0011\)"),
    ("ImagePositionPatient", ["nan", "0", "0"], "not three finite numbers"),
    ("RescaleSlope", "0", "RescaleSlope 0"),
    ("RescaleIntercept", "inf", "RescaleIntercept"),
])
def test_unusable_headers_are_refused_not_guessed(series, keyword: str, value, needle: str) -> None:
    datasets = _copies(series.datasets)
    if value is None:
        delattr(datasets[2], keyword)
    else:
        setattr(datasets[2], keyword, value)
    with pytest.raises((GeometryError, NotAnImageError), match=needle):
        load_image(datasets)


def test_a_decode_failure_says_what_failed(series) -> None:
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.PixelData = ds.PixelData[:200]  # a supported syntax, broken data: not a missing plugin
    with pytest.raises(NotAnImageError, match="decoder is installed") as info:
        load_image(ds)
    assert "install" not in str(info.value).split("decoder is installed")[1]
