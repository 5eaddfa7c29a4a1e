"""Auto-routing on the local cloud: a series sent by C-STORE is analysed with no manual call.

The real router Lambda (``lambdas/router``, packaged as ``dicomflow infra package`` does) runs on the
emulator, fed by Orthanc's change log (:mod:`dicomflow.routing.feed`); the models are untrained artifacts
served by the real inference container behind async endpoints.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from model_helpers import model_tarball, untrained_artifact
from waiting import wait_for

from dicomflow import aws
from dicomflow.cli.main import cli
from dicomflow.cli.route import route as route_cli
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.orthanc import OrthancRest
from dicomflow.emulator.moto.endpoints import register_image
from dicomflow.inference import endpoint as ep
from dicomflow.infra import package
from dicomflow.routing import router
from dicomflow.routing.feed import StableStudyFeed
from dicomflow.search.vectors import VectorIndex

REPO = Path(__file__).resolve().parents[2]
IMAGE = "dicomflow-inference-routing:latest"
SEG_LABELS = ["anterior", "posterior"]


def _wait(what: str, probe: Callable[[], Any], timeout: float = 120) -> Any:
    return wait_for(what, probe, timeout, interval=0.5)


@pytest.fixture(scope="module")
def routed(local_cloud, tmp_path_factory) -> dict[str, Any]:
    """Two async segmentation endpoints, the router Lambda with its table, dead-letter queue and rules."""
    root = tmp_path_factory.mktemp("routing")
    tag = uuid.uuid4().hex[:6]
    register_image(local_cloud.settings.data_dir, "dicomflow-inference-routing",
                   {"command": ["python", "-m", "inference_container.serve"], "cwd": str(REPO)})
    pacs = local_cloud.pacs
    secret = aws.client("secretsmanager").create_secret(Name=f"routing-pacs-{tag}", SecretString=json.dumps(
        {"username": pacs.username, "password": pacs.password, "url": pacs.url}))["ARN"]
    bucket = f"routing-{tag}"
    aws.client("s3").create_bucket(Bucket=bucket)
    model = f"s3://{bucket}/models/seg/model.tar.gz"
    aws.write(model, model_tarball(untrained_artifact(root, "segmentation3d", SEG_LABELS, [16, 24, 16])))
    endpoints = {k: f"route-{k}-{tag}" for k in ("a", "b", "later")}
    env = {"DICOMFLOW_PACS_SECRET_ARN": secret}
    for k in ("a", "b"):
        ep.deploy(endpoints[k], model, image=IMAGE, environment=env, max_concurrency=2)
    rules = f"""version: 1
rules:
  - name: hippocampus-a
    endpoint: {endpoints['a']}
    outputs: [json, sr, seg]
    match: {{modality: MR, minSlices: 8}}
  - name: hippocampus-b
    endpoint: {endpoints['b']}
    outputs: [json, seg]
    match: {{modality: MR, seriesDescription: "Synthetic.*"}}
  - name: chest-later
    endpoint: {endpoints['later']}
    outputs: [json, sr, embedding]
    match: {{modality: CR}}
"""
    rules_uri = f"s3://{bucket}/routing/rules.yaml"
    aws.write(rules_uri, rules.encode())
    table = f"routing-{tag}"
    aws.client("dynamodb").create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                        AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
                                        KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}])
    dlq = aws.client("sqs").create_queue(QueueName=f"routing-dlq-{tag}")["QueueUrl"]
    role = aws.client("iam").create_role(RoleName=f"router-{tag}", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    function = f"router-{tag}"
    aws.client("lambda").create_function(
        FunctionName=function, Runtime="python3.11", Role=role, Handler="handler.lambda_handler", Timeout=120,
        Code={"ZipFile": package.build(REPO / "lambdas" / "router").data},
        Environment={"Variables": {"DICOMFLOW_PACS_URL": pacs.url, "DICOMFLOW_PACS_SECRET_ARN": secret,
                                   "DICOMFLOW_ROUTING_RULES": rules_uri, "DICOMFLOW_ROUTING_TABLE": table,
                                   "DICOMFLOW_ROUTING_DLQ": dlq, "DICOMFLOW_ROUTING_ATTEMPTS": "2"}})
    # a study that turned stable before the feed started is not delivered (the feed starts at the log's end)
    client = dicomweb.connect(pacs)
    before = synthetic.chest_radiographs(1, seed=170, size=64)[0].dataset
    dicomweb.store(client, [before])
    orthanc = OrthancRest(pacs)
    _wait("the earlier study's StableStudy", lambda: any(
        c["ChangeType"] == "StableStudy" and orthanc.study_uid(c["ID"]) == before.StudyInstanceUID
        for c in orthanc.changes(max(0, orthanc.last_change() - 20), 100)["Changes"]), 30)
    feed = StableStudyFeed(orthanc, [function], root / "changes.json", dlq)
    assert feed.skip_to_now() == orthanc.last_change() > 0
    assert feed.poll() == []
    return {"function": function, "table": table, "dlq": dlq, "endpoints": endpoints, "model": model, "env": env,
            "feed": feed, "client": client, "settings": local_cloud.settings, "root": root}


def _invoke(routed: dict, event: dict) -> dict:
    resp = aws.client("lambda").invoke(FunctionName=routed["function"], Payload=json.dumps(event).encode())
    assert "FunctionError" not in resp, resp
    return json.loads(resp["Payload"].read())


def _letters(routed: dict) -> list[str]:
    """The bodies of every message in the dead-letter queue (left in it)."""
    sqs, seen = aws.client("sqs"), {}
    for _ in range(20):
        got = sqs.receive_message(QueueUrl=routed["dlq"], MaxNumberOfMessages=10, VisibilityTimeout=5)
        new = {m["MessageId"]: m for m in got.get("Messages", []) if m["MessageId"] not in seen}
        if not new:
            break
        seen.update(new)
    for m in seen.values():
        sqs.change_message_visibility(QueueUrl=routed["dlq"], ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    return [m["Body"] for m in seen.values()]


def _modalities(routed: dict, study: str) -> list[str]:
    return sorted(dj.text(s, "Modality") for s in dicomweb.search_series(routed["client"], study))


def test_a_series_sent_by_a_modality_is_analysed_by_every_matching_rule_once(routed) -> None:
    series = synthetic.hippocampus_series(1, seed=171, shape=(16, 24, 20))[0]
    folder = routed["root"] / "from-the-scanner"
    folder.mkdir()
    for i, ds in enumerate(series.datasets):
        pydicom.dcmwrite(folder / f"{i:03d}.dcm", dicomweb.ensure_file_meta(ds), enforce_file_format=True)
    sent = CliRunner().invoke(cli, ["--data-dir", str(routed["settings"].data_dir), "route", "send", str(folder)])
    assert sent.exit_code == 0 and f"sent {len(series.datasets)} instance(s)" in sent.output, sent.output
    _wait("the study to turn stable and reach the router", lambda: series.study_uid in routed["feed"].poll(), 60)
    # both rules' models ran: hippocampus-a stored an SR and a SEG, hippocampus-b a SEG
    _wait("both models' results in the study",
          lambda: _modalities(routed, series.study_uid) == ["MR", "SEG", "SEG", "SR"], 180)
    # the results turned the study stable again: that event, and a repeated one, start nothing
    _wait("the results' own stable event", lambda: series.study_uid in routed["feed"].poll(), 60)
    again = _invoke(routed, {"studyInstanceUID": series.study_uid})
    assert again["analyses"] == []
    why = sorted(s["why"] for s in again["skipped"])
    assert why == ["a result of this system (SR/SEG/PDF)"] * 3 + ["analysed already"] * 2, again
    # the ledger: one analysis per rule, both done once their outputs exist
    result = CliRunner().invoke(route_cli, ["status", "--study", series.study_uid, "--json"],
                                env={"DICOMFLOW_ROUTING_TABLE": routed["table"]})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted((r["rule"], r["status"]) for r in rows) == [("hippocampus-a", "done"), ("hippocampus-b", "done")]
    assert all(r["series"] == series.series_uid for r in rows)


def test_a_missing_endpoint_is_retried_dead_lettered_and_completed_by_route_retry(routed) -> None:
    chest = synthetic.chest_radiographs(1, seed=172, size=64)[0]
    dicomweb.store(routed["client"], [chest.dataset])
    study = str(chest.dataset.StudyInstanceUID)
    first = _invoke(routed, {"studyInstanceUID": study})
    (analysis,) = first["analyses"]
    assert analysis["status"] == "failed" and routed["endpoints"]["later"] in analysis["reason"]
    (letter,) = [json.loads(body) for body in _letters(routed) if study in body]
    assert letter["rule"] == "chest-later" and letter["reason"] == analysis["reason"]
    # once the endpoint exists, `route retry` routes it again and the dead letter goes
    chest_model = f"{routed['model'].rsplit('/models/', 1)[0]}/models/chest/model.tar.gz"
    aws.write(chest_model, model_tarball(untrained_artifact(routed["root"], "classification2d",
                                                            list(synthetic.CHEST_CLASSES), [32, 32])))
    ep.deploy(routed["endpoints"]["later"], chest_model, image=IMAGE, environment=routed["env"])
    env = {"DICOMFLOW_ROUTING_TABLE": routed["table"], "DICOMFLOW_ROUTING_DLQ": routed["dlq"]}
    result = CliRunner().invoke(route_cli, ["retry", "--function", routed["function"], "--study", study], env=env)
    assert result.exit_code == 0, result.output
    assert f"chest-later -> {routed['endpoints']['later']}: invoked" in result.output
    _wait("the SR of the retried analysis", lambda: "SR" in _modalities(routed, study), 120)
    assert not [body for body in _letters(routed) if study in body]
    # the rule asked for the embedding too: its async answer loads into an image index (search on new studies)
    (row,) = [r for r in router.records(study, routed["table"]) if r["rule"] == "chest-later"]
    _wait("the analysis' answer", lambda: aws.read_bytes(row["outputLocation"]), 60)
    where = routed["root"] / "image-index"
    loaded = CliRunner().invoke(cli, ["--data-dir", str(routed["settings"].data_dir), "search", "index", "--from",
                                      row["outputLocation"], "--index", str(where), "--json"])
    assert loaded.exit_code == 0, loaded.output
    summary = json.loads(loaded.output[loaded.output.index("{"):])
    assert (summary["indexed"], summary["images"], summary["failed"]) == (1, 1, []), summary
    with VectorIndex.open(where) as ix:
        assert ix.images_of_study(study) == [str(chest.dataset.SOPInstanceUID)]
