"""The local worker portal's request handling and its task queue (each object to N distinct workers).

S3 is moto's in-process mock; the two Lambdas are replaced by a fake client (their own unit tests cover
them); the portal itself is the real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

from dicomflow.credentials import PacsConnection
from dicomflow.emulator.groundtruth.gateway import WadoGateway
from dicomflow.emulator.groundtruth.job import LocalLabelingJob
from dicomflow.emulator.groundtruth.portal import COOKIE, Portal
from dicomflow.groundtruth import signing
from dicomflow.groundtruth.job_request import JobRequestError, parse_request
from dicomflow.groundtruth.labels import label_category_config

BUCKET = "portal-unit"
LABELS = ["Edema", "No Finding"]
KEY = b"k" * 32
UID = "1.2.826.0.1.3680043.8.498.{}"
TEMPLATE = '<crowd-form><div id="t" data-task="{{ task.input | to_json | escape }}"></div></crowd-form>'


class FakeLambdas:
    """``lambda:Invoke`` of the two GT Lambdas: pre-label signs one URL per object, consolidation keeps the
    labels every worker gave."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.calls: Counter[str] = Counter()
        self.post_failures = 0  # this many consolidation invokes fail first, as an Init timeout does

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        event = json.loads(Payload)
        self.calls[FunctionName] += 1
        if FunctionName.endswith("post") and self.post_failures > 0:
            self.post_failures -= 1
            error = {"errorMessage": "RequestId: r Error: Init timed out after 10.00 seconds",
                     "errorType": "Runtime.ExitError"}
            return {"Payload": io.BytesIO(json.dumps(error).encode()), "FunctionError": "Unhandled"}
        if FunctionName.endswith("pre"):
            n = int(event["dataObject"]["source"])
            url = signing.sign_wado("http://gateway.invalid/wado", UID.format(1), UID.format(2),
                                    UID.format(100 + n), scope=self.scope, key=KEY, ttl=900)
            expires = int(url.split("expires=", 1)[1].split("&", 1)[0])
            answer: Any = {"taskInput": {"labels": LABELS, "instances": [{"url": url}], "urlExpires": expires},
                           "isHumanAnnotationRequired": "true"}
        else:
            answer = [{"datasetObjectId": "0", "consolidatedAnnotation": {"content": {"findings": {
                "labels": ["Edema"], "workerCount": 3}}}}]
            answer[0]["datasetObjectId"] = event["payload"]["s3Uri"].rsplit("/", 1)[-1].split("-", 1)[0]
        return {"Payload": io.BytesIO(json.dumps(answer).encode())}


def _request(objects: int, workers: int) -> dict[str, Any]:
    return {
        "LabelingJobName": "unit-job", "LabelAttributeName": "findings",
        "InputConfig": {"DataSource": {"S3DataSource": {"ManifestS3Uri": f"s3://{BUCKET}/in.manifest"}}},
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/out/"},
        "RoleArn": "arn:aws:iam::123456789012:role/gt",
        "LabelCategoryConfigS3Uri": f"s3://{BUCKET}/categories.json",
        "HumanTaskConfig": {
            "WorkteamArn": "arn:aws:sagemaker:us-east-1:123456789012:workteam/private-crowd/x",
            "UiConfig": {"UiTemplateS3Uri": f"s3://{BUCKET}/template.html"},
            "PreHumanTaskLambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:pre",
            "NumberOfHumanWorkersPerDataObject": workers, "TaskTimeLimitInSeconds": 600,
            "AnnotationConsolidationConfig": {
                "AnnotationConsolidationLambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:post"},
        },
    }, objects


@pytest.fixture
def aws_env(monkeypatch) -> Iterator[Any]:
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def _job(s3: Any, tmp_path: Path, objects: int = 2, workers: int = 3, local_workers: int = 4) -> LocalLabelingJob:
    doc, n = _request(objects, workers)
    s3.put_object(Bucket=BUCKET, Key="in.manifest", Body="".join(json.dumps({"source": str(i)}) + "\n"
                                                                 for i in range(n)).encode())
    s3.put_object(Bucket=BUCKET, Key="template.html", Body=TEMPLATE.encode())
    s3.put_object(Bucket=BUCKET, Key="categories.json", Body=json.dumps(label_category_config(LABELS)).encode())
    request = parse_request(doc)
    fake = FakeLambdas(signing.job_scope(request.job_arn("us-east-1", "123456789012")))
    job = LocalLabelingJob(request, data_dir=tmp_path, workers=local_workers, lambda_client=fake, s3=s3)
    fake.scope = job.scope
    job.fake = fake
    return job


def test_each_object_goes_to_n_distinct_workers(aws_env, tmp_path) -> None:
    job = _job(aws_env, tmp_path, objects=2, workers=3, local_workers=4)
    given: dict[int, list[str]] = {0: [], 1: []}
    for _round in range(3):
        for worker in ("worker-1", "worker-2", "worker-3", "worker-4"):
            a = job.next_assignment(worker)
            if a is None:
                continue
            assert job.next_assignment(worker).id == a.id  # a reload keeps the same task
            given[a.index].append(worker)
            job.submit(worker, a.id, {"annotation": json.dumps({"labels": ["Edema"]})})
    job.wait_idle()
    assert all(len(ws) == 3 and len(set(ws)) == 3 for ws in given.values()), given
    assert all(job.next_assignment(w) is None for w in ("worker-1", "worker-2", "worker-3", "worker-4"))
    st = job.status()
    assert st["status"] == "Completed" and st["answers"] == 6 and st["consolidated"] == 2
    assert job.fake.calls["arn:aws:lambda:us-east-1:123456789012:function:post"] == 2
    keys = [o["Key"] for o in aws_env.list_objects_v2(Bucket=BUCKET, Prefix="out/unit-job/")["Contents"]]
    assert sum("/worker-response/iteration-1/" in k for k in keys) == 6
    assert "out/unit-job/manifests/output/output.manifest" in keys
    job.close()


def test_an_object_is_not_over_assigned_while_tasks_are_open(aws_env, tmp_path) -> None:
    job = _job(aws_env, tmp_path, objects=1, workers=2, local_workers=3)
    a1, a2 = job.next_assignment("worker-1"), job.next_assignment("worker-2")
    assert a1.index == a2.index == 0
    assert job.next_assignment("worker-3") is None  # two open tasks already cover the two answers needed
    with pytest.raises(Exception, match="not assigned to you"):
        job.submit("worker-3", a1.id, {"x": 1})
    job.close()


def test_answers_survive_a_restart(aws_env, tmp_path) -> None:
    job = _job(aws_env, tmp_path, objects=1, workers=2, local_workers=2)
    a = job.next_assignment("worker-1")
    job.submit("worker-1", a.id, {"annotation": "{}"})
    job.close()
    again = _job(aws_env, tmp_path, objects=1, workers=2, local_workers=2)
    assert again.status()["answers"] == 1
    assert again.next_assignment("worker-1") is None and again.next_assignment("worker-2") is not None
    again.close()


def _answer_all(job: LocalLabelingJob, workers: int) -> None:
    for worker in (f"worker-{w + 1}" for w in range(workers)):
        while (a := job.next_assignment(worker)) is not None:
            job.submit(worker, a.id, {"annotation": json.dumps({"labels": ["Edema"]})})
    job.wait_idle()


def test_a_consolidation_lambda_that_fails_is_invoked_again(aws_env, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("dicomflow.emulator.groundtruth.job.CONSOLIDATION_BACKOFF_S", 0.0)
    job = _job(aws_env, tmp_path, objects=1, workers=2, local_workers=2)
    job.fake.post_failures = 2
    _answer_all(job, 2)
    st = job.status()
    assert st["status"] == "Completed" and st["consolidated"] == 1 and st["consolidationErrors"] == {}
    assert job.fake.calls["arn:aws:lambda:us-east-1:123456789012:function:post"] == 3
    job.close()


def test_a_consolidation_that_keeps_failing_is_reported_with_its_reason(aws_env, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("dicomflow.emulator.groundtruth.job.CONSOLIDATION_BACKOFF_S", 0.0)
    job = _job(aws_env, tmp_path, objects=1, workers=2, local_workers=2)
    job.fake.post_failures = 99
    _answer_all(job, 2)
    st = job.status()
    assert st["status"] == "InProgress" and st["consolidated"] == 0
    assert st["consolidationErrors"] == {"0": "attempt 3 of 3: post: RequestId: r Error: Init timed out after "
                                              "10.00 seconds"}
    assert job.fake.calls["arn:aws:lambda:us-east-1:123456789012:function:post"] == 3
    job.close()


@pytest.mark.parametrize("doc, needle", [
    ([], "must be a JSON object"),
    ({"LabelingJobName": "bad name!"}, "LabelingJobName"),
    ({**_request(1, 1)[0], "HumanTaskConfig": {**_request(1, 1)[0]["HumanTaskConfig"],
                                              "NumberOfHumanWorkersPerDataObject": 0}},
     "NumberOfHumanWorkersPerDataObject must be a whole number from 1 to 9"),
    ({**_request(1, 1)[0], "OutputConfig": {"S3OutputPath": "/tmp/out"}}, "S3OutputPath must be an s3:// URI"),
    ({**_request(1, 1)[0], "LabelAttributeName": "x-metadata"}, "LabelAttributeName"),
])
def test_bad_job_requests_get_one_clear_error(doc, needle) -> None:
    with pytest.raises(JobRequestError, match=needle):
        parse_request(doc)


@pytest.fixture
def portal(aws_env, tmp_path) -> Iterator[Portal]:
    job = _job(aws_env, tmp_path, objects=2, workers=1, local_workers=2)
    viewer = tmp_path / "dist"
    viewer.mkdir()
    (viewer / "viewer.js").write_text("export {};\n")
    gateway = WadoGateway(PacsConnection("http://127.0.0.1:9/dicom-web", "u", "p"), KEY, job.scope, timeout=2)
    p = Portal(job, gateway, viewer_dir=viewer).start()
    p.tokens = job.new_tokens
    yield p
    p.stop()
    job.close()


def _signed_in(portal: Portal, worker: str = "worker-1") -> requests.Session:
    s = requests.Session()
    r = s.get(f"{portal.url}/login", params={"token": portal.tokens[worker]}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/task"
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    return s


def test_sign_in_and_requests_without_it(portal) -> None:
    assert requests.get(f"{portal.url}/login", params={"token": "nope"}, timeout=10).status_code == 403
    assert requests.get(f"{portal.url}/task", timeout=10).status_code == 401
    assert requests.get(f"{portal.url}/wado?sig=x", timeout=10).status_code == 401
    forged = {COOKIE: "worker-1.0000"}
    assert requests.get(f"{portal.url}/task", cookies=forged, timeout=10).status_code == 401
    assert requests.post(f"{portal.url}/submit", json={}, timeout=10).status_code == 401
    s = _signed_in(portal)
    page = s.get(f"{portal.url}/task")
    assert page.status_code == 200 and 'name="dicomflow-assignment"' in page.text
    assert "/wado?" in page.text and "gateway.invalid" not in page.text  # signed URLs rebased to the portal


def test_submit_parsing(portal) -> None:
    s = _signed_in(portal)
    page = s.get(f"{portal.url}/task").text
    assignment = page.split('name="dicomflow-assignment" content="', 1)[1].split('"', 1)[0]
    r = s.post(f"{portal.url}/submit", data="x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = s.post(f"{portal.url}/submit", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "assignmentId" in r.json()["error"]
    r = s.post(f"{portal.url}/submit", json={"assignmentId": assignment, "answer": "a string"})
    assert r.status_code == 409 and "JSON object" in r.json()["error"]
    r = s.post(f"{portal.url}/submit", json={"assignmentId": "someone-else", "answer": {}})
    assert r.status_code == 409 and "not assigned to you" in r.json()["error"]
    r = s.post(f"{portal.url}/submit", data=b" " * 2_000_001, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = s.post(f"{portal.url}/submit", json={"assignmentId": assignment, "answer": {"annotation": "{}"}})
    assert r.status_code == 200 and r.json()["ok"] and r.json()["next"] == "/task"
    r = s.post(f"{portal.url}/submit", json={"assignmentId": assignment, "answer": {"annotation": "{}"}})
    assert r.status_code == 409  # the same task cannot be answered twice
    assert s.post(f"{portal.url}/elsewhere", json={}).status_code == 404


def test_gateway_and_static_files(portal) -> None:
    s = _signed_in(portal)
    url = signing.sign_wado("http://x/wado", UID.format(1), UID.format(2), UID.format(3), scope=portal.job.scope,
                            key=KEY, ttl=60)
    query = url.split("?", 1)[1]
    tampered = query.replace(UID.format(3), UID.format(4))
    r = s.get(f"{portal.url}/wado?{tampered}")
    assert r.status_code == 403 and "forbidden" in r.text
    r = s.get(f"{portal.url}/wado?{query}")  # valid signature, PACS unreachable -> 502, never a credential
    assert r.status_code == 502 and "PACS unreachable" in r.text
    assert s.get(f"{portal.url}/ui/viewer.js").headers["Content-Type"].startswith("text/javascript")
    assert s.get(f"{portal.url}/ui/../../etc/passwd").status_code == 404
    assert s.get(f"{portal.url}/ui/%2e%2e/%2e%2e/etc/passwd").status_code == 404
