"""Scale-out benchmark: batch transform against a loop of async invocations, scale-from-zero, 1 vs 2 instances.

Starts its own local cloud in a temp dir on free ports, seeds ``--studies`` synthetic chest radiographs
(one study each, 256x256) and serves an untrained classification2d model (the model's passes are a small
part of a request here; the figures are about the plumbing around them). Prints, median (min-max) over
``--repeats``:

* **throughput** over the same ``--studies`` studies, in studies per minute, each way with one instance
  running ``--concurrency`` requests at once:
  - ``floor``: the serving process called straight over HTTP (``POST /invocations``, no S3, no queue) -
    the fastest way the bare work can be done;
  - ``batch transform``: ``dicomflow.inference.batch`` (one S3 object per study, ``CreateTransformJob``,
    until ``Completed``; the serving process start is part of the job, as on SageMaker), and the part of
    it after the serving process was up (``TransformStartTime`` to ``TransformEndTime``);
  - ``async loop``: one ``InvokeEndpointAsync`` per study on a warm endpoint, until every success
    notification has arrived;
* **scale from zero**: an endpoint registered with ``--min-instances 0`` that has scaled in to zero
  instances gets one request: seconds until its success notification, against the same request on a warm
  instance;
* **backlog drain**: ``--backlog`` requests queued at once on an endpoint with 1 and with 2 instances
  (fixed), seconds until the last notification. On 2 cores the machine is the ceiling: two instances
  share the same two cores.

Run: ``.venv/bin/python bench/bench_scaling.py [--repeats 5] [--studies 100] [--backlog 40]``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from _cloud import REPO, Notifications, private_cloud
from _stats import Sample, check_repeats, table

CONCURRENCY = 2


def _seed(n: int) -> list[str]:
    from dicomflow.demo import synthetic
    from dicomflow.dicom import dicomweb

    images = synthetic.chest_radiographs(n, seed=11, size=256)
    dicomweb.store(dicomweb.connect(), [im.dataset for im in images])
    return [str(im.dataset.StudyInstanceUID) for im in images]


def _model(home: Path) -> str:
    from model_helpers import model_tarball, untrained_artifact

    from dicomflow import aws
    from dicomflow.demo import synthetic
    from dicomflow.emulator.moto.endpoints import register_image

    model_dir = untrained_artifact(home / "model", "classification2d", list(synthetic.CHEST_CLASSES), [64, 64])
    aws.client("s3").create_bucket(Bucket="bench-scaling")
    aws.client("s3").put_object(Bucket="bench-scaling", Key="model.tar.gz", Body=model_tarball(model_dir))
    register_image(home, "dicomflow-bench-scaling", {"command": ["python", "-m", "inference_container.serve"],
                                                     "cwd": str(REPO)})
    return "s3://bench-scaling/model.tar.gz"


def _body(study: str) -> dict:
    return {"studyInstanceUID": study, "outputs": ["json"], "storeToPacs": False}


def _deploy(name: str, model: str, minimum: int | None = None, maximum: int | None = None,
            cooldown: int = 1) -> Notifications:
    from dicomflow.inference import endpoint as ep
    from dicomflow.inference.scaling import ScalingPlan, register_async_scaling

    ep.deploy(name, model, image="dicomflow-bench-scaling:latest", max_concurrency=CONCURRENCY)
    if maximum is not None:
        register_async_scaling(name, ScalingPlan(minimum or 0, maximum, backlog_per_instance=1,
                                                 scale_in_cooldown=cooldown, scale_out_cooldown=0))
    return Notifications(name)


def _async_all(name: str, notes: Notifications, studies: list[str]) -> float:
    """Seconds from the first invocation to the last success notification."""
    from dicomflow.inference import endpoint as ep

    t0 = time.time()
    ids = {ep.invoke_async(name, _body(s)).inference_id for s in studies}
    notes.drain(ids, timeout_s=1800)
    failed = [i for i in ids if notes.seen.get(i, ({}, 0))[0].get("invocationStatus") != "Completed"]
    if failed:
        raise SystemExit(f"{len(failed)} async request(s) failed, e.g. {notes.seen.get(failed[0])}")
    return max(notes.seen[i][1] for i in ids) - t0


def _floor(url: str, studies: list[str]) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(lambda s: requests.post(f"{url}/invocations", json=_body(s), timeout=120), studies))
    if any(a.status_code != 200 for a in answers):
        raise SystemExit(f"the serving process failed: {next(a.text for a in answers if a.status_code != 200)}")
    return time.perf_counter() - t0


def _batch(name: str, studies: list[str]) -> tuple[float, float]:
    """(seconds from CreateTransformJob to Completed, seconds of it after the serving processes were up)."""
    from dicomflow.inference import batch

    t0 = time.perf_counter()
    job = batch.start(name, f"s3://bench-scaling/batch-{uuid.uuid4().hex[:6]}", {s: _body(s) for s in studies},
                      max_concurrent=CONCURRENCY)
    desc = batch.follow(job, interval=0.2)
    elapsed = time.perf_counter() - t0
    if desc["TransformJobStatus"] != "Completed" or not all(r["ok"] for r in batch.results(job)):
        raise SystemExit(f"transform job {job.name}: {desc['TransformJobStatus']} {desc.get('FailureReason')}")
    return elapsed, (desc["TransformEndTime"] - desc["TransformStartTime"]).total_seconds()


def _instances(name: str) -> int:
    from dicomflow import aws

    return int(aws.client("sagemaker").describe_endpoint(EndpointName=name)["ProductionVariants"][0]
               .get("CurrentInstanceCount") or 0)


def _wait_instances(name: str, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _instances(name) != count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not reach {count} instance(s) in {timeout_s:.0f} s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    repeats = check_repeats(args.repeats)
    with private_cloud() as cloud:
        from dicomflow.emulator.moto import endpoints

        studies = _seed(max(args.studies, args.backlog))
        model = _model(cloud.home)
        work = studies[:args.studies]

        # throughput: floor, batch transform, async loop (interleaved per repeat)
        warm = _deploy("bench-async", model)
        _async_all("bench-async", warm, work[:2])  # starts its instance
        url = json.loads(endpoints.instances_path("bench-async").read_text())[0]["url"]
        times: dict[str, list[float]] = {"floor": [], "batch transform": [], "  of it once the container is up": [],
                                         "async loop": []}
        for _ in range(repeats):
            times["floor"].append(_floor(url, work))
            whole, running = _batch("bench-async", work)
            times["batch transform"].append(whole)
            times["  of it once the container is up"].append(running)
            times["async loop"].append(_async_all("bench-async", warm, work))
        per_minute = {k: Sample(tuple(60 * len(work) / t for t in v)) for k, v in times.items()}
        floor = per_minute["floor"].median
        rows = [[k, s.text(0), f"{s.median / floor:.2f}"] for k, s in per_minute.items()]
        print(f"\nthroughput over {len(work)} studies, 1 instance x {CONCURRENCY} concurrent (studies/minute)")
        print(table(["way", "studies/min median (min-max)", "x floor"], rows))

        # scale from zero vs a warm instance
        zero = _deploy("bench-zero", model, minimum=0, maximum=1, cooldown=1)
        _async_all("bench-zero", zero, [studies[-1]])  # its first instance, scaled in again below
        cold, hot = [], []
        for i in range(repeats):
            _wait_instances("bench-zero", 0)
            cold.append(_async_all("bench-zero", zero, [studies[i]]))
            hot.append(_async_all("bench-zero", zero, [studies[i + 1]]))
        latency = {"from zero instances": Sample(tuple(cold)), "warm instance": Sample(tuple(hot))}
        print("\none request, seconds to its success notification")
        print(table(["endpoint", "s median (min-max)"], [[k, v.text(2)] for k, v in latency.items()]))

        # backlog drained by 1 vs 2 instances
        drained = {}
        for count in (1, 2):
            name = f"bench-drain-{count}"
            notes = _deploy(name, model, minimum=count, maximum=count)
            _async_all(name, notes, studies[:count * CONCURRENCY])
            _wait_instances(name, count)
            drained[f"{count} instance(s)"] = Sample(tuple(
                _async_all(name, notes, studies[:args.backlog]) for _ in range(repeats)))
        one = drained["1 instance(s)"].median
        print(f"\n{args.backlog} queued requests drained (s)")
        print(table(["instances", "s median (min-max)", "speed-up"],
                    [[k, v.text(2), f"{one / v.median:.2f}"] for k, v in drained.items()]))
        if args.json:
            print(json.dumps({"throughput_per_minute": {k: v.as_dict() for k, v in per_minute.items()},
                              "latency_s": {k: v.as_dict() for k, v in latency.items()},
                              "drain_s": {k: v.as_dict() for k, v in drained.items()}}, indent=2))


if __name__ == "__main__":
    main()
