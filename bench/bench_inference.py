"""Inference benchmark: series retrieval vs the WADO-RS floor vs per-instance GETs; latency by stage.

Starts its own local cloud (Orthanc + emulated AWS) in a temp dir on free ports, seeds a 30- and a
200-slice synthetic MR series (256x256), then prints, per series:

* ``floor``     - Orthanc's bare WADO-RS series retrieval: one multipart GET, bytes only, no parsing;
* ``retrieve``  - ``dicomflow.dicomweb.retrieve_series`` (one multipart request, parsed to datasets);
* ``per-inst``  - sequential per-instance WADO-RS GETs (the AWS sample's way);
* end-to-end async latency through the emulated endpoint (invoke -> result in S3OutputPath) split
  into queue (invoke to start of processing), query, retrieve, preprocess, model (the network's
  forward pass), postprocess (label map on the original grid, volumes), encode (SR+SEG), stow and
  the rest (S3 output, notification), and the share of it that is not the model.

The model is the training job's segmentation3d UNet at its default input size (32x48x40), trained
here for ~15 s on 12 synthetic volumes so that its masks are sparse (an untrained one labels most
of the volume, which inflates the SEG); ``--untrained`` skips that.

Run: ``.venv/bin/python bench/bench_inference.py [--repeats 5] [--sizes 30,200] [--untrained]``.
Medians in milliseconds. The end of a request is its SNS success notification, read from an SQS
queue with long polls (no CPU spent waiting); ``rest`` is the S3 output and the notification.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class _Notifications:
    """The endpoint's Success/Error SNS topics delivered to an SQS queue, read with long polls.

    A long poll waits on the emulator's condition variable, so the benchmark takes no CPU while the
    service works; polling S3 every 20 ms did (two boto3 calls and two moto requests per poll),
    and on two cores that slowed the model's OpenMP threads 2-3x.
    """

    def __init__(self, endpoint: str) -> None:
        from dicomflow import aws
        from dicomflow.inference import endpoint as ep

        topics = ep.async_config(endpoint)["OutputConfig"]["NotificationConfig"]
        self.sqs = aws.client("sqs")
        self.queue = self.sqs.create_queue(QueueName=f"{endpoint}-bench")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns = aws.client("sns")
        for topic in (topics["SuccessTopic"], topics["ErrorTopic"]):
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})

    def wait(self, inference_id: str, timeout_s: float = 900) -> tuple[dict, float]:
        """The notification of ``inference_id`` and the time it arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=20)
            for msg in got.get("Messages", []):
                arrived = time.time()
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=msg["ReceiptHandle"])
                body = json.loads(msg["Body"])
                if body.get("inferenceId") == inference_id:
                    return body, arrived
        raise SystemExit(f"no notification for {inference_id} in {timeout_s:.0f} s")


def _async_split(endpoint: str, study: str, repeats: int) -> dict[str, float]:
    """Median per-stage latency of ``repeats`` async invocations (one at a time) plus e2e and the rest."""
    from dicomflow.inference import endpoint as ep

    notifications = _Notifications(endpoint)
    rows = []
    for _ in range(repeats + 1):  # the first one warms the serving process up
        inv = ep.invoke_async(endpoint, {"studyInstanceUID": study, "outputs": ["sr", "seg"], "storeToPacs": True})
        note, done = notifications.wait(inv.inference_id)
        ok, data = ep.wait_result(inv, timeout_s=60)
        if not ok or note.get("invocationStatus") != "Completed":
            raise SystemExit(f"async inference failed: {note.get('failureReason') or data[:300]!r}")
        timing = ep.with_queue_time(inv, json.loads(data))["timingMs"]
        timing["e2e"] = (done - inv.invoked_at) * 1000
        timing["rest"] = timing["e2e"] - timing["queue"] - timing["total"]
        rows.append(timing)
    rows = rows[1:]
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}


def _trained_artifact(home: Path) -> Path:
    """The training job's segmentation3d model at its default input size, trained briefly on synthetic series."""
    from training_channels import hippocampus_channel, run_entry, sm_layout

    root = home / "trained"
    env = sm_layout(root)
    hippocampus_channel(root / "input/data/train", 12, seed=0, shape=(32, 48, 40))
    r = run_entry(env, {"task": "segmentation3d", "epochs": 12, "batch_size": 2, "lr": 0.01, "val_fraction": 0.2,
                        "test_fraction": 0.0, "seed": 0})
    if r.returncode != 0:
        raise SystemExit(f"training the benchmark model failed:\n{r.stderr[-2000:]}")
    return root / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="30,200")
    parser.add_argument("--untrained", action="store_true", help="serve an untrained UNet (dense masks)")
    args = parser.parse_args()

    from dicomflow.config import Settings
    from dicomflow.local.moto_server import client_environment
    from dicomflow.local.services import LocalCloud, free_port

    home = Path(tempfile.mkdtemp(prefix="dicomflow-bench-"))
    settings = Settings.load(data_dir=home, orthanc_http_port=free_port(), orthanc_dicom_port=free_port(),
                             aws_port=free_port())
    os.environ.update({**client_environment(settings), "DICOMFLOW_HOME": str(home)})
    cloud = LocalCloud(settings)
    cloud.up()
    try:
        from model_helpers import model_tarball, untrained_artifact

        from dicomflow import aws, dicomweb, synthetic
        from dicomflow.credentials import pacs_connection
        from dicomflow.inference import endpoint as ep
        from dicomflow.local.endpoints import register_image

        conn = pacs_connection()
        client = dicomweb.connect(conn)
        session = dicomweb.make_session(conn)
        model_dir = (untrained_artifact(home, "segmentation3d", ["anterior", "posterior"]) if args.untrained
                     else _trained_artifact(home))
        s3 = aws.client("s3")
        s3.create_bucket(Bucket="bench-inference")
        s3.put_object(Bucket="bench-inference", Key="model.tar.gz", Body=model_tarball(model_dir))
        register_image(home, "dicomflow-inference-bench",
                       {"command": ["python", "-m", "inference_container.serve"],
                        "cwd": str(Path(__file__).resolve().parents[1])})
        endpoint = "bench-seg"
        ep.deploy(endpoint, "s3://bench-inference/model.tar.gz", image="dicomflow-inference-bench:latest",
                  max_concurrency=1)
        print(f"{'series':>14} {'MB':>6} {'floor':>8} {'retrieve':>9} {'per-inst':>9} "
              f"{'ret/floor':>9} {'perinst/ret':>11}")
        stage_rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            series = synthetic.hippocampus_series(1, seed=1000 + n, shape=(n, 256, 256))[0]
            dicomweb.store(client, series.datasets)
            study, uid = series.study_uid, series.series_uid
            sops = [str(ds.SOPInstanceUID) for ds in series.datasets]
            url = f"{conn.url}/studies/{study}/series/{uid}"
            accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            size = len(session.get(url, headers=accept, timeout=120).content) / 1e6
            floor = _median_ms(lambda: session.get(url, headers=accept, timeout=120).content, args.repeats)  # noqa: B023
            ret = _median_ms(lambda: dicomweb.retrieve_series(client, study, uid), args.repeats)  # noqa: B023
            per = _median_ms(lambda: [dicomweb.retrieve_instance(client, study, uid, s) for s in sops],  # noqa: B023
                             max(1, args.repeats // 2))
            print(f"{n:>7} slices {size:>6.1f} {floor:>8.1f} {ret:>9.1f} {per:>9.1f} {ret / floor:>9.2f} "
                  f"{per / ret:>11.1f}")
            stage_rows.append((n, _async_split(endpoint, study, args.repeats)))
        print("\nend-to-end async latency by stage (median, ms; SR+SEG encoded and stored):")
        keys = ["queue", "query", "retrieve", "preprocess", "model", "postprocess", "encode", "stow", "rest", "e2e"]
        print(f"{'series':>14} " + " ".join(f"{k:>11}" for k in keys) + f" {'non-model %':>11}")
        for n, row in stage_rows:
            share = 100 * (row["e2e"] - row["model"]) / row["e2e"]
            print(f"{n:>7} slices " + " ".join(f"{row.get(k, 0.0):>11.1f}" for k in keys) + f" {share:>11.1f}")
    except requests.RequestException as exc:
        raise SystemExit(f"benchmark failed talking to the local cloud: {exc}") from None
    finally:
        cloud.down()


if __name__ == "__main__":
    main()
