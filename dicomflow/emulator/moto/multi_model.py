"""SageMaker's side of multi-model endpoints on the emulated AWS: ``TargetModel`` -> download, load, LRU unload.

A Model whose container has ``Mode: MultiModel`` serves every artifact under its ``ModelDataUrl`` prefix;
its serving process starts with no model (``SAGEMAKER_MULTI_MODEL=true``). For ``InvokeEndpoint`` with
``TargetModel``: the first request for a target downloads ``<prefix><TargetModel>``, extracts it to
``<DICOMFLOW_HOME>/endpoints/<endpoint>/models/<sha256 of the name>/model`` and asks the container to load
it (``POST /models``); when the container answers 507 the least recently used model that no request is
using is unloaded (``DELETE /models/{name}``) and the load is tried again; requests then go to
``POST /models/{name}/invoke``. An artifact added under the prefix is servable at once, without
UpdateEndpoint, as on SageMaker; one replaced under the same name is not reloaded while it is loaded
(SageMaker caches it too: upload new versions under new names).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import requests

from dicomflow.paths import data_dir


class TargetError(Exception):
    """The target model cannot be served; ``status`` is the answer's HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Models:
    """What one serving process has loaded, least recently used first. ``lock`` guards the bookkeeping only;
    loads run one at a time under ``load_lock`` while requests for loaded models go on."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.in_use: Counter[str] = Counter()
        self.loading: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.load_lock = threading.Lock()


_by_endpoint: dict[str, _Models] = {}
_guard = threading.Lock()


def _models(endpoint: str, url: str) -> _Models:
    with _guard:
        current = _by_endpoint.get(endpoint)
        if current is None or current.url != url:  # a new serving process knows no model
            current = _by_endpoint[endpoint] = _Models(url)
        return current


def check_target(target: str) -> str:
    parts = PurePosixPath(target).parts
    if not target or target.startswith("/") or ".." in parts or len(target) > 1024:
        raise TargetError(f"TargetModel {target!r} must be a relative path of an object under the endpoint's "
                          "model data prefix (e.g. hippocampus-v3.tar.gz)", 400)
    return target


def _download(endpoint: str, prefix: str, target: str, fetch: Callable[[str], bytes]) -> Path:
    uri = f"{prefix.rstrip('/')}/{target}"
    try:
        data = fetch(uri)
    except Exception:
        bucket, _, key = uri[5:].partition("/")
        raise TargetError(f"Failed to download model data (bucket: {bucket}, key: {key}). Please ensure that "
                          "there is an object located at the URL and that the role passed to CreateModel has "
                          "permissions to download the model.", 400) from None
    root = data_dir() / "endpoints" / endpoint / "models" / hashlib.sha256(target.encode()).hexdigest()[:32]
    shutil.rmtree(root, ignore_errors=True)
    (root / "model").mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(root / "model", filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise TargetError(f"{uri} is not a readable model.tar.gz ({exc})", 400) from None
    return root / "model"


def _load(models: _Models, endpoint: str, prefix: str, target: str, fetch: Callable[[str], bytes]) -> None:
    """Load ``target`` into the container, unloading idle models while it answers 507."""
    with models.load_lock:
        path = _download(endpoint, prefix, target, fetch)
        while True:
            resp = requests.post(f"{models.url}/models", json={"model_name": target, "url": str(path)}, timeout=300)
            if resp.status_code in (200, 409):
                with models.lock:
                    models.loaded[target] = path
                return
            if resp.status_code != 507:
                raise TargetError(f"the container could not load {target}: {resp.status_code} {resp.text[:300]}",
                                  resp.status_code)
            with models.lock:  # the least recently used model no request is using leaves the table first
                idle = next((name for name in models.loaded if not models.in_use[name]), None)
                gone = models.loaded.pop(idle) if idle is not None else None
            if gone is None:
                raise TargetError(f"the container has no memory for {target} and every loaded model is in use: "
                                  f"{resp.text[:300]}", 507)
            requests.delete(f"{models.url}/models/{quote(idle, safe='')}", timeout=60)
            shutil.rmtree(gone.parent, ignore_errors=True)


def _acquire(models: _Models, endpoint: str, prefix: str, target: str, fetch: Callable[[str], bytes]) -> None:
    """Count a request on ``target``, loading it first (once, however many requests ask meanwhile)."""
    while True:
        with models.lock:
            if target in models.loaded:
                models.loaded.move_to_end(target)
                models.in_use[target] += 1
                return
            event = models.loading.get(target)
            mine = event is None
            if mine:
                event = models.loading[target] = threading.Event()
        if not mine:
            event.wait()
            continue
        try:
            _load(models, endpoint, prefix, target, fetch)
        finally:
            with models.lock:
                models.loading.pop(target).set()


def invoke(endpoint: str, url: str, prefix: str, target: str, fetch: Callable[[str], bytes], body: bytes,
           headers: dict[str, str], timeout: float) -> requests.Response:
    """The container's answer to ``body`` for ``target`` (loaded first when needed)."""
    check_target(target)
    models = _models(endpoint, url)
    _acquire(models, endpoint, prefix, target, fetch)
    try:
        return requests.post(f"{url}/models/{quote(target, safe='')}/invoke", data=body,
                             headers={**headers, "X-Amzn-SageMaker-Target-Model": target}, timeout=(5, timeout))
    finally:
        with models.lock:
            models.in_use[target] -= 1


def forget(endpoint: str) -> None:
    """The endpoint's serving process is gone (deleted, updated): nothing is loaded any more."""
    with _guard:
        _by_endpoint.pop(endpoint, None)
