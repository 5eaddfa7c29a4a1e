"""What ingestion makes of one object: items without patient data, the same item twice, a reason for every refusal."""

from __future__ import annotations

import io
import json

import pytest
from pydicom.dataset import Dataset

from dicomflow.demo import synthetic
from dicomflow.search import ingest
from dicomflow.search.reports import RuleEngine

UID = "1.2.826.0.1.3680043.8.498.77"


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _image(ds: Dataset) -> tuple[dict, bytes]:
    return ingest.image(ingest.read_dicom(_bytes(ds), "s3://b/x.dcm"), "s3://b/x.dcm")


def test_an_image_gives_its_metadata_and_a_thumbnail_and_no_patient_data() -> None:
    ds = synthetic.chest_radiographs(1, seed=4, size=64)[0].dataset
    item, png = _image(ds)
    assert item["pk"] == f"image#{ds.SOPInstanceUID}" and item["studyInstanceUID"] == str(ds.StudyInstanceUID)
    assert item["modality"] == str(ds.Modality) and (item["rows"], item["columns"]) == (64, 64)
    text = json.dumps(item)
    assert str(ds.PatientName) not in text and str(ds.PatientID) not in text
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert _image(ds) == (item, png)  # the same object, the same item


def test_a_report_gives_its_codes_by_status_and_its_analysis() -> None:
    record = {"StudyInstanceUID": UID, "AccessionNumber": "A-1",
              "text": "FINDINGS: Possible left pleural effusion. No pneumothorax. Cardiomegaly."}
    item, analysis = ingest.report(json.dumps(record).encode(), "s3://b/r.json", RuleEngine())
    assert item["pk"] == f"report#{UID}" and item["accessionNumber"] == "A-1"
    assert (item["positiveCodes"], item["negativeCodes"], item["uncertainCodes"]) == (["I51.7"], ["J93.9"], ["J90"])
    assert analysis["text"] == record["text"] and analysis["analysis"]["Entities"]


@pytest.mark.parametrize("data, reason", [
    (b"{not json", "not JSON"),
    (json.dumps({"text": "Edema."}).encode(), "StudyInstanceUID is missing"),
    (json.dumps({"StudyInstanceUID": UID, "text": "   "}).encode(), "the report is empty"),
    (json.dumps(["a list"]).encode(), "expected"),
])
def test_a_bad_report_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ingest.IngestError, match=reason):
        ingest.report(data, "s3://b/r.json", RuleEngine())


def test_what_is_not_an_image_is_refused_with_its_reason() -> None:
    with pytest.raises(ingest.IngestError, match="not a DICOM object"):
        ingest.read_dicom(b"plain text, not DICOM" * 20, "s3://b/t.dcm")
    sr = synthetic.chest_radiographs(1, seed=4, size=32)[0].dataset
    del sr.PixelData
    with pytest.raises(ingest.IngestError, match="has no pixel data"):
        ingest.image(ingest.read_dicom(_bytes(sr), "s3://b/sr.dcm"), "s3://b/sr.dcm")
    with pytest.raises(ingest.IngestError, match="more than"):
        ingest.read_dicom(b"\0" * (ingest.MAX_OBJECT_BYTES + 1), "s3://b/big.dcm")
