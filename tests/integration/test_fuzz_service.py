"""The reliability suite, part 2: hostile HTTP to a real serving process, and malformed DICOM series in the real
Orthanc through the inference pipeline. Every answer is a clear 4xx (or 503 for a PACS that is down) or a correct
result: never a 500, never a traceback, never a hang, and the server stays healthy after each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fuzz_corpus import copy_series, raw_http_requests, series_mutations, study_json_bodies
from model_helpers import untrained_artifact
from pydicom.uid import generate_uid

from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.emulator.cloud.service import free_port
from dicomflow.inference.errors import InferenceError
from dicomflow.inference.request import parse_request
from dicomflow.inference.service import InferenceService

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SHAPE = (12, 24, 20)


@pytest.fixture(scope="module")
def world(local_cloud, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    series = synthetic.hippocampus_series(1, seed=71, shape=SHAPE)[0]
    dicomweb.store(dicomweb.connect(), series.datasets)
    artifact = untrained_artifact(root, "segmentation3d", ["anterior", "posterior"], [16, 24, 16])
    return {"root": root, "series": series, "artifact": artifact}


@pytest.fixture(scope="module")
def server(world) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": str(world["artifact"]),
           "DICOMFLOW_HTTP_HEADER_SECONDS": "1", "DICOMFLOW_HTTP_BODY_SECONDS": "1",
           "DICOMFLOW_PACS_RETRY_SECONDS": "1"}
    log_path = world["root"] / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inference_container.serve"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            assert proc.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        world["serve_log"] = log_path
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert "Traceback" not in log_path.read_text()


def _exchange(port: int, raw: bytes, wait: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass  # the server closed early (a refused head); what it answered is still read
        chunks, deadline = [], time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
            if b"Connection: close" not in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def test_hostile_http_gets_clear_answers_and_the_server_stays_up(world, server) -> None:
    port = int(server.rsplit(":", 1)[1])
    study = world["series"].study_uid
    valid = json.dumps({"studyInstanceUID": study, "outputs": ["json"], "storeToPacs": False}).encode()
    corpus = [(f"body-{name}", b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
              for name, body in study_json_bodies(seed=2)]
    corpus += raw_http_requests(valid)
    assert len(corpus) >= 200
    outcomes: Counter = Counter()
    bad = []
    for name, raw in corpus:
        started = time.monotonic()
        answer = _exchange(port, raw)
        took = time.monotonic() - started
        status = int(answer[9:12]) if answer.startswith(b"HTTP/1.") else None
        if took > 8:
            outcomes["hang"] += 1
            bad.append(f"{name}: {took:.1f} s")
        elif status is None:
            outcomes["closed"] += 1  # h11 dropped a request head it could not use (e.g. one that never ended)
        elif status == 500 or b"Traceback" in answer:
            outcomes["crash"] += 1
            bad.append(f"{name}: {answer[:200]!r}")
        elif status < 300:
            outcomes["ok"] += 1
        else:
            outcomes["clear"] += 1
        assert requests.get(f"{server}/ping", timeout=5).status_code == 200, f"server down after {name}"
    print(f"\nraw HTTP: tried {len(corpus)} / clear errors {outcomes['clear']} / correct results {outcomes['ok']} / "
          f"closed without answer {outcomes['closed']} / 5xx-with-traceback {outcomes['crash']} / "
          f"hangs {outcomes['hang']}")
    assert bad == []
    assert outcomes["ok"] >= 2 and outcomes["clear"] >= 150 and outcomes["closed"] <= 3


def test_malformed_series_get_a_422_naming_the_problem_or_a_correct_result(world) -> None:
    service = InferenceService.from_model_dir(world["artifact"])
    client = dicomweb.connect()
    base = world["series"].datasets
    reference = None
    outcomes: Counter = Counter()
    bad = []
    cases = series_mutations(seed=3)
    assert len(cases) >= 30
    for name, mutate, expected in cases:
        datasets = copy_series(base)
        study, series = generate_uid(), generate_uid()
        for ds in datasets:
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets = mutate(datasets)
        dicomweb.store(client, datasets)
        request = parse_request({"studyInstanceUID": study, "outputs": ["json"], "storeToPacs": False})
        try:
            out = service.run(request, client=client)
        except InferenceError as exc:
            if expected is not None and exc.status == 422 and expected in str(exc):
                outcomes["clear"] += 1
            else:
                bad.append(f"{name}: {exc.status} {exc} (expected {expected!r})")
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            outcomes["crash"] += 1
            bad.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if expected is not None:
            bad.append(f"{name}: answered 200, expected a 422 with {expected!r}")
            continue
        outcomes["ok"] += 1
        if name == "valid":
            reference = out
        assert out["volume"]["shape"][1:] == list(SHAPE[1:]), name
        if "InstanceNumber" in name or name.startswith("no-positions"):
            assert "ordered by InstanceNumber" in out["series"]["reason"], name
    print(f"\nDICOM series: tried {len(cases)} / clear errors {outcomes['clear']} / correct results "
          f"{outcomes['ok']} / crashes {outcomes['crash']}")
    assert bad == []
    assert reference is not None and reference["volume"]["shape"] == list(SHAPE)
