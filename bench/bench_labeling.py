"""Labeling benchmarks on a private local cloud: pre-label Lambda latency (through lambda:Invoke on the
emulator; warm environment, cold start, and the floor of the handler called in-process), task open ->
first image on screen for the 7 MB chest CR, the CR's pre-label with and without AI suggestions from a
real-time endpoint, and slice-scroll frames per second on a 100-slice series,
in Debian's headless Chromium; and the input manifest of 10 000 instances built with Orthanc's
/tools/find against one paged QIDO-RS query (interleaved, ``--repeats`` each). Figures are median
(min-max), p95 where there are 20.

    .venv/bin/python bench/bench_labeling.py [--invocations 20] [--opens 5] [--slices 100] [--repeats 5]
        [--only-pre-label]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from _cloud import REPO, private_cloud
from _stats import MIN_REPEATS, Sample, check_repeats, interleaved, ratio

from dicomflow import aws
from dicomflow.config import Settings
from dicomflow.demo.annotators import CHROMIUM, CHROMIUM_ARGS

sys.path.insert(0, str(REPO / "tests" / "browser"))
sys.path.insert(0, str(REPO / "tests"))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--invocations", type=int, default=20)
    ap.add_argument("--opens", type=int, default=5)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--manifest-instances", type=int, default=10_000,
                    help="instances to seed for the input-manifest timing (0: skip it)")
    ap.add_argument("--repeats", type=int, default=5, help=f"timed runs of each manifest way (>= {MIN_REPEATS})")
    ap.add_argument("--only-pre-label", action="store_true", help="the pre-label figures only (no browser)")
    args = ap.parse_args()
    check_repeats(args.repeats)
    check_repeats(args.opens)

    with private_cloud() as local:
        run(local.settings, args)


def run(settings: Settings, args: argparse.Namespace) -> None:
    import labeling_setup as setup
    from playwright.sync_api import sync_playwright

    from dicomflow.credentials import pacs_connection
    from dicomflow.emulator.groundtruth import run_job

    bucket = "dicomflow-bench-labeling"
    aws.client("s3").create_bucket(Bucket=bucket)
    objs = setup.store_objects(pacs_connection(), n_slices=args.slices)
    arns = setup.deploy_lambdas("bench", settings.dicomweb_url, setup.new_key())
    lam = aws.client("lambda")
    results: dict[str, object] = {}
    for what in ("cr", "series"):
        event = {"version": "2018-10-16", "labelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                 "labeling-job/bench", "dataObject": objs[what]}
        results[f"pre_label_{what}"] = pre_label_timing(lam, arns["pre_label"], event, args)
    results["pre_label_cr_suggestions"] = suggestion_timing(lam, arns["pre_label"], bucket, objs, args)
    if args.only_pre_label:
        print(json.dumps(results, indent=2))
        return

    request = setup.job_request("bench", bucket, [objs["cr"], objs["series"]], arns, workers=1)
    running = run_job(request, data_dir=settings.data_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            signin = running.signin_url("worker-1")
            opens = []
            for _ in range(args.opens):  # fresh context each time: nothing cached
                ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                page = ctx.new_page()
                page.goto(signin)
                page.wait_for_function("window.dicomflowViewer && (window.dicomflowViewer.ready || "
                                       "window.dicomflowViewer.error)", timeout=120_000)
                assert not page.evaluate("window.dicomflowViewer.error")
                opens.append(page.evaluate("window.dicomflowViewer.timing.firstImage"))
                ctx.close()
            results["cr_task_open_to_first_image_ms"] = Sample(tuple(opens)).as_dict(0)
            # submit the CR so the series comes next
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.goto(signin)
            page.wait_for_function("window.dicomflowViewer.ready", timeout=120_000)
            page.get_by_label("No Finding").first.check()
            with page.expect_navigation():
                page.locator("#dicomflow-submit").click()
            page.wait_for_function("window.dicomflowViewer && window.dicomflowViewer.imagesLoaded",
                                   timeout=300_000)
            t = page.evaluate("window.dicomflowViewer.timing")
            results["series_all_slices_loaded_ms"] = round(t["allLoaded"])
            fps = page.evaluate("window.dicomflowViewer.scrollBenchmark(2)")
            results["series_scroll"] = {"slices": args.slices, "frames": fps["frames"],
                                        "fps": round(fps["fps"], 1)}
            ctx.close()
            browser.close()
    finally:
        running.stop()
    if args.manifest_instances:
        results["input_manifest"] = manifest_timing(settings, args.manifest_instances, args.repeats)
    print(json.dumps(results, indent=2))


def suggestion_timing(lam: Any, arn: str, bucket: str, objs: dict[str, Any], args: argparse.Namespace
                      ) -> dict[str, object]:
    """The CR's pre-label, warm, without and with AI suggestions (a real-time endpoint serving DenseNet121 at
    64 px), interleaved, against the endpoint's own InvokeEndpoint for the same image (the suggestion's floor)."""
    import tempfile

    from model_helpers import realtime_endpoint

    from dicomflow.inference import endpoint as ep

    endpoint = realtime_endpoint("bench-suggest", bucket, Path(tempfile.mkdtemp(prefix="bench-suggest-")))
    variables = lam.get_function_configuration(FunctionName=arn)["Environment"]["Variables"]
    plain = {k: v for k, v in variables.items() if k != "DICOMFLOW_PRELABEL_ENDPOINT"}
    event = {"version": "2018-10-16", "labelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:"
             "labeling-job/bench", "dataObject": objs["cr"]}
    cr = objs["cr_dataset"]
    body = {"studyInstanceUID": str(cr.StudyInstanceUID), "seriesInstanceUID": str(cr.SeriesInstanceUID),
            "outputs": ["json"], "storeToPacs": False}

    def invoke() -> None:
        resp = lam.invoke(FunctionName=arn, Payload=json.dumps(event))
        assert not resp.get("FunctionError"), resp["Payload"].read()
        resp["Payload"].read()

    times: dict[str, list[float]] = {"without": [], "with": [], "endpoint": []}
    for env, key in ((plain, "without"), ({**plain, "DICOMFLOW_PRELABEL_ENDPOINT": endpoint}, "with")):
        lam.update_function_configuration(FunctionName=arn, Environment={"Variables": env})
        invoke()  # the new configuration's cold start, not timed
        for _ in range(args.invocations):
            t0 = time.perf_counter()
            invoke()
            times[key].append((time.perf_counter() - t0) * 1000)
    ep.invoke_realtime(endpoint, body)
    for _ in range(args.invocations):
        t0 = time.perf_counter()
        ep.invoke_realtime(endpoint, body)
        times["endpoint"].append((time.perf_counter() - t0) * 1000)
    lam.update_function_configuration(FunctionName=arn, Environment={"Variables": variables})
    out = {f"{k}_ms": {**Sample(tuple(v)).as_dict(1), "p95": round(pct(v, 0.95), 1)} for k, v in times.items()}
    out["with_over_without"] = round(statistics.median(times["with"]) / statistics.median(times["without"]), 1)
    return out


def pre_label_timing(lam: Any, arn: str, event: dict[str, Any], args: argparse.Namespace) -> dict[str, object]:
    """Pre-label through lambda:Invoke, warm (a kept environment) and cold (a new configuration version
    each time, so module import and init run again), against the floor: the handler called in this process."""

    def invoke() -> float:
        t0 = time.perf_counter()
        resp = lam.invoke(FunctionName=arn, Payload=json.dumps(event))
        body = resp["Payload"].read()
        assert not resp.get("FunctionError"), body
        return (time.perf_counter() - t0) * 1000

    variables = lam.get_function_configuration(FunctionName=arn)["Environment"]["Variables"]
    cold = []
    for i in range(args.repeats):
        lam.update_function_configuration(FunctionName=arn, Environment={"Variables": {
            **variables, "BENCH_VERSION": str(i)}})
        cold.append(invoke())
    warm = [invoke() for _ in range(args.invocations)]
    handler = _load_handler(REPO / "lambdas" / "pre_label" / "handler.py")
    with mock.patch.dict(os.environ, variables):
        handler(event, None)  # the first call opens the PACS connection, as the warm Lambda's first did
        floor = []
        for _ in range(args.invocations):
            t0 = time.perf_counter()
            handler(event, None)
            floor.append((time.perf_counter() - t0) * 1000)
    dispatch = Sample(tuple(_trivial_invokes(lam, arn, args.invocations)))
    w, c, f = Sample(tuple(warm)), Sample(tuple(cold)), Sample(tuple(floor))
    return {"warm_ms": {**w.as_dict(1), "p95": round(pct(warm, 0.95), 1)}, "cold_ms": c.as_dict(1),
            "in_process_floor_ms": f.as_dict(1), "trivial_handler_through_invoke_ms": dispatch.as_dict(1),
            "warm_over_floor": round(ratio(w, f), 2), "cold_over_warm": round(ratio(c, w), 1)}


def _trivial_invokes(lam: Any, like: str, n: int) -> list[float]:
    """The emulator's own share: a handler that returns at once, warm, through lambda:Invoke."""
    import io
    import zipfile

    config = lam.get_function_configuration(FunctionName=like)
    name = config["FunctionName"] + "-trivial"
    try:
        lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("trivial.py", "def handler(event, context):\n    return {}\n")
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=config["Role"],
                            Handler="trivial.handler", Code={"ZipFile": buf.getvalue()})
    lam.invoke(FunctionName=name)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        lam.invoke(FunctionName=name)["Payload"].read()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _load_handler(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("bench_pre_label_handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def manifest_timing(settings: Settings, instances: int, repeats: int) -> dict[str, object]:
    """``label manifest --per instance`` over ``instances`` MR instances: Orthanc's /tools/find (ours, the
    default) against one paged QIDO-RS query (the portable way), in seconds; both give the same objects."""
    from dicomflow.credentials import pacs_connection
    from dicomflow.demo import seed as seeding
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom.orthanc import OrthancRest
    from dicomflow.groundtruth import manifest

    slices = 50
    studies = seeding.plan(chest=0, hippocampus=-(-instances // slices), real=False,
                           hippocampus_shape=(slices, 8, 8))
    conn = pacs_connection()
    client = dicomweb.connect(conn)
    t0 = time.perf_counter()
    seeding.seed(client, settings.data_dir, studies)
    seeded_s = time.perf_counter() - t0
    filters = {"Modality": "MR"}
    ours = manifest.orthanc_input_lines(OrthancRest(conn), filters, "instance")
    qido = manifest.query_input_lines(client, filters, "instance")
    assert sorted(map(json.dumps, ours)) == sorted(map(json.dumps, qido)), "the two ways disagree"
    times = interleaved({"tools_find": lambda: manifest.orthanc_input_lines(OrthancRest(conn), filters, "instance"),
                         "qido": lambda: manifest.query_input_lines(client, filters, "instance")}, repeats, warmup=0)
    seconds = {k: Sample(tuple(v / 1000 for v in s.values)) for k, s in times.items()}
    return {"instances": len(ours), "seed_s": round(seeded_s, 1),
            "tools_find_s": seconds["tools_find"].as_dict(3), "qido_s": seconds["qido"].as_dict(3),
            "qido_over_ours": round(seconds["qido"].median / seconds["tools_find"].median, 1)}


if __name__ == "__main__":
    main()
