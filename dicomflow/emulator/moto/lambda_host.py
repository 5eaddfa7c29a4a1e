"""Lambda execution for the emulated AWS: a zip function runs as a host Python subprocess.

moto 5.2.5 runs Lambda code only inside Docker. :func:`install` replaces, inside the moto server
process, ``LambdaFunction._invoke_lambda`` / ``LambdaFunction.invoke`` with :func:`execute`, and makes
moto's S3 -> Lambda notification path asynchronous (a small worker pool), as it is on AWS.

One invocation:

* the function's zip (``code_bytes``) is unpacked once per code SHA-256 into
  ``<DICOMFLOW_HOME>/lambda/<sha>/`` (the task root);
* :mod:`dicomflow.emulator.moto.lambda_bootstrap` runs with this interpreter (``python -I``, so this
  virtual environment's site-packages are there, the task root first on ``sys.path``), the function's
  Environment variables, the Lambda reserved variables, ``AWS_ENDPOINT_URL`` / region / credentials
  pointing at the emulator;
* the handler gets the event and a context (``function_name``, ``aws_request_id``,
  ``get_remaining_time_in_millis()`` ...); the process group is killed at the function's Timeout
  (counted from the end of module import, like the invoke phase on AWS);
* the result or error comes back as Lambda's Invoke API returns it: ``X-Amz-Function-Error:
  Unhandled`` and ``{"errorMessage", "errorType", "requestId", "stackTrace"}``; a timeout gives
  ``Sandbox.Timedout`` / ``"... Task timed out after N.NN seconds"``;
* output (print, logging, tracebacks) plus START/END/REPORT lines go to the CloudWatch Logs group
  ``/aws/lambda/<name>``, a new stream per invocation; ``LogType=Tail`` returns the last 4 KB.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomflow.paths import data_dir

log = logging.getLogger("dicomflow.lambda")

BOOTSTRAP = Path(__file__).with_name("lambda_bootstrap.py")
INIT_TIMEOUT_S = 10.0  # Lambda's init phase limit; on AWS a slow init is retried within the timeout
LOG_TAIL_BYTES = 4096
# Environment variables Lambda reserves: a function's Environment cannot override these.
RESERVED = ("_HANDLER", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "AWS_LAMBDA_FUNCTION_NAME",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_LOG_GROUP_NAME",
            "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR")
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "DICOMFLOW_HOME")

_config: dict[str, str] = {}
_extract_lock = threading.Lock()
_running: dict[int, subprocess.Popen] = {}
_running_lock = threading.Lock()
_events = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lambda-event")


@dataclass
class Invocation:
    """Outcome of one run: ``payload`` is the JSON text Invoke returns; ``error`` the errorType or None."""

    request_id: str
    payload: str
    error: str | None
    logs: str
    duration_ms: float


def configure(endpoint_url: str) -> None:
    """Record the emulator's own URL: handlers get it as ``AWS_ENDPOINT_URL``."""
    _config["endpoint_url"] = endpoint_url


def task_root(code: bytes) -> Path:
    """Unpack a function zip once per content hash; returns the directory."""
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


def function_environment(fn: Any, request_id: str, stream: str, root: Path) -> dict[str, str]:
    """What the handler process sees: passthrough basics, the function's variables, reserved ones."""
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env["AWS_ENDPOINT_URL"] = _config.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL", "")
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
        "DICOMFLOW_LAMBDA_REQUEST_ID": request_id,
        "DICOMFLOW_LAMBDA_FUNCTION_ARN": fn.function_arn,
    })
    if os.environ.get("AWS_SESSION_TOKEN"):
        env["AWS_SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    if not env["AWS_ENDPOINT_URL"]:
        del env["AWS_ENDPOINT_URL"]
    return env


def _stream_name(fn: Any, request_id: str) -> str:
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    return f"{day}/[{fn.version}]{request_id.replace('-', '')}"


def _error_payload(error_type: str, message: str, request_id: str) -> str:
    return json.dumps({"errorMessage": message, "errorType": error_type, "requestId": request_id,
                       "stackTrace": []})


def execute(fn: Any, event: Any) -> Invocation:
    """Run ``fn`` (a moto ``LambdaFunction``) on ``event`` as a host subprocess; never raises for
    function failures (they come back as the Invoke API's error payload)."""
    request_id = str(uuid.uuid4())
    stream = _stream_name(fn, request_id)
    started = time.monotonic()
    timeout = float(fn.timeout or 3)
    if getattr(fn, "package_type", "Zip") != "Zip" or not getattr(fn, "code_bytes", None):
        inv = Invocation(request_id, _error_payload(
            "Runtime.InvalidEntrypoint",
            "the local emulator runs zip-packaged Python functions only; create the function with a zip "
            "(Code.ZipFile or Code.S3Bucket/S3Key)", request_id), "Runtime.InvalidEntrypoint", "", 0.0)
        _save_logs(fn, stream, inv, timeout)
        return inv
    try:
        root = task_root(fn.code_bytes)
    except (zipfile.BadZipFile, OSError) as exc:
        inv = Invocation(request_id, _error_payload(
            "Runtime.InvalidEntrypoint", f"could not unzip the function code: {exc}", request_id),
            "Runtime.InvalidEntrypoint", "", 0.0)
        _save_logs(fn, stream, inv, timeout)
        return inv
    with tempfile.TemporaryDirectory(prefix="invoke-", dir=root.parent) as tmp:
        event_path, result_path, log_path = (Path(tmp) / n for n in ("event.json", "result.json", "output.log"))
        event_path.write_text(json.dumps(event), encoding="utf-8")
        status_r, status_w = os.pipe()
        argv = [sys.executable, "-I", str(BOOTSTRAP), str(root), str(fn.handler), str(event_path),
                str(result_path), str(int(timeout * 1000)), str(status_w)]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - our interpreter and bootstrap, fixed argv
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                env=function_environment(fn, request_id, stream, root), pass_fds=(status_w,),
                start_new_session=True)
        os.close(status_w)
        with _running_lock:
            _running[proc.pid] = proc
        try:
            timed_out = _wait(proc, status_r, timeout)
        finally:
            os.close(status_r)
            with _running_lock:
                _running.pop(proc.pid, None)
        output = log_path.read_text(encoding="utf-8", errors="replace")
        if timed_out:
            message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
            payload, error = _error_payload("Sandbox.Timedout", message, request_id), "Sandbox.Timedout"
            output += f"{_now_iso()} {request_id} Task timed out after {timeout:.2f} seconds\n"
        elif result_path.exists():
            outcome = json.loads(result_path.read_text(encoding="utf-8"))
            if outcome["ok"]:
                payload, error = outcome["payload"], None
            else:
                payload, error = json.dumps(outcome["error"]), outcome["error"]["errorType"]
        else:
            code = proc.returncode
            why = f"signal: {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
            message = f"RequestId: {request_id} Error: Runtime exited with error: {why}"
            payload, error = _error_payload("Runtime.ExitError", message, request_id), "Runtime.ExitError"
    inv = Invocation(request_id, payload, error, output, (time.monotonic() - started) * 1000)
    _save_logs(fn, stream, inv, timeout)
    return inv


def _wait(proc: subprocess.Popen, status_fd: int, timeout: float) -> bool:
    """Wait for import (<= INIT_TIMEOUT_S + timeout), then for the handler (<= timeout). True if killed."""
    ready, _, _ = select.select([status_fd], [], [], INIT_TIMEOUT_S + timeout)
    if not ready:
        _kill(proc)
        return True
    loaded = os.read(status_fd, 1) == b"I"
    try:
        proc.wait(timeout if loaded else INIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return True
    return False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def stop_all() -> None:
    """Drop queued Event invocations and kill every handler process still running (shutdown)."""
    _events.shutdown(wait=False, cancel_futures=True)
    with _running_lock:
        procs = list(_running.values())
    for proc in procs:
        if proc.poll() is None:
            _kill(proc)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _save_logs(fn: Any, stream: str, inv: Invocation, timeout: float) -> None:
    lines = [f"START RequestId: {inv.request_id} Version: {fn.version}"]
    lines += inv.logs.splitlines()
    lines.append(f"END RequestId: {inv.request_id}")
    billed = int(-(-inv.duration_ms // 1))
    lines.append(f"REPORT RequestId: {inv.request_id}\tDuration: {inv.duration_ms:.2f} ms\t"
                 f"Billed Duration: {billed} ms\tMemory Size: {fn.memory_size} MB")
    inv.logs = "\n".join(lines) + "\n"
    try:
        backend = fn.logs_backend
        backend.ensure_log_group(fn.logs_group_name)
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
