"""Load and fault benchmark: async requests through the emulated endpoint while the PACS and the model fail.

Starts its own local cloud in a temp dir on free ports, seeds small synthetic MR studies, deploys an
untrained segmentation model as an async endpoint (4 concurrent invocations), subscribes an SQS queue
to its Success and Error topics, and runs three phases:

* ``load``    - ``--requests`` concurrent invocations, one in five bad (an unknown study, a study JSON
  that is not JSON, an unknown output, a URL that is not the configured PACS);
* ``pacs``    - a batch during which Orthanc is killed (SIGKILL) and restarted after ``--outage`` s;
* ``serving`` - a batch during which the endpoint's serving process is killed (SIGKILL) mid-request.

Each request ends as one of: a **correct result** (a valid request answered with volumes in
S3OutputPath), a **clear error** (a JSON failure object with a 4xx/503 status naming the problem, for a
bad request, a PACS that stayed down past the retry budget, or a model process killed under it),
**lost** (neither object nor notification within the timeout), or a **5xx with traceback** (status 500 or a
Python traceback in the failure). The promise measured: lost = 0 and 5xx-with-traceback = 0, with every
request's notification on the Success or Error topic.

Run: ``.venv/bin/python bench/bench_reliability.py [--requests 200] [--outage 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from _cloud import Notifications, private_cloud, serve_model

SHAPE = (12, 24, 20)


def _requests(studies: list[str], n: int) -> list[tuple[str, dict | bytes]]:
    """``(kind, body)``: four in five valid, the rest bad in four ways."""
    bad = [("unknown-study", {"studyInstanceUID": "1.2.826.0.1.3680043.8.498.999999", "outputs": ["json"]}),
           ("not-json", b"{not json"), ("unknown-output", {"studyInstanceUID": studies[0], "outputs": ["pdf"]}),
           ("other-pacs", {"studyInstanceUID": studies[0], "dicomweb": {"url": "http://127.0.0.1:1/dicom-web"}})]
    out: list[tuple[str, dict | bytes]] = []
    for i in range(n):
        if i % 5 == 4:
            out.append(bad[(i // 5) % len(bad)])
        else:
            out.append(("valid", {"studyInstanceUID": studies[i % len(studies)], "outputs": ["json"],
                                  "storeToPacs": False}))
    return out


def _invoke(endpoint: str, config: dict, body: dict | bytes):
    from dicomflow import aws
    from dicomflow.inference import endpoint as ep

    if isinstance(body, dict):
        return ep.invoke_async(endpoint, body, config)
    bucket, prefix = aws.parse_s3_uri(config["OutputConfig"]["S3OutputPath"])
    key = f"{prefix.rsplit('/', 1)[0]}/input/raw-{time.time_ns()}.json"
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    resp = aws.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=endpoint, InputLocation=aws.s3_uri(bucket, key), ContentType="application/json")
    return ep.AsyncInvocation(resp["InferenceId"], aws.s3_uri(bucket, key), resp["OutputLocation"],
                              resp.get("FailureLocation"), time.time())


def _classify(kind: str, ok: bool | None, data: bytes | None) -> str:
    if ok is None:
        return "lost"
    if b"Traceback" in (data or b""):
        return "traceback"
    if ok:
        result = json.loads(data)
        return "correct" if kind == "valid" and "volumesMm3" in result.get("findings", {}) else "wrong"
    try:
        failure = json.loads(data)
        status = int(failure.get("status", 0))
    except (ValueError, TypeError, AttributeError):
        return "unclear"
    if status == 500:
        return "traceback"
    return "clear" if 400 <= status < 600 and failure.get("message") else "unclear"


def _phase(name: str, endpoint: str, config: dict, notes: Notifications, batch: list, fault=None,
           timeout_s: float = 300) -> Counter:
    from dicomflow.inference import endpoint as ep

    with ThreadPoolExecutor(16) as pool:
        invocations = list(pool.map(lambda kb: (kb[0], _invoke(endpoint, config, kb[1])), batch))
        if fault is not None:
            fault()

        def result(item):
            kind, inv = item
            try:
                ok, data = ep.wait_result(inv, timeout_s=timeout_s, interval=0.2)
            except ep.EndpointError:
                ok, data = None, None
            return kind, inv, ok, data

        results = list(pool.map(result, invocations))
    notes.drain({inv.inference_id for _, inv in invocations}, timeout_s=60)
    tally: Counter = Counter()
    for kind, inv, ok, data in results:
        outcome = _classify(kind, ok, data)
        if kind != "valid" and outcome == "correct":
            outcome = "wrong"
        tally[outcome] += 1
        note = notes.seen.get(inv.inference_id, ({}, 0.0))[0]
        if note.get("invocationStatus") != ("Completed" if ok else "Failed"):
            tally["no-notification"] += 1
    tally["tried"] = len(batch)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests in the load phase")
    parser.add_argument("--fault-requests", type=int, default=60, help="requests in each fault phase")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the PACS stays down")
    args = parser.parse_args()

    with private_cloud("dicomflow-reliability-") as local:
        from model_helpers import untrained_artifact

        from dicomflow.demo import synthetic
        from dicomflow.dicom import dicomweb
        from dicomflow.emulator.moto.endpoints import registry_path
        from dicomflow.inference import endpoint as ep

        client = dicomweb.connect()
        series = synthetic.hippocampus_series(6, seed=90, shape=SHAPE)
        dicomweb.store(client, [ds for s in series for ds in s.datasets])
        studies = [s.study_uid for s in series]
        artifact = untrained_artifact(local.home, "segmentation3d", ["anterior", "posterior"], [16, 24, 16])
        endpoint = serve_model(local.home, artifact, "reliability", max_concurrency=4)
        config = ep.async_config(endpoint)
        notes = Notifications(endpoint)
        warm = _phase("warm-up", endpoint, config, notes, _requests(studies, 1))
        if warm["correct"] != 1:
            raise SystemExit(f"the endpoint does not serve: {dict(warm)}")
        orthanc = local.service("orthanc")

        def pacs_outage() -> None:
            time.sleep(0.5)
            orthanc.process.stop()
            time.sleep(args.outage)
            orthanc.start()

        def kill_serving() -> None:
            time.sleep(0.5)
            pid = json.loads(registry_path(endpoint).read_text())["pid"]
            os.kill(pid, signal.SIGKILL)

        rows = [("load", _phase("load", endpoint, config, notes, _requests(studies, args.requests))),
                (f"pacs down {args.outage:g} s", _phase("pacs", endpoint, config, notes,
                                                        _requests(studies, args.fault_requests),
                                                        fault=lambda: threading.Thread(target=pacs_outage).start())),
                ("serving killed", _phase("serving", endpoint, config, notes, _requests(studies, args.fault_requests),
                                          fault=lambda: threading.Thread(target=kill_serving).start()))]
        cols = ["tried", "correct", "clear", "lost", "traceback", "wrong", "unclear", "no-notification"]
        names = {"correct": "correct results", "clear": "clear errors", "traceback": "5xx-with-traceback",
                 "no-notification": "no notification"}
        print(f"\n{'phase':<18}" + "".join(f"{names.get(c, c):>19}" for c in cols))
        total: Counter = Counter()
        for phase, tally in rows:
            total.update(tally)
            print(f"{phase:<18}" + "".join(f"{tally.get(c, 0):>19}" for c in cols))
        print(f"{'all':<18}" + "".join(f"{total.get(c, 0):>19}" for c in cols))
        if total["lost"] or total["traceback"] or total["wrong"] or total["unclear"] or total["no-notification"]:
            raise SystemExit("reliability promise broken: see the table")


if __name__ == "__main__":
    main()
