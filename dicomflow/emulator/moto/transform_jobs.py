"""SageMaker batch transform jobs that really run on the emulated AWS.

moto 5.2.5 records ``CreateTransformJob`` and answers ``Completed`` at once without running anything.
:func:`install` makes the job run the Model's serving container the way SageMaker batch transform does:

* ``TransformResources.InstanceCount`` serving processes (each its own model copy, started by
  :func:`dicomflow.emulator.moto.endpoints.start_process`) with SageMaker's batch variables
  ``SAGEMAKER_BATCH=true``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ``SAGEMAKER_BATCH_STRATEGY`` and
  ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``, plus the job's ``Environment``; output in
  ``<DICOMFLOW_HOME>/logs/transform-<job>.log``.
* The input: every object under ``TransformInput.DataSource.S3DataSource`` (``S3Prefix`` or
  ``ManifestFile``), each split by ``SplitType`` (``None``: the object is one record; ``Line``: one record per
  line) and sent by ``BatchStrategy`` (``SingleRecord``: one record per request; ``MultiRecord``: as many
  lines as fit ``MaxPayloadInMB``, joined by newlines). A request larger than ``MaxPayloadInMB`` fails its
  object. ``MaxConcurrentTransforms`` requests run at once on each instance; a 5xx or a lost connection is
  retried ``ModelClientConfig.InvocationsMaxRetries`` times (default 3), each request limited to
  ``InvocationsTimeoutInSeconds`` (default 600).
* The output, as SageMaker lays it out: ``<S3OutputPath>/<key relative to the input prefix>.out`` with the
  answers in input order, joined by newlines when ``AssembleWith`` is ``Line``.
* Failures: an object whose request the container refuses gets no ``.out`` (as on SageMaker) and the others
  go on; the job then ends ``Failed`` with a ``FailureReason`` naming the objects. A container that records a
  record's failure inside its answer (the dicomflow serving container does so in batch mode for a client
  error) keeps the job ``Completed``.
* Status ``InProgress`` -> ``Completed`` | ``Failed`` | ``Stopping`` -> ``Stopped`` (``StopTransformJob``:
  objects not yet started are skipped), ``TransformStartTime`` / ``TransformEndTime``. A job running when
  the emulator stopped is ``Failed`` once it is back (:func:`fail_interrupted`).

``DataProcessing`` filters and ``JoinSource``, ``CompressionType`` other than ``None`` and ``SplitType``
``RecordIO``/``TFRecord`` do not run locally: the job fails at once with a reason that says so.
"""

from __future__ import annotations

import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import cycle
from typing import Any

import requests

from dicomflow import aws
from dicomflow.emulator.moto import endpoints
from dicomflow.emulator.moto.endpoints import EndpointUnavailable
from dicomflow.emulator.moto.sagemaker_runtime import model_spec
from dicomflow.emulator.moto.training_jobs import FAILURE_LIMIT, INTERRUPTED, JobFailure, s3_client, s3_objects
from dicomflow.paths import data_dir

log = logging.getLogger("dicomflow.transform_jobs")

MAX_INSTANCES = 4
DEFAULT_PAYLOAD_MB = 6
DEFAULT_TIMEOUT_S = 600
DEFAULT_RETRIES = 3

_running: dict[str, _Run] = {}
_running_lock = threading.Lock()


class _ObjectFailed(Exception):
    """One input object could not be transformed; the message says why."""


def _now() -> Any:
    from moto.core.utils import utcnow

    return utcnow()


@dataclass
class _Settings:
    strategy: str
    split: str
    payload_bytes: int
    concurrency: int
    timeout: float
    retries: int
    content_type: str | None
    accept: str | None
    assemble: str


def _settings(job: Any) -> _Settings:
    """The job's request settings, refusing what the local cloud does not run."""
    source = ((job.transform_input or {}).get("DataSource") or {}).get("S3DataSource") or {}
    if not source:
        raise JobFailure("ClientError: TransformInput.DataSource.S3DataSource is required")
    split = (job.transform_input or {}).get("SplitType") or "None"
    if split not in ("None", "Line"):
        raise JobFailure(f"ClientError: SplitType {split} does not run in the local cloud; use None or Line")
    if ((job.transform_input or {}).get("CompressionType") or "None") != "None":
        raise JobFailure("ClientError: compressed input does not run in the local cloud; use CompressionType None")
    processing = job.data_processing or {}
    if (processing.get("InputFilter", "$") != "$" or processing.get("OutputFilter", "$") != "$"
            or (processing.get("JoinSource") or "None") != "None"):
        raise JobFailure("ClientError: DataProcessing filters and JoinSource do not run in the local cloud")
    client = job.model_client_config or {}
    payload = int(job.max_payload_in_mb if job.max_payload_in_mb is not None else DEFAULT_PAYLOAD_MB)
    return _Settings(
        strategy=job.batch_strategy or "MultiRecord", split=split,
        payload_bytes=payload * 1024 * 1024 if payload else 0,
        concurrency=max(1, int(job.max_concurrent_transforms or 1)),
        timeout=float(client.get("InvocationsTimeoutInSeconds") or DEFAULT_TIMEOUT_S),
        retries=int(client.get("InvocationsMaxRetries", DEFAULT_RETRIES)),
        content_type=(job.transform_input or {}).get("ContentType"),
        accept=(job.transform_output or {}).get("Accept"),
        assemble=(job.transform_output or {}).get("AssembleWith") or "None")


def requests_for(body: bytes, settings: _Settings) -> list[bytes]:
    """The request bodies one input object becomes (split and batched); raises :class:`_ObjectFailed`."""
    limit = settings.payload_bytes
    if settings.split == "None":
        records = [body]
    else:
        records = [line for line in body.splitlines() if line.strip()]
    for record in records:
        if limit and len(record) > limit:
            raise _ObjectFailed(f"a record of {len(record)} bytes exceeds MaxPayloadInMB "
                                f"({limit // (1024 * 1024)} MB)")
    if settings.strategy == "SingleRecord" or settings.split == "None":
        return records
    batches: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        if current and limit and size + 1 + len(record) > limit:
            batches.append(b"\n".join(current))
            current, size = [], 0
        current.append(record)
        size += len(record) + (1 if size else 0)
    if current:
        batches.append(b"\n".join(current))
    return batches


class _Run:
    """Execute one transform job in a thread and keep its moto record up to date."""

    def __init__(self, backend: Any, job: Any) -> None:
        self.job, self.account, self.region = job, backend.account_id, backend.region_name
        self.name = job.transform_job_name
        self.root = data_dir() / "transform-jobs" / self.name
        self.processes: list[endpoints.Process] = []
        self.stopping = threading.Event()
        self.shutdown = False
        self.thread = threading.Thread(target=self._main, name=f"transform-{self.name}", daemon=True)

    def _main(self) -> None:
        try:
            failures = self._execute()
        except JobFailure as exc:
            self._finish("Failed", str(exc))
        except EndpointUnavailable as exc:
            self._finish("Failed", f"ClientError: {exc}")
        except Exception as exc:  # a job must always end with a status
            log.exception("transform job %s", self.name)
            self._finish("Failed", f"InternalServerError: {type(exc).__name__}: {exc}")
        else:
            if self.stopping.is_set():
                self._finish("Stopped", "")
            elif failures:
                listed = "; ".join(f"{key}: {why}" for key, why in failures)
                self._finish("Failed", f"ClientError: {len(failures)} input object(s) failed: {listed}")
            else:
                self._finish("Completed", "")
        finally:
            for process in self.processes:
                process.stop()
            shutil.rmtree(self.root, ignore_errors=True)
            with _running_lock:
                _running.pop(self.job.arn, None)

    def _finish(self, status: str, reason: str) -> None:
        if self.shutdown:
            status, reason = "Failed", INTERRUPTED
        self.job.transform_job_status = status
        self.job.failure_reason = reason[:FAILURE_LIMIT]
        self.job.transform_end_time = self.job.last_modified_time = _now()
        log.info("transform job %s %s %s", self.name, status, reason[:200])

    def _execute(self) -> list[tuple[str, str]]:
        settings = _settings(self.job)
        spec = model_spec(self.account, self.region, self.job.model_name)
        if spec is None:
            raise JobFailure(f"ClientError: Model {self.job.model_name} has no container to run")
        s3 = s3_client(self.region)
        source = self.job.transform_input["DataSource"]["S3DataSource"]
        objects = list(s3_objects(s3, source))
        if not objects:
            raise JobFailure(f"ClientError: no input object under {source.get('S3Uri')}")
        output = (self.job.transform_output or {}).get("S3OutputPath") or ""
        try:
            out_bucket, out_prefix = aws.parse_s3_uri(output)
        except ValueError as exc:
            raise JobFailure(f"ClientError: TransformOutput.S3OutputPath: {exc}") from None
        count = int((self.job.transform_resources or {}).get("InstanceCount") or 1)
        env = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(settings.payload_bytes // 1048576),
               "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD" if settings.strategy == "MultiRecord" else "SINGLE_RECORD",
               "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(settings.concurrency),
               **{str(k): str(v) for k, v in (self.job.environment or {}).items()}}
        for i in range(count):
            if self.stopping.is_set():
                return []
            self.processes.append(endpoints.start_process(spec, self.root / f"instance-{i}", f"transform-{self.name}",
                                                          f"transform job {self.name}", env))
        self.job.transform_start_time = _now()
        urls = cycle([p.url for p in self.processes])
        failures: list[tuple[str, str]] = []
        lock = threading.Lock()

        def one(bucket: str, key: str, rel: str, url: str) -> None:
            if self.stopping.is_set():
                return
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                answers = [self._invoke(url, request, settings) for request in requests_for(body, settings)]
            except _ObjectFailed as exc:
                with lock:
                    failures.append((rel, str(exc)))
                return
            except Exception as exc:
                with lock:
                    failures.append((rel, f"{type(exc).__name__}: {exc}"))
                return
            if settings.assemble == "Line":
                data = b"".join(a.rstrip(b"\n") + b"\n" for a in answers)
            else:
                data = b"".join(answers)
            key_out = f"{out_prefix.rstrip('/')}/{rel}.out".lstrip("/")
            s3.put_object(Bucket=out_bucket, Key=key_out, Body=data,
                          ContentType=settings.accept or "application/octet-stream")

        with ThreadPoolExecutor(max_workers=settings.concurrency * len(self.processes),
                                thread_name_prefix=f"transform-{self.name}") as pool:
            for future in [pool.submit(one, b, k, r, next(urls)) for b, k, r in objects]:
                future.result()
        return failures

    def _invoke(self, url: str, body: bytes, settings: _Settings) -> bytes:
        headers = {k: v for k, v in (("Content-Type", settings.content_type), ("Accept", settings.accept)) if v}
        problem = ""
        for _attempt in range(settings.retries + 1):
            if self.stopping.is_set():
                raise _ObjectFailed("the job was stopped")
            try:
                resp = requests.post(f"{url}/invocations", data=body, headers=headers,
                                     timeout=(5, settings.timeout))
            except requests.Timeout:
                raise _ObjectFailed(f"the model did not answer within {settings.timeout:.0f} s "
                                    "(InvocationsTimeoutInSeconds)") from None
            except requests.RequestException as exc:
                problem = f"the model container could not be reached ({type(exc).__name__})"
                continue
            if 200 <= resp.status_code < 300:
                return resp.content
            problem = f"the model answered {resp.status_code}: {resp.text[:300]}"
            if resp.status_code < 500:
                break
        raise _ObjectFailed(problem)

    def stop(self) -> None:
        self.stopping.set()
        self.job.transform_job_status = "Stopping"


# ---- moto integration -------------------------------------------------------------------------

def _validation(message: str) -> Exception:
    from moto.sagemaker.exceptions import ValidationError

    return ValidationError(message=message)


def _create_transform_job(original: Any) -> Any:
    def create_transform_job(self: Any, transform_job_name: str, **kwargs: Any) -> Any:
        from moto.sagemaker.exceptions import ResourceInUseException

        if transform_job_name in self.transform_jobs:
            raise ResourceInUseException(message=f"Job name must be unique within an AWS account and region, and "
                                                 f"a job with this name already exists ({transform_job_name})")
        if kwargs.get("model_name") not in self._models:
            raise _validation(f"Could not find model \"{kwargs.get('model_name')}\".")
        count = int((kwargs.get("transform_resources") or {}).get("InstanceCount") or 1)
        if not 1 <= count <= MAX_INSTANCES:
            raise _validation(f"TransformResources.InstanceCount must be 1..{MAX_INSTANCES} in the local cloud, "
                              f"got {count}")
        payload = kwargs.get("max_payload_in_mb")
        if payload is not None and not 0 <= int(payload) <= 100:
            raise _validation("MaxPayloadInMB must be 0..100")
        if kwargs.get("batch_strategy") not in (None, "SingleRecord", "MultiRecord"):
            raise _validation("BatchStrategy must be SingleRecord or MultiRecord")
        if not str((kwargs.get("transform_output") or {}).get("S3OutputPath", "")).startswith("s3://"):
            raise _validation("TransformOutput.S3OutputPath must be an s3:// URI")
        job = original(self, transform_job_name, **kwargs)
        job.transform_job_status = "InProgress"
        job.transform_start_time = job.transform_end_time = None
        return job

    return create_transform_job


def _create_transform_job_response(original: Any) -> Any:
    def create_transform_job(self: Any) -> Any:
        result = original(self)
        job = self.sagemaker_backend.transform_jobs[self._get_param("TransformJobName")]
        run = _Run(self.sagemaker_backend, job)
        with _running_lock:
            _running[job.arn] = run
        run.thread.start()
        return result

    return create_transform_job


def _stop_transform_job_response(self: Any) -> Any:
    from moto.core.responses import ActionResult

    name = self._get_param("TransformJobName")
    self.sagemaker_backend.describe_transform_job(name)  # ValidationError when it does not exist
    job = self.sagemaker_backend.transform_jobs[name]
    with _running_lock:
        run = _running.get(job.arn)
    if run is None or job.transform_job_status not in ("InProgress", "Stopping"):
        raise _validation(f"The transform job {name} is {job.transform_job_status}; only a job in progress can "
                          "be stopped")
    run.stop()
    return ActionResult({})


def fail_interrupted() -> int:
    """Mark jobs that were running when the emulator last stopped as Failed; returns how many."""
    from moto.sagemaker.models import sagemaker_backends

    count = 0
    for _account, regions in sagemaker_backends.items():
        for _region, backend in regions.items():
            for job in backend.transform_jobs.values():
                if job.transform_job_status in ("InProgress", "Stopping") and job.arn not in _running:
                    job.transform_job_status, job.failure_reason = "Failed", INTERRUPTED
                    job.transform_end_time = job.last_modified_time = _now()
                    count += 1
    return count


def stop_all() -> None:
    """Stop every running job (the emulator is shutting down); each ends Failed with the reason."""
    with _running_lock:
        runs = list(_running.values())
    for run in runs:
        run.shutdown = True
        run.stop()
        for process in run.processes:
            process.stop()
    for run in runs:
        run.thread.join(timeout=5)


def install() -> None:
    """Patch moto's SageMaker transform-job handlers (call once, before serving)."""
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    SageMakerModelBackend.create_transform_job = _create_transform_job(  # type: ignore[method-assign]
        SageMakerModelBackend.create_transform_job)
    SageMakerResponse.create_transform_job = _create_transform_job_response(  # type: ignore[method-assign]
        SageMakerResponse.create_transform_job)
    SageMakerResponse.stop_transform_job = _stop_transform_job_response  # type: ignore[attr-defined]
