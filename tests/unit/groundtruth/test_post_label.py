"""Consolidation Lambda on GT's exact event shape, with the payload in (in-process) emulated S3."""

from __future__ import annotations

import json

import boto3
import lambda_handlers
import pytest
from moto import mock_aws

from dicomflow.dicom.errors import PacsError
from dicomflow.dicom.orthanc import ResolvedObject
from dicomflow.groundtruth import consolidation
from dicomflow.groundtruth.labels import CHEXPERT_CLASSES

JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/chest-job-1"
UIDS = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5"}
OID = "0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"


def load_handler():
    return lambda_handlers.load_handler("post_label")


def worker(wid: str, answer) -> dict:
    content = json.dumps({"annotation": json.dumps(answer)}) if isinstance(answer, dict) else answer
    return {"workerId": wid, "annotationData": {"content": content}}


PAYLOAD = [
    {"datasetObjectId": "0", "dataObject": {"content": json.dumps(UIDS)}, "annotations": [
        worker("private.us-east-1.a", {"labels": ["Cardiomegaly", "Edema"], "timeSpentSeconds": 12}),
        worker("private.us-east-1.b", {"labels": ["Cardiomegaly"]}),
        worker("private.us-east-1.c", "{this is not json"),
    ]},
    {"datasetObjectId": "1", "dataObject": {"content": OID}, "annotations": [
        worker("private.us-east-1.a", {"labels": ["No Finding"]}),
        worker("private.us-east-1.b", {"labels": ["Fracture"]}),
    ]},
]


def gt_event(uri: str) -> dict:
    return {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "labelCategories": list(CHEXPERT_CLASSES),
            "labelAttributeName": "chest-labels", "roleArn": "arn:aws:iam::123456789012:role/gt",
            "payload": {"s3Uri": uri}, "outputConfig": "s3://bucket/chest-job-1/annotations"}


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for k in ("DICOMFLOW_PACS_URL", "DICOMFLOW_PACS_SECRET_ARN", "DICOMFLOW_PACS_USERNAME",
              "DICOMFLOW_PACS_PASSWORD", consolidation.THRESHOLD_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path))  # no local PACS: Orthanc IDs stay unresolved
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bucket")
        yield s3


def test_handler_on_gt_event(s3_env):
    s3_env.put_object(Bucket="bucket", Key="chest-job-1/payload.json", Body=json.dumps(PAYLOAD))
    response = load_handler().lambda_handler(gt_event("s3://bucket/chest-job-1/payload.json"), None)
    assert [r["datasetObjectId"] for r in response] == ["0", "1"]
    first = response[0]["consolidatedAnnotation"]["content"]["chest-labels"]
    assert first["labels"] == ["Cardiomegaly"]
    assert first["classes"]["Edema"] == {"present": False, "agreement": 0.5, "votes": 1}
    assert first["ties"]["labels"] == ["Edema"]
    assert first["workerCount"] == 2 and first["skipped"] == 1 and first["skippedReasons"] == {"garbled": 1}
    assert first["dicom"] == UIDS
    assert set(first["classes"]) == set(CHEXPERT_CLASSES)
    second = response[1]["consolidatedAnnotation"]["content"]["chest-labels"]
    assert second["labels"] == [] and second["ties"]["labels"] == ["No Finding", "Fracture"]
    assert "dicom" not in second  # an Orthanc ID without a reachable PACS: no UIDs, still consolidated
    json.dumps(response)  # the response is plain JSON


def test_handler_missing_payload_object(s3_env):
    with pytest.raises(Exception, match="cannot read s3://bucket/none.json"):
        load_handler().lambda_handler(gt_event("s3://bucket/none.json"), None)


@pytest.mark.parametrize(("event", "message"), [
    ({"labelAttributeName": "x"}, "payload.s3Uri"),
    ({"labelAttributeName": "x", "payload": {"s3Uri": "https://x"}}, "S3 URI"),
])
def test_handler_bad_events(s3_env, event, message):
    with pytest.raises(Exception, match=message):
        load_handler().lambda_handler(event, None)


def test_orthanc_source_resolved_with_patient():
    def resolver(oid: str) -> ResolvedObject:
        if oid != OID:
            raise PacsError("no such", "not-found")
        return ResolvedObject("instance", "1.2.3", "1.2.3.4", "1.2.3.4.5", "PAT-1")

    response = consolidation.consolidation_response(
        {"labelAttributeName": "a", "labelCategories": ["Edema"]},
        [{"datasetObjectId": "7", "dataObject": {"content": OID}, "annotations": [
            worker("w", {"labels": ["Edema"]})]}], 0.5, resolver)
    assert response[0]["consolidatedAnnotation"]["content"]["a"]["dicom"] == {**UIDS, "PatientID": "PAT-1"}


def test_series_source_has_no_sop():
    series = {k: v for k, v in UIDS.items() if k != "SOPInstanceUID"}
    response = consolidation.consolidation_response(
        {"labelAttributeName": "a"},
        [{"datasetObjectId": "0", "dataObject": {"source": json.dumps(series)},
          "annotations": [worker("w", {"labels": ["Edema"], "sliceLabels": {"1.2.3.4.9": ["Edema"]}})]}], 0.5)
    content = response[0]["consolidatedAnnotation"]["content"]["a"]
    assert content["dicom"] == series and content["sliceLabels"] == {"1.2.3.4.9": ["Edema"]}
    assert content["classes"] == {"Edema": {"present": True, "agreement": 1.0, "votes": 1}}


def test_payload_must_be_a_list():
    with pytest.raises(consolidation.ConsolidationError, match="JSON list"):
        consolidation.consolidation_response({"labelAttributeName": "a"}, {"datasetObjectId": "0"}, 0.5)
