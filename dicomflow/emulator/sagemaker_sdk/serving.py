"""A SageMaker serving process on the host: ``GET /ping`` and ``POST /invocations`` for a script-mode model.

What the PyTorch inference container does for ``SAGEMAKER_PROGRAM``: import the user's module from
the source directory and answer requests with its handler functions (the
sagemaker-inference-toolkit convention)::

    model_fn(model_dir) -> model
    input_fn(request_body: bytes, content_type: str) -> data
    predict_fn(data, model) -> prediction
    output_fn(prediction, accept: str) -> bytes | str | (body, content_type)
    transform_fn(model, request_body, content_type, accept)   # replaces the three above

Any function the module does not define falls back to a default: JSON / NPY / CSV decoding and
encoding, ``model(data)`` for prediction (under ``torch.no_grad`` for torch modules), and a
TorchScript ``model.pt`` for the model. The model is loaded before the port opens, so ``/ping``
answers 200 as soon as it answers at all. Errors map to HTTP statuses in one place
(:func:`_status_for`) and are answered as JSON ``{"error", "message", "status"}``. HTTP is
uvicorn + Starlette through :mod:`dicomflow.webserver`. SIGTERM shuts the server down and exits 0.

Run as ``python -m dicomflow.emulator.sagemaker_sdk.serving --port N --model-dir DIR [--code-dir DIR
--program inference.py]``. Without ``--code-dir`` the source directory is where the PyTorch serving
container finds it (:func:`code_dir_from_env`): ``SAGEMAKER_SUBMIT_DIRECTORY`` (``/opt/ml/model/code``
in a model the SDK repacked, an ``s3://`` ``sourcedir.tar.gz``, or a ``file://`` directory), else
``<model dir>/code``. This is the host command of the ``pytorch-inference`` image for endpoints the
emulator starts (``estimator.deploy(instance_type="ml.*")``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomflow import webserver

logger = logging.getLogger("dicomflow.serving")

JSON = "application/json"
NPY = "application/x-npy"
CSV = "text/csv"
#: The largest payload SageMaker hands a container (asynchronous inference: 1 GB; real-time: 6 MB).
LIMITS = webserver.Limits(max_body=1_000_000_000, body_seconds=300.0)


class UnsupportedFormatError(ValueError):
    """The request's content type (or the Accept type) has no decoder (encoder)."""


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the process exits non-zero."""


def _status_for(exc: BaseException) -> int:
    # an error that carries its HTTP status (the inference toolkit's GenericInferenceToolkitError has
    # status_code; dicomflow's InferenceError has status) is answered with it, as the toolkit does
    for attr in ("status_code", "status"):
        status = getattr(exc, attr, None)
        if isinstance(status, int) and 400 <= status <= 599:
            return status
    if isinstance(exc, UnsupportedFormatError):
        return HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    if isinstance(exc, (ValueError, KeyError, TypeError, json.JSONDecodeError)):
        return HTTPStatus.BAD_REQUEST
    return HTTPStatus.INTERNAL_SERVER_ERROR


# ---- defaults (sagemaker-inference-toolkit decoder / encoder) ----------------------------------
def default_model_fn(model_dir: str) -> Any:
    path = Path(model_dir) / "model.pt"
    if not path.is_file():
        raise ModelLoadError(f"the entry point defines no model_fn and {path} (TorchScript) does not exist")
    import torch

    return torch.jit.load(str(path), map_location="cpu").eval()


def default_input_fn(body: bytes, content_type: str) -> Any:
    ctype = (content_type or JSON).split(";")[0].strip().lower()
    if ctype == JSON:
        return json.loads(body.decode("utf-8"))
    if ctype == NPY:
        import numpy as np

        return np.load(io.BytesIO(body), allow_pickle=False)
    if ctype == CSV:
        import numpy as np

        return np.genfromtxt(io.StringIO(body.decode("utf-8")), delimiter=",", dtype="float32")
    raise UnsupportedFormatError(f"content type {content_type!r} is not supported; send {JSON}, {NPY} or {CSV}")


def default_predict_fn(data: Any, model: Any) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is part of the environment
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        tensor = data if isinstance(data, torch.Tensor) else torch.as_tensor(data)
        with torch.no_grad():
            return model(tensor)
    if not callable(model):
        raise TypeError("the model is not callable; define predict_fn in the entry point")
    return model(data)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def default_output_fn(prediction: Any, accept: str) -> tuple[bytes, str]:
    atype = (accept or JSON).split(";")[0].strip().lower()
    if atype in (JSON, "*/*"):
        return json.dumps(_plain(prediction)).encode("utf-8"), JSON
    if atype == NPY:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(_plain(prediction)), allow_pickle=False)
        return buf.getvalue(), NPY
    if atype == CSV:
        import numpy as np

        buf = io.StringIO()
        np.savetxt(buf, np.atleast_2d(np.asarray(_plain(prediction))), delimiter=",", fmt="%s")
        return buf.getvalue().encode("utf-8"), CSV
    raise UnsupportedFormatError(f"accept type {accept!r} is not supported; ask for {JSON}, {NPY} or {CSV}")


# ---- the handler service ---------------------------------------------------------------------
class Handlers:
    """The user's functions (or the defaults) and the loaded model."""

    def __init__(self, module: ModuleType | None, model_dir: str) -> None:
        def pick(name: str, default: Callable | None) -> Callable | None:
            return getattr(module, name, None) if module is not None and hasattr(module, name) else default

        self.model_fn = pick("model_fn", default_model_fn)
        self.input_fn = pick("input_fn", default_input_fn)
        self.predict_fn = pick("predict_fn", default_predict_fn)
        self.output_fn = pick("output_fn", default_output_fn)
        self.transform_fn = pick("transform_fn", None)
        self.default_accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", JSON)
        try:
            self.model = self.model_fn(model_dir)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"model_fn failed: {type(exc).__name__}: {exc}") from exc

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        accept = accept if accept and accept != "*/*" else self.default_accept
        content_type = content_type or JSON
        if self.transform_fn is not None:
            result = self.transform_fn(self.model, body, content_type, accept)
        else:
            data = self.input_fn(body, content_type)
            prediction = self.predict_fn(data, self.model)
            result = self.output_fn(prediction, accept)
        if isinstance(result, tuple):
            payload, rtype = result[0], result[1]
        else:
            payload, rtype = result, accept
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return bytes(payload), rtype


def load_module(code_dir: Path | None, program: str | None) -> ModuleType | None:
    """Import the entry point (``SAGEMAKER_PROGRAM``) from the source directory, or None."""
    if not program:
        return None
    if code_dir is None or not (code_dir / program).is_file():
        raise ModelLoadError(f"entry point {program} not found in {code_dir}")
    sys.path.insert(0, str(code_dir))
    name = program[:-3] if program.endswith(".py") else program
    spec = importlib.util.spec_from_file_location(name, code_dir / program)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import entry point {program}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise ModelLoadError(f"importing {program} failed: {type(exc).__name__}: {exc}") from exc
    return module


def code_dir_from_env(model_dir: Path, env: dict[str, str] | None = None) -> Path | None:
    """The source directory the serving container would use for ``model_dir`` (None: no code)."""
    from dicomflow.emulator.sagemaker_sdk.toolkit import HostLayout, ToolkitError, stage_code

    env = dict(os.environ if env is None else env)
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if submit:
        # /opt/ml/model is the extracted model; an s3:// tarball is extracted next to it
        layout = HostLayout(model_dir.parent, "", {"/opt/ml/model": model_dir})
        try:
            return stage_code(layout, submit, env)
        except ToolkitError as exc:
            raise ModelLoadError(str(exc)) from None
    code = model_dir / "code"
    return code if code.is_dir() else None


def make_app(handlers: Handlers) -> Starlette:
    """``GET /ping`` and ``POST /invocations`` over the user's handlers."""

    async def ping(_request: Request) -> Response:
        return Response(b"", media_type="text/plain")

    async def invocations(request: Request) -> Response:
        try:
            body = await webserver.read_body(request, LIMITS)
        except webserver.HTTPProblem as problem:
            return webserver.problem_response(problem)
        try:
            payload, rtype = await run_in_threadpool(handlers.invoke, body, request.headers.get("content-type", ""),
                                                     request.headers.get("accept", ""))
        except Exception as exc:
            status = _status_for(exc)
            logger.error("invocation failed (%d): %s", status, traceback.format_exc())
            return webserver.json_response(status, {"error": type(exc).__name__, "message": str(exc)[:2000],
                                                    "status": int(status)})
        return Response(payload, media_type=rtype)

    async def not_found(_request: Request) -> Response:
        return webserver.json_response(404, {"error": "NotFound", "message": "use GET /ping or POST /invocations",
                                             "status": 404})

    return Starlette(routes=[Route("/ping", ping, methods=["GET"]),
                             Route("/invocations", invocations, methods=["POST"]),
                             Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"])])


def serve(host: str, port: int, handlers: Handlers) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 (1 if the port cannot be bound)."""
    try:
        sock = webserver.bind(host, port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", host, port, exc.strerror)
        return 1
    logger.info("serving on http://%s:%d (/ping, /invocations)", host, port)
    webserver.serve(make_app(handlers), sock, LIMITS)
    logger.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomflow.emulator.sagemaker_sdk.serving",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--code-dir", type=Path, default=None)
    parser.add_argument("--program", default=os.environ.get("SAGEMAKER_PROGRAM"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    try:
        code_dir = args.code_dir or code_dir_from_env(Path(args.model_dir))
        module = load_module(code_dir, args.program)
        handlers = Handlers(module, args.model_dir)
    except ModelLoadError as exc:
        logger.error("cannot start serving: %s", exc)
        return 1
    return serve(args.host, args.port, handlers)


if __name__ == "__main__":
    sys.exit(main())
