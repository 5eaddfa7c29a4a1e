"""DICOM JSON by keyword: the one reader of QIDO results and WADO metadata."""

from __future__ import annotations

import pytest

from dicomflow.dicom import json as dj

ITEM = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080060": {"vr": "CS", "Value": ["MR"]}, "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 1, 0]},
        "00080050": {"vr": "SH"}, "00201209": {"vr": "IS", "Value": [30]}}


def test_values_and_first_value_by_keyword() -> None:
    assert dj.values(ITEM, "ImageOrientationPatient") == [1, 0, 0, 0, 1, 0]
    assert dj.value(ITEM, "Modality") == "MR" and dj.text(ITEM, "NumberOfSeriesRelatedInstances") == "30"
    assert dj.value(ITEM, "PatientName") == "Doe^Jane"
    assert dj.value(ITEM, "AccessionNumber", "none") == "none" and dj.values(ITEM, "AccessionNumber") == []
    assert dj.text({}, "Modality") == "" and dj.values("not an object", "Modality") == []  # type: ignore[arg-type]


def test_tags_and_elements() -> None:
    assert dj.tag("SeriesInstanceUID") == "0020000E"
    assert dj.element("Modality", ["CT"]) == {"00080060": {"Value": ["CT"]}}


def test_an_unknown_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        dj.value({}, "NoSuchKeyword")
