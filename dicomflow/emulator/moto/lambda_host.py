"""Lambda execution for the emulated AWS: a zip function runs in warm host Python processes.

moto 5.2.5 runs Lambda code only inside Docker. :func:`install` replaces, inside the moto server
process, ``LambdaFunction._invoke_lambda`` / ``LambdaFunction.invoke`` with :func:`execute`, and makes
moto's S3 -> Lambda notification path asynchronous (a small worker pool), as it is on AWS.

Execution environments, as Lambda keeps them:

* the function's zip (``code_bytes``) is unpacked once per code SHA-256 into
  ``<DICOMFLOW_HOME>/lambda/<sha>/`` (the task root);
* an environment is one :mod:`dicomflow.emulator.moto.lambda_bootstrap` process run with this
  interpreter (``python -I``, so this virtual environment's site-packages are there, the task root first
  on ``sys.path``), the function's Environment variables, the Lambda reserved variables and
  ``AWS_ENDPOINT_URL`` / region / credentials pointing at the emulator, and ``DICOMFLOW_SEARCH_INDEX_DIR``
  at the data dir's embedded image index (where the search ingestion Lambda writes embeddings) and
  ``DICOMFLOW_SEARCH_REPORTS_INDEX`` at its report index. Its
  module-level code runs once (the cold start, reported as ``Init Duration``); later invokes reuse it;
* a function has up to its reserved concurrency (or ``DICOMFLOW_LAMBDA_CONCURRENCY``) environments; an
  invoke beyond that waits for one to be free. A new version of the function (code, handler, timeout,
  memory, runtime or variables) retires the old environments; one idle for
  ``DICOMFLOW_LAMBDA_IDLE_SECONDS`` is stopped; one that crashes or times out is killed and replaced;
* the handler gets the event and a context (``function_name``, ``aws_request_id``,
  ``get_remaining_time_in_millis()`` ...); at the function's Timeout (counted from the start of the
  invoke) the environment's process group is killed. Init has its own ``INIT_TIMEOUT_S``; an Init that
  runs past it is retried in a fresh process as part of the invoke, within the function's Timeout (an
  ``INIT_REPORT ... Status: timeout`` line in the log), as Lambda does;
* the result or error comes back as Lambda's Invoke API returns it: ``X-Amz-Function-Error:
  Unhandled`` and ``{"errorMessage", "errorType", "requestId", "stackTrace"}``; a timeout gives
  ``Sandbox.Timedout`` / ``"... Task timed out after N.NN seconds"``;
* output (print, logging, tracebacks) plus START/END/REPORT lines go to the CloudWatch Logs group
  ``/aws/lambda/<name>``, one stream per environment; ``LogType=Tail`` returns the last 4 KB of the
  invoke's own lines.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomflow.config import runtime
from dicomflow.paths import data_dir, image_index_dir, report_index_path

log = logging.getLogger("dicomflow.lambda")

BOOTSTRAP = Path(__file__).with_name("lambda_bootstrap.py")
INIT_TIMEOUT_S = 10.0  # Lambda's init phase limit
LOG_TAIL_BYTES = 4096
READY = b"READY\n"
# Environment variables Lambda reserves: a function's Environment cannot override these.
RESERVED = ("_HANDLER", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "AWS_LAMBDA_FUNCTION_NAME",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_LOG_GROUP_NAME",
            "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR")
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "DICOMFLOW_HOME")

_config: dict[str, str] = {}
_extract_lock = threading.Lock()
_events = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lambda-event")


@dataclass
class Invocation:
    """Outcome of one invoke: ``payload`` is the JSON text Invoke returns; ``error`` the errorType or None."""

    request_id: str
    payload: str
    error: str | None
    logs: str
    duration_ms: float
    init_ms: float | None = None


def configure(endpoint_url: str) -> None:
    """Record the emulator's own URL: handlers get it as ``AWS_ENDPOINT_URL``."""
    _config["endpoint_url"] = endpoint_url


def task_root(code: bytes) -> Path:
    """Unpack a function zip once per content hash; returns the directory (named by the hash)."""
    digest = hashlib.sha256(code).hexdigest()
    root = data_dir() / "lambda" / digest
    if root.is_dir():
        return root
    with _extract_lock:
        if root.is_dir():
            return root
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root.parent))
        try:
            with zipfile.ZipFile(io.BytesIO(code)) as zf:
                zf.extractall(tmp)  # zipfile drops absolute paths and '..' parts
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


def function_environment(fn: Any, stream: str, root: Path) -> dict[str, str]:
    """What the handler process sees: passthrough basics, the function's variables, reserved ones."""
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env["AWS_ENDPOINT_URL"] = _config.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL", "")
    # the local cloud's image index is its data dir's, as a domain's URL is on AWS (the function's own wins)
    env["DICOMFLOW_SEARCH_INDEX_DIR"] = str(image_index_dir(data_dir()))
    env["DICOMFLOW_SEARCH_REPORTS_INDEX"] = str(report_index_path(data_dir()))
    env.update({str(k): str(v) for k, v in (fn.environment_vars or {}).items()})
    env.update({
        "_HANDLER": str(fn.handler),
        "AWS_REGION": fn.region,
        "AWS_DEFAULT_REGION": fn.region,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.run_time}",
        "AWS_LAMBDA_FUNCTION_NAME": fn.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
        "AWS_LAMBDA_FUNCTION_VERSION": str(fn.version),
        "AWS_LAMBDA_LOG_GROUP_NAME": fn.logs_group_name,
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "LAMBDA_TASK_ROOT": str(root),
        "LAMBDA_RUNTIME_DIR": str(BOOTSTRAP.parent),
        "TZ": ":UTC",
        "DICOMFLOW_LAMBDA_FUNCTION_ARN": fn.function_arn,
    })
    if os.environ.get("AWS_SESSION_TOKEN"):
        env["AWS_SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    if not env["AWS_ENDPOINT_URL"]:
        del env["AWS_ENDPOINT_URL"]
    return env


def _version_key(fn: Any, root: Path) -> str:
    """Identity of what an environment runs: a change to any of these needs a fresh environment."""
    parts = [root.name, str(fn.handler), str(fn.timeout), str(fn.memory_size), str(fn.run_time),
             json.dumps(fn.environment_vars or {}, sort_keys=True, default=str)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _error_payload(error_type: str, message: str, request_id: str) -> str:
    return json.dumps({"errorMessage": message, "errorType": error_type, "requestId": request_id,
                       "stackTrace": []})


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Exited(Exception):
    """The environment's process ended or stopped answering; ``timed_out`` tells which."""

    def __init__(self, timed_out: bool) -> None:
        self.timed_out = timed_out


@dataclass(eq=False)  # identity semantics: environments live in sets
class _Environment:
    """One warm execution environment: a bootstrap process, its reply pipe and its output file."""

    key: str
    stream: str
    proc: subprocess.Popen
    replies: int
    log_path: Path
    init_ms: float | None = None  # set after a cold start, reported (then cleared) by the first invoke
    last_used: float = field(default_factory=time.monotonic)
    _buffer: bytes = b""

    @classmethod
    def start(cls, fn: Any, key: str, root: Path) -> _Environment:
        env_id = uuid.uuid4().hex
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[{fn.version}]{env_id}"
        log_dir = root.parent / "env"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{env_id}.log"
        log_path.write_bytes(b"")
        proc, replies = _spawn(fn, stream, root, log_path)
        return cls(key, stream, proc, replies, log_path)

    def restart(self, fn: Any, root: Path, note: str) -> None:
        """A fresh process in place of this one, on the same log stream after ``note`` (a retried Init)."""
        self._kill()
        self._buffer = b""
        with open(self.log_path, "ab") as out:
            out.write(note.encode() + b"\n")
        self.proc, self.replies = _spawn(fn, self.stream, root, self.log_path)

    def reply(self, timeout: float) -> bytes:
        """The next line the bootstrap writes; :class:`_Exited` on EOF or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.replies], [], [], max(0.0, left))
            if not ready:
                raise _Exited(timed_out=True)
            chunk = os.read(self.replies, 65536)
            if not chunk:
                raise _Exited(timed_out=False)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line + b"\n"

    def send(self, request: dict[str, Any]) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _Exited(timed_out=False) from None

    def output_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def output_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def exit_reason(self) -> str:
        try:
            code = self.proc.wait(1)
        except subprocess.TimeoutExpired:
            return "signal: SIGKILL"
        return f"signal: {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"

    def stop(self) -> None:
        """Kill the process group and release the pipes and the output file."""
        self._kill()
        self.log_path.unlink(missing_ok=True)

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            os.close(self.replies)
        except OSError:
            pass


def _spawn(fn: Any, stream: str, root: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """Start the bootstrap for ``fn`` appending its output to ``log_path``: (process, reply pipe)."""
    replies_r, replies_w = os.pipe()
    argv = [sys.executable, "-I", str(BOOTSTRAP), str(root), str(fn.handler), str(replies_w)]
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our interpreter and bootstrap, fixed argv
                argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                env=function_environment(fn, stream, root), pass_fds=(replies_w,), start_new_session=True)
    except BaseException:
        os.close(replies_r)
        raise
    finally:
        os.close(replies_w)
    return proc, replies_r


class _Pools:
    """Idle and busy environments of every function (by ARN), a cap per function, an idle reaper."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._idle: dict[str, list[_Environment]] = {}
        self._busy: dict[str, set[_Environment]] = {}
        self._starting: dict[str, int] = {}  # environments being started count against the cap
        self._current: dict[str, str] = {}  # ARN -> version key now served
        self._reaper: threading.Thread | None = None
        self._closed = False

    def acquire(self, fn: Any, key: str, root: Path) -> tuple[_Environment, bool]:
        """A free environment of this version (True if it must be started), waiting while at the cap."""
        arn = fn.function_arn
        cap = int(fn.reserved_concurrency or 0) or runtime().lambda_concurrency
        retired: list[_Environment] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("the emulator is stopping")
            if self._current.get(arn) != key:
                self._current[arn] = key
                retired = self._idle.pop(arn, [])
            while True:
                idle = self._idle.setdefault(arn, [])
                in_use = len(self._busy.setdefault(arn, set())) + self._starting.get(arn, 0)
                while idle and len(idle) + in_use > cap:  # the cap was lowered
                    retired.append(idle.pop(0))
                if idle:
                    env, cold = idle.pop(), False
                    self._busy[arn].add(env)
                    break
                if in_use < cap:
                    env, cold = None, True
                    self._starting[arn] = self._starting.get(arn, 0) + 1
                    break
                self._lock.wait(1.0)
            self._start_reaper()
        for old in retired:
            old.stop()
        if not cold:
            return env, False
        try:
            env = _Environment.start(fn, key, root)
        finally:
            with self._lock:
                self._starting[arn] -= 1
                if env is not None:
                    self._busy[arn].add(env)
                self._lock.notify_all()
        return env, True

    def release(self, arn: str, env: _Environment, healthy: bool) -> None:
        """Back to the idle list if it is still healthy and current, else stopped."""
        with self._lock:
            self._busy.get(arn, set()).discard(env)
            keep = healthy and not self._closed and self._current.get(arn) == env.key
            if keep:
                env.last_used = time.monotonic()
                self._idle.setdefault(arn, []).append(env)
            self._lock.notify_all()
        if not keep:
            env.stop()

    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="lambda-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while not self._closed:
            idle_s = runtime().lambda_idle_seconds
            time.sleep(min(idle_s / 4, 15.0))
            cutoff = time.monotonic() - idle_s
            with self._lock:
                stale = [e for envs in self._idle.values() for e in envs if e.last_used < cutoff]
                for envs in self._idle.values():
                    envs[:] = [e for e in envs if e.last_used >= cutoff]
            for env in stale:
                env.stop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            envs = [e for v in self._idle.values() for e in v] + [e for v in self._busy.values() for e in v]
            self._idle.clear()
            self._lock.notify_all()
        for env in envs:
            env.stop()

    def count(self, arn: str) -> int:
        """Environments (idle and busy) the function has now."""
        with self._lock:
            return len(self._idle.get(arn, ())) + len(self._busy.get(arn, ()))


_pools = _Pools()


def _refusal(fn: Any, request_id: str, message: str) -> Invocation:
    inv = Invocation(request_id, _error_payload("Runtime.InvalidEntrypoint", message, request_id),
                     "Runtime.InvalidEntrypoint", "", 0.0)
    stream = f"{datetime.now(UTC):%Y/%m/%d}/[{fn.version}]{request_id.replace('-', '')}"
    _save_logs(fn, stream, inv, create_stream=True)
    return inv


def execute(fn: Any, event: Any) -> Invocation:
    """Invoke ``fn`` (a moto ``LambdaFunction``) on ``event`` in a warm (or new) environment; never
    raises for function failures (they come back as the Invoke API's error payload)."""
    request_id = str(uuid.uuid4())
    if getattr(fn, "package_type", "Zip") != "Zip" or not getattr(fn, "code_bytes", None):
        return _refusal(fn, request_id, "the local emulator runs zip-packaged Python functions only; create "
                                        "the function with a zip (Code.ZipFile or Code.S3Bucket/S3Key)")
    try:
        root = task_root(fn.code_bytes)
    except (zipfile.BadZipFile, OSError) as exc:
        return _refusal(fn, request_id, f"could not unzip the function code: {exc}")
    env, cold = _pools.acquire(fn, _version_key(fn, root), root)
    healthy = False
    try:
        inv, healthy = _run(fn, env, cold, request_id, event, root)
        _save_logs(fn, env.stream, inv, create_stream=cold)
    finally:
        _pools.release(fn.function_arn, env, healthy)
    return inv


def _run(fn: Any, env: _Environment, cold: bool, request_id: str, event: Any,
         root: Path) -> tuple[Invocation, bool]:
    """(the outcome, whether the environment may serve again)."""
    timeout = float(fn.timeout or 3)
    offset = 0 if cold else env.output_size()
    init_ms = None
    started = time.monotonic()  # the invoke's clock: a retried Init runs on it, as on Lambda
    if cold:
        try:
            ready, retried = _init(fn, env, root, timeout)
        except _Exited as exc:
            if exc.timed_out:
                return _timed_out(env, request_id, offset, timeout, started, None), False
            return _failed(env, request_id, offset, "Runtime.ExitError",
                           f"Runtime exited with error: {env.exit_reason()}", None), False
        if not retried:  # the Init phase ended within its own limit: it is reported apart
            init_ms = (time.monotonic() - started) * 1000
            started = time.monotonic()
        if ready != READY:  # the import failed: the bootstrap reported it and exits
            error = json.loads(ready)["error"]
            error["requestId"] = request_id
            return _finish(env, request_id, offset, json.dumps(error), error["errorType"],
                           (time.monotonic() - started) * 1000 if retried else 0.0, init_ms), False
    left = max(0.0, timeout - (time.monotonic() - started))
    try:
        env.send({"requestId": request_id, "deadlineMs": int((time.time() + left) * 1000), "event": event})
        outcome = json.loads(env.reply(left))
    except _Exited as exc:
        if exc.timed_out:  # release() kills the environment's process group
            return _timed_out(env, request_id, offset, timeout, started, init_ms), False
        message = f"RequestId: {request_id} Error: Runtime exited with error: {env.exit_reason()}"
        return _finish(env, request_id, offset, _error_payload("Runtime.ExitError", message, request_id),
                       "Runtime.ExitError", (time.monotonic() - started) * 1000, init_ms), False
    duration = (time.monotonic() - started) * 1000
    if outcome["ok"]:
        return _finish(env, request_id, offset, outcome["payload"], None, duration, init_ms), True
    return _finish(env, request_id, offset, json.dumps(outcome["error"]), outcome["error"]["errorType"],
                   duration, init_ms), True


def _init(fn: Any, env: _Environment, root: Path, timeout: float) -> tuple[bytes, bool]:
    """The Init phase: (the bootstrap's first line, whether Init was retried). As on Lambda, an Init
    that runs past ``INIT_TIMEOUT_S`` is retried once in a fresh process as part of the invoke, within
    the function's timeout. Raises :class:`_Exited`."""
    try:
        return env.reply(INIT_TIMEOUT_S), False
    except _Exited as exc:
        if not exc.timed_out:
            raise
    env.restart(fn, root, f"INIT_REPORT Init Duration: {INIT_TIMEOUT_S * 1000:.2f} ms\tPhase: init\t"
                          "Status: timeout")
    return env.reply(timeout), True


def _timed_out(env: _Environment, request_id: str, offset: int, timeout: float, started: float,
               init_ms: float | None) -> Invocation:
    message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
    inv = _finish(env, request_id, offset, _error_payload("Sandbox.Timedout", message, request_id),
                  "Sandbox.Timedout", (time.monotonic() - started) * 1000, init_ms)
    inv.logs += f"{_now_iso()} {request_id} Task timed out after {timeout:.2f} seconds\n"
    return inv


def _failed(env: _Environment, request_id: str, offset: int, error_type: str, what: str,
            init_ms: float | None) -> Invocation:
    message = f"RequestId: {request_id} Error: {what}"
    return _finish(env, request_id, offset, _error_payload(error_type, message, request_id), error_type, 0.0,
                   init_ms)


def _finish(env: _Environment, request_id: str, offset: int, payload: str, error: str | None,
            duration_ms: float, init_ms: float | None) -> Invocation:
    return Invocation(request_id, payload, error, env.output_since(offset), duration_ms, init_ms)


def stop_all() -> None:
    """Drop queued Event invocations and stop every execution environment (shutdown)."""
    _events.shutdown(wait=False, cancel_futures=True)
    _pools.close()


def _save_logs(fn: Any, stream: str, inv: Invocation, create_stream: bool) -> None:
    """Frame the invoke's output with START/END/REPORT (``inv.logs`` becomes that) and store it."""
    lines = [f"START RequestId: {inv.request_id} Version: {fn.version}"]
    lines += inv.logs.splitlines()
    lines.append(f"END RequestId: {inv.request_id}")
    billed = int(-(-inv.duration_ms // 1))
    report = (f"REPORT RequestId: {inv.request_id}\tDuration: {inv.duration_ms:.2f} ms\t"
              f"Billed Duration: {billed} ms\tMemory Size: {fn.memory_size} MB")
    if inv.init_ms is not None:
        report += f"\tInit Duration: {inv.init_ms:.2f} ms"
    lines.append(report)
    inv.logs = "\n".join(lines) + "\n"
    try:
        backend = fn.logs_backend
        backend.ensure_log_group(fn.logs_group_name)
        if create_stream:
            backend.create_log_stream(fn.logs_group_name, stream)
        now = int(time.time() * 1000)
        backend.put_log_events(fn.logs_group_name, stream,
                               [{"timestamp": now, "message": line} for line in lines if line])
    except Exception:  # logging must never turn an invocation into a failure
        log.exception("could not store logs of %s", fn.function_name)


# ---- moto integration -------------------------------------------------------------------------

def _header(headers: Any, name: str, default: str | None = None) -> str | None:
    if not headers:
        return default
    for k, v in dict(headers).items():
        if k.lower() == name.lower():
            return v
    return default


def _invoke(self: Any, body: str, request_headers: Mapping[str, str], response_headers: dict) -> bytes:
    """Replacement of ``LambdaFunction.invoke`` (RequestResponse, Event and DryRun)."""
    from moto.awslambda.exceptions import LambdaClientError

    try:
        event = json.loads(body) if body else {}
    except ValueError as exc:
        raise LambdaClientError("InvalidRequestContentException",
                                f"Could not parse request body into json: {exc}") from None
    kind = _header(request_headers, "X-Amz-Invocation-Type", "RequestResponse")
    if kind == "DryRun":
        return b""
    if kind == "Event":
        _events.submit(_run_quietly, self, event)
        return b""
    inv = execute(self, event)
    response_headers["X-Amz-Executed-Version"] = str(self.version)
    if inv.error:
        response_headers["x-amz-function-error"] = "Unhandled"
    tail = inv.logs.encode("utf-8")[-LOG_TAIL_BYTES:]
    response_headers["x-amz-log-result"] = base64.b64encode(tail).decode("ascii")
    return inv.payload.encode("utf-8")


def _run_quietly(fn: Any, event: Any) -> None:
    try:
        inv = execute(fn, event)
        if inv.error:
            log.warning("async invocation of %s failed: %s", fn.function_name, inv.error)
    except Exception:
        log.exception("async invocation of %s could not run", fn.function_name)


def _invoke_lambda(self: Any, event: Any = None) -> tuple[str, bool, str]:
    """Replacement of ``LambdaFunction._invoke_lambda`` for moto code paths that call it directly."""
    inv = execute(self, event if event is not None else {})
    return inv.payload, inv.error is not None, inv.logs


def _s3_invoke_awslambda(account_id: str, event_body: Any, fn_arn: str, region_name: str) -> None:
    """S3 notifications invoke asynchronously (InvocationType=Event), as on AWS."""
    from moto.awslambda.utils import get_backend

    def run() -> None:
        try:
            fn = get_backend(account_id, region_name).get_function(fn_arn)
        except Exception:
            log.warning("S3 notification target %s does not exist", fn_arn)
            return
        _run_quietly(fn, event_body)

    _events.submit(run)


def install() -> None:
    """Patch moto (call once, before serving)."""
    from moto.awslambda.models import LambdaFunction
    from moto.s3 import notifications

    LambdaFunction.invoke = _invoke  # type: ignore[method-assign]
    LambdaFunction._invoke_lambda = _invoke_lambda  # type: ignore[method-assign]
    notifications._invoke_awslambda = _s3_invoke_awslambda
