"""Runtime of one warm Lambda execution environment on the host (run as a script, standard library only).

The emulator (:mod:`dicomflow.emulator.moto.lambda_host`) starts it as
``python -I lambda_bootstrap.py <task_root> <handler> <result-fd>`` with the function's environment.
Init: it imports the handler the way the AWS Python runtime does (``dir/module.function``, task root
first on ``sys.path``, cwd = task root) and writes one line to ``result-fd``: ``READY`` once the
module is loaded, or ``{"ok": false, "error": {...}}`` if it cannot be, and then exits.

Invokes: each line on stdin is ``{"requestId": .., "deadlineMs": <epoch ms>, "event": ..}``; the
handler gets the event and a context object, and one line goes back on ``result-fd``::

    {"ok": true, "payload": "<JSON text of the return value>"}
    {"ok": false, "error": {"errorMessage": ..., "errorType": ..., "requestId": ..., "stackTrace": [...]}}

Module-level state (clients, connection pools, caches) lives on between invokes, as it does in a warm
Lambda environment. stdin closing ends the environment. Print output and logging go to
stdout/stderr, which the emulator stores in CloudWatch Logs.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any

READY = b"READY\n"


class LambdaContext:
    """The attributes and method of the AWS Lambda Python context object."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = env.get("DICOMFLOW_LAMBDA_FUNCTION_ARN", "")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the request being served (changes with every invoke)."""

    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def _setup_logging() -> _RequestIdFilter:
    """Root logger as in the Lambda runtime: ``[LEVEL]\\t<time>\\t<request id>\\t<message>``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s", "%Y-%m-%dT%H:%M:%S"))
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    stamp = _RequestIdFilter()
    handler.addFilter(stamp)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    return stamp


def _error(error_type: str, message: str, request_id: str, stack: list[str] | None = None) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": stack or []}


def _failure(error: dict[str, Any]) -> dict[str, Any]:
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error["stackTrace"]:
        lines.append("Traceback (most recent call last):")
    print("\n".join(lines) + "\n" + "".join(error["stackTrace"]), end="", file=sys.stderr)
    return {"ok": False, "error": error}


def _user_stack(exc: BaseException) -> list[str]:
    """Traceback lines of the user's code only (the bootstrap frames are dropped, as AWS does)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return traceback.format_list(frames)


def _load(handler_spec: str) -> tuple[Any, dict[str, Any] | None]:
    """(the handler, None), or (None, the init error as the Invoke API reports it)."""
    try:
        module_name, function_name = handler_spec.rsplit(".", 1)
    except ValueError as exc:
        return None, _error("Runtime.MalformedHandlerName", f"Bad handler '{handler_spec}': {exc}", "")
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        return None, _error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}", "",
                            _user_stack(exc))
    except ImportError as exc:
        return None, _error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}", "")
    except Exception as exc:
        return None, _error(type(exc).__name__, str(exc), "", _user_stack(exc))
    handler = getattr(module, function_name, None)
    if not callable(handler):
        return None, _error("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module "
                                                       f"'{module_name}'", "")
    return handler, None


def _serve_one(handler: Any, request: dict[str, Any]) -> dict[str, Any]:
    request_id = str(request.get("requestId", ""))
    context = LambdaContext(request_id, int(request.get("deadlineMs", 0)))
    try:
        result = handler(request.get("event"), context)
    except Exception as exc:
        return _failure(_error(type(exc).__name__, str(exc), request_id, _user_stack(exc)))
    try:
        return {"ok": True, "payload": json.dumps(result)}
    except (TypeError, ValueError) as exc:
        return _failure(_error("Runtime.MarshalError", f"Unable to marshal response: {exc}", request_id))


def main(argv: list[str]) -> int:
    task_root, handler_spec, result_fd = argv[1], argv[2], int(argv[3])
    requests = sys.stdin.buffer
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the handler must not read the invoke channel
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    stamp = _setup_logging()
    sys.path.insert(0, task_root)
    os.chdir(task_root)

    def reply(message: bytes) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        view = memoryview(message)
        while view:
            view = view[os.write(result_fd, view):]

    handler, init_error = _load(handler_spec)
    if init_error is not None:
        reply(json.dumps(_failure(init_error)).encode() + b"\n")
        return 0
    reply(READY)
    for line in requests:
        request = json.loads(line)
        stamp.request_id = str(request.get("requestId", ""))
        outcome = _serve_one(handler, request)
        reply(json.dumps(outcome).encode() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
