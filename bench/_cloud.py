"""The private local cloud a benchmark runs against, and the endpoint plumbing two of them share.

``private_cloud()`` starts Orthanc (and, unless ``pacs_only``, the emulated AWS) on free ports in a
temporary data dir, points this process's AWS and PACS settings at it, and stops it afterwards, so a
benchmark never touches ``~/.dicomflow`` or the default ports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomflow.config import Settings
from dicomflow.emulator.cloud.cloud import LocalCloud
from dicomflow.emulator.cloud.moto import client_environment
from dicomflow.emulator.cloud.orthanc import OrthancService
from dicomflow.emulator.cloud.service import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' synthetic channels and model helpers

#: settings of the caller's shell that would point the benchmark elsewhere
_FOREIGN = ("DICOMFLOW_PACS_URL", "DICOMFLOW_PACS_USERNAME", "DICOMFLOW_PACS_PASSWORD", "DICOMFLOW_PACS_SECRET_ARN",
            "AWS_PROFILE")


@dataclass
class Cloud:
    home: Path
    settings: Settings
    cloud: LocalCloud

    def service(self, name: str):
        return next(s for s in self.cloud.services if s.name == name)


@contextmanager
def private_cloud(prefix: str = "dicomflow-bench-", pacs_only: bool = False) -> Iterator[Cloud]:
    """A local cloud of its own for the benchmark's lifetime (see the module docstring)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    ports = {"orthanc_http_port": free_port(), "orthanc_dicom_port": free_port()}
    if not pacs_only:
        ports["aws_port"], ports["search_port"], ports["viewer_port"] = free_port(), free_port(), free_port()
    settings = Settings.load(data_dir=home, **ports)
    for name in _FOREIGN:
        os.environ.pop(name, None)
    os.environ["DICOMFLOW_HOME"] = str(home)
    if not pacs_only:
        os.environ.update(client_environment(settings))
    cloud = LocalCloud(settings, [OrthancService(settings)]) if pacs_only else LocalCloud(settings)
    cloud.up()
    try:
        yield Cloud(home, settings, cloud)
    finally:
        cloud.down()
        shutil.rmtree(home, ignore_errors=True)


def serve_model(home: Path, model_dir: Path, endpoint: str, max_concurrency: int) -> str:
    """Upload ``model_dir`` as model.tar.gz and deploy it as an async endpoint served by
    ``inference_container.serve`` from this checkout; returns the endpoint name."""
    from model_helpers import model_tarball

    from dicomflow import aws
    from dicomflow.emulator.moto.endpoints import register_image
    from dicomflow.inference import endpoint as ep

    bucket = f"{endpoint}-models"
    aws.client("s3").create_bucket(Bucket=bucket)
    aws.client("s3").put_object(Bucket=bucket, Key="model.tar.gz", Body=model_tarball(model_dir))
    image = f"dicomflow-{endpoint}"
    register_image(home, image, {"command": ["python", "-m", "inference_container.serve"], "cwd": str(REPO)})
    ep.deploy(endpoint, f"s3://{bucket}/model.tar.gz", image=f"{image}:latest", max_concurrency=max_concurrency)
    return endpoint


class Notifications:
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
        self.queue = self.sqs.create_queue(QueueName=f"{endpoint}-notifications")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for topic in (topics["SuccessTopic"], topics["ErrorTopic"]):
            aws.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn,
                                        Attributes={"RawMessageDelivery": "true"})
        self.seen: dict[str, tuple[dict, float]] = {}  # inference id -> (notification, when it arrived)

    def _receive(self, wait_s: int) -> None:
        got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
        for msg in got.get("Messages", []):
            arrived = time.time()
            body = json.loads(msg["Body"])
            self.seen[body.get("inferenceId", "?")] = (body, arrived)
            self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=msg["ReceiptHandle"])

    def wait(self, inference_id: str, timeout_s: float = 900) -> tuple[dict, float]:
        """The notification of ``inference_id`` and the time it arrived."""
        deadline = time.monotonic() + timeout_s
        while inference_id not in self.seen and time.monotonic() < deadline:
            self._receive(20)
        if inference_id not in self.seen:
            raise SystemExit(f"no notification for {inference_id} in {timeout_s:.0f} s")
        return self.seen[inference_id]

    def drain(self, ids: set[str], timeout_s: float) -> None:
        """Collect notifications until every one of ``ids`` has come or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while not ids <= set(self.seen) and time.monotonic() < deadline:
            self._receive(2)
