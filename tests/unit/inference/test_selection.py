"""Series selection rules on QIDO-like DICOM JSON (dicomflow.inference.selection)."""

from __future__ import annotations

import pytest
from model_helpers import as_retrieved

from dicomflow.demo import synthetic
from dicomflow.dicom import json as dj
from dicomflow.dicom.elements import stored_value
from dicomflow.inference.errors import NoUsableSeries, StudyNotFound, UnusableSeries
from dicomflow.inference.selection import check_retrieved, instance_facts, select_series, series_facts

SOP_UID = dj.tag("SOPInstanceUID")

AXIAL = [1, 0, 0, 0, 1, 0]
CORONAL = [1, 0, 0, 0, 0, -1]


def _inst(series: str, modality: str, n: int, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), iop=AXIAL,
          desc: str = "T1") -> list[dict]:
    out = []
    for i in range(n):
        item = {"0020000E": {"vr": "UI", "Value": [series]}, "00080060": {"vr": "CS", "Value": [modality]},
                "00080018": {"vr": "UI", "Value": [f"{series}.{i}"]}, "0008103E": {"vr": "LO", "Value": [desc]}}
        if image_type:
            item["00080008"] = {"vr": "CS", "Value": list(image_type)}
        if iop:
            item["00200037"] = {"vr": "DS", "Value": list(iop)}
        out.append(item)
    return out


def test_picks_the_largest_usable_mr_series_and_says_why_others_were_not() -> None:
    study = (_inst("1.1", "MR", 3, ("ORIGINAL", "PRIMARY", "LOCALIZER"), desc="3-plane loc")
             + _inst("1.2", "MR", 30) + _inst("1.3", "MR", 12) + _inst("1.4", "SR", 1, None, None)
             + _inst("1.5", "SEG", 1, None, None) + _inst("1.6", "MR", 30, ("DERIVED", "SECONDARY", "MPR"))
             + _inst("1.7", "CT", 2))
    sel = select_series(study, "segmentation3d")
    assert sel.series_uid == "1.2" and sel.instance_count == 30
    assert "30 slices" in sel.reason and "axial" in sel.reason
    assert "localizer" in sel.rejected["1.1"]
    assert "more slices" in sel.rejected["1.3"]
    assert "not an image series" in sel.rejected["1.4"] and "not an image series" in sel.rejected["1.5"]
    assert "SECONDARY" in sel.rejected["1.6"]
    assert "needs at least 3" in sel.rejected["1.7"]
    assert sel.as_dict()["seriesInstanceUID"] == "1.2"


def test_mixed_orientation_is_rejected() -> None:
    study = _inst("2.1", "MR", 4) + _inst("2.1", "MR", 4, iop=CORONAL)
    with pytest.raises(NoUsableSeries, match="2 different slice orientations"):
        select_series(study, "segmentation3d")


def test_classifier_takes_processed_radiographs_but_prefers_original() -> None:
    study = _inst("3.1", "CR", 1, ("DERIVED", "PRIMARY"), iop=None) + _inst("3.2", "DX", 1, iop=None)
    assert select_series(study, "classification2d").series_uid == "3.2"
    assert select_series(study[:1], "classification2d").series_uid == "3.1"


def test_modality_mismatch_lists_every_reason() -> None:
    with pytest.raises(NoUsableSeries) as info:
        select_series(_inst("4.1", "MR", 20), "classification2d")
    assert info.value.status == 422 and "modality MR does not fit" in str(info.value)


def test_named_series_is_checked_not_replaced() -> None:
    study = _inst("5.1", "MR", 20) + _inst("5.2", "MR", 40) + _inst("5.3", "SR", 1, None, None)
    sel = select_series(study, "segmentation3d", series_uid="5.1")
    assert sel.series_uid == "5.1" and sel.reason.startswith("requested by the caller")
    with pytest.raises(UnusableSeries, match="not an image series"):
        select_series(study, "segmentation3d", series_uid="5.3")
    with pytest.raises(StudyNotFound, match="not in the study"):
        select_series(study, "segmentation3d", series_uid="9.9")


def test_empty_study_is_not_found() -> None:
    with pytest.raises(StudyNotFound) as info:
        select_series([], "segmentation3d")
    assert info.value.status == 404


def test_volume_without_qido_orientation_is_left_to_volume_assembly() -> None:
    sel = select_series(_inst("6.1", "MR", 10, iop=None), "segmentation3d")
    assert "checked on retrieval" in sel.reason


def test_series_facts_are_the_instance_facts_evaluated_once_per_stored_values() -> None:
    first, second = (s.datasets for s in synthetic.hippocampus_series(2, seed=5, shape=(8, 8, 8)))
    first[2].ImageType = ["DERIVED", "SECONDARY"]
    first[3].ImageOrientationPatient = CORONAL
    del first[4].SeriesDescription
    datasets = as_retrieved(first + second)
    assert datasets[5].ImageType  # converted to a list: not hashable, evaluated on its own
    facts = series_facts(datasets)
    assert facts == [{tag: value for tag, value in instance_facts(ds).items() if tag != SOP_UID}
                     for ds in as_retrieved(first + second)]
    assert len({id(f) for f in facts}) == 6  # first series: 4 alike + 4 different; second: 8 alike
    assert all(isinstance(stored_value(ds, 0x00200037), bytes) for ds in datasets)  # left unconverted


def test_check_retrieved_rejects_mixed_orientations_and_passes_one_series() -> None:
    datasets = as_retrieved(synthetic.hippocampus_series(1, seed=6, shape=(8, 8, 8))[0].datasets)
    check_retrieved(datasets, "1.2", "segmentation3d")
    datasets[3].ImageOrientationPatient = CORONAL
    with pytest.raises(UnusableSeries, match="2 different slice orientations"):
        check_retrieved(datasets, "1.2", "segmentation3d")


def test_a_multiframe_instance_counts_its_frames_as_slices() -> None:
    enhanced = _inst("1.2.9", "MR", 1)
    enhanced[0]["00280008"] = {"vr": "IS", "Value": [24]}
    chosen = select_series(enhanced, "segmentation3d")
    assert chosen.series_uid == "1.2.9" and chosen.instance_count == 24 and "24 slices" in chosen.reason
    single = _inst("1.2.10", "MR", 1)
    with pytest.raises(NoUsableSeries, match="1 slice"):
        select_series(single, "segmentation3d")
