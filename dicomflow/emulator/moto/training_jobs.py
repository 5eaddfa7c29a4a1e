"""Managed SageMaker training jobs that really run on the emulated AWS.

moto 5.2.5 records ``CreateTrainingJob`` and answers ``Completed`` at once, with an artifact that does
not exist. :func:`install` makes the job run, for any ``ml.*`` instance type, the way SageMaker runs a
framework container:

* **Image.** A framework training image (``pytorch-training`` from the AWS Deep Learning Containers,
  or the project's ``dicomflow-training``, with any registry and tag) runs the user's script through
  the training toolkit's contract (:mod:`dicomflow.emulator.sagemaker_sdk.compose`, the same code the
  SDK's local mode uses here); ``dicomflow-training`` without ``sagemaker_program`` runs the project's
  ``training_job/train.py``. Any other image ends ``Failed`` with a reason that says so.
* **Layout.** ``<DICOMFLOW_HOME>/training-jobs/<job>/algo-N/`` is host N's ``/opt/ml`` (owner-only: it
  holds the channel data; removed when the job ends, as an instance's storage is):
  ``input/config/{hyperparameters,resourceconfig,inputdataconfig}.json``,
  channels downloaded from S3 in File mode (``S3Prefix`` or ``ManifestFile``; ``FullyReplicated`` or
  ``ShardedByS3Key``; ``FastFile`` is read as File; Pipe mode is refused), ``CheckpointConfig`` restored
  from S3 before the start and synced back every :data:`CHECKPOINT_SYNC_S` seconds and at the end.
* **Hosts.** ``InstanceCount`` host processes start together (torch.distributed rendezvous on
  loopback); the first that fails stops the others.
* **Results.** ``algo-1``'s ``/opt/ml/model`` becomes ``<S3OutputPath>/<job>/output/model.tar.gz`` and
  its ``/opt/ml/output/data`` ``output.tar.gz``. A job that exits 0 without writing a model is
  ``Failed``; a failing one carries its ``/opt/ml/output/failure`` as ``FailureReason``.
* **Status.** ``TrainingJobStatus`` InProgress -> Completed | Failed | Stopping -> Stopped, and
  ``SecondaryStatus`` Starting -> Downloading -> Training -> Uploading -> Completed | Failed | Stopped |
  MaxRuntimeExceeded, each step in ``SecondaryStatusTransitions``. ``StopTrainingJob`` and
  ``StoppingCondition.MaxRuntimeInSeconds`` send SIGTERM (then SIGKILL after :data:`STOP_GRACE_S`);
  a model written by then is still uploaded.
* **Logs and metrics.** Every host's output goes to CloudWatch Logs ``/aws/sagemaker/TrainingJobs``,
  stream ``<job>/algo-N-<epoch seconds>`` (what ``estimator.fit(logs=True)`` and ``estimator.logs()``
  read); ``AlgorithmSpecification.MetricDefinitions`` regexes are applied to each line: the last value
  of each metric is ``FinalMetricDataList``, every value a CloudWatch datapoint (namespace
  ``/aws/sagemaker/TrainingJobs``, dimension ``TrainingJobName``: the SDK's ``TrainingJobAnalytics``).

A job that was running when the emulator stopped (``dicomflow down``, ``kill -9``) is ``Failed`` once it
is back (:func:`fail_interrupted`): its processes are gone and nothing resumes it silently.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from dicomflow import aws
from dicomflow.paths import REPO_ROOT, data_dir, private_dir

log = logging.getLogger("dicomflow.training_jobs")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TOOLKIT_IMAGES = ("pytorch-training", "dicomflow-training")
MAX_INSTANCES = 8
CHECKPOINT_SYNC_S = 5.0
STOP_GRACE_S = 30.0
LOG_FLUSH_S = 0.5
FAILURE_LIMIT = 1024  # SageMaker keeps the first 1024 characters of a FailureReason
INTERRUPTED = ("InternalServerError: the local cloud stopped while the job ran (dicomflow down or a crash); "
               "start the job again")
_HOST_LINE = re.compile(r"^(algo-\d+)\s+\| ?(.*)$")

_config: dict[str, str] = {}
_running: dict[str, _Run] = {}
_running_lock = threading.Lock()


def configure(endpoint_url: str) -> None:
    """Record the emulator's own URL: jobs read and write S3 through it, like any client."""
    _config["endpoint_url"] = endpoint_url


class JobFailure(Exception):
    """The job cannot go on; the message is its FailureReason."""


# ---- what the job runs ------------------------------------------------------------------------

def _repository(image: str) -> str:
    """``<registry>/<path>/repo:tag@digest`` -> ``repo``."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def _hyperparameters(job: Any) -> dict[str, str]:
    """The job's hyperparameters as the toolkit reads them, with the dicomflow image's defaults."""
    hps = dict(job.hyper_parameters or {})
    image = (job.algorithm_specification or {}).get("TrainingImage") or ""
    if _repository(image) == "dicomflow-training" and "sagemaker_program" not in hps:
        hps["sagemaker_program"] = json.dumps("train.py")
        hps["sagemaker_submit_directory"] = json.dumps(f"file://{REPO_ROOT / 'training_job'}")
    return hps


def _check_runnable(job: Any) -> None:
    spec = job.algorithm_specification or {}
    image = spec.get("TrainingImage") or ""
    if not image:
        raise JobFailure("ClientError: AlgorithmSpecification.TrainingImage is required by the local cloud "
                         "(algorithms from AWS Marketplace do not run here)")
    if _repository(image) not in TOOLKIT_IMAGES:
        raise JobFailure(f"ClientError: image {image} does not run in the local cloud: it runs framework "
                         f"training images ({', '.join(TOOLKIT_IMAGES)}) with the user's entry point; use "
                         "sagemaker.pytorch.PyTorch(entry_point=..., framework_version=...) or the "
                         "dicomflow-training image")
    mode = spec.get("TrainingInputMode") or "File"
    channel_modes = {ch.get("InputMode") or mode for ch in job.input_data_config or []}
    if "Pipe" in channel_modes:
        raise JobFailure("ClientError: Pipe input mode does not run in the local cloud; use File or FastFile")
    if "sagemaker_program" not in _hyperparameters(job):
        raise JobFailure("ClientError: no entry point: hyperparameter sagemaker_program is missing "
                         "(the SageMaker SDK's framework estimators set it from entry_point)")


# ---- S3 ---------------------------------------------------------------------------------------

def s3_client(region: str) -> Any:
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=_config.get("endpoint_url"), region_name=region)


def _split(uri: str) -> tuple[str, str]:
    """:func:`dicomflow.aws.parse_s3_uri`, failing the job with its message."""
    try:
        return aws.parse_s3_uri(uri)
    except ValueError as exc:
        raise JobFailure(f"ClientError: {exc}") from None


def _safe_join(root: Path, relative: str) -> Path:
    """``root / relative`` for an S3 key suffix, refusing one that would leave ``root``."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("..", "") for p in parts) or relative.startswith("/"):
        raise JobFailure(f"ClientError: S3 key suffix {relative!r} is not a safe file name in the channel")
    return root.joinpath(*parts)


def s3_objects(s3: Any, source: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(bucket, key, path inside the channel) for each object a channel's S3DataSource names."""
    uri = source.get("S3Uri") or ""
    kind = source.get("S3DataType") or "S3Prefix"
    bucket, prefix = _split(uri)
    if kind == "S3Prefix":
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.endswith("/"):
                    yield bucket, key, key[len(prefix):].lstrip("/") or key.rsplit("/", 1)[-1]
    elif kind == "ManifestFile":
        try:
            entries = json.loads(s3.get_object(Bucket=bucket, Key=prefix)["Body"].read())
            base = entries[0]["prefix"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise JobFailure(f"ClientError: manifest {uri} is not a SageMaker manifest file "
                             f'([{{"prefix": "s3://..."}}, "relative/key", ...]): {exc}') from None
        mbucket, mprefix = _split(base)
        for rel in entries[1:]:
            yield mbucket, mprefix + str(rel), str(rel)
    else:
        raise JobFailure(f"ClientError: S3DataType {kind} does not run in the local cloud; use S3Prefix or "
                         "ManifestFile")


def _download_to(s3: Any, bucket: str, key: str, paths: list[Path], *, shared: bool, what: str) -> int:
    """Download ``s3://bucket/key`` to ``paths[0]`` and give the other paths the same content: hard links where
    the hosts only read it (channels), copies where each host writes its own (checkpoints). Returns its size."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3.download_file(bucket, key, str(paths[0]))
    except Exception as exc:
        raise JobFailure(f"ClientError: cannot download s3://{bucket}/{key} of {what}: {exc}") from None
    for path in paths[1:]:
        (os.link if shared else shutil.copy2)(paths[0], path)
    return paths[0].stat().st_size


def _download_channels(job: Any, hosts: list[str], root: Path, s3: Any) -> int:
    """Download every channel into each host's ``input/data/<channel>``; returns the bytes downloaded."""
    total = 0
    for channel in job.input_data_config or []:
        name = channel["ChannelName"]
        source = (channel.get("DataSource") or {}).get("S3DataSource")
        if source is None:
            raise JobFailure(f"ClientError: channel {name} has no S3DataSource (file systems do not run locally)")
        sharded = source.get("S3DataDistributionType") == "ShardedByS3Key"
        found = False
        for i, (bucket, key, rel) in enumerate(s3_objects(s3, source)):
            found = True
            targets = [hosts[i % len(hosts)]] if sharded else hosts
            paths = [_safe_join(root / host / "input" / "data" / name, rel) for host in targets]
            total += _download_to(s3, bucket, key, paths, shared=True, what=f"channel {name}")
        if not found:
            raise JobFailure(f"ClientError: channel {name}: no object under {source.get('S3Uri')}; "
                             "upload the data or fix S3Uri")
    return total


def _tar(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if directory.is_dir():
            for path in sorted(directory.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buf.getvalue()


class _CheckpointSync:
    """Mirror a host's checkpoint directory to ``CheckpointConfig.S3Uri`` (new or changed files)."""

    def __init__(self, s3: Any, uri: str, local: Path) -> None:
        self.s3, self.local = s3, local
        self.bucket, prefix = _split(uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.seen: dict[Path, tuple[int, int]] = {}

    def restore(self, others: list[Path]) -> int:
        """Download what ``S3Uri`` holds into this host's directory and copy it into ``others``; how many files."""
        count = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix):]
                if not rel or rel.endswith("/"):
                    continue
                paths = [_safe_join(local, rel) for local in (self.local, *others)]
                _download_to(self.s3, self.bucket, obj["Key"], paths, shared=False, what="the checkpoints")
                st = paths[0].stat()
                self.seen[paths[0]] = (st.st_size, st.st_mtime_ns)
                count += 1
        return count

    def sync(self) -> None:
        if not self.local.is_dir():
            return
        for path in self.local.rglob("*"):
            try:
                if not path.is_file():
                    continue
                st = path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
                if self.seen.get(path) == stamp:
                    continue
                key = self.prefix + str(path.relative_to(self.local))
                self.s3.upload_file(str(path), self.bucket, key)
            except FileNotFoundError:  # renamed or deleted while the job runs (an atomic write's temporary file)
                continue
            self.seen[path] = stamp


# ---- logs -------------------------------------------------------------------------------------

class _Logs:
    """One CloudWatch Logs stream per host, written in batches."""

    def __init__(self, account: str, region: str, job_name: str, hosts: list[str]) -> None:
        from moto.logs.models import logs_backends

        self.backend = logs_backends[account][region]
        stamp = int(time.time())
        self.streams = {host: f"{job_name}/{host}-{stamp}" for host in hosts}
        self.pending: dict[str, list[dict[str, Any]]] = {host: [] for host in hosts}
        self.lock = threading.Lock()
        self.last_flush = time.monotonic()
        self.backend.ensure_log_group(LOG_GROUP)
        for stream in self.streams.values():
            self.backend.create_log_stream(LOG_GROUP, stream)

    def add(self, host: str, message: str) -> None:
        with self.lock:
            self.pending[host if host in self.pending else next(iter(self.pending))].append(
                {"timestamp": int(time.time() * 1000), "message": message or " "})
        if time.monotonic() - self.last_flush > LOG_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batches = {h: events for h, events in self.pending.items() if events}
            self.pending = {h: [] for h in self.pending}
            self.last_flush = time.monotonic()
        for host, events in batches.items():
            try:
                self.backend.put_log_events(LOG_GROUP, self.streams[host], events)
            except Exception:  # logging must never fail the job
                log.exception("could not store %d log line(s) of %s", len(events), self.streams[host])


# ---- the run ----------------------------------------------------------------------------------

def _now() -> Any:
    from moto.core.utils import utcnow

    return utcnow()


def _job_environment() -> dict[str, str]:
    """The emulator's environment without dicomflow's secrets: a training job is the user's code and gets its
    role's AWS access (here the emulator's), never the PACS password or the URL signing key."""
    from dicomflow.config import VARIABLES

    secret = {var.env for var in VARIABLES if var.secret}
    return {**{k: v for k, v in os.environ.items() if k not in secret}, "PYTHONUNBUFFERED": "1"}


class _Run:
    """Execute one training job in a thread and keep its moto record up to date."""

    def __init__(self, backend: Any, job: Any) -> None:
        self.job, self.account, self.region = job, backend.account_id, backend.region_name
        self.name = job.training_job_name
        self.count = int((job.resource_config or {}).get("InstanceCount") or 1)
        self.hosts = [f"algo-{i + 1}" for i in range(self.count)]
        self.root = data_dir() / "training-jobs" / self.name
        self.proc: subprocess.Popen | None = None
        self.stop_reason: str | None = None  # "Stopped" or "MaxRuntimeExceeded" once asked to stop
        self.shutdown = False  # the emulator is stopping: the job ends Failed
        self.metrics: dict[str, tuple[float, Any]] = {}
        self.definitions = [(d["Name"], re.compile(d["Regex"]))
                            for d in (job.algorithm_specification or {}).get("MetricDefinitions") or []]
        self.thread = threading.Thread(target=self._run, name=f"training-{self.name}", daemon=True)

    # status ----------------------------------------------------------------------------------
    def _secondary(self, status: str, message: str) -> None:
        now = _now()
        transitions = self.job.secondary_status_transitions
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1]["EndTime"] = now
        transitions.append({"Status": status, "StartTime": now, "StatusMessage": message})
        self.job.secondary_status = status
        self.job.last_modified_time = now

    def _finish(self, status: str, secondary: str, message: str, failure: str | None = None) -> None:
        # the instances' storage goes with the job, as on SageMaker (the channel copies hold PHI)
        shutil.rmtree(self.root, ignore_errors=True)
        self._secondary(secondary, message)
        self.job.secondary_status_transitions[-1]["EndTime"] = self.job.last_modified_time
        self.job.training_job_status = status
        self.job.training_end_time = self.job.last_modified_time
        if failure:
            self.job.failure_reason = failure[:FAILURE_LIMIT]
        start = self.job.training_start_time or self.job.creation_time
        seconds = max(1, int((self.job.training_end_time - start).total_seconds()))
        self.job.training_time_in_seconds = self.job.billable_time_in_seconds = seconds * self.count
        self.job.final_metric_data_list = [{"MetricName": name, "Value": value, "Timestamp": stamp}
                                           for name, (value, stamp) in self.metrics.items()]

    def stop(self, reason: str = "Stopped") -> None:
        """Ask the job to stop (``StopTrainingJob`` or the run-time limit)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.job.training_job_status = "Stopping"
        self._secondary("Stopping", "Stopping the training job" if reason == "Stopped"
                        else "The job reached its maximum run time (StoppingCondition.MaxRuntimeInSeconds)")
        self.signal(signal.SIGTERM)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the job's process group, if it runs."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

    # work ------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._execute()
        except JobFailure as exc:
            self._finish("Failed", "Failed", "Training job failed", str(exc))
        except Exception as exc:  # a bug here must still end the job, with the reason
            log.exception("training job %s", self.name)
            self._finish("Failed", "Failed", "Training job failed", f"InternalServerError: {type(exc).__name__}: {exc}")
        finally:
            with _running_lock:
                _running.pop(self.job.arn, None)

    def _execute(self) -> None:
        _check_runnable(self.job)
        s3 = s3_client(self.region)
        private_dir(self.root)
        logs = _Logs(self.account, self.region, self.name, self.hosts)
        self._secondary("Downloading", "Downloading input data")
        self._write_config()
        size = _download_channels(self.job, self.hosts, self.root, s3)
        logs.add(self.hosts[0], f"dicomflow: downloaded {size} bytes of input data for {self.count} host(s)")
        checkpoints = self._checkpoints(s3, logs)
        if self.stop_reason:
            return self._stopped(s3, logs)
        self.job.training_start_time = _now()
        self._secondary("Training", "Training image download completed. Training in progress.")
        rc = self._train(logs, checkpoints)
        if checkpoints is not None:
            checkpoints.sync()
        logs.flush()
        if self.shutdown:
            raise JobFailure(INTERRUPTED)
        if self.stop_reason:
            return self._stopped(s3, logs)
        if rc != 0:
            raise JobFailure(self._failure_reason(rc))
        model_dir = self.root / self.hosts[0] / "model"
        if not model_dir.is_dir() or not any(model_dir.iterdir()):
            raise JobFailure("AlgorithmError: the entry point exited 0 but wrote nothing to /opt/ml/model "
                             "(SM_MODEL_DIR): a job without a model artifact is not Completed")
        self._secondary("Uploading", "Uploading generated training model")
        self._upload(s3)
        self._finish("Completed", "Completed", "Training job completed")

    def _write_config(self) -> None:
        spec = self.job.algorithm_specification or {}
        default_mode = spec.get("TrainingInputMode") or "File"
        input_config = {}
        for ch in self.job.input_data_config or []:
            source = (ch.get("DataSource") or {}).get("S3DataSource") or {}
            input_config[ch["ChannelName"]] = {
                "TrainingInputMode": ch.get("InputMode") or default_mode,
                "S3DistributionType": source.get("S3DataDistributionType") or "FullyReplicated",
                "RecordWrapperType": ch.get("RecordWrapperType") or "None",
                **({"ContentType": ch["ContentType"]} if ch.get("ContentType") else {}),
            }
        instance_type = (self.job.resource_config or {}).get("InstanceType") or "ml.m5.xlarge"
        hyperparameters = json.dumps(_hyperparameters(self.job))
        for host in self.hosts:
            config = private_dir(self.root / host / "input" / "config")
            (config / "hyperparameters.json").write_text(hyperparameters)
            (config / "inputdataconfig.json").write_text(json.dumps(input_config))
            (config / "resourceconfig.json").write_text(json.dumps({
                "current_host": host, "hosts": self.hosts, "current_instance_type": instance_type,
                "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                     "hosts": self.hosts}]}))
        env = {"TRAINING_JOB_NAME": self.name, "TRAINING_JOB_ARN": self.job.arn, "AWS_REGION": self.region,
               "AWS_DEFAULT_REGION": self.region, **(getattr(self.job, "environment", None) or {})}
        local = (self.job.checkpoint_config or {}).get("LocalPath") or "/opt/ml/checkpoints"
        compose = {"services": {host: {
            "command": "train",
            "environment": [f"{k}={v}" for k, v in env.items()],
            "volumes": ([f"{self.root / host / 'checkpoints'}:{local}"] if local != "/opt/ml/checkpoints" else []),
        } for host in self.hosts}}
        import yaml

        (self.root / "docker-compose.yaml").write_text(yaml.safe_dump(compose))

    def _checkpoints(self, s3: Any, logs: _Logs) -> _CheckpointSync | None:
        uri = (self.job.checkpoint_config or {}).get("S3Uri")
        if not uri:
            return None
        dirs = [self.root / host / "checkpoints" for host in self.hosts]
        sync = _CheckpointSync(s3, uri, dirs[0])
        restored = sync.restore(dirs[1:])
        if restored:
            logs.add(self.hosts[0], f"dicomflow: restored {restored} checkpoint file(s) from {uri}")
        return sync

    def _train(self, logs: _Logs, checkpoints: _CheckpointSync | None) -> int:
        argv = [sys.executable, "-m", "dicomflow.emulator.sagemaker_sdk.compose", "-f",
                str(self.root / "docker-compose.yaml"), "up"]
        env = _job_environment()
        self.proc = subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL,  # noqa: S603
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        if self.stop_reason:  # a stop that came while the process started
            self.signal(signal.SIGTERM)
        reader = threading.Thread(target=self._read_output, args=(self.proc, logs), daemon=True)
        reader.start()
        limit = float((self.job.stopping_condition or {}).get("MaxRuntimeInSeconds") or 86400)
        started = time.monotonic()
        last_sync = started
        stop_sent: float | None = None
        while self.proc.poll() is None:
            time.sleep(0.2)
            now = time.monotonic()
            if now - started > limit:
                self.stop("MaxRuntimeExceeded")
            if self.stop_reason and stop_sent is None:
                stop_sent = now
            if stop_sent is not None and now - stop_sent > STOP_GRACE_S:
                self.signal(signal.SIGKILL)
            if now - logs.last_flush > LOG_FLUSH_S:
                logs.flush()
            if checkpoints is not None and now - last_sync > CHECKPOINT_SYNC_S:
                checkpoints.sync()
                last_sync = now
        reader.join(timeout=10)
        return self.proc.returncode

    def _read_output(self, proc: subprocess.Popen, logs: _Logs) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            match = _HOST_LINE.match(line)
            host, message = (match.group(1), match.group(2)) if match else (self.hosts[0], line)
            logs.add(host, message)
            for name, regex in self.definitions:
                found = regex.search(message)
                if found:
                    try:
                        value = float(found.group(1))
                    except (IndexError, ValueError):
                        continue
                    if math.isfinite(value):
                        self._record_metric(name, value)
        proc.stdout.close()
        logs.flush()

    def _record_metric(self, name: str, value: float) -> None:
        """The metric's last value (``FinalMetricDataList``) and a CloudWatch datapoint, as SageMaker publishes
        them (namespace ``/aws/sagemaker/TrainingJobs``, dimension ``TrainingJobName``: what the SDK's
        ``TrainingJobAnalytics`` reads)."""
        now = _now()
        self.metrics[name] = (value, now)
        try:
            from moto.cloudwatch.models import cloudwatch_backends

            cloudwatch_backends[self.account][self.region].put_metric_data(LOG_GROUP, [{
                "MetricName": name, "Value": value, "Timestamp": now,
                "Dimensions": [{"Name": "TrainingJobName", "Value": self.name}]}])
        except Exception:  # metrics must never fail the job
            log.exception("could not publish metric %s of %s", name, self.name)

    def _failure_reason(self, rc: int) -> str:
        for host in self.hosts:
            path = self.root / host / "output" / "failure"
            if path.is_file():
                text = path.read_text(errors="replace").strip()
                if text:
                    return text
        return f"AlgorithmError: the training processes exited with status {rc}; see the job's logs in {LOG_GROUP}"

    def _upload(self, s3: Any) -> None:
        base = (self.job.output_data_config or {}).get("S3OutputPath") or ""
        bucket, prefix = _split(base)
        key = "/".join(p for p in (prefix.rstrip("/"), self.name, "output") if p)
        master = self.root / self.hosts[0]
        try:
            s3.put_object(Bucket=bucket, Key=f"{key}/model.tar.gz", Body=_tar(master / "model"))
            s3.put_object(Bucket=bucket, Key=f"{key}/output.tar.gz", Body=_tar(master / "output" / "data"))
        except Exception as exc:
            raise JobFailure(f"ClientError: cannot upload the model to {base}: {exc}") from None
        self.job.model_artifacts = {"S3ModelArtifacts": f"s3://{bucket}/{key}/model.tar.gz"}

    def _stopped(self, s3: Any, logs: _Logs) -> None:
        model_dir = self.root / self.hosts[0] / "model"
        if model_dir.is_dir() and any(model_dir.iterdir()):
            self._secondary("Uploading", "Uploading the model written before the stop")
            self._upload(s3)
        logs.flush()
        reason = self.stop_reason or "Stopped"
        self._finish("Stopped", reason, "Training job stopped" if reason == "Stopped"
                     else "Training job stopped: it reached MaxRuntimeInSeconds")


# ---- moto integration -------------------------------------------------------------------------

def _validation(message: str) -> Exception:
    from moto.sagemaker.exceptions import ValidationError

    return ValidationError(message=message)


def _create_training_job(original: Any) -> Any:
    """The backend call: validate what the local cloud cannot run, then record the job as InProgress."""

    def create_training_job(self: Any, training_job_name: str, **kwargs: Any) -> Any:
        from moto.sagemaker.exceptions import ResourceInUseException

        if training_job_name in self.training_jobs:
            raise ResourceInUseException(message=f"Training job names must be unique within an AWS account and "
                                                 f"region, and a training job with this name already exists "
                                                 f"({training_job_name})")
        count = int((kwargs.get("resource_config") or {}).get("InstanceCount") or 1)
        if not 1 <= count <= MAX_INSTANCES:
            raise _validation(f"ResourceConfig.InstanceCount must be 1..{MAX_INSTANCES} in the local cloud, "
                              f"got {count}")
        if not (kwargs.get("output_data_config") or {}).get("S3OutputPath", "").startswith("s3://"):
            raise _validation("OutputDataConfig.S3OutputPath must be an s3:// URI")
        definitions = list((kwargs.get("algorithm_specification") or {}).get("MetricDefinitions") or [])
        for d in definitions:
            try:
                re.compile(d["Regex"])
            except (KeyError, TypeError, re.error) as exc:
                raise _validation(f"MetricDefinitions entry {d!r} has no valid Regex: {exc}") from None
        job = original(self, training_job_name, **kwargs)
        job.algorithm_specification["MetricDefinitions"] = definitions  # moto puts a canned one there
        if not definitions:
            del job.algorithm_specification["MetricDefinitions"]
        job.training_job_status, job.secondary_status = "InProgress", "Starting"
        job.secondary_status_transitions = [{"Status": "Starting", "StartTime": job.creation_time,
                                             "StatusMessage": "Launching requested ML instances"}]
        job.final_metric_data_list = []
        job.model_artifacts = None
        job.training_start_time = job.training_end_time = None
        return job

    return create_training_job


def _create_training_job_response(original: Any) -> Any:
    """The API call: the backend records the job, then (with its Environment, which moto drops) it runs."""

    def create_training_job(self: Any) -> Any:
        result = original(self)
        job = self.sagemaker_backend.training_jobs[self._get_param("TrainingJobName")]
        job.environment = self._get_param("Environment") or {}
        run = _Run(self.sagemaker_backend, job)
        with _running_lock:
            _running[job.arn] = run
        run.thread.start()
        return result

    return create_training_job


def _stop_training_job_response(self: Any) -> Any:
    from moto.core.responses import ActionResult

    name = self._get_param("TrainingJobName")
    self.sagemaker_backend.describe_training_job(name)  # ValidationError when it does not exist
    job = self.sagemaker_backend.training_jobs[name]
    with _running_lock:
        run = _running.get(job.arn)
    if run is None or job.training_job_status not in ("InProgress", "Stopping"):
        raise _validation(f"The training job {name} is {job.training_job_status}; only a job in progress can be "
                          "stopped")
    run.stop("Stopped")
    return ActionResult({})


def fail_interrupted() -> int:
    """Mark jobs that were running when the emulator last stopped as Failed; returns how many."""
    from moto.sagemaker.models import sagemaker_backends

    count = 0
    for _account, regions in sagemaker_backends.items():
        for _region, backend in regions.items():
            for job in backend.training_jobs.values():
                if job.training_job_status in ("InProgress", "Stopping") and job.arn not in _running:
                    job.training_job_status, job.secondary_status = "Failed", "Failed"
                    job.failure_reason = INTERRUPTED
                    job.training_end_time = job.last_modified_time = _now()
                    count += 1
    return count


def stop_all() -> None:
    """Stop every running job (the emulator is shutting down); each ends Failed with the reason."""
    with _running_lock:
        runs = list(_running.values())
    for run in runs:
        run.shutdown = True
        run.signal(signal.SIGKILL)
    for run in runs:
        run.thread.join(timeout=5)


def install() -> None:
    """Patch moto's SageMaker training-job handlers (call once, before serving)."""
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    SageMakerModelBackend.create_training_job = _create_training_job(  # type: ignore[method-assign]
        SageMakerModelBackend.create_training_job)
    SageMakerResponse.create_training_job = _create_training_job_response(  # type: ignore[method-assign]
        SageMakerResponse.create_training_job)
    SageMakerResponse.stop_training_job = _stop_training_job_response  # type: ignore[attr-defined]
