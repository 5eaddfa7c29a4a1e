"""Launch the training job the SageMaker SDK way: ``sagemaker.pytorch.PyTorch(...).fit(...)``.

``training_job/train.py`` is the entry point and this package its dependency; any ``ml.*`` instance
type is a managed training job (on SageMaker in the configured account, or run by the local cloud when
``AWS_ENDPOINT_URL`` points at it), ``local`` runs on this machine through the SDK's local mode with
the session the caller passes (the local cloud's: no Docker, host processes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tarfile
import time
from typing import Any, BinaryIO

from dicomflow import aws
from dicomflow.config import runtime
from dicomflow.errors import DicomflowError
from dicomflow.modeling.contract import TASKS, numeric_metrics, read_metadata
from dicomflow.paths import REPO_ROOT
from dicomflow.training.channel import MANIFEST, channel_uri
from dicomflow.training.curves import CURVES_DIR
from dicomflow.training.metrics import METRIC_DEFINITIONS

SOURCE_DIR = REPO_ROOT / "training_job"
PACKAGE_DIR = REPO_ROOT / "dicomflow"
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


def sdk_logs_to_stderr() -> None:
    """The SDK's config logger prints INFO lines to stdout unless it already has a handler: give it stderr."""
    logger = logging.getLogger("sagemaker.config")
    if not logger.handlers and not logging.getLogger("sagemaker").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def _session(instance_type: str, session: Any) -> Any:
    if session is not None:
        return session
    if instance_type.startswith("local"):
        raise TrainError("local mode needs a local-mode SageMaker session: pass the local cloud's "
                         "(dicomflow.emulator.sagemaker_sdk.sagemaker_session(); `dicomflow train` does)")
    import sagemaker

    return sagemaker.Session(boto_session=aws.session())


TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")


def _follow(session: Any, job_name: str, poll: float | None = None) -> None:
    """Print the job's status changes and CloudWatch log lines until it ends; a job that did not complete
    raises :class:`TrainError` with its ``FailureReason``.

    What ``estimator.fit(logs=True)`` shows, without its waits (it asks for the job's status every 30 s
    whatever its poll): every ``poll`` seconds, 1 against the local cloud, 10 against AWS.
    """
    from botocore.exceptions import ClientError

    poll = poll if poll is not None else (1.0 if aws.is_emulated() else 10.0)
    sm, logs = session.sagemaker_client, session.boto_session.client("logs")
    tokens: dict[str, str | None] = {}
    shown = 0

    def print_new_lines(hosts: int) -> None:
        try:
            streams = logs.describe_log_streams(logGroupName=TRAINING_LOG_GROUP,
                                                logStreamNamePrefix=job_name + "/")["logStreams"]
        except ClientError:  # no log group yet
            return
        for stream in sorted(s["logStreamName"] for s in streams):
            kwargs = {"nextToken": tokens[stream]} if tokens.get(stream) else {"startFromHead": True}
            page = logs.get_log_events(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream, **kwargs)
            tokens[stream] = page.get("nextForwardToken")
            host = stream.split("/", 1)[1].rsplit("-", 1)[0]
            for event in page["events"]:
                print(f"{host} | {event['message']}" if hosts > 1 else event["message"])

    while True:
        desc = sm.describe_training_job(TrainingJobName=job_name)
        for transition in desc.get("SecondaryStatusTransitions", [])[shown:]:
            print(f"{transition['StartTime']:%Y-%m-%d %H:%M:%S} {transition['Status']} - "
                  f"{transition.get('StatusMessage', '')}")
        shown = len(desc.get("SecondaryStatusTransitions", []))
        print_new_lines(int(desc.get("ResourceConfig", {}).get("InstanceCount", 1)))
        if desc["TrainingJobStatus"] in TERMINAL_STATUSES:
            break
        time.sleep(poll)
    if desc["TrainingJobStatus"] != "Completed":
        raise TrainError(f"training job {job_name} {desc['TrainingJobStatus'].lower()}: "
                         f"{desc.get('FailureReason') or 'no reason given'}")
    print(f"Training seconds: {desc.get('TrainingTimeInSeconds', '?')}")


def train_job(task: str, data: str, *, instance_type: str = "local", instance_count: int = 1,
              hps: dict[str, str] | None = None, output: str | None = None, role: str | None = None,
              image_uri: str | None = None, wait: bool = True, job_name: str | None = None,
              checkpoint_name: str | None = None, session: Any = None) -> dict[str, Any]:
    """Start (and by default wait for) a training job; returns its name, status, artifact and final metrics.

    ``session`` is the SageMaker session to use: for ``local`` instance types, the local cloud's
    (the SDK's local mode without Docker); by default ``sagemaker.Session()`` for ``ml.*`` types (a managed
    job: on SageMaker, or run by the local cloud when ``AWS_ENDPOINT_URL`` points at it). Managed jobs
    checkpoint to ``<output>/checkpoints/<checkpoint_name or job name>/``: a retry under a new name that
    passes the same ``checkpoint_name`` resumes there.
    """
    sdk_logs_to_stderr()
    from sagemaker.pytorch import PyTorch

    if task not in TASKS:
        raise TrainError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    aws.parse_s3_uri(data)
    check_channel(data)
    local = instance_type.startswith("local")
    role = role or runtime().sagemaker_role or (LOCAL_ROLE if local else None)
    if not role:
        raise TrainError("a SageMaker execution role is needed: pass --role ARN or set DICOMFLOW_SAGEMAKER_ROLE")
    session = _session(instance_type, session)
    bucket = session.default_bucket()
    output = output or f"s3://{bucket}/dicomflow/models/"
    base_job_name = f"dicomflow-{task.replace('3d', '-3d').replace('2d', '-2d')}"
    kwargs: dict[str, Any] = {"image_uri": image_uri} if image_uri else {
        "framework_version": FRAMEWORK_VERSION, "py_version": PY_VERSION}
    if not local:
        from sagemaker.utils import name_from_base

        job_name = job_name or name_from_base(base_job_name)
        # one prefix per job (or per retried job): a job restores only its own checkpoints
        kwargs["checkpoint_s3_uri"] = f"{output.rstrip('/')}/checkpoints/{checkpoint_name or job_name}/"
    estimator = PyTorch(
        entry_point="train.py", source_dir=str(SOURCE_DIR), dependencies=[str(PACKAGE_DIR)], role=role,
        instance_type=instance_type, instance_count=instance_count, sagemaker_session=session,
        hyperparameters={"task": task, **(hps or {})}, metric_definitions=METRIC_DEFINITIONS,
        output_path=output, base_job_name=base_job_name, disable_profiler=True, **kwargs)
    # the job's log (progress: one metric line per epoch) goes to stderr; stdout stays for results/JSON
    with contextlib.redirect_stdout(sys.stderr):
        if local:
            estimator.fit(inputs={"train": data}, wait=wait, logs="All" if wait else "None", job_name=job_name)
        else:
            estimator.fit(inputs={"train": data}, wait=False, job_name=job_name)
            if wait:
                _follow(session, estimator.latest_training_job.name)
    name = estimator.latest_training_job.name
    result: dict[str, Any] = {"job_name": name, "task": task, "instance_type": instance_type,
                              "instance_count": instance_count, "data": data}
    desc = session.sagemaker_client.describe_training_job(TrainingJobName=name)
    result.update({"status": desc.get("TrainingJobStatus"),
                   "model_artifact": desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
                   or getattr(estimator, "model_data", None),
                   "failure_reason": desc.get("FailureReason"),
                   "metrics": final_metrics(desc)})
    if wait and not result["metrics"] and result["model_artifact"]:
        # local mode scrapes no metric lines: the artifact records the final metrics itself
        result["metrics"] = artifact_metrics(str(result["model_artifact"]))
    if wait and result["model_artifact"]:
        result["curves"] = training_curves(str(result["model_artifact"]))
    return result


def training_curves(model_uri: str) -> dict[str, Any] | None:
    """Where the job's curve PNGs are: ``{"archive": <output.tar.gz beside model.tar.gz>, "files": [their
    paths in it]}``, None when that archive is not there or holds none."""
    archive = model_uri.rsplit("/", 1)[0] + "/output.tar.gz"
    try:
        with _open(archive) as fileobj, tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            # SageMaker packs /opt/ml/output/data; the SDK's local mode packs /opt/ml/output (data/ inside)
            files = sorted(name for m in tar.getmembers() if m.isfile()
                           and (name := m.name.removeprefix("./")).removeprefix("data/").startswith(f"{CURVES_DIR}/"))
    except (OSError, aws.S3Error, tarfile.TarError):
        return None
    return {"archive": archive, "files": files} if files else None


def _open(uri: str) -> BinaryIO:
    """An object in S3 (read whole) or a ``file://`` path, as a binary file to close."""
    if uri.startswith("file://"):
        return open(uri.removeprefix("file://"), "rb")  # noqa: SIM115 - the caller closes it
    return io.BytesIO(aws.read(uri))


def final_metrics(description: dict[str, Any]) -> dict[str, float]:
    """``FinalMetricDataList`` of a ``DescribeTrainingJob`` answer as ``{name: value}``."""
    return {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}


def check_channel(data: str) -> None:
    """Fail early, with the fix, when the channel has no ``manifest.jsonl`` (an export not yet run)."""
    manifest_uri = channel_uri(data, MANIFEST)
    try:
        found = aws.exists(manifest_uri)
    except aws.S3Error as exc:
        raise TrainError(f"cannot read the training channel {data}: {exc}") from None
    if not found:
        raise TrainError(f"{manifest_uri} does not exist: export the dataset first with "
                         f"`dicomflow dataset export --manifest ... --to {data}`")


def artifact_metrics(model_uri: str) -> dict[str, float]:
    """The numeric ``metrics`` recorded in ``dicomflow_model.json`` of a ``model.tar.gz`` in S3 (or file://)."""
    fileobj = _open(model_uri)
    try:
        meta = read_metadata(fileobj)
    except (tarfile.TarError, OSError, ValueError):
        return {}
    finally:
        fileobj.close()
    return numeric_metrics(meta)
