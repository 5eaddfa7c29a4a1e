"""SageMaker serving entry point: ``GET /ping``, ``POST /invocations`` (``python -m inference_container.serve``).

Port ``SAGEMAKER_BIND_TO_PORT`` (8080), host ``SAGEMAKER_BIND_HOST`` (127.0.0.1; the Dockerfile sets
0.0.0.0), model from ``SM_MODEL_DIR`` (/opt/ml/model), loaded once in the background: ``/ping``
answers 503 until it is loaded, 200 after. HTTP is uvicorn + Starlette through
:mod:`dicomflow.webserver` (request head and body timeouts, the 128 000-byte inline limit as 413,
malformed framing as 400); requests run on worker threads and share only the read-only model.
SIGTERM stops the server after running requests and exits 0. Log lines carry status, time and the
study UID, never patient data.

In a batch transform (SageMaker sets ``SAGEMAKER_BATCH=true``) a client error on one record (a malformed
study JSON, a study the PACS does not have) is answered 200 with the error object
``{"error", "message", "status", "failed": true}`` as that record's output: SageMaker would otherwise fail
the whole job for one bad study; a server error stays an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomflow import webserver
from dicomflow.config import ConfigError, runtime
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


def _invoke(holder: ModelHolder, body: bytes, content_type: str, accept: str) -> tuple[str, str, str]:
    """(payload, content type, study UID) of one request; raises the request's error."""
    if holder.model is None:
        raise ModelNotLoaded(holder.error or "the model is still loading; retry after GET /ping is 200")
    request = inference.input_fn(body, content_type)
    prediction = inference.predict_fn(request, holder.model)
    payload, rtype = inference.output_fn(prediction, accept)
    return payload, rtype, request.study_uid


def make_app(holder: ModelHolder, limits: webserver.Limits, batch: bool = False) -> Starlette:
    """The serving contract over ``holder``'s model (``batch``: client errors become failure records)."""

    async def ping(_request: Request) -> Response:
        if holder.model is not None:
            return webserver.json_response(200, {"status": "healthy"})
        return webserver.json_response(503, {"status": "loading" if holder.error is None else "failed",
                                             "message": holder.error or "model is loading"})

    async def execution_parameters(_request: Request) -> Response:
        return webserver.json_response(200, {"MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD",
                                             "MaxPayloadInMB": 1})

    async def invocations(request: Request) -> Response:
        t0 = time.perf_counter()
        study = "-"
        try:
            try:
                body = await webserver.read_body(request, limits)
            except webserver.HTTPProblem as problem:
                if problem.status != 413:
                    return webserver.problem_response(problem)
                raise PayloadTooLarge(f"{problem.message} for an inline study JSON; send only the study JSON "
                                      "(the container fetches images from the PACS itself)") from None
            payload, rtype, study = await run_in_threadpool(
                _invoke, holder, body, request.headers.get("content-type") or "application/json",
                request.headers.get("accept") or "*/*")
        except Exception as exc:
            cause = exc.__cause__ if type(exc).__name__ == "GenericInferenceToolkitError" else exc
            status = http_status(cause)
            if status >= 500 and status not in (502, 503):
                log.exception("POST /invocations %d study=%s", status, study)
            else:
                log.warning("POST /invocations %d study=%s: %s", status, study, str(cause)[:300])
            if batch and 400 <= status < 500:
                return webserver.json_response(200, {**error_body(cause), "failed": True})
            headers = {"Connection": "close"} if status == 413 else None
            return webserver.json_response(status, error_body(cause), headers)
        log.info("POST /invocations 200 study=%s %.0f ms", study, (time.perf_counter() - t0) * 1000)
        return Response(payload, media_type=rtype)

    async def not_found(_request: Request) -> Response:
        return webserver.json_response(404, {"error": "NotFound", "message": "use GET /ping or POST /invocations",
                                             "status": 404})

    return Starlette(routes=[
        Route("/ping", ping, methods=["GET"]),
        Route("/execution-parameters", execution_parameters, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dicomflow SageMaker serving process")
    parser.add_argument("command", nargs="?", default="serve", help="'serve' (SageMaker passes it)")
    parser.add_argument("--host", default=os.environ.get("SAGEMAKER_BIND_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=runtime().log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command != "serve":
        parser.error(f"unknown command {args.command!r}; the container only knows 'serve'")
    if not os.path.isdir(args.model_dir):
        log.error("model dir %s does not exist; set SM_MODEL_DIR or --model-dir", args.model_dir)
        return 2
    try:
        sock = webserver.bind(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d (%s); set SAGEMAKER_BIND_TO_PORT", args.host, args.port, exc.strerror)
        return 2

    try:
        limits = webserver.Limits.from_env(max_body=MAX_INLINE_BYTES)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    holder = ModelHolder(args.model_dir)
    batch = os.environ.get("SAGEMAKER_BATCH", "").lower() == "true"
    server = webserver.make_server(make_app(holder, limits, batch), limits)

    def load_then_check() -> None:
        holder.load()
        if holder.model is None:
            server.should_exit = True

    threading.Thread(target=load_then_check, name="model-loader", daemon=True).start()
    log.info("serving on http://%s:%d (model %s)", args.host, args.port, args.model_dir)
    server.run(sockets=[sock])
    return 1 if holder.loaded.is_set() and holder.model is None else 0


if __name__ == "__main__":
    sys.exit(main())
