"""SageMaker serving entry point: ``GET /ping``, ``POST /invocations`` (``python -m inference_container.serve``).

Port ``SAGEMAKER_BIND_TO_PORT`` (8080), host ``SAGEMAKER_BIND_HOST`` (127.0.0.1; the Dockerfile sets
0.0.0.0), model from ``SM_MODEL_DIR`` (/opt/ml/model), loaded once in the background: ``/ping``
answers 503 until it is loaded, 200 after. Requests are served on threads and share only the
read-only model. SIGTERM stops the server and exits 0. Log lines carry status, time and the study
UID, never patient data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dicomflow.inference.errors import ModelNotLoaded, PayloadTooLarge, error_body, http_status
from dicomflow.inference.request import MAX_INLINE_BYTES
from inference_container import inference

log = logging.getLogger("dicomflow.serve")


class ModelHolder:
    """The model, loaded once on a background thread; ``error`` says why loading failed."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.model: Any = None
        self.error: str | None = None
        self.loaded = threading.Event()

    def load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.model = inference.model_fn(self.model_dir)
            log.info("model loaded from %s in %.1f s", self.model_dir, time.perf_counter() - t0)
        except Exception as exc:  # reported on /ping and in the log; the process exits
            self.error = f"cannot load the model from {self.model_dir}: {exc}"
            log.error("%s", self.error)
        finally:
            self.loaded.set()


class Handler(BaseHTTPRequestHandler):
    server_version = "dicomflow-serve"
    protocol_version = "HTTP/1.1"
    holder: ModelHolder

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        log.debug(format, *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path == "/ping":
            if self.holder.model is not None:
                self._send_json(200, {"status": "healthy"})
            else:
                self._send_json(503, {"status": "loading" if self.holder.error is None else "failed",
                                      "message": self.holder.error or "model is loading"})
        elif self.path == "/execution-parameters":
            self._send_json(200, {"MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD",
                                  "MaxPayloadInMB": 1})
        else:
            self._send_json(404, {"error": "NotFound", "message": "use GET /ping or POST /invocations"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/invocations":
            self._send_json(404, {"error": "NotFound", "message": "use POST /invocations"})
            return
        t0 = time.perf_counter()
        study = "-"
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_INLINE_BYTES:
                self.close_connection = True  # do not read a body we refuse
                raise PayloadTooLarge(
                    f"request body is {length} bytes; the limit for an inline study JSON is {MAX_INLINE_BYTES}")
            body = self.rfile.read(length) if length else b""
            if self.holder.model is None:
                raise ModelNotLoaded(self.holder.error or "the model is still loading; retry after GET /ping is 200")
            request = inference.input_fn(body, self.headers.get("Content-Type") or "application/json")
            study = request.study_uid
            prediction = inference.predict_fn(request, self.holder.model)
            payload, content_type = inference.output_fn(prediction, self.headers.get("Accept") or "*/*")
            self._send(200, payload.encode(), content_type)
            log.info("POST /invocations 200 study=%s %.0f ms", study, (time.perf_counter() - t0) * 1000)
        except Exception as exc:
            cause = exc.__cause__ if type(exc).__name__ == "GenericInferenceToolkitError" else exc
            status = http_status(cause)
            if status >= 500 and status not in (502, 503):
                log.exception("POST /invocations %d study=%s", status, study)
            else:
                log.warning("POST /invocations %d study=%s: %s", status, study, cause)
            self._send_json(status, error_body(cause))


def make_server(model_dir: str, host: str, port: int) -> tuple[ThreadingHTTPServer, ModelHolder]:
    """A threaded server with its model loading in the background."""
    holder = ModelHolder(model_dir)
    handler = type("BoundHandler", (Handler,), {"holder": holder})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, holder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dicomflow SageMaker serving process")
    parser.add_argument("command", nargs="?", default="serve", help="'serve' (SageMaker passes it)")
    parser.add_argument("--host", default=os.environ.get("SAGEMAKER_BIND_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("DICOMFLOW_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command != "serve":
        parser.error(f"unknown command {args.command!r}; the container only knows 'serve'")
    if not os.path.isdir(args.model_dir):
        log.error("model dir %s does not exist; set SM_MODEL_DIR or --model-dir", args.model_dir)
        return 2
    try:
        server, holder = make_server(args.model_dir, args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d (%s); set SAGEMAKER_BIND_TO_PORT", args.host, args.port, exc.strerror)
        return 2

    exit_code = {"code": 0}

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def load_then_check() -> None:
        holder.load()
        if holder.model is None:
            exit_code["code"] = 1
            server.shutdown()

    threading.Thread(target=load_then_check, name="model-loader", daemon=True).start()
    log.info("serving on http://%s:%d (model %s)", args.host, args.port, args.model_dir)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return exit_code["code"]


if __name__ == "__main__":
    sys.exit(main())
