"""SageMaker Python SDK v2 local mode against the emulated AWS, with or without a Docker engine.

``sagemaker_session()`` returns a :class:`sagemaker.local.LocalSession` so that user code reads like
the SageMaker documentation::

    sess = sagemaker_session()
    est = PyTorch(entry_point="train.py", source_dir="training_job", role=ROLE, framework_version="2.5",
                  py_version="py311", instance_type="local", instance_count=1, sagemaker_session=sess)
    est.fit({"train": "s3://bucket/prefix"})
    predictor = est.deploy(initial_instance_count=1, instance_type="local")

Where a Docker engine answers (``docker info`` exits 0) the SDK's own Docker local mode is used
unchanged. Without one ("host mode") only the container launch is replaced: the SDK still stages
the code, downloads the channels from S3, writes the compose file and the ``/opt/ml`` directories,
and packs and uploads ``model.tar.gz``; the command it runs is
``python -m dicomflow.emulator.sagemaker_sdk.compose -f docker-compose.yaml up`` instead of
``docker compose ...``, which runs each compose service as a host process (see that module for the
``/opt/ml`` path mapping). The seam is five SDK names, replaced once by wrappers that change
behaviour only while a host-mode session's call is on the stack (a context variable):
``_SageMakerContainer._get_compose_cmd_prefix``, ``image._ecr_login_if_needed`` (no image pulls),
``get_docker_host`` (127.0.0.1), ``entities._wait_for_serving_container`` (fast polling that notices a
dead serving process) and ``image._HostingContainer`` (remembered, for that check). A host-mode session
also gives every endpoint its own free port (the SDK has one fixed ``local.serving_port``), answers
``invoke_endpoint`` by endpoint name, records the endpoint in the local endpoint registry
(``<DICOMFLOW_HOME>/endpoints/<EndpointName>.json``, see :mod:`dicomflow.emulator.moto.endpoints`), turns a
non-2xx answer into a ``ModelError`` as SageMaker does, and turns a failed training run into
:class:`LocalTrainingJobError` carrying the job's ``/opt/ml/output/failure``.

``DICOMFLOW_SAGEMAKER_MODE`` = ``auto`` (default) | ``host`` | ``docker`` overrides the probe.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dicomflow import aws
from dicomflow.config import runtime
from dicomflow.emulator.cloud.service import free_port
from dicomflow.errors import DicomflowError

logger = logging.getLogger(__name__)

MODE_ENV = "DICOMFLOW_SAGEMAKER_MODE"
SERVING_START_TIMEOUT_S = 120.0
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SageMakerLocalError(DicomflowError):
    """Local mode cannot do what was asked; the message says how to fix it."""


class LocalTrainingJobError(SageMakerLocalError, RuntimeError):
    """A local training job failed; ``reason`` is the content of its /opt/ml/output/failure."""

    def __init__(self, job_name: str, reason: str) -> None:
        self.job_name, self.reason = job_name, reason
        super().__init__(f"training job {job_name} failed: {reason}")


# ---- Docker engine probe ---------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def docker_engine_available() -> bool:
    """True when a Docker engine answers. The client binary alone is not enough (``docker info``)."""
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def use_host_mode(host_mode: bool | None = None) -> bool:
    """Explicit flag > ``DICOMFLOW_SAGEMAKER_MODE`` > probe (host mode when no engine answers)."""
    if host_mode is not None:
        return host_mode
    mode = runtime().sagemaker_mode
    if mode == "auto":
        return not docker_engine_available()
    return mode == "host"


# ---- the seam: SDK names wrapped, active only inside a host-mode call ------------------------
@dataclass
class _HostCall:
    hosting: list[Any] = field(default_factory=list)  # _HostingContainer threads started in this call


_HOST_CALL: contextvars.ContextVar[_HostCall | None] = contextvars.ContextVar("dicomflow_sm_host", default=None)
_installed = False


@contextlib.contextmanager
def _host_call() -> Iterator[_HostCall]:
    call = _HostCall()
    token = _HOST_CALL.set(call)
    try:
        yield call
    finally:
        _HOST_CALL.reset(token)


def compose_command_prefix() -> list[str]:
    """The command that stands in for ``docker compose`` in host mode."""
    return [sys.executable, "-m", "dicomflow.emulator.sagemaker_sdk.compose"]


def _install_hooks() -> None:
    global _installed
    if _installed:
        return
    from sagemaker.local import entities, image, local_session

    original_prefix = image._SageMakerContainer._get_compose_cmd_prefix
    original_ecr = image._ecr_login_if_needed
    original_host = entities.get_docker_host
    original_wait = entities._wait_for_serving_container
    original_hosting = image._HostingContainer

    def get_compose_cmd_prefix() -> list[str]:
        return compose_command_prefix() if _HOST_CALL.get() else original_prefix()

    def ecr_login_if_needed(boto_session: Any, image_uri: str) -> bool:
        return False if _HOST_CALL.get() else original_ecr(boto_session, image_uri)

    def get_docker_host() -> str:
        return "127.0.0.1" if _HOST_CALL.get() else original_host()

    def wait_for_serving_container(serving_port: int) -> None:
        call = _HOST_CALL.get()
        if call is None:
            return original_wait(serving_port)
        return _wait_for_serving(serving_port, call)

    class HostingContainer(original_hosting):  # type: ignore[misc, valid-type]
        def __init__(self, command: list[str]) -> None:
            super().__init__(command)
            call = _HOST_CALL.get()
            self.host_mode = call is not None
            if call is not None:
                call.hosting.append(self)

        def run(self) -> None:
            try:
                super().run()
            except RuntimeError as exc:
                if not self.host_mode:
                    raise
                # reported to the caller by _wait_for_serving (start-up) or visible in the output above
                logger.warning("serving process ended: %s", exc)

    image._SageMakerContainer._get_compose_cmd_prefix = staticmethod(get_compose_cmd_prefix)
    image._ecr_login_if_needed = ecr_login_if_needed
    entities.get_docker_host = get_docker_host
    local_session.get_docker_host = get_docker_host
    entities._wait_for_serving_container = wait_for_serving_container
    image._HostingContainer = HostingContainer
    _installed = True


def _wait_for_serving(port: int, call: _HostCall) -> None:
    import urllib3

    http = urllib3.PoolManager()
    url = f"http://127.0.0.1:{port}/ping"
    deadline = time.monotonic() + SERVING_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if http.request("GET", url, timeout=2.0, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        for hosting in call.hosting:
            proc = getattr(hosting, "process", None)
            if proc is not None and proc.poll() is not None:
                raise SageMakerLocalError(
                    f"the serving process exited with code {proc.returncode} before answering /ping; "
                    "its output is above (model_fn or the entry point failed)")
        time.sleep(0.1)
    raise SageMakerLocalError(f"the serving process did not answer /ping on port {port} within "
                              f"{SERVING_START_TIMEOUT_S:.0f}s; its output is above")


# ---- sessions --------------------------------------------------------------------------------
def _local_session_classes() -> tuple[type, type, type]:
    from sagemaker.local import LocalSession
    from sagemaker.local.local_session import LocalSagemakerClient, LocalSagemakerRuntimeClient

    class DicomflowLocalSession(LocalSession):
        """LocalSession whose endpoint wait does not sleep 30 s (local endpoints are up on return)."""

        def wait_for_endpoint(self, endpoint: str, poll: float = 0.2, live_logging: bool = False) -> dict:
            return super().wait_for_endpoint(endpoint, poll=min(poll, 0.2), live_logging=False)

    class HostSagemakerClient(LocalSagemakerClient):
        """LocalSagemakerClient whose jobs and endpoints run as host processes."""

        def create_training_job(self, TrainingJobName, AlgorithmSpecification, OutputDataConfig,  # noqa: N803
                                ResourceConfig, InputDataConfig=None, Environment=None, **kwargs):
            try:
                with _host_call():
                    return super().create_training_job(
                        TrainingJobName, AlgorithmSpecification, OutputDataConfig, ResourceConfig,
                        InputDataConfig=InputDataConfig, Environment=Environment, **kwargs)
            except RuntimeError as exc:
                if isinstance(exc, DicomflowError):
                    raise
                reason = _failure_reason(self.sagemaker_session, OutputDataConfig, TrainingJobName)
                raise LocalTrainingJobError(TrainingJobName, reason or str(exc)) from exc

        def create_endpoint(self, EndpointName, EndpointConfigName, Tags=None):  # noqa: N803
            port = self.sagemaker_session._use_new_serving_port()
            try:
                with _host_call() as call:
                    super().create_endpoint(EndpointName, EndpointConfigName, Tags)
            except BaseException:
                endpoint = LocalSagemakerClient._endpoints.pop(EndpointName, None)
                if endpoint is not None:
                    endpoint.stop()
                raise
            self.sagemaker_session.endpoint_ports[EndpointName] = port
            if call.hosting and call.hosting[0].process is not None:
                _register_endpoint(EndpointName, port, call.hosting[0].process.pid)

        def delete_endpoint(self, EndpointName):  # noqa: N803
            endpoint = LocalSagemakerClient._endpoints.pop(EndpointName, None)
            pid = _hosting_pid(endpoint)
            if endpoint is not None:
                endpoint.stop()
            self.sagemaker_session.endpoint_ports.pop(EndpointName, None)
            _unregister_endpoint(EndpointName, pid)

        def create_transform_job(self, *args, **kwargs):
            self.sagemaker_session._use_new_serving_port()
            with _host_call():
                return super().create_transform_job(*args, **kwargs)

        def create_processing_job(self, *args, **kwargs):
            raise SageMakerLocalError("processing jobs in local mode need a Docker engine; start Docker, "
                                      f"or run the processing code directly ({MODE_ENV}=docker forces Docker)")

    class HostRuntimeClient(LocalSagemakerRuntimeClient):
        """Calls the serving process of the named endpoint; non-2xx answers raise ModelError."""

        def __init__(self, config: dict | None, endpoint_ports: dict[str, int]) -> None:
            super().__init__(config)
            self.endpoint_ports = endpoint_ports

        def invoke_endpoint(self, Body, EndpointName, ContentType=None, Accept=None,  # noqa: N803
                            CustomAttributes=None, TargetModel=None, TargetVariant=None, InferenceId=None):
            port = self.endpoint_ports.get(EndpointName)
            if port is None:
                raise ClientError({"Error": {"Code": "ValidationException",
                                             "Message": f"Endpoint {EndpointName} not found."}}, "InvokeEndpoint")
            headers = {k: v for k, v in {
                "Content-Type": ContentType, "Accept": Accept,
                "X-Amzn-SageMaker-Custom-Attributes": CustomAttributes,
                "X-Amzn-SageMaker-Target-Model": TargetModel,
                "X-Amzn-SageMaker-Target-Variant": TargetVariant,
                "X-Amzn-SageMaker-Inference-Id": InferenceId}.items() if v is not None}
            if isinstance(Body, str):
                Body = Body.encode("utf-8")
            r = self.http.request("POST", f"http://127.0.0.1:{port}/invocations", body=Body,
                                  headers=headers, preload_content=False)
            if r.status >= 300:
                text = r.read().decode("utf-8", "replace").strip()
                r.release_conn()
                raise ClientError({"Error": {"Code": "ModelError", "Message": (
                    f"Received {'client' if r.status < 500 else 'server'} error ({r.status}) from primary "
                    f"with message \"{text}\".")}, "OriginalStatusCode": r.status}, "InvokeEndpoint")
            return {"Body": r, "ContentType": r.headers.get("Content-Type", Accept)}

    class HostLocalSession(DicomflowLocalSession):
        """A LocalSession whose containers are host processes (no Docker engine)."""

        host_mode = True

        def _initialize(self, boto_session, sagemaker_client, sagemaker_runtime_client, **kwargs):
            self.endpoint_ports: dict[str, int] = {}
            super()._initialize(boto_session, sagemaker_client, sagemaker_runtime_client, **kwargs)
            self.sagemaker_client = HostSagemakerClient(self)
            self.sagemaker_runtime_client = HostRuntimeClient(self.config, self.endpoint_ports)

        def _use_new_serving_port(self) -> int:
            port = free_port()
            cfg = dict(self.config or {})
            cfg["local"] = {**cfg.get("local", {}), "serving_port": port}
            self.config = cfg
            return port

    return DicomflowLocalSession, HostLocalSession, HostSagemakerClient


def _hosting_pid(endpoint: Any) -> int | None:
    container = getattr(endpoint, "container", None)
    hosting = getattr(container, "container", None)
    proc = getattr(hosting, "process", None)
    return proc.pid if proc is not None else None


def _register_endpoint(name: str, port: int, pid: int) -> None:
    """Record the endpoint in the local endpoint registry, so the emulator's invoke can reach it too."""
    from dicomflow.emulator.moto.endpoints import write_registry

    try:
        write_registry(name, f"http://127.0.0.1:{port}", pid)
    except OSError as exc:
        logger.warning("could not record endpoint %s in the local registry: %s", name, exc)


def _unregister_endpoint(name: str, pid: int | None) -> None:
    import json

    from dicomflow.emulator.moto.endpoints import registry_path

    path = registry_path(name)
    try:
        if pid is not None and json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _failure_reason(session: Any, output_config: dict, job_name: str) -> str | None:
    """The ``failure`` file in ``<S3OutputPath>/<job>/output/output.tar.gz``, as SageMaker reports it."""
    base = (output_config or {}).get("S3OutputPath", "")
    try:
        if base.startswith("s3://"):
            bucket, prefix = aws.parse_s3_uri(base)
            key = "/".join(p for p in (prefix.rstrip("/"), job_name, "output", "output.tar.gz") if p)
            data = aws.read(aws.s3_uri(bucket, key), s3=session.s3_client)
        elif base.startswith("file://"):
            parsed = urlparse(base)
            path = os.path.join(parsed.netloc + parsed.path, job_name, "output", "output.tar.gz")
            with open(path, "rb") as fh:
                data = fh.read()
        else:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar.getmembers() if os.path.basename(m.name) == "failure"), None)
            if member is None:
                return None
            fh = tar.extractfile(member)
            return fh.read().decode("utf-8", "replace").strip() if fh else None
    except (OSError, ValueError, tarfile.TarError, ClientError, BotoCoreError):
        return None


def _telemetry_off(config: dict | None) -> dict:
    cfg = dict(config or {})
    cfg.setdefault("SchemaVersion", "1.0")
    sm = dict(cfg.get("SageMaker") or {})
    sdk = dict(sm.get("PythonSDK") or {})
    modules = dict(sdk.get("Modules") or {})
    modules["TelemetryOptOut"] = True
    sdk["Modules"], sm["PythonSDK"], cfg["SageMaker"] = modules, sdk, sm
    return cfg


def _ensure_bucket(boto_session: boto3.session.Session, endpoint: str | None, bucket: str) -> None:
    s3 = boto_session.client("s3", endpoint_url=endpoint)
    try:
        if aws.bucket_exists(bucket, s3):
            return
    except aws.S3Error as exc:
        raise SageMakerLocalError(str(exc)) from None
    region = boto_session.region_name
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise SageMakerLocalError(f"cannot create bucket {bucket}: {exc}") from None


def sagemaker_session(default_bucket: str | None = None, *, host_mode: bool | None = None,
                      boto_session: boto3.session.Session | None = None) -> Any:
    """A :class:`sagemaker.local.LocalSession` for ``instance_type="local"`` against the configured AWS.

    S3 goes to ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set (the emulator); the default
    bucket (``sagemaker-<region>-<account>`` unless given) is created there. Telemetry is opted out.
    Containers run in Docker when an engine answers, else as host processes (``host_mode`` or
    ``DICOMFLOW_SAGEMAKER_MODE`` override the probe).
    """
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker.config import load_sagemaker_config

    if default_bucket is not None and not _BUCKET_RE.match(default_bucket):
        raise SageMakerLocalError(f"{default_bucket!r} is not a valid S3 bucket name "
                                  "(3-63 lower-case letters, digits, dots and hyphens)")
    host = use_host_mode(host_mode)
    boto_session = boto_session or boto3.session.Session(region_name=aws.region())
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint:
        # the SDK asks STS at its hard-coded AWS endpoint for the account; ask the configured one instead
        if default_bucket is None:
            try:
                account = boto_session.client("sts").get_caller_identity()["Account"]
            except (ClientError, BotoCoreError) as exc:
                raise SageMakerLocalError(f"STS at {endpoint} does not answer ({exc}); "
                                          "start the local cloud with 'dicomflow up'") from None
            default_bucket = f"sagemaker-{boto_session.region_name}-{account}"
        _ensure_bucket(boto_session, endpoint, default_bucket)
    elif host:
        raise SageMakerLocalError("no Docker engine and AWS_ENDPOINT_URL is not set: host-mode local jobs "
                                  "run against the emulated AWS; run 'dicomflow up' and "
                                  "'eval \"$(dicomflow env)\"', or start Docker")
    default_cls, host_cls, _ = _local_session_classes()
    if host:
        _install_hooks()
    cls = host_cls if host else default_cls
    return cls(boto_session=boto_session, default_bucket=default_bucket, s3_endpoint_url=endpoint,
               sagemaker_config=_telemetry_off(load_sagemaker_config()))
