"""The emulated AWS keeps its state across restarts: snapshots of moto's backends, S3 bodies as files.

moto 5.2.5 holds everything in memory and has no persistence (getmoto/moto#9755). Here, inside the moto
server process:

* every backend in use (S3, IAM, STS, Lambda, Secrets Manager, SNS, SQS, CloudFormation, SageMaker,
  DynamoDB, Cognito, CloudWatch Logs, ...) is pickled into one snapshot, so objects shared between
  services stay shared. What pickle cannot take is reduced to what rebuilds it: locks become new locks,
  weak-value maps and ``defaultdict(lambda: {})`` their contents, RSA keys their PEM;
* an S3 object's body is written once to ``<dir>/s3-bodies/<id>``, and a large bytes attribute of any
  other moto object (a Lambda function's zip) once to ``<dir>/blobs/<sha256>``; the snapshot names
  them, restore reads them back, and files no snapshot names are removed after the next one. So a
  snapshot stays small and cheap to take however much S3 holds;
* a snapshot is written to a temporary file, flushed to disk and renamed over the last one. It starts
  with a header: the format version, moto's version and the SHA-256 of the payload;
* :class:`Saver` takes a snapshot at most every ``interval`` seconds while requests keep arriving (at
  most that much is lost to ``kill -9``), and a last one at shutdown;
* :func:`restore` runs before the server answers. A snapshot that is damaged, of another format or
  another moto version is moved aside (``state.snapshot.bad-<time>``) with one line saying so in
  ``restore.json``, and the emulator starts empty rather than half-restored.

Not kept: work in flight at a crash (a running Lambda invoke, an async inference being processed) and
warm Lambda environments (they start cold again).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomflow.paths import PRIVATE_FILE_MODE, data_dir, private_dir

log = logging.getLogger("dicomflow.persistence")

FORMAT_VERSION = 1
MAGIC = b"DICOMFLOW-AWS-STATE\n"
SNAPSHOT = "state.snapshot"
BODIES = "s3-bodies"
BLOBS = "blobs"
BLOB_MIN_BYTES = 256 * 1024  # bytes values from this size on are kept as files beside the snapshot
RESTORE_REPORT = "restore.json"
_BODY_ATTR = "_dicomflow_body"  # (body id, size) on an S3 key once its body is on disk


def state_dir(root: Path | None = None) -> Path:
    """Where the emulator's state lives: ``<data dir>/aws`` (owner-only: S3 bodies hold PHI)."""
    return private_dir((root or data_dir()) / "aws")


@dataclass
class RestoreReport:
    """What :func:`restore` found: ``status`` is ``empty``, ``restored`` or ``set-aside``."""

    status: str
    message: str
    services: dict[str, int]

    def write(self, directory: Path) -> None:
        _write_file(directory / RESTORE_REPORT, json.dumps(asdict(self), indent=2).encode())


def read_restore_report(root: Path) -> RestoreReport | None:
    """The report of the emulator's last start in data dir ``root``, if there is one."""
    try:
        return RestoreReport(**json.loads((root / "aws" / RESTORE_REPORT).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_file(path: Path, data: bytes) -> None:
    """``data`` at ``path`` or the old content: written aside, flushed, renamed over."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- what pickle cannot take ---------------------------------------------------------------------

def _new_lock(reentrant: bool) -> Any:
    return threading.RLock() if reentrant else threading.Lock()


def _weak_values(items: dict) -> weakref.WeakValueDictionary:
    return weakref.WeakValueDictionary(items)


def _private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem, password=None)


def _new_object(cls: type) -> Any:
    return cls.__new__(cls)


def _set_state_with_blobs(obj: Any, state: tuple[dict, str, dict[str, str]]) -> None:
    """Restore a moto object whose large bytes attributes were kept as blob files."""
    attributes, directory, blobs = state
    obj.__dict__.update(attributes)
    for name, digest in blobs.items():
        setattr(obj, name, (Path(directory) / digest).read_bytes())


class _Blobs:
    """Large bytes values as content-addressed files; each object is hashed once while it lives."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)
        self.referenced: set[str] = set()
        self._known: dict[int, tuple[bytes, str]] = {}  # id -> (the object, kept alive so ids stay unique; sha)

    def save(self, value: bytes) -> str:
        known = self._known.get(id(value))
        if known is None or known[0] is not value:
            known = (value, hashlib.sha256(value).hexdigest())
            self._known[id(value)] = known
        digest = known[1]
        if not (self.directory / digest).exists():
            _write_file(self.directory / digest, value)
        self.referenced.add(digest)
        return digest

    def finish(self) -> None:
        """After a snapshot: forget objects and remove files it did not name."""
        self._known = {k: v for k, v in self._known.items() if v[1] in self.referenced}
        _remove_unreferenced(self.directory, self.referenced)
        self.referenced = set()


class _Bodies:
    """S3 bodies as files: written once per key, read back at restore."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)
        self.referenced: set[str] = set()

    def save(self, key: Any) -> str:
        body = getattr(key, _BODY_ATTR, None)
        size = int(getattr(key, "contentsize", 0) or 0)
        if body is None or body[1] != size or not (self.directory / body[0]).exists():
            try:
                value = key.value
            except ValueError:  # the buffer of a deleted key is closed
                value = b""
            body = (uuid.uuid4().hex, len(value))
            _write_file(self.directory / body[0], value)
            setattr(key, _BODY_ATTR, body)
        self.referenced.add(body[0])
        return body[0]

    def remove_unreferenced(self) -> None:
        _remove_unreferenced(self.directory, self.referenced)


def _remove_unreferenced(directory: Path, referenced: set[str]) -> None:
    """Delete the files in ``directory`` a snapshot did not name (temporary ``.``-files being written stay)."""
    for path in directory.iterdir():
        if path.name not in referenced and not path.name.startswith("."):
            path.unlink(missing_ok=True)


def _set_s3_key_state(key: Any, state: tuple[dict, str, str]) -> None:
    """Restore an S3 key: its attributes, a fresh buffer holding the body file, a new lock."""
    attributes, directory, body_id = state
    key.__dict__.update(attributes)
    key._value_buffer = tempfile.SpooledTemporaryFile(max_size=key._max_buffer_size)
    key.lock = threading.Lock()
    key.value = (Path(directory) / body_id).read_bytes()


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, bodies: _Bodies, blobs: _Blobs) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.bodies, self.blobs = bodies, blobs
        from moto.s3.models import FakeKey

        self._key_type = FakeKey
        self._rlock_type = type(threading.RLock())
        self._lock_type = type(threading.Lock())
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._rsa_type = rsa.RSAPrivateKey

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is self._lock_type or kind is self._rlock_type:
            return _new_lock, (kind is self._rlock_type,)
        if isinstance(obj, self._key_type):
            body_id = self.bodies.save(obj)
            attributes = {k: v for k, v in obj.__dict__.items() if k not in ("_value_buffer", "lock")}
            return (_new_object, (kind,), (attributes, str(self.bodies.directory), body_id), None, None,
                    _set_s3_key_state)
        if kind.__module__.startswith("moto.") and not isinstance(obj, type) and hasattr(obj, "__dict__"):
            attributes = obj.__getstate__()  # the instance's own (LambdaFunction drops its Docker client)
            if isinstance(attributes, dict):
                large = {k: v for k, v in attributes.items() if type(v) is bytes and len(v) >= BLOB_MIN_BYTES}
                if large:
                    blobs = {k: self.blobs.save(v) for k, v in large.items()}
                    kept = {k: v for k, v in attributes.items() if k not in large}
                    return (_new_object, (kind,), (kept, str(self.blobs.directory), blobs), None, None,
                            _set_state_with_blobs)
        if isinstance(obj, weakref.WeakValueDictionary):
            return _weak_values, (dict(obj),)
        if isinstance(obj, collections.defaultdict) and getattr(obj.default_factory, "__name__", "") == "<lambda>":
            empty = obj.default_factory()
            if type(empty) in (dict, list, set) and not empty:
                return collections.defaultdict, (type(empty), dict(obj))
        if isinstance(obj, self._rsa_type):
            from cryptography.hazmat.primitives import serialization

            pem = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            return _private_key, (pem,)
        return NotImplemented


# ---- snapshot and restore ------------------------------------------------------------------------

def _moto_version() -> str:
    import moto

    return str(moto.__version__)


def _backends_in_use() -> dict[str, dict[str, dict[str, Any]]]:
    """service -> account -> region -> backend, for every moto backend that holds an account."""
    from moto.core.base_backend import BackendDict

    return {bd.service_name: {account: dict(regions) for account, regions in list(bd.items())}
            for bd in list(BackendDict._instances)}


def snapshot(directory: Path, blobs: _Blobs | None = None) -> int:
    """Write one snapshot of every backend in use into ``directory``; returns its size in bytes.
    Raises ``RuntimeError`` if a request changed a backend while it was being read (try again).
    ``blobs`` carries what was hashed from one snapshot to the next (:class:`Saver` keeps one)."""
    bodies = _Bodies(directory / BODIES)
    blobs = blobs if blobs is not None else _Blobs(directory / BLOBS)
    buf = io.BytesIO()
    _Pickler(buf, bodies, blobs).dump(_backends_in_use())
    payload = buf.getvalue()
    header = {"format": FORMAT_VERSION, "moto": _moto_version(), "sha256": hashlib.sha256(payload).hexdigest(),
              "bytes": len(payload), "savedAt": datetime.now(UTC).isoformat(timespec="milliseconds")}
    _write_file(directory / SNAPSHOT, MAGIC + json.dumps(header).encode() + b"\n" + payload)
    bodies.remove_unreferenced()
    blobs.finish()
    return len(payload)


def _read(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The backends saved at ``path``; ``ValueError`` saying why a snapshot cannot be used."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("it is not a dicomflow emulator snapshot")
    header_line, _, payload = data[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(header_line)
    except ValueError:
        raise ValueError("its header is damaged") from None
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"it has format {header.get('format')}, this dicomflow reads format {FORMAT_VERSION}")
    if header.get("moto") != _moto_version():
        raise ValueError(f"it was written by moto {header.get('moto')}, this is moto {_moto_version()}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("its checksum does not match (truncated or damaged)")
    try:
        return pickle.loads(payload)  # noqa: S301 - our own file, owner-only, checksummed
    except Exception as exc:  # unpickling can raise anything when classes changed
        raise ValueError(f"it cannot be loaded ({type(exc).__name__}: {exc})") from None


def restore(directory: Path) -> RestoreReport:
    """Load the last snapshot into moto (call before serving). Never raises: a snapshot that cannot be
    used is moved aside and the emulator starts empty; the report says which."""
    from moto.backends import get_backend

    path = directory / SNAPSHOT
    if not path.exists():
        report = RestoreReport("empty", "no saved AWS state: starting empty", {})
    else:
        try:
            saved = _read(path)
            live = {service: get_backend(service) for service in saved}  # all or nothing: resolve first
        except Exception as exc:  # a damaged file, an unknown service: set it aside, start empty
            aside = path.with_name(f"{SNAPSHOT}.bad-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
            os.replace(path, aside)
            message = (f"the saved AWS state could not be used ({exc}); it was kept as {aside} and the "
                       "emulator started empty")
            report = RestoreReport("set-aside", message, {})
        else:
            counts = {}
            for service, accounts in saved.items():
                for account, regions in accounts.items():
                    for region, backend in regions.items():
                        live[service][account][region] = backend
                counts[service] = sum(len(r) for r in accounts.values())
            report = RestoreReport("restored", f"AWS state restored ({len(saved)} services)", counts)
    (log.warning if report.status == "set-aside" else log.info)("%s", report.message)
    report.write(directory)
    return report


def wipe(root: Path) -> bool:
    """Forget the saved AWS state of data dir ``root`` (the emulator must be stopped); True if there was any."""
    directory = root / "aws"
    if not directory.exists():
        return False
    found = False
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            path.unlink()
            found = True
        elif path.is_dir():
            path.rmdir()
    return found


class Saver:
    """Snapshots while the emulator runs: :meth:`changed` after each request, one snapshot at most every
    ``interval`` seconds while there were changes, and :meth:`stop` takes the last one."""

    def __init__(self, directory: Path, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._blobs = _Blobs(directory / BLOBS)
        self._thread = threading.Thread(target=self._run, name="aws-snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def changed(self) -> None:
        self._dirty.set()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if self._dirty.is_set():
                self.save()

    def save(self, attempts: int = 20) -> bool:
        """One snapshot now (retried while requests change the backends under it); False if none was taken."""
        with self._lock:
            for _ in range(attempts):
                self._dirty.clear()
                started = time.monotonic()
                try:
                    size = snapshot(self.directory, self._blobs)
                except RuntimeError:  # "dictionary changed size during iteration": a request was writing
                    self._blobs.referenced = set()
                    self._dirty.set()
                    time.sleep(0.05)
                    continue
                except Exception:
                    log.exception("could not save the AWS state")
                    self._blobs.referenced = set()
                    self._dirty.set()
                    return False
                took = time.monotonic() - started
                (log.warning if took > 0.5 else log.debug)("AWS state saved: %d bytes in %.3f s", size, took)
                return True
        return False

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self.save()
