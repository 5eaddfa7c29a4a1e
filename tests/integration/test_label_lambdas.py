"""Both labeling Lambdas and the input manifest against the real Orthanc and the emulated AWS.

Pre-label returns signed WADO-URIs; with the signature checked and stripped, Orthanc's ``/wado``
serves exactly the named object when called with the server's credentials.
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from click.testing import CliRunner
from lambda_handlers import load_handler

from dicomflow import aws
from dicomflow.cli.label import label
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import OrthancRest, instance_id, rest_root, series_id
from dicomflow.groundtruth import manifest, signing
from dicomflow.groundtruth.source import LabelingTaskError

pytestmark = pytest.mark.integration

SEED = 404  # this file's synthetic studies
JOB = "chest-job-404"
JOB_ARN = f"arn:aws:sagemaker:us-east-1:123456789012:labeling-job/{JOB}"
BUCKET = "dicomflow-label-tests"


def _load(name: str):
    return load_handler(name, f"{name}_handler_it")


@pytest.fixture(scope="module")
def studies(local_cloud):
    chest = [img.dataset for img in synthetic.chest_radiographs(2, seed=SEED, size=64)]
    series = synthetic.hippocampus_series(1, seed=SEED, shape=(8, 16, 12))[0].datasets
    dicomweb.store(dicomweb.connect(local_cloud.pacs), [*chest, *series])
    return {"chest": chest, "series": series}


@pytest.fixture(scope="module")
def bucket(local_cloud) -> str:
    aws.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture(scope="module")
def signing_secret(local_cloud):
    key = signing.generate_key()
    arn = aws.client("secretsmanager").create_secret(Name=f"dicomflow/{JOB}/url-signing",
                                                     SecretString=json.dumps({"key": key}))["ARN"]
    return arn, key


@pytest.fixture
def lambda_env(local_cloud, signing_secret, monkeypatch):
    """The pre-label Lambda's environment: gateway URL and signing secret; PACS from the local cloud."""
    monkeypatch.setenv("DICOMFLOW_GATEWAY_URL", "http://127.0.0.1:1/wado")  # only verified, never called here
    monkeypatch.setenv("DICOMFLOW_SIGNING_SECRET_ARN", signing_secret[0])
    monkeypatch.delenv("DICOMFLOW_SIGNING_KEY", raising=False)
    monkeypatch.setenv("DICOMFLOW_URL_TTL_SECONDS", "900")
    return signing_secret[1]


def _gateway_fetch(url: str, key: str, pacs) -> pydicom.Dataset:
    """What the gateway does: verify, strip the signature, call Orthanc's /wado with server credentials."""
    obj = signing.verify_wado_object(urlsplit(url).query, key, expected_scope=JOB)
    resp = requests.get(f"{rest_root(pacs)}/wado?{signing.upstream_query(obj)}", auth=pacs.auth, timeout=30,
                        headers={"Accept-Encoding": "identity"})
    assert resp.status_code == 200, resp.text[:200]
    return pydicom.dcmread(io.BytesIO(resp.content))


def test_computed_orthanc_ids_match_orthanc(local_cloud, studies):
    ds = studies["chest"][0]
    found = OrthancRest(local_cloud.pacs).lookup(ds.SOPInstanceUID)
    assert [f["ID"] for f in found if f["Type"] == "Instance"] == [
        instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)]


def test_pre_label_instance_urls_served_by_orthanc(local_cloud, studies, lambda_env):
    ds = studies["chest"][0]
    oid = instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    event = {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "dataObject": {"source": oid}}
    out = _load("pre_label").lambda_handler(event, None)
    task = out["taskInput"]
    assert out["isHumanAnnotationRequired"] == "true"
    assert task["sopInstanceUID"] == ds.SOPInstanceUID and task["modality"] == "CR"
    assert task["window"]["source"] == "dicom"
    url = task["instances"][0]["url"]
    assert local_cloud.pacs.password not in json.dumps(task) and ds.PatientID not in json.dumps(task)
    served = _gateway_fetch(url, lambda_env, local_cloud.pacs)
    assert served.SOPInstanceUID == ds.SOPInstanceUID
    # a worker editing the URL to reach another object is refused before Orthanc is asked
    other = studies["chest"][1].SOPInstanceUID
    with pytest.raises(signing.SignatureError) as err:
        _gateway_fetch(url.replace(ds.SOPInstanceUID, other), lambda_env, local_cloud.pacs)
    assert err.value.reason == "tampered"
    with pytest.raises(signing.SignatureError) as err:
        signing.verify_wado(urlsplit(url).query, lambda_env, expected_scope="another-job")
    assert err.value.reason == "scope"


def test_pre_label_series_in_slice_order(local_cloud, studies, lambda_env):
    series = studies["series"]
    first = series[0]
    oid = series_id(first.PatientID, first.StudyInstanceUID, first.SeriesInstanceUID)
    event = {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "dataObject": {"source-ref": oid}}
    task = _load("pre_label").lambda_handler(event, None)["taskInput"]
    assert task["level"] == "series" and task["numberOfSlices"] == len(series)
    positions = [i["position"] for i in task["instances"]]
    assert positions == sorted(positions)
    served = [_gateway_fetch(i["url"], lambda_env, local_cloud.pacs) for i in task["instances"][:2]]
    assert [s.SOPInstanceUID for s in served] == [i["sopInstanceUID"] for i in task["instances"][:2]]


def test_pre_label_unknown_object(local_cloud, lambda_env):
    handler = _load("pre_label")
    for source in ("ffffffff-ffffffff-ffffffff-ffffffff-ffffffff",
                   {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5"}):
        event = {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "dataObject": {"source": source}}
        with pytest.raises(LabelingTaskError) as err:
            handler.lambda_handler(event, None)
        assert err.value.reason == "not-found"


def test_post_label_from_emulated_s3(local_cloud, studies, bucket):
    s3 = aws.client("s3")
    ds = studies["chest"][0]
    oid = instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    answers = [{"labels": ["Cardiomegaly"], "rois": [{"label": "Cardiomegaly", "sopInstanceUID": ds.SOPInstanceUID,
                                                     "x": 10 + i, "y": 12, "width": 30, "height": 20}]}
               for i in range(3)]
    answers[2] = {"labels": ["Cardiomegaly", "Edema"]}
    payload = [{"datasetObjectId": "0", "dataObject": {"content": oid}, "annotations": [
        {"workerId": f"w{i}", "annotationData": {"content": json.dumps({"annotation": json.dumps(a)})}}
        for i, a in enumerate(answers)] + [{"workerId": "w9", "annotationData": {"content": "garbage"}}]}]
    key = f"{JOB}/annotations/consolidation-request/iteration-1/payload.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(payload))
    event = {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "labelCategories": ["Cardiomegaly", "Edema"],
             "labelAttributeName": "chest", "roleArn": "arn:aws:iam::123456789012:role/gt",
             "payload": {"s3Uri": f"s3://{BUCKET}/{key}"}, "outputConfig": f"s3://{BUCKET}/{JOB}/annotations"}
    (result,) = _load("post_label").lambda_handler(event, None)
    content = result["consolidatedAnnotation"]["content"]["chest"]
    assert content["labels"] == ["Cardiomegaly"] and content["workerCount"] == 3 and content["skipped"] == 1
    assert len(content["rois"]) == 1 and content["rois"][0]["x"] == 10.5
    assert content["dicom"] == {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
                                "SOPInstanceUID": ds.SOPInstanceUID, "PatientID": ds.PatientID}


@pytest.mark.parametrize("via", ["orthanc", "qido"])
def test_label_manifest_command(local_cloud, studies, bucket, via):
    uri = f"s3://{BUCKET}/{JOB}/input-{via}.manifest"
    args = ["manifest", "--query", "Modality=CR", "--query", f"PatientID=SYNTH-CXR-{SEED}-*", "--per", "instance",
            "--via", via, "--to", uri, "--json"]
    result = CliRunner().invoke(label, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lines"] == 2
    lines = manifest.read_jsonl_s3(uri)
    expected = {instance_id(d.PatientID, d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
                for d in studies["chest"]}
    assert {line["source"] for line in lines} == expected


def test_label_manifest_series_uids(local_cloud, studies):
    series_args = ["manifest", "--query", f"PatientID=SYNTH-HIPPO-{SEED}-*", "--per", "series", "--to", "-",
                   "--source-format", "uids"]
    result = CliRunner().invoke(label, series_args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (line,) = manifest.loads_jsonl(result.stdout)
    assert json.loads(line["source"])["SeriesInstanceUID"] == studies["series"][0].SeriesInstanceUID


def test_label_manifest_no_match_writes_nothing(local_cloud, bucket):
    uri = f"s3://{BUCKET}/{JOB}/empty.manifest"
    result = CliRunner().invoke(label, ["manifest", "--query", "PatientID=NOBODY-HERE", "--to", uri])
    assert result.exit_code != 0 and "nothing written" in str(result.exception)
    assert aws.read_bytes(uri) is None


@pytest.fixture(scope="module")
def chest_endpoint(local_cloud, bucket, tmp_path_factory) -> str:
    """A real-time endpoint serving an (untrained) chest classifier: the pre-label Lambda's model."""
    from model_helpers import realtime_endpoint

    return realtime_endpoint(f"prelabel-{SEED}", bucket, tmp_path_factory.mktemp("prelabel-model"))


def test_pre_label_attaches_the_models_suggestions_and_goes_on_without_them(local_cloud, studies, lambda_env,
                                                                           chest_endpoint, monkeypatch):
    import statistics
    import time

    from dicomflow.inference import endpoint as ep

    ds = studies["chest"][0]
    oid = instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    event = {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "dataObject": {"source-ref": oid}}
    handler = _load("pre_label")
    monkeypatch.setenv("DICOMFLOW_LABELS", json.dumps(["Cardiomegaly", "Pneumothorax", "No Finding"]))
    plain_ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert "suggestions" not in handler.lambda_handler(event, None)["taskInput"]
        plain_ms.append((time.perf_counter() - t0) * 1000)
    monkeypatch.setenv("DICOMFLOW_PRELABEL_ENDPOINT", chest_endpoint)
    with_ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        task = handler.lambda_handler(event, None)["taskInput"]
        with_ms.append((time.perf_counter() - t0) * 1000)
    print(f"\npre-label p50 {statistics.median(plain_ms):.0f} ms without suggestions, "
          f"{statistics.median(with_ms):.0f} ms with")
    s = task["suggestions"]
    assert s["status"] == "ok", s
    served = ep.invoke_realtime(chest_endpoint, {"studyInstanceUID": ds.StudyInstanceUID,
                                                 "seriesInstanceUID": ds.SeriesInstanceUID})
    probs = served["findings"]["probabilities"]
    # the job's labels the model knows, nothing else ("No Finding" is none of the model's classes)
    assert s["probabilities"] == {c: round(probs[c], 4) for c in ("Cardiomegaly", "Pneumothorax")}
    assert s["suggested"] == [c for c, p in s["probabilities"].items() if p >= 0.5]
    # a series: the model scores one image per series, so no suggestion (and the task still goes out)
    first = studies["series"][0]
    series_event = {**event, "dataObject": {"source-ref": series_id(first.PatientID, first.StudyInstanceUID,
                                                                    first.SeriesInstanceUID)}}
    series_task = handler.lambda_handler(series_event, None)["taskInput"]
    assert series_task["suggestions"]["status"] == "unavailable" and series_task["instances"]
    # an endpoint that does not exist: the task goes out without suggestions and says why
    monkeypatch.setenv("DICOMFLOW_PRELABEL_ENDPOINT", "no-such-endpoint")
    missing = handler.lambda_handler(event, None)["taskInput"]
    assert missing["suggestions"]["status"] == "unavailable" and "no-such-endpoint" in missing["suggestions"]["reason"]
    assert missing["instances"][0]["sopInstanceUID"] == ds.SOPInstanceUID
