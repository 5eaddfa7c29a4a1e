"""Inference against the local cloud: serving process + Orthanc, then the async endpoint through moto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from botocore.exceptions import ClientError
from click.testing import CliRunner
from model_helpers import dciodvfy_errors, model_tarball, untrained_artifact

from dicomflow import aws
from dicomflow.cli.deploy import deploy, infer
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.pdf import ENCAPSULATED_PDF, pdf_bytes
from dicomflow.emulator.cloud.service import free_port
from dicomflow.emulator.moto.endpoints import register_image
from dicomflow.inference import endpoint as ep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "dicomflow-inference-itest:latest"
SEG_LABELS = ["anterior", "posterior"]


@pytest.fixture(scope="module")
def world(local_cloud, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Seeded studies, small untrained artifacts (in S3 too) and the image -> host command mapping."""
    root = tmp_path_factory.mktemp("inference")
    client = dicomweb.connect()
    hippo = synthetic.hippocampus_series(2, seed=61, shape=(16, 24, 20))
    chest = synthetic.chest_radiographs(1, seed=61, size=64)[0]
    dicomweb.store(client, [ds for s in hippo for ds in s.datasets] + [chest.dataset])
    arts = {"segmentation3d": untrained_artifact(root, "segmentation3d", SEG_LABELS, [16, 24, 16]),
            "classification2d": untrained_artifact(root, "classification2d", list(synthetic.CHEST_CLASSES), [32, 32])}
    s3 = aws.client("s3")
    bucket = f"inference-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    uris = {}
    for task, path in arts.items():
        s3.put_object(Bucket=bucket, Key=f"models/{task}/model.tar.gz", Body=model_tarball(path))
        uris[task] = f"s3://{bucket}/models/{task}/model.tar.gz"
    register_image(local_cloud.settings.data_dir, "dicomflow-inference-itest",
                   {"command": ["python", "-m", "inference_container.serve"], "cwd": str(REPO)})
    return {"client": client, "hippo": hippo, "chest": chest, "artifacts": arts, "model_uris": uris,
            "bucket": bucket, "tmp": root, "pacs": local_cloud.pacs}


@pytest.fixture(scope="module")
def seg_server(world, local_cloud) -> Iterator[str]:
    """The serving process on a free port with the segmentation artifact.

    Configured as a deployment would be for these tests: a second PACS (allow-listed, not running)
    and a second secret (allowed, holding a wrong password for the real PACS); 2 s of PACS retries.
    """
    port = free_port()
    world["down_url"] = f"http://127.0.0.1:{free_port()}/dicom-web"
    world["wrong_secret"] = aws.client("secretsmanager").create_secret(
        Name=f"wrong-{uuid.uuid4().hex[:6]}", SecretString=json.dumps(
            {"username": "orthanc", "password": "not-the-password", "url": world["pacs"].url}))["ARN"]
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": str(world["artifacts"]["segmentation3d"]),
           "DICOMFLOW_ALLOWED_PACS": world["down_url"], "DICOMFLOW_ALLOWED_PACS_SECRETS": world["wrong_secret"],
           "DICOMFLOW_PACS_RETRY_SECONDS": "2"}
    log = open(world["tmp"] / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "inference_container.serve"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            assert proc.poll() is None, (world["tmp"] / "serve.log").read_text()
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a busy machine
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        log.close()


def test_sr_and_seg_land_in_the_same_study_and_pass_dciodvfy(world, seg_server) -> None:
    hippo = world["hippo"][0]
    r = requests.post(f"{seg_server}/invocations", json={
        "dicomweb": {"url": world["pacs"].url}, "studyInstanceUID": hippo.study_uid, "outputs": ["json", "sr", "seg"],
        "storeToPacs": True}, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["series"]["seriesInstanceUID"] == hippo.series_uid
    volumes = out["findings"]["volumesMm3"]
    assert volumes["total"] == pytest.approx(volumes["anterior"] + volumes["posterior"], abs=0.01)
    client = world["client"]
    stored = {}
    for kind, modality in (("seg", "SEG"), ("sr", "SR")):
        ref = out["outputs"][kind]
        assert ref["storedToPacs"] is True
        ds = stored[kind] = dicomweb.retrieve_instance(client, hippo.study_uid, ref["SeriesInstanceUID"],
                                                       ref["SOPInstanceUID"])
        assert ds.Modality == modality and ds.StudyInstanceUID == hippo.study_uid
        assert dciodvfy_errors(ds, world["tmp"]) == []
    # The volumes the response reports are the voxels the stored SEG marks (segments do not overlap).
    voxel_mm3 = float(np.prod(out["volume"]["spacingMm"]))
    assert int(stored["seg"].pixel_array.sum()) * voxel_mm3 == pytest.approx(volumes["total"], rel=1e-6, abs=1e-3)
    # Again: the MR is chosen from a Modality-restricted search that never lists the stored SR/SEG.
    again = requests.post(f"{seg_server}/invocations", json={
        "dicomweb": {"url": world["pacs"].url}, "studyInstanceUID": hippo.study_uid, "outputs": ["json"]},
        timeout=300).json()
    assert again["series"]["seriesInstanceUID"] == hippo.series_uid
    assert again["series"]["searchedModalities"] == ["MR", "CT"] and again["series"]["rejected"] == []


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"studyInstanceUID": "1.2.3.999999"}).encode(), 404, "no instances"),
    (json.dumps({"studyInstanceUID": "1.2.3", "outputs": ["html"]}).encode(), 400, "unknown output"),
    (b"{" + b" " * 130_000 + b"}", 413, "128000"),
])
def test_bad_requests_get_their_codes(seg_server, body: bytes, status: int, needle: str) -> None:
    r = requests.post(f"{seg_server}/invocations", data=body, headers={"Content-Type": "application/json"},
                      timeout=60)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_study_without_usable_series_is_422(world, seg_server) -> None:
    r = requests.post(f"{seg_server}/invocations", json={
        "studyInstanceUID": str(world["chest"].dataset.StudyInstanceUID)}, timeout=60)
    assert r.status_code == 422 and "modality CR does not fit" in r.json()["message"]


def test_unreachable_pacs_and_wrong_credentials(world, seg_server) -> None:
    study = world["hippo"][0].study_uid
    started = time.monotonic()
    r = requests.post(f"{seg_server}/invocations", json={
        "dicomweb": {"url": world["down_url"]}, "studyInstanceUID": study}, timeout=60)
    assert r.status_code == 503 and "unreachable" in r.json()["message"]
    assert 1.5 <= time.monotonic() - started < 20  # retried within the configured 2 s, then gave up
    r = requests.post(f"{seg_server}/invocations", json={
        "dicomweb": {"url": world["pacs"].url, "auth": {"secretArn": world["wrong_secret"]}},
        "studyInstanceUID": study}, timeout=60)
    assert r.status_code == 502 and "PACS rejected the credentials" in r.json()["message"]
    assert "not-the-password" not in r.text


class _Listener:
    """A TCP listener on a free loopback port that counts every connection (nothing may ever arrive)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.received.append(conn.recv(65536) or b"(connected)")
            except OSError:
                self.received.append(b"(connected)")
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_pacs_credentials_never_reach_a_url_the_request_names(world, seg_server) -> None:
    """The field attack: a study JSON naming any URL received the PACS password. Now: 400, no connection."""
    listener = _Listener()
    study = world["hippo"][0].study_uid
    unconfigured = aws.client("secretsmanager").create_secret(
        Name=f"unconfigured-{uuid.uuid4().hex[:6]}",
        SecretString=json.dumps({"username": "u", "password": "p", "url": f"http://127.0.0.1:{listener.port}"}))["ARN"]
    try:
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{listener.port}/dicom-web"
            for auth in ({}, {"auth": {"secretArn": world["wrong_secret"]}}):
                r = requests.post(f"{seg_server}/invocations", json={
                    "dicomweb": {"url": url, **auth}, "studyInstanceUID": study}, timeout=60)
                assert r.status_code == 400, r.text
                assert r.json()["error"] == "PacsNotAllowed" and "DICOMFLOW_ALLOWED_PACS" in r.json()["message"]
        r = requests.post(f"{seg_server}/invocations", json={
            "dicomweb": {"auth": {"secretArn": unconfigured}}, "studyInstanceUID": study}, timeout=60)
        assert r.status_code == 400 and "DICOMFLOW_ALLOWED_PACS_SECRETS" in r.json()["message"]
        time.sleep(0.5)
        assert listener.received == []
    finally:
        listener.close()


@pytest.fixture(scope="module")
def seg_endpoint(world) -> Iterator[dict]:
    name = f"hippo-{uuid.uuid4().hex[:6]}"
    res = CliRunner().invoke(deploy, ["--endpoint", name, "--model", world["model_uris"]["segmentation3d"],
                                      "--image", IMAGE, "--max-concurrency", "4", "--json"])
    assert res.exit_code == 0, res.output
    dep = json.loads(res.stdout)
    sqs, sns = aws.client("sqs"), aws.client("sns")
    queue = sqs.create_queue(QueueName=f"{name}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for topic in (dep["success_topic"], dep["error_topic"]):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    yield {**dep, "queue": queue}
    aws.client("sagemaker").delete_endpoint(EndpointName=name)


def _messages(queue: str, want: int, timeout: float = 300) -> list[dict]:
    sqs, got = aws.client("sqs"), []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(m["Body"])
            got.append(json.loads(body.get("Message", m["Body"])))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    return got


def test_async_endpoint_via_cli(world, seg_endpoint) -> None:
    hippo = world["hippo"][1]
    res = CliRunner().invoke(infer, ["--endpoint", seg_endpoint["endpoint"], "--study", hippo.study_uid,
                                     "--outputs", "json,sr,seg", "--wait", "--timeout", "300", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["series"]["seriesInstanceUID"] == hippo.series_uid
    series = {dj.value(s, "Modality") for s in dicomweb.search_series(world["client"], hippo.study_uid)}
    assert {"SR", "SEG"} <= series
    # the output object is in S3OutputPath
    bucket, prefix = aws.parse_s3_uri(seg_endpoint["output_path"])
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert keys
    events = _messages(seg_endpoint["queue"], 1)
    assert any(e.get("invocationStatus") == "Completed" for e in events)


def test_async_failure_lands_in_failure_path_and_error_topic(world, seg_endpoint) -> None:
    inv = ep.invoke_async(seg_endpoint["endpoint"], {"studyInstanceUID": "1.2.3.4.5.404"})
    ok, data = ep.wait_result(inv, timeout_s=300)
    assert not ok and inv.failure_location.startswith(seg_endpoint["failure_path"])
    assert json.loads(data)["status"] == 404
    events = _messages(seg_endpoint["queue"], 1)
    failed = [e for e in events if e.get("inferenceId") == inv.inference_id]
    assert failed and failed[0]["invocationStatus"] == "Failed"


def test_twenty_concurrent_async_invocations_all_complete(world, seg_endpoint) -> None:
    studies = [s.study_uid for s in world["hippo"]]
    bodies = [{"studyInstanceUID": studies[i % 2], "outputs": ["json"], "storeToPacs": False} for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        invocations = list(pool.map(lambda b: ep.invoke_async(seg_endpoint["endpoint"], b), bodies))
    results = [ep.wait_result(inv, timeout_s=600) for inv in invocations]
    assert all(ok for ok, _ in results), [d[:200] for ok, d in results if not ok]
    assert len({inv.inference_id for inv in invocations}) == 20
    assert all("volumesMm3" in json.loads(d)["findings"] for _, d in results)


def test_classifier_async_with_occlusion_png(world) -> None:
    name = f"chest-{uuid.uuid4().hex[:6]}"
    dep = ep.deploy(name, world["model_uris"]["classification2d"], image=IMAGE, max_concurrency=2)
    try:
        study = str(world["chest"].dataset.StudyInstanceUID)
        inv = ep.invoke_async(name, {"studyInstanceUID": study, "outputs": ["sr", "occlusion", "pdf"]})
        ok, data = ep.wait_result(inv, timeout_s=300)
        assert ok, data[:300]
        out = json.loads(data)
        assert set(out["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)
        bucket, key = aws.parse_s3_uri(out["occlusion"]["s3Uri"])
        png = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        assert png.startswith(b"\x89PNG") and out["occlusion"]["s3Uri"].startswith(dep.output_path.rsplit("/", 1)[0])
        assert out["outputs"]["sr"]["storedToPacs"] is True
        # the clinician's report, with the occlusion map, is an Encapsulated PDF in the study
        report = out["outputs"]["pdf"]
        assert report["storedToPacs"] is True and report["SOPClassUID"] == ENCAPSULATED_PDF
        stored = dicomweb.retrieve_instance(world["client"], study, report["SeriesInstanceUID"],
                                            report["SOPInstanceUID"])
        assert pdf_bytes(stored).startswith(b"%PDF-") and stored.Modality == "DOC"
    finally:
        aws.client("sagemaker").delete_endpoint(EndpointName=name)


# ---- batch transform --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_endpoint(world) -> Iterator[str]:
    name = f"batch-{uuid.uuid4().hex[:6]}"
    ep.deploy(name, world["model_uris"]["classification2d"], image=IMAGE, asynchronous=False)
    yield name
    aws.client("sagemaker").delete_endpoint(EndpointName=name)


def test_a_transform_job_over_twenty_studies_completes_and_records_the_two_bad_ones(world, batch_endpoint) -> None:
    from dicomflow.inference import batch

    to = f"s3://{world['bucket']}/batch-{uuid.uuid4().hex[:6]}"
    study = str(world["chest"].dataset.StudyInstanceUID)
    good = {"studyInstanceUID": study, "outputs": ["json"], "storeToPacs": False}
    requests_ = {f"good-{i:02d}": good for i in range(18)}
    requests_["missing"] = {**good, "studyInstanceUID": "1.2.826.0.1.3680043.8.498.999999"}
    aws.write(f"{to}/input/malformed.json", b'{"studyInstanceUID": ', "application/json")  # not JSON
    job = batch.start(batch_endpoint, to, requests_, max_concurrent=2)
    job.studies.append("malformed")
    seen: list[int] = []
    desc = batch.follow(job, lambda done, _status: seen.append(done))
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert seen[-1] == 20 and seen == sorted(seen)  # progress only grows
    rows = {r["study"]: r for r in batch.results(job)}
    ok = [k for k, r in rows.items() if r["ok"]]
    assert sorted(ok) == sorted(k for k in requests_ if k.startswith("good"))
    assert all(set(rows[k]["result"]["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES) for k in ok)
    assert not rows["missing"]["ok"] and "no instances in the PACS" in rows["missing"]["error"]
    assert not rows["malformed"]["ok"] and "json" in rows["malformed"]["error"].lower()
    # SageMaker's layout: <output>/<input key>.out
    assert aws.read_bytes(f"{job.output_uri}good-00.json.out") is not None


def test_cli_batch_prints_a_summary_and_fails_a_bad_study_list(world, batch_endpoint, tmp_path) -> None:
    study = str(world["chest"].dataset.StudyInstanceUID)
    bucket = world["bucket"]
    listing = tmp_path / "studies.txt"
    listing.write_text(f"# held-out chest studies\n{study}\n\n{study}\n")
    result = CliRunner().invoke(infer, ["--endpoint", batch_endpoint, "--batch", "--studies", str(listing), "--to",
                                        f"s3://{bucket}/cli-batch-{uuid.uuid4().hex[:6]}", "--outputs", "json",
                                        "--no-store", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["status"], summary["studies"], summary["succeeded"], summary["failed"]) == ("Completed", 1, 1, [])
    # the same study found by a QIDO-RS query on the PACS
    result = CliRunner().invoke(infer, ["--endpoint", batch_endpoint, "--batch", "--query", f"StudyInstanceUID={study}",
                                        "--to", f"s3://{bucket}/cli-query-{uuid.uuid4().hex[:6]}", "--outputs", "json",
                                        "--no-store"])
    assert result.exit_code == 0, result.output
    assert "Completed: 1 of 1 studies analysed" in result.output
    listing.write_text("not-a-uid\n")
    result = CliRunner().invoke(infer, ["--endpoint", batch_endpoint, "--batch", "--studies", str(listing), "--to",
                                        f"s3://{bucket}/x"])
    assert isinstance(result.exception, ep.EndpointError) and "line 1" in str(result.exception)


# ---- multi-model endpoint ---------------------------------------------------------------------

def _mme(world, name: str, environment: dict[str, str] | None = None) -> str:
    """A multi-model endpoint over ``s3://<bucket>/<name>/``: chest.tar.gz (classifier), hippo.tar.gz (segmenter)."""
    for target, task in (("chest.tar.gz", "classification2d"), ("hippo.tar.gz", "segmentation3d")):
        aws.write(f"s3://{world['bucket']}/{name}/{target}", model_tarball(world["artifacts"][task]))
    ep.deploy(name, f"s3://{world['bucket']}/{name}/", image=IMAGE, asynchronous=False, multi_model=True,
              environment=environment)
    return name


def _bodies(world) -> dict[str, dict]:
    return {"chest.tar.gz": {"studyInstanceUID": str(world["chest"].dataset.StudyInstanceUID), "outputs": ["json"],
                             "storeToPacs": False},
            "hippo.tar.gz": {"studyInstanceUID": world["hippo"][0].study_uid, "outputs": ["json"],
                             "storeToPacs": False}}


def test_a_multi_model_endpoint_serves_each_task_by_target_model(world) -> None:
    name = _mme(world, f"mme-{uuid.uuid4().hex[:6]}")
    bodies = _bodies(world)
    try:
        chest = ep.invoke_realtime(name, bodies["chest.tar.gz"], "chest.tar.gz")
        assert set(chest["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)
        assert chest["model"]["name"] == "chest" and chest["task"] == "classification2d"
        hippo = ep.invoke_realtime(name, bodies["hippo.tar.gz"], "hippo.tar.gz")
        assert set(hippo["findings"]["volumesMm3"]) == {"anterior", "posterior", "total"}
        # an artifact added under the prefix is served at once, with no UpdateEndpoint
        newer = model_tarball(world["artifacts"]["classification2d"])
        aws.write(f"s3://{world['bucket']}/{name}/v2/chest.tar.gz", newer)
        assert ep.invoke_realtime(name, bodies["chest.tar.gz"], "v2/chest.tar.gz")["model"]["name"] == "chest"
        with pytest.raises(ep.EndpointError, match="Failed to download model data"):
            ep.invoke_realtime(name, bodies["chest.tar.gz"], "missing.tar.gz")
        with pytest.raises(ClientError, match="multi-model endpoint: pass TargetModel"):
            aws.client("sagemaker-runtime").invoke_endpoint(EndpointName=name, Body=b"{}",
                                                            ContentType="application/json")
        # concurrent requests for both models: each answer comes from the model its request named
        targets = ["chest.tar.gz", "hippo.tar.gz"] * 4
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: (t, ep.invoke_realtime(name, bodies[t], t)), targets))
        for target, answer in answers:
            assert answer["task"] == ("classification2d" if target == "chest.tar.gz" else "segmentation3d")
            assert answer["studyInstanceUID"] == bodies[target]["studyInstanceUID"]
    finally:
        aws.client("sagemaker").delete_endpoint(EndpointName=name)


def test_a_multi_model_endpoint_unloads_the_least_recently_used_model_under_its_budget(world, local_cloud) -> None:
    from dicomflow.inference.multi_model import model_bytes
    from dicomflow.inference.service import InferenceService

    sizes = {t: model_bytes(InferenceService.from_model_dir(world["artifacts"][t]))
             for t in ("classification2d", "segmentation3d")}
    budget_mb = (max(sizes.values()) + 100_000) / 1e6  # room for one model, not for both
    assert budget_mb * 1e6 < sum(sizes.values())
    name = _mme(world, f"mme-small-{uuid.uuid4().hex[:6]}", {"DICOMFLOW_MME_MEMORY_MB": f"{budget_mb:.3f}"})
    bodies = _bodies(world)
    try:
        for target in ("chest.tar.gz", "hippo.tar.gz", "chest.tar.gz"):  # each load unloads the other
            assert ep.invoke_realtime(name, bodies[target], target)["studyInstanceUID"] == \
                bodies[target]["studyInstanceUID"]
        url = json.loads((local_cloud.settings.data_dir / "endpoints" / f"{name}.json").read_text())["url"]
        assert [m["modelName"] for m in requests.get(f"{url}/models", timeout=10).json()["models"]] == ["chest.tar.gz"]
        # the container's side of the contract
        loaded = requests.get(f"{url}/models/chest.tar.gz", timeout=10).json()
        again = requests.post(f"{url}/models", json={"model_name": "chest.tar.gz", "url": loaded["modelUrl"]},
                              timeout=60)
        assert again.status_code == 409
        assert requests.delete(f"{url}/models/nope.tar.gz", timeout=10).status_code == 404
        unloaded = requests.post(f"{url}/models/nope.tar.gz/invoke", json=bodies["chest.tar.gz"], timeout=10)
        assert unloaded.status_code == 404
    finally:
        aws.client("sagemaker").delete_endpoint(EndpointName=name)
