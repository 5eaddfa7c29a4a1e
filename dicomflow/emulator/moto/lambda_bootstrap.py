"""Runtime shim of a host-executed Lambda function (run as a script, standard library only).

The emulator (:mod:`dicomflow.emulator.moto.lambda_host`) starts it as
``python -I lambda_bootstrap.py <task_root> <handler> <event.json> <result.json> <deadline-ms> <status-fd>``
with the function's environment. It imports the handler the way the AWS Python runtime does
(``dir/module.function``, task root first on ``sys.path``, cwd = task root), writes one byte to
``status-fd`` once the module is loaded (the invoke-phase timer starts then), calls the handler with
the event and a context object, and writes the outcome to ``result.json``::

    {"ok": true, "payload": "<JSON text of the return value>"}
    {"ok": false, "error": {"errorMessage": ..., "errorType": ..., "requestId": ..., "stackTrace": [...]}}

Print output and logging go to stdout/stderr, which the emulator stores in CloudWatch Logs.
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


class LambdaContext:
    """The attributes and method of the AWS Lambda Python context object."""

    def __init__(self, deadline_ms: int) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = env.get("DICOMFLOW_LAMBDA_FUNCTION_ARN", "")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = env.get("DICOMFLOW_LAMBDA_REQUEST_ID", "")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class _RequestIdFilter(logging.Filter):
    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def _setup_logging(request_id: str) -> None:
    """Root logger as in the Lambda runtime: ``[LEVEL]\\t<time>\\t<request id>\\t<message>``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s", "%Y-%m-%dT%H:%M:%S"))
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    handler.addFilter(_RequestIdFilter(request_id))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _error(error_type: str, message: str, request_id: str, stack: list[str] | None = None) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": stack or []}


def _write(path: str, outcome: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(outcome, fh)
    os.replace(tmp, path)


def _fail(path: str, error: dict[str, Any]) -> None:
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error["stackTrace"]:
        lines.append("Traceback (most recent call last):")
    print("\n".join(lines) + "\n" + "".join(error["stackTrace"]), end="", file=sys.stderr)
    _write(path, {"ok": False, "error": error})


def _user_stack(exc: BaseException) -> list[str]:
    """Traceback lines of the user's code only (the bootstrap frames are dropped, as AWS does)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return traceback.format_list(frames)


def main(argv: list[str]) -> int:
    task_root, handler_spec, event_path, result_path, deadline_budget_ms, status_fd = argv[1:7]
    request_id = os.environ.get("DICOMFLOW_LAMBDA_REQUEST_ID", "")
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    _setup_logging(request_id)
    sys.path.insert(0, task_root)
    os.chdir(task_root)

    def signal_loaded() -> None:
        fd = int(status_fd)
        os.write(fd, b"I")
        os.close(fd)

    try:
        module_name, function_name = handler_spec.rsplit(".", 1)
    except ValueError as exc:
        _fail(result_path, _error("Runtime.MalformedHandlerName", f"Bad handler '{handler_spec}': {exc}",
                                  request_id))
        return 0
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        _fail(result_path, _error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}",
                                  request_id, _user_stack(exc)))
        return 0
    except ImportError as exc:
        _fail(result_path, _error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}",
                                  request_id))
        return 0
    except Exception as exc:
        _fail(result_path, _error(type(exc).__name__, str(exc), request_id, _user_stack(exc)))
        return 0
    handler = getattr(module, function_name, None)
    if not callable(handler):
        _fail(result_path, _error("Runtime.HandlerNotFound",
                                  f"Handler '{function_name}' missing on module '{module_name}'", request_id))
        return 0

    with open(event_path, encoding="utf-8") as fh:
        event = json.load(fh)
    context = LambdaContext(int(time.time() * 1000) + int(deadline_budget_ms))
    signal_loaded()
    try:
        result = handler(event, context)
    except Exception as exc:
        _fail(result_path, _error(type(exc).__name__, str(exc), request_id, _user_stack(exc)))
        return 0
    try:
        payload = json.dumps(result)
    except (TypeError, ValueError) as exc:
        _fail(result_path, _error("Runtime.MarshalError", f"Unable to marshal response: {exc}", request_id))
        return 0
    _write(result_path, {"ok": True, "payload": payload})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
