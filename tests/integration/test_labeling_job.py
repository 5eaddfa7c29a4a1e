"""Local Ground Truth over HTTP (no browser): three workers -> majority in the output manifest, the
gateway refuses expired / tampered / other-object / other-job URLs, and a restart loses no answer."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from click.testing import CliRunner

from dicomflow import aws
from dicomflow.groundtruth import manifest, signing

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location(
    "labeling_setup_it", Path(__file__).resolve().parents[1] / "browser" / "labeling_setup.py")
setup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setup)

BUCKET = "dicomflow-labeling-job-tests"


@pytest.fixture(scope="module")
def env(local_cloud):
    aws.client("s3").create_bucket(Bucket=BUCKET)
    key = setup.new_key()
    objs = setup.store_objects(local_cloud.pacs, n_slices=8, seed=708)
    arns = setup.deploy_lambdas("http-job", local_cloud.settings.dicomweb_url, key)
    return {"key": key, "objs": objs, "arns": arns, "home": local_cloud.settings.data_dir}


def _session(running, worker: str) -> requests.Session:
    s = requests.Session()
    r = s.get(running.signin_url(worker), timeout=30)
    assert r.status_code == 200 and "token=" not in r.url
    return s


def _task(running, worker: str, s: requests.Session) -> tuple[str, dict]:
    """The worker's current assignment id and task input (as the page carries them)."""
    page = s.get(f"{running.url}/task", timeout=60).text
    assert 'name="dicomflow-assignment"' in page
    a = next(a for a in running.job._assignments.values() if a.worker == worker)
    return a.id, a.task_input


def _submit(running, s: requests.Session, assignment: str, answer: dict) -> requests.Response:
    return s.post(f"{running.url}/submit", json={"assignmentId": assignment,
                                                 "answer": {"annotation": json.dumps(answer)}}, timeout=60)


def test_three_workers_majority_and_restart(env):
    from dicomflow.cli.label import status
    from dicomflow.emulator.groundtruth import run_job

    request = setup.job_request("vote-job", BUCKET, [env["objs"]["cr"]], env["arns"], workers=3)
    running = run_job(request, data_dir=env["home"])
    sop = env["objs"]["cr_dataset"].SOPInstanceUID
    answers = {
        "worker-1": {"labels": ["Cardiomegaly", "Edema"], "rois": [
            {"label": "Cardiomegaly", "sopInstanceUID": sop, "x": 100, "y": 100, "width": 200, "height": 100}]},
        "worker-2": {"labels": ["Cardiomegaly"], "rois": [
            {"label": "Cardiomegaly", "sopInstanceUID": sop, "x": 110, "y": 104, "width": 196, "height": 98}]},
        "worker-3": {"labels": ["Pneumothorax"], "rois": []},
    }
    try:
        sessions = {w: _session(running, w) for w in answers}
        tasks = {w: _task(running, w, s) for w, s in sessions.items()}
        # the same object goes to three distinct workers; a worker gets it once
        assert len({a for a, _ in tasks.values()}) == 3
        r = _submit(running, sessions["worker-1"], tasks["worker-1"][0], {**answers["worker-1"], "sliceLabels": {}})
        assert r.status_code == 200, r.text
        again = _submit(running, sessions["worker-1"], tasks["worker-1"][0], answers["worker-1"])
        assert again.status_code == 409  # one answer per assignment
        assert "No tasks for you" in sessions["worker-1"].get(f"{running.url}/task", timeout=30).text
    finally:
        running.stop()

    # restart: worker-1's answer is still there, the others can finish
    running = run_job(request, data_dir=env["home"])
    try:
        assert running.job.status()["answers"] == 1
        for w in ("worker-2", "worker-3"):
            s = _session(running, w)
            assignment, _ = _task(running, w, s)
            assert _submit(running, s, assignment, answers[w]).status_code == 200
        running.job.wait_idle()
        st = running.job.status()
        assert st["status"] == "Completed" and st["consolidated"] == 1, st
    finally:
        running.stop()
    lines = manifest.read_jsonl_s3(running.job.store.output_manifest_uri())
    assert len(lines) == 1
    result = lines[0]["findings"]
    assert result["labels"] == ["Cardiomegaly"]  # 2 of 3; Edema and Pneumothorax 1 of 3
    assert result["workerCount"] == 3
    assert [r["label"] for r in result["rois"]] == ["Cardiomegaly"]
    assert lines[0]["findings-metadata"]["job-name"] == "vote-job"
    assert lines[0]["source"] == env["objs"]["cr"]["source"]
    out = CliRunner().invoke(status, ["--json"], obj={}, catch_exceptions=False,
                             env={"DICOMFLOW_HOME": str(env["home"])})
    rows = {r["job"]: r for r in json.loads(out.output)}
    assert rows["vote-job"]["status"] == "Completed" and rows["vote-job"]["answers"] == 3


def test_gateway_refuses_bad_signatures(env):
    from dicomflow.emulator.groundtruth import run_job

    request = setup.job_request("gate-job", BUCKET, [env["objs"]["cr"], env["objs"]["series"]], env["arns"])
    running = run_job(request, data_dir=env["home"])
    try:
        s = _session(running, "worker-1")
        _, task = _task(running, "worker-1", s)
        url = task["instances"][0]["url"]
        assert url.startswith("/wado?") and "sig=" in url
        ok = s.get(running.url + url, timeout=60)
        assert ok.status_code == 200 and ok.content[128:132] == b"DICM"
        # no sign-in: refused before the signature is looked at
        assert requests.get(running.url + url, timeout=30).status_code == 401
        q = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))

        def fetch(**changes):
            params = {**q, **changes}
            return s.get(f"{running.url}/wado?" + "&".join(f"{k}={v}" for k, v in params.items()), timeout=30)

        tampered = fetch(sig=("0" if q["sig"][0] != "0" else "1") + q["sig"][1:])
        assert tampered.status_code == 403 and "tampered" in tampered.text
        series_sop = env["objs"]["series_datasets"][0]
        other = fetch(studyUID=series_sop.StudyInstanceUID, seriesUID=series_sop.SeriesInstanceUID,
                      objectUID=series_sop.SOPInstanceUID)
        assert other.status_code == 403 and "tampered" in other.text
        key = env["key"]
        cr = env["objs"]["cr_dataset"]
        expired = signing.sign_wado("http://x/wado", cr.StudyInstanceUID, cr.SeriesInstanceUID, cr.SOPInstanceUID,
                                    scope=running.job.scope, key=key, ttl=60, now=time.time() - 3600)
        r = s.get(f"{running.url}/wado?{urlsplit(expired).query}", timeout=30)
        assert r.status_code == 403 and "expired" in r.text
        other_job = signing.sign_wado("http://x/wado", cr.StudyInstanceUID, cr.SeriesInstanceUID,
                                      cr.SOPInstanceUID, scope="another-job", key=key, ttl=600)
        r = s.get(f"{running.url}/wado?{urlsplit(other_job).query}", timeout=30)
        assert r.status_code == 403 and "scope" in r.text
        # bad sign-in token and unknown path
        assert requests.get(f"{running.url}/login?token=nope", timeout=30).status_code == 403
    finally:
        running.stop()
