"""``dicomflow train``: run the training job with ``sagemaker.pytorch.PyTorch(...).fit(...)``.

``--instance-type local`` runs it on this machine through the SDK's local mode
(``dicomflow.local.sagemaker_session()``: no Docker, the entry point runs as host processes);
any ``ml.*`` type runs it on SageMaker in the configured account.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import click

from dicomflow import aws
from dicomflow.cli.common import console, json_option, print_json
from dicomflow.errors import DicomflowError
from dicomflow.models import METADATA_FILE, TASKS
from dicomflow.training.metrics import METRIC_DEFINITIONS

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = ROOT / "training_job"
PACKAGE_DIR = ROOT / "dicomflow"
LOCAL_ROLE = "arn:aws:iam::123456789012:role/dicomflow-sagemaker-local"
FRAMEWORK_VERSION, PY_VERSION = "2.5", "py311"


class TrainError(DicomflowError):
    """The training job could not be started or did not complete."""


def parse_hps(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("epochs=3", "lr=0.01")`` -> dict; a pair without ``=`` is an error saying so."""
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise TrainError(f"--hp expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _sdk_logs_to_stderr() -> None:
    """The SDK's config logger prints INFO lines to stdout unless it already has a handler: give it stderr."""
    logger = logging.getLogger("sagemaker.config")
    if not logger.handlers and not logging.getLogger("sagemaker").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def _session(instance_type: str) -> Any:
    if instance_type.startswith("local"):
        try:
            from dicomflow.local import sagemaker_session
        except ImportError as exc:
            raise TrainError("local mode needs dicomflow.local.sagemaker_session (the local cloud's SDK host "
                             "mode); run `dicomflow up` with this version of dicomflow") from exc
        return sagemaker_session()
    import sagemaker

    return sagemaker.Session(boto_session=aws.session())


def train_job(task: str, data: str, *, instance_type: str = "local", instance_count: int = 1,
              hps: dict[str, str] | None = None, output: str | None = None, role: str | None = None,
              image_uri: str | None = None, wait: bool = True, job_name: str | None = None) -> dict[str, Any]:
    """Start (and by default wait for) a training job; returns its name, status, artifact and final metrics."""
    _sdk_logs_to_stderr()
    from sagemaker.pytorch import PyTorch

    if task not in TASKS:
        raise TrainError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    aws.parse_s3_uri(data)
    check_channel(data)
    local = instance_type.startswith("local")
    role = role or os.environ.get("DICOMFLOW_SAGEMAKER_ROLE") or (LOCAL_ROLE if local else None)
    if not role:
        raise TrainError("a SageMaker execution role is needed: pass --role ARN or set DICOMFLOW_SAGEMAKER_ROLE")
    session = _session(instance_type)
    bucket = session.default_bucket()
    output = output or f"s3://{bucket}/dicomflow/models/"
    kwargs: dict[str, Any] = {"image_uri": image_uri} if image_uri else {
        "framework_version": FRAMEWORK_VERSION, "py_version": PY_VERSION}
    if not local:
        kwargs["checkpoint_s3_uri"] = output.rstrip("/") + "/checkpoints/"
    estimator = PyTorch(
        entry_point="train.py", source_dir=str(SOURCE_DIR), dependencies=[str(PACKAGE_DIR)], role=role,
        instance_type=instance_type, instance_count=instance_count, sagemaker_session=session,
        hyperparameters={"task": task, **(hps or {})}, metric_definitions=METRIC_DEFINITIONS,
        output_path=output, base_job_name=f"dicomflow-{task.replace('3d', '-3d').replace('2d', '-2d')}",
        disable_profiler=True, **kwargs)
    # the job's log (progress: one metric line per epoch) goes to stderr; stdout stays for results/JSON
    with contextlib.redirect_stdout(sys.stderr):
        estimator.fit(inputs={"train": data}, wait=wait, logs="All" if wait else "None", job_name=job_name)
    name = estimator.latest_training_job.name
    result: dict[str, Any] = {"job_name": name, "task": task, "instance_type": instance_type,
                              "instance_count": instance_count, "data": data}
    desc = session.sagemaker_client.describe_training_job(TrainingJobName=name)
    result.update({"status": desc.get("TrainingJobStatus"),
                   "model_artifact": desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
                   or getattr(estimator, "model_data", None),
                   "failure_reason": desc.get("FailureReason"),
                   "metrics": {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])}})
    if wait and not result["metrics"] and result["model_artifact"]:
        # local mode scrapes no metric lines: the artifact records the final metrics itself
        result["metrics"] = artifact_metrics(str(result["model_artifact"]))
    return result


def check_channel(data: str) -> None:
    """Fail early, with the fix, when the channel has no ``manifest.jsonl`` (an export not yet run)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = aws.parse_s3_uri(data)
    key = (prefix.rstrip("/") + "/" if prefix.strip("/") else "") + "manifest.jsonl"
    try:
        aws.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise TrainError(f"{aws.s3_uri(bucket, key)} does not exist: export the dataset first with "
                             "`dicomflow dataset export --manifest ... --to " + data + "`") from None
        raise TrainError(f"cannot read the training channel {data}: {exc}") from None
    except BotoCoreError as exc:
        raise TrainError(f"S3 does not answer ({exc}); for the local cloud run `dicomflow up`") from None


def artifact_metrics(model_uri: str) -> dict[str, float]:
    """The numeric ``metrics`` recorded in ``dicomflow_model.json`` of a ``model.tar.gz`` in S3 (or file://)."""
    if model_uri.startswith("file://"):
        fileobj: Any = open(model_uri.removeprefix("file://"), "rb")  # closed below
    else:
        bucket, key = aws.parse_s3_uri(model_uri)
        fileobj = io.BytesIO(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == METADATA_FILE), None)
            handle = tar.extractfile(member) if member is not None else None
            meta = json.loads(handle.read()) if handle is not None else {}
    except (tarfile.TarError, OSError, ValueError):
        return {}
    finally:
        fileobj.close()
    metrics = meta.get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@click.command("train")
@click.option("--task", type=click.Choice(TASKS), required=True, help="What to train.")
@click.option("--data", required=True, help="Training channel: s3:// prefix from `dicomflow dataset export`.")
@click.option("--instance-type", default="local", show_default=True,
              help="local (this machine, no Docker) or a SageMaker type such as ml.g5.xlarge.")
@click.option("--instance-count", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Hosts; > 1 trains with torch.distributed (gloo on CPU, nccl on GPU).")
@click.option("--hp", "hp_pairs", multiple=True, metavar="KEY=VALUE",
              help="Hyperparameter (repeatable): epochs, batch_size, lr, image_size, spatial_size, "
                   "spacing (segmentation3d at that voxel size in mm, on patches), intensity (percentile or "
                   "zscore), val_every (validate every N epochs), ...")
@click.option("--output", default=None, help="S3 prefix for model.tar.gz [s3://<default bucket>/dicomflow/models/].")
@click.option("--role", default=None, help="SageMaker execution role ARN [env DICOMFLOW_SAGEMAKER_ROLE].")
@click.option("--image-uri", default=None, help="Training image built from training_job/Dockerfile.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Stream logs and wait for the end.")
@json_option
def train(task: str, data: str, instance_type: str, instance_count: int, hp_pairs: tuple[str, ...],
          output: str | None, role: str | None, image_uri: str | None, wait: bool, as_json: bool) -> None:
    """Train a model on an exported dataset with the SageMaker PyTorch estimator."""
    try:
        aws.parse_s3_uri(data)
    except ValueError as exc:
        raise TrainError(f"--data: {exc}") from None
    result = train_job(task, data, instance_type=instance_type, instance_count=instance_count,
                       hps=parse_hps(hp_pairs), output=output, role=role, image_uri=image_uri, wait=wait)
    if as_json:
        print_json(result)
        return
    console.print(f"training job {result['job_name']}: {result.get('status', 'started')}")
    for name, value in sorted((result.get("metrics") or {}).items()):
        console.print(f"  {name} = {value:.4f}")
    if result.get("model_artifact"):
        console.print(f"model: {result['model_artifact']}", soft_wrap=True)
    if result.get("status") == "Failed":
        raise TrainError(f"training job failed: {result.get('failure_reason')}")
