"""Batch transform over many studies: one study JSON per S3 object, one SageMaker transform job.

:func:`write_inputs` puts ``<to>/input/<StudyInstanceUID>.json`` for each study; :func:`start` creates the
transform job with the endpoint's Model (``SplitType`` None, ``SingleRecord``: one study per request);
SageMaker writes ``<to>/output/<StudyInstanceUID>.json.out``. :func:`follow` polls the job and counts
the outputs for a progress bar; :func:`results` reads them: a study's answer, or the failure record the
serving container writes in batch mode (``"failed": true``) — one bad study never stops the others.
The same calls run on AWS and on the local cloud.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.dicom.uid import is_uid
from dicomflow.inference.endpoint import DEFAULT_INSTANCE_TYPE, EndpointError

TERMINAL = ("Completed", "Failed", "Stopped")


@dataclass
class BatchJob:
    name: str
    arn: str
    input_uri: str
    output_uri: str
    studies: list[str]


def model_of(endpoint: str) -> str:
    """The Model behind an endpoint's first variant (what a transform job runs)."""
    sm = aws.client("sagemaker")
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    except ClientError:
        raise EndpointError(f"endpoint {endpoint} not found; deploy it with 'dicomflow deploy'") from None
    return config["ProductionVariants"][0]["ModelName"]


def read_study_list(lines: Iterable[str]) -> list[str]:
    """Study UIDs from a file: one per line; blank lines and ``#`` comments skipped; duplicates dropped."""
    studies: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not is_uid(line):
            raise EndpointError(f"line {number}: {line[:80]!r} is not a StudyInstanceUID (digits and dots, "
                                "at most 64 characters)")
        if line not in studies:
            studies.append(line)
    if not studies:
        raise EndpointError("the study list is empty: give one StudyInstanceUID per line")
    return studies


def write_inputs(to: str, requests: dict[str, dict[str, Any]]) -> str:
    """Write one study JSON per study under ``<to>/input/``; returns that prefix."""
    prefix = f"{to.rstrip('/')}/input/"
    for study, body in requests.items():
        aws.write(f"{prefix}{study}.json", json.dumps(body).encode(), "application/json")
    return prefix


def start(endpoint: str, to: str, requests: dict[str, dict[str, Any]], *, instance_type: str = DEFAULT_INSTANCE_TYPE,
          instance_count: int = 1, max_concurrent: int = 2, max_payload_mb: int = 1,
          name: str | None = None) -> BatchJob:
    """Write the inputs and create the transform job."""
    try:
        aws.parse_s3_uri(to.rstrip("/") + "/x")
    except ValueError as exc:
        raise EndpointError(f"--to: {exc}") from None
    model = model_of(endpoint)
    name = name or f"{endpoint}-batch-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}"[:63]
    input_uri = write_inputs(to, requests)
    output_uri = f"{to.rstrip('/')}/output/"
    try:
        arn = aws.client("sagemaker").create_transform_job(
            TransformJobName=name, ModelName=model, MaxConcurrentTransforms=max_concurrent,
            MaxPayloadInMB=max_payload_mb, BatchStrategy="SingleRecord",
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                            "ContentType": "application/json", "SplitType": "None"},
            TransformOutput={"S3OutputPath": output_uri, "Accept": "application/json", "AssembleWith": "None"},
            TransformResources={"InstanceType": instance_type, "InstanceCount": instance_count},
        )["TransformJobArn"]
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise EndpointError(f"creating transform job {name} failed: {err.get('Code')}: {err.get('Message')}") from None
    return BatchJob(name, arn, input_uri, output_uri, list(requests))


def _outputs(job: BatchJob) -> int:
    return len(aws.list_keys(job.output_uri, ".out"))


def follow(job: BatchJob, progress: Callable[[int, str], None] | None = None, timeout_s: float = 86400,
           interval: float | None = None) -> dict[str, Any]:
    """Poll until the job ends (``progress(outputs written, status)`` on each poll); its description."""
    sm = aws.client("sagemaker")
    interval = interval if interval is not None else (0.5 if aws.is_emulated() else 15)
    deadline = time.monotonic() + timeout_s
    while True:
        desc = sm.describe_transform_job(TransformJobName=job.name)
        status = desc["TransformJobStatus"]
        if progress:
            progress(_outputs(job), status)
        if status in TERMINAL:
            return desc
        if time.monotonic() > deadline:
            raise EndpointError(f"transform job {job.name} is still {status} after {timeout_s:.0f}s")
        time.sleep(interval)


def results(job: BatchJob) -> list[dict[str, Any]]:
    """One row per study: ``{"study", "ok", "result" | "error"}`` (``error`` also for a missing output)."""
    rows = []
    for study in job.studies:
        data = aws.read_bytes(f"{job.output_uri}{study}.json.out")
        if data is None:
            rows.append({"study": study, "ok": False, "error": "no output (the job failed this study; see "
                                                               "DescribeTransformJob FailureReason)"})
            continue
        try:
            answer = json.loads(data)
        except ValueError:
            rows.append({"study": study, "ok": False, "error": "the output is not JSON"})
            continue
        if isinstance(answer, dict) and answer.get("failed"):
            rows.append({"study": study, "ok": False, "error": answer.get("message") or answer.get("error")})
        else:
            rows.append({"study": study, "ok": True, "result": answer})
    return rows
