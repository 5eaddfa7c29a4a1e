"""How a deployed SageMaker endpoint finds its local serving process: the one seam.

:func:`resolve_serving` ``(endpoint_name, spec) -> base_url`` answers, in this order:

(a) **Registry** ``<DICOMFLOW_HOME>/endpoints/<EndpointName>.json`` = ``{"url": "http://127.0.0.1:PORT",
    "pid": int}``, used while that pid is alive. Whoever starts a serving process for an endpoint (the
    SageMaker SDK host mode, a developer by hand, or (b) below) writes it.
(b) **Start one** from the endpoint's EndpointConfig -> Model (``spec``, a :class:`ServingSpec`):
    the ``ModelDataUrl`` object (``model.tar.gz`` in the emulated S3) is extracted to
    ``<DICOMFLOW_HOME>/endpoints/<EndpointName>/model``; the container ``Image`` is mapped to a host
    command by ``<DICOMFLOW_HOME>/images.json`` or the env ``DICOMFLOW_LOCAL_IMAGES`` (same JSON)::

        {"<image uri, image without tag, or repository name>": ["python", "-m", "inference_container.serve"],
         "<other>": {"command": ["python", "serve.py"], "cwd": "/path", "env": {"K": "V"}}}

    ``python`` means this interpreter. The process gets ``SM_MODEL_DIR`` (the extracted model),
    ``SAGEMAKER_BIND_TO_PORT`` (a free port on 127.0.0.1), the Model's ``Environment`` and the emulator's
    AWS settings; it must answer ``GET /ping`` with 200 within ``DICOMFLOW_ENDPOINT_START_TIMEOUT``
    seconds (default 120). Its output goes to ``<DICOMFLOW_HOME>/logs/endpoint-<EndpointName>.log``; the
    registry file is written. It runs in the emulator's process group, so ``dicomflow down`` stops it,
    and deleting the endpoint stops it too.

Neither -> :class:`EndpointUnavailable` ("endpoint X has no local serving process: ...").
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from dicomflow.config import runtime
from dicomflow.emulator.cloud.service import free_port
from dicomflow.errors import DicomflowError
from dicomflow.paths import data_dir

START_TIMEOUT_ENV = "DICOMFLOW_ENDPOINT_START_TIMEOUT"
IMAGES_ENV = "DICOMFLOW_LOCAL_IMAGES"


class EndpointUnavailable(DicomflowError):
    """The endpoint has no local serving process and none can be started."""


@dataclass
class ServingSpec:
    """What starting a serving process needs, taken from the endpoint's Model."""

    image: str
    model_data_url: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    fetch: Callable[[str], bytes] | None = None  # s3://bucket/key -> bytes
    models_prefix: str | None = None  # a multi-model endpoint: the S3 prefix its TargetModels are under


_started: dict[str, Process] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def registry_path(endpoint_name: str) -> Path:
    return data_dir() / "endpoints" / f"{endpoint_name}.json"


def read_registry(endpoint_name: str) -> str | None:
    """The registered URL if the recorded process is alive, else None."""
    try:
        rec = json.loads(registry_path(endpoint_name).read_text())
        pid, url = int(rec["pid"]), str(rec["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    started = _started.get(endpoint_name)
    if started is not None and started.proc.pid == pid and started.proc.poll() is not None:
        return None  # our child died (poll() reaped it)
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return url


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as JSON by write-then-rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def write_registry(endpoint_name: str, url: str, pid: int) -> None:
    write_json(registry_path(endpoint_name), {"url": url, "pid": pid})


def instances_path(endpoint_name: str) -> Path:
    """Where an async endpoint's fleet lists its instances (see :mod:`dicomflow.emulator.moto.async_fleet`)."""
    return data_dir() / "endpoints" / endpoint_name / "instances.json"


#: Serving images the local cloud maps by default: the project's, and the AWS PyTorch serving image
#: (what ``estimator.deploy(instance_type="ml.*")`` names), played by the SDK-convention serving process.
DEFAULT_IMAGES = {"dicomflow-inference": {"command": ["python", "-m", "inference_container.serve"]},
                  "pytorch-inference": {"command": ["python", "-m", "dicomflow.emulator.sagemaker_sdk.serving"]}}


def register_image(data_dir: Path, image: str, command: object) -> None:
    """Add (or replace) one image -> host command entry in ``<data_dir>/images.json``, keeping the others."""
    path = Path(data_dir) / "images.json"
    try:
        images = json.loads(path.read_text())
    except FileNotFoundError:
        images = {}
    images[image] = command
    write_json(path, images)


def load_image_map() -> dict[str, object]:
    """The image -> host command map (env ``DICOMFLOW_LOCAL_IMAGES`` wins over ``images.json``)."""
    raw = runtime().local_images
    where = IMAGES_ENV
    if not raw:
        path = data_dir() / "images.json"
        where = str(path)
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise EndpointUnavailable(f"{where} is not valid JSON ({exc}); fix it") from None
    if not isinstance(data, dict):
        raise EndpointUnavailable(f"{where} must be a JSON object of image -> command")
    return data


def _image_keys(image: str) -> list[str]:
    """Ways a map entry may name ``image``: the URI, without tag/digest, without registry, repository name."""
    no_digest = image.split("@", 1)[0]
    head, _, last = no_digest.rpartition("/")
    untagged = (head + "/" if head else "") + last.split(":", 1)[0]

    def strip_registry(ref: str) -> str:
        first, sep, rest = ref.partition("/")
        return rest if sep and ("." in first or ":" in first or first == "localhost") else ref

    keys = [image, untagged, strip_registry(image), strip_registry(untagged), untagged.rsplit("/", 1)[-1]]
    return list(dict.fromkeys(keys))


def command_for_image(image: str) -> tuple[list[str], Path | None, dict[str, str]] | None:
    """(argv, cwd, extra env) mapped to ``image``, or None."""
    images = load_image_map()
    entry = next((images[k] for k in _image_keys(image) if k in images), None)
    if entry is None:
        return None
    cwd = None
    env: dict[str, str] = {}
    if isinstance(entry, dict):
        cwd = Path(entry["cwd"]) if entry.get("cwd") else None
        env = {str(k): str(v) for k, v in (entry.get("env") or {}).items()}
        entry = entry.get("command")
    if not isinstance(entry, list) or not entry or not all(isinstance(a, str) for a in entry):
        raise EndpointUnavailable(f"the local command for image {image!r} must be a non-empty list of strings")
    argv = [sys.executable if a in ("python", "python3") and i == 0 else a for i, a in enumerate(entry)]
    return argv, cwd, env


def can_resolve(endpoint_name: str, spec: ServingSpec | None) -> None:
    """Raise :class:`EndpointUnavailable` if :func:`resolve_serving` has no way to succeed."""
    if read_registry(endpoint_name):
        return
    if spec is None or command_for_image(spec.image) is None:
        raise _unavailable(endpoint_name, spec)


def _unavailable(endpoint_name: str, spec: ServingSpec | None) -> EndpointUnavailable:
    image = spec.image if spec else "?"
    return EndpointUnavailable(
        f"endpoint {endpoint_name} has no local serving process: no live entry in "
        f"{registry_path(endpoint_name)} and image {image!r} has no command in {data_dir() / 'images.json'} "
        f"or ${IMAGES_ENV}; add e.g. {{\"{image.rsplit('/', 1)[-1].split(':')[0]}\": "
        f"[\"python\", \"-m\", \"inference_container.serve\"]}} there, or deploy with the SageMaker SDK local mode")


def _lock(endpoint_name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(endpoint_name, threading.Lock())


def resolve_serving(endpoint_name: str, spec: ServingSpec | None = None) -> str:
    """Base URL of the endpoint's serving process, starting one from ``spec`` when needed."""
    url = read_registry(endpoint_name)
    if url:
        return url
    with _lock(endpoint_name):
        url = read_registry(endpoint_name)
        if url:
            return url
        if spec is None or command_for_image(spec.image) is None:
            raise _unavailable(endpoint_name, spec)
        return _start(endpoint_name, spec)


def _extract_model(spec: ServingSpec, model_dir: Path, what: str) -> Path:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    if not spec.model_data_url:
        return model_dir
    if spec.fetch is None:
        raise EndpointUnavailable(f"{what}: no way to download {spec.model_data_url}")
    try:
        data = spec.fetch(spec.model_data_url)
    except Exception as exc:
        raise EndpointUnavailable(
            f"{what}: cannot read model data {spec.model_data_url} ({exc}); "
            "upload model.tar.gz there or fix the Model's ModelDataUrl") from None
    if spec.model_data_url.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(model_dir, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise EndpointUnavailable(
                f"{what}: model data {spec.model_data_url} is not a readable tar archive ({exc})") from None
    else:
        (model_dir / spec.model_data_url.rsplit("/", 1)[-1]).write_bytes(data)
    return model_dir


@dataclass
class Process:
    """One serving process (one "instance"): its model directory, URL and log."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        _terminate(self.proc)


def start_process(spec: ServingSpec, root: Path, log_name: str, what: str,
                  environment: dict[str, str] | None = None) -> Process:
    """Start the serving process ``spec``'s image maps to, with its model extracted to ``root/model``, and wait
    until it answers ``GET /ping`` with 200. Output goes to ``<DICOMFLOW_HOME>/logs/<log_name>.log``."""
    mapped = command_for_image(spec.image)
    if mapped is None:
        raise EndpointUnavailable(f"{what}: image {spec.image!r} has no command in {data_dir() / 'images.json'} "
                                  f"or ${IMAGES_ENV}")
    argv, cwd, extra_env = mapped
    model_dir = _extract_model(spec, root / "model", what)
    port = free_port()
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (spec.environment or {}).items()})
    env.update(extra_env)
    env.update(environment or {})
    env.update({"SM_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": str(port),
                "SAGEMAKER_SAFE_PORT_RANGE": f"{port}-{port}"})
    log_dir = data_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{log_name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - command configured by the user in images.json
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=cwd or model_dir)
    url = f"http://127.0.0.1:{port}"
    timeout = runtime().endpoint_start_timeout
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise EndpointUnavailable(
                f"{what}: serving process {argv!r} exited with status {proc.returncode} "
                f"during start-up (last log line: {_tail(log_path)}); see {log_path}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return Process(proc, url, log_path)
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            _terminate(proc)
            raise EndpointUnavailable(
                f"{what}: serving process did not answer GET /ping with 200 within "
                f"{timeout:.0f}s (raise ${START_TIMEOUT_ENV}); see {log_path}")
        time.sleep(0.1)


def endpoint_log(endpoint_name: str) -> Path:
    return data_dir() / "logs" / f"endpoint-{endpoint_name}.log"


def start_instance(endpoint_name: str, spec: ServingSpec, index: int) -> Process:
    """Start instance ``index`` of an endpoint (its own model copy, the endpoint's log)."""
    return start_process(spec, data_dir() / "endpoints" / endpoint_name / f"instance-{index}",
                         endpoint_log(endpoint_name).stem, f"endpoint {endpoint_name}",
                         {"SAGEMAKER_ENDPOINT_NAME": endpoint_name})


def _start(endpoint_name: str, spec: ServingSpec) -> str:
    process = start_process(spec, data_dir() / "endpoints" / endpoint_name, endpoint_log(endpoint_name).stem,
                            f"endpoint {endpoint_name}", {"SAGEMAKER_ENDPOINT_NAME": endpoint_name})
    _started[endpoint_name] = process
    write_registry(endpoint_name, process.url, process.proc.pid)
    return process.url


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "-"
    return lines[-1] if lines else "-"


def _terminate(proc: subprocess.Popen) -> None:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def stop_serving(endpoint_name: str) -> bool:
    """Stop the serving process this emulator started for the endpoint; True if one was stopped."""
    started = _started.pop(endpoint_name, None)
    if started is None:
        return False
    _terminate(started.proc)
    try:
        rec = json.loads(registry_path(endpoint_name).read_text())
        if rec.get("pid") == started.proc.pid:
            registry_path(endpoint_name).unlink()
    except (OSError, ValueError):
        pass
    return True


def stop_all() -> None:
    """Stop every serving process this emulator started."""
    for name in list(_started):
        stop_serving(name)
