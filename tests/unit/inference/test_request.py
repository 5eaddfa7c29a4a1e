"""Study JSON validation (dicomflow.inference.request)."""

from __future__ import annotations

import json

import pytest

from dicomflow.inference.errors import BadRequest, PayloadTooLarge
from dicomflow.inference.request import MAX_INLINE_BYTES, parse_request

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_minimal_request_defaults() -> None:
    req = parse_request(json.dumps({"studyInstanceUID": STUDY}).encode())
    assert req.study_uid == STUDY and req.series_uid is None
    assert req.outputs == ("json",) and req.store_to_pacs is True


def test_full_request_round_trips() -> None:
    body = {"dicomweb": {"url": "https://pacs.example/dicom-web/", "auth": {"secretArn": "arn:aws:sm:x"}},
            "studyInstanceUID": STUDY, "seriesInstanceUID": "1.2.3", "outputs": ["sr", "seg", "sr"],
            "storeToPacs": False, "outputS3Uri": "s3://b/p"}
    req = parse_request(body)
    assert req.outputs == ("json", "sr", "seg")
    assert req.dicomweb_url == "https://pacs.example/dicom-web" and req.secret_arn == "arn:aws:sm:x"
    assert parse_request(req.as_dict()) == req
    assert "arn:aws:sm:x" not in repr(req)


@pytest.mark.parametrize(("body", "needle"), [
    (b"{not json", "not valid JSON"),
    (b"", "empty request body"),
    (b"[1, 2]", "must be an object"),
    (json.dumps({"outputs": ["sr"]}).encode(), "missing 'studyInstanceUID'"),
    (json.dumps({"studyInstanceUID": "abc"}).encode(), "not a DICOM UID"),
    (json.dumps({"studyInstanceUID": STUDY, "outputs": ["sr", "html"]}).encode(), "unknown output(s) 'html'"),
    (json.dumps({"studyInstanceUID": STUDY, "outputs": []}).encode(), "non-empty list"),
    (json.dumps({"studyInstanceUID": STUDY, "storeToPacs": "yes"}).encode(), "true or false"),
    (json.dumps({"studyInstanceUID": STUDY, "colour": 1}).encode(), "unknown field(s) colour"),
    (json.dumps({"studyInstanceUID": STUDY, "dicomweb": {"url": "ftp://x"}}).encode(), "http(s) URL"),
    (json.dumps({"studyInstanceUID": STUDY, "dicomweb": {"url": "http://u:p@h/dw"}}).encode(),
     "must not contain credentials"),
    (json.dumps({"studyInstanceUID": STUDY, "dicomweb": {"auth": {"password": "x"}}}).encode(), "only 'secretArn'"),
    (json.dumps({"studyInstanceUID": STUDY, "outputS3Uri": "/tmp/x"}).encode(), "S3 URI"),
])
def test_bad_requests_are_400_with_a_clear_message(body: bytes, needle: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(body)
    assert info.value.status == 400
    assert needle in str(info.value)


def test_oversized_inline_body_is_413() -> None:
    body = json.dumps({"studyInstanceUID": STUDY, "pad": "x" * MAX_INLINE_BYTES}).encode()
    with pytest.raises(PayloadTooLarge) as info:
        parse_request(body)
    assert info.value.status == 413 and str(MAX_INLINE_BYTES) in str(info.value)


def test_wrong_content_type_is_400() -> None:
    with pytest.raises(BadRequest, match="as application/json, or one DICOM image as application/dicom"):
        parse_request(b"{}", "text/csv")
    with pytest.raises(BadRequest, match="not a DICOM object"):  # a study JSON sent as an image
        parse_request(b'{"studyInstanceUID": "1.2.3"}', "application/dicom")
