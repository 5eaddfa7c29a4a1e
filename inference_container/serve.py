"""SageMaker serving entry point: ``GET /ping``, ``POST /invocations`` (``python -m inference_container.serve``).

Port ``SAGEMAKER_BIND_TO_PORT`` (8080), host ``SAGEMAKER_BIND_HOST`` (127.0.0.1; the Dockerfile sets
0.0.0.0), model from ``SM_MODEL_DIR`` (/opt/ml/model), loaded once in the background: ``/ping``
answers 503 until it is loaded, 200 after. HTTP is uvicorn + Starlette through
:mod:`dicomflow.webserver` (request head and body timeouts, the 128 000-byte inline limit as 413,
malformed framing as 400); requests run on worker threads and share only the read-only model.
SIGTERM stops the server after running requests and exits 0. Log lines carry status, time and the
study UID, never patient data.

With ``SAGEMAKER_MULTI_MODEL=true`` the process serves a multi-model endpoint: no model at start (``/ping``
is 200 at once), and SageMaker's contract for multi-model containers: ``POST /models``
``{"model_name", "url"}`` loads an extracted artifact (409 when loaded, 507 when it would pass
``DICOMFLOW_MME_MEMORY_MB``), ``GET /models``, ``GET /models/{name}``, ``DELETE /models/{name}`` and
``POST /models/{name}/invoke`` (:mod:`dicomflow.inference.multi_model`).

In a batch transform (SageMaker sets ``SAGEMAKER_BATCH=true``) a client error on one record (a malformed
study JSON, a study the PACS does not have) is answered 200 with the error object
``{"error", "message", "status", "failed": true}`` as that record's output: SageMaker would otherwise fail
the whole job for one bad study; a server error stays an error.
"""

from __future__ import annotations

import argparse
import json
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
from dicomflow.inference.errors import (
    BadRequest,
    ModelNotFound,
    ModelNotLoaded,
    PayloadTooLarge,
    error_body,
    http_status,
)
from dicomflow.inference.multi_model import ModelStore
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
    return _invoke_service(holder.model, body, content_type, accept)


def _invoke_service(service: Any, body: bytes, content_type: str, accept: str) -> tuple[str, str, str]:
    """(payload, content type, study UID) of one request to ``service``; raises the request's error."""
    request = inference.input_fn(body, content_type)
    prediction = inference.predict_fn(request, service)
    payload, rtype = inference.output_fn(prediction, accept)
    return payload, rtype, request.study_uid


def make_app(holder: ModelHolder, limits: webserver.Limits, batch: bool = False,
             store: ModelStore | None = None) -> Starlette:
    """The serving contract over ``holder``'s model (``batch``: client errors become failure records), or
    over the models of ``store`` (a multi-model endpoint)."""

    async def ping(_request: Request) -> Response:
        if holder.model is not None or store is not None:
            return webserver.json_response(200, {"status": "healthy"})
        return webserver.json_response(503, {"status": "loading" if holder.error is None else "failed",
                                             "message": holder.error or "model is loading"})

    async def execution_parameters(_request: Request) -> Response:
        return webserver.json_response(200, {"MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD",
                                             "MaxPayloadInMB": 1})

    async def invocations(request: Request, target: str | None = None) -> Response:
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
            content_type = request.headers.get("content-type") or "application/json"
            accept = request.headers.get("accept") or "*/*"
            if store is None:
                payload, rtype, study = await run_in_threadpool(_invoke, holder, body, content_type, accept)
            else:
                name = target or request.headers.get("x-amzn-sagemaker-target-model") or ""
                payload, rtype, study = await run_in_threadpool(
                    _invoke_service, store.get(name).service, body, content_type, accept)
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

    def error_response(exc: Exception) -> Response:
        return webserver.json_response(http_status(exc), error_body(exc))

    async def load_model(request: Request) -> Response:
        assert store is not None
        try:
            spec = json.loads(await webserver.read_body(request, limits) or b"{}")
            name, url = spec.get("model_name"), spec.get("url")
            if not isinstance(name, str) or not isinstance(url, str):
                raise BadRequest('POST /models takes {"model_name": "...", "url": "/path/to/extracted/model"}')
            loaded = await run_in_threadpool(store.load, name, url)
        except webserver.HTTPProblem as exc:
            return webserver.problem_response(exc)
        except (ValueError, AttributeError):
            return error_response(BadRequest("POST /models takes a JSON object"))
        except Exception as exc:
            log.warning("POST /models %d: %s", http_status(exc), str(exc)[:300])
            return error_response(exc)
        log.info("loaded %s (%.1f MB; %.1f MB in use)", loaded.name, loaded.nbytes / 1e6, store.used() / 1e6)
        return webserver.json_response(200, {"modelName": loaded.name, "modelUrl": loaded.url})

    async def list_models(_request: Request) -> Response:
        assert store is not None
        return webserver.json_response(200, {"models": store.listing()})

    async def one_model(request: Request) -> Response:
        assert store is not None
        rest = request.path_params["rest"]
        try:
            if request.method == "POST" and rest.endswith("/invoke"):
                return await invocations(request, target=rest[: -len("/invoke")])
            if request.method == "GET":
                loaded = store.get(rest)
                return webserver.json_response(200, {"modelName": loaded.name, "modelUrl": loaded.url})
            if request.method == "DELETE":
                store.unload(rest)
                log.info("unloaded %s", rest)
                return webserver.json_response(200, {"modelName": rest, "unloaded": True})
        except ModelNotFound as exc:
            return error_response(exc)
        return error_response(BadRequest(f"{request.method} /models/{rest}: use GET, DELETE or POST .../invoke"))

    async def not_found(_request: Request) -> Response:
        return webserver.json_response(404, {"error": "NotFound", "message": "use GET /ping or POST /invocations",
                                             "status": 404})

    models = [Route("/models", load_model, methods=["POST"]), Route("/models", list_models, methods=["GET"]),
              Route("/models/{rest:path}", one_model, methods=["GET", "POST", "DELETE"])] if store else []
    return Starlette(routes=[
        Route("/ping", ping, methods=["GET"]),
        Route("/execution-parameters", execution_parameters, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        *models,
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
    store = None
    if os.environ.get("SAGEMAKER_MULTI_MODEL", "").lower() == "true":
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # stdlib: the image has no psutil
        budget_mb = runtime().mme_memory_mb or 0.7 * free / 1e6
        store = ModelStore(int(budget_mb * 1e6))
        log.info("multi-model endpoint: models load by name, %.0f MB budget", budget_mb)
    server = webserver.make_server(make_app(holder, limits, batch, store), limits)

    def load_then_check() -> None:
        holder.load()
        if holder.model is None:
            server.should_exit = True

    if store is None:
        threading.Thread(target=load_then_check, name="model-loader", daemon=True).start()
    log.info("serving on http://%s:%d (model %s)", args.host, args.port, args.model_dir)
    server.run(sockets=[sock])
    return 1 if holder.loaded.is_set() and holder.model is None else 0


if __name__ == "__main__":
    sys.exit(main())
