"""Synthetic data and seed curation: determinism, labels, geometry, NIfTI affine, dciodvfy validity."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from model_helpers import dciodvfy_errors

from dicomflow.demo import seed as seeding
from dicomflow.demo import synthetic
from dicomflow.dicom import volume


def test_chest_is_deterministic_and_extends_with_n() -> None:
    a = synthetic.chest_radiographs(4, seed=7, size=64)
    b = synthetic.chest_radiographs(6, seed=7, size=64)
    for x, y in zip(a, b[:4], strict=True):
        assert x.dataset.PixelData == y.dataset.PixelData
        assert x.dataset.SOPInstanceUID == y.dataset.SOPInstanceUID
        assert x.labels == y.labels
    other = synthetic.chest_radiographs(1, seed=8, size=64)[0]
    assert other.dataset.StudyInstanceUID != a[0].dataset.StudyInstanceUID
    assert other.dataset.PixelData != a[0].dataset.PixelData


def test_chest_uids_unique_and_one_patient_per_study() -> None:
    images = synthetic.chest_radiographs(20, seed=1, size=32)
    uids = [getattr(im.dataset, k) for im in images
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    assert len(set(uids)) == len(uids)
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in uids)
    assert len({im.patient_id for im in images}) == 20
    assert all(im.patient_id.startswith("SYNTH-") for im in images)


def test_chest_labels_and_image() -> None:
    images = synthetic.chest_radiographs(40, seed=2, size=64)
    chexpert = _chexpert_classes()
    seen: set[str] = set()
    for im in images:
        ds = im.dataset
        assert (ds.Modality, ds.PhotometricInterpretation, ds.Rows, ds.Columns) == ("CR", "MONOCHROME2", 64, 64)
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() <= 4095
        assert im.labels and (im.labels == ["No Finding"]) == (not set(im.labels) & set(synthetic.CHEST_CLASSES))
        seen.update(im.labels)
        if chexpert is not None:
            assert set(im.labels) <= set(chexpert)
    assert seen == {*synthetic.CHEST_CLASSES, "No Finding"}


def _chexpert_classes() -> list[str] | None:
    """The 14 CheXpert names from ``dicomflow.groundtruth.labels`` (another engineer's module; None until it exists)."""
    try:
        from dicomflow.groundtruth.labels import CHEXPERT_CLASSES
    except ImportError:
        return None
    return list(CHEXPERT_CLASSES)


def test_cardiomegaly_draws_a_larger_bright_heart() -> None:
    """A crude check that a label changes the image where it should (the classifier's job is harder)."""
    images = synthetic.chest_radiographs(60, seed=3, size=64)
    centre = [float((im.dataset.pixel_array[30:50, 22:44] > 2300).mean()) for im in images]
    big = [c for c, im in zip(centre, images, strict=True) if "Cardiomegaly" in im.labels]
    small = [c for c, im in zip(centre, images, strict=True) if "Cardiomegaly" not in im.labels]
    assert big and small and np.mean(big) > np.mean(small)


def test_hippocampus_geometry() -> None:
    series = synthetic.hippocampus_series(2, seed=4, shape=(12, 20, 16))
    assert series[0].series_uid != series[1].series_uid
    for ser in series:
        assert ser.label_volume.shape == (12, 20, 16) and ser.label_volume.dtype == np.uint8
        assert set(np.unique(ser.label_volume)) == {0, 1, 2}
        # anterior (1) lies at smaller y (rows run posterior in LPS) than posterior (2)
        ys = {k: np.nonzero(ser.label_volume == k)[1].mean() for k in (1, 2)}
        assert ys[1] < ys[2]
        dss = ser.datasets
        assert [int(ds.InstanceNumber) for ds in dss] == list(range(1, 13))
        assert len({ds.FrameOfReferenceUID for ds in dss}) == 1
        assert len({ds.SOPInstanceUID for ds in dss}) == 12
        for ds in dss:
            assert (ds.Modality, ds.Rows, ds.Columns) == ("MR", 20, 16)
            assert [float(v) for v in ds.PixelSpacing] == [ser.spacing[1], ser.spacing[2]]
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == ser.spacing[0]
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in dss])
        steps = np.diff(positions, axis=0)
        np.testing.assert_allclose(steps, np.tile([0, 0, ser.spacing[0]], (11, 1)), atol=1e-3)
        stacked = np.stack([ds.pixel_array for ds in dss])
        np.testing.assert_array_equal(stacked, ser.image_volume)
    again = synthetic.hippocampus_series(1, seed=4, shape=(12, 20, 16))[0]
    np.testing.assert_array_equal(again.label_volume, series[0].label_volume)
    assert again.datasets[3].SOPInstanceUID == series[0].datasets[3].SOPInstanceUID


def test_label_nifti_affine_matches_dicom(tmp_path: Path) -> None:
    ser = synthetic.hippocampus_series(1, seed=5, shape=(10, 14, 12))[0]
    path = seeding.write_label_nifti(ser.label_volume, ser.datasets, tmp_path / "lab.nii.gz")
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    assert data.shape == (12, 14, 10)  # x, y, z
    np.testing.assert_array_equal(np.transpose(data, (2, 1, 0)), ser.label_volume)
    # voxel (x=3, y=5, z=7) is at slice 7's ImagePositionPatient + 3 columns + 5 rows, in RAS
    ds = ser.datasets[7]
    lps = np.array([float(v) for v in ds.ImagePositionPatient]) + np.array([3 * 1.0, 5 * 1.0, 0])
    ras = img.affine @ np.array([3, 5, 7, 1])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-4)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    # and the training side reads both back aligned
    array, geometry = volume.load_image(ser.datasets)
    np.testing.assert_array_equal(array, ser.image_volume.astype(np.float32))
    assert geometry.spacing == pytest.approx(ser.spacing)
    np.testing.assert_array_equal(volume.load_label_volume(path, geometry), ser.label_volume)


# ---- dciodvfy ------------------------------------------------------------------------------------------
def test_synthetic_datasets_pass_dciodvfy(tmp_path: Path) -> None:
    cr = synthetic.chest_radiographs(1, seed=0, size=64)[0].dataset
    mr = synthetic.hippocampus_series(1, seed=0, shape=(8, 16, 12))[0].datasets
    assert dciodvfy_errors(cr, tmp_path, "cr") == []
    assert dciodvfy_errors(mr[0], tmp_path, "mr0") == []
    assert dciodvfy_errors(mr[-1], tmp_path, "mr7") == []


def test_curated_real_images_pass_dciodvfy(tmp_path: Path) -> None:
    studies = seeding.real_studies()
    assert [st.entry["name"] for st in studies] == list(seeding.REAL_IMAGES)
    for st in studies:
        ds = st.datasets[0]
        original = pydicom.dcmread(st.entry["path"])
        assert ds.PixelData == original.PixelData and ds.SOPInstanceUID == original.SOPInstanceUID
        assert dciodvfy_errors(ds, tmp_path, st.entry["name"]) == [], st.entry["name"]


def test_seeded_chest_studies_get_a_report_linked_by_study_uid_and_accession(tmp_path) -> None:
    import json
    import stat

    from dicomflow.demo import seed as seeding

    studies = seeding.plan(chest=3, hippocampus=1, seed=5, real=False, chest_size=32, hippocampus_shape=(8, 8, 8))
    assert seeding.write_reports(tmp_path, studies) == 3
    folder = seeding.reports_dir(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for st in (s for s in studies if s.kind == "chest"):
        record = json.loads((folder / f"{st.study_uid}.json").read_text())
        assert record["AccessionNumber"] == st.datasets[0].AccessionNumber != ""
        assert record["text"].strip() and st.entry["report_mentions"]
        assert "Synthetic^" not in record["text"] and st.entry["PatientID"] not in record["text"]
    assert len(list(folder.iterdir())) == 3
