"""The local worker portal: sign-in, task pages, answer submission, the WADO gateway, the viewer bundle.

Routes (all on 127.0.0.1):
``GET /login?token=..`` signs a worker in (HttpOnly SameSite=Strict cookie, then redirect so the token
leaves the address bar) · ``GET /`` / ``GET /task`` the worker's next task page (the rendered GT
template) · ``POST /submit`` the crowd-form answer · ``GET /wado?..&sig=`` the gateway (signed
WADO-URIs; also needs a signed-in worker) · ``GET /ui/..`` the built viewer · ``GET /static/..`` the
crowd-elements shim · ``GET /api/status`` progress JSON.

HTTP is uvicorn + Starlette through :mod:`dicomflow.webserver`; every answer carries ``nosniff``,
``no-referrer``, ``DENY`` framing and (unless cacheable) ``no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from dicomflow import safejson, webserver
from dicomflow.emulator.groundtruth.gateway import WadoGateway
from dicomflow.emulator.groundtruth.job import LabelingJobError, LocalLabelingJob
from dicomflow.emulator.groundtruth.render import TemplateError, localize
from dicomflow.emulator.groundtruth.store import hash_token
from dicomflow.errors import DicomflowError
from dicomflow.paths import REPO_ROOT

log = logging.getLogger(__name__)
COOKIE = "dicomflow_worker"
STATIC_DIR = Path(__file__).with_name("static")
VIEWER_DIR = REPO_ROOT / "labeling_ui" / "dist"
MAX_BODY = 2_000_000


class PortalError(DicomflowError):
    """The portal cannot start; the message says how to fix it."""


def _sign(secret: str, worker: str) -> str:
    return hmac.new(secret.encode(), worker.encode(), hashlib.sha256).hexdigest()


def _page(title: str, body: str, done: bool = False) -> str:
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">"
            f"<title>{html.escape(title)}</title></head><body data-done=\"{str(done).lower()}\" "
            "style=\"font:15px system-ui,sans-serif;margin:40px\">"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")


LIMITS = webserver.Limits(max_body=MAX_BODY)
def _html(status: int, title: str, body: str, done: bool = False, headers: dict[str, str] | None = None) -> Response:
    return Response(_page(title, body, done), status_code=status, media_type="text/html; charset=utf-8",
                    headers=headers)


def _text(status: int, text: str) -> Response:
    return Response(text, status_code=status, media_type="text/plain; charset=utf-8")


def _error(status: int, message: str) -> Response:
    headers = {"Connection": "close"} if status in (408, 413) else None
    return webserver.json_response(status, {"error": message}, headers)


class Portal:
    """Serves one local labeling job until :meth:`stop`."""

    def __init__(self, job: LocalLabelingJob, gateway: WadoGateway, host: str = "127.0.0.1", port: int = 0,
                 viewer_dir: Path = VIEWER_DIR) -> None:
        if not (viewer_dir / "viewer.js").is_file():
            raise PortalError(f"the viewer bundle is not built ({viewer_dir}/viewer.js missing); run "
                              "'make setup' (or: cd labeling_ui && npm install --no-save && npm run build)")
        self.job = job
        self.gateway = gateway
        self.viewer_dir = viewer_dir.resolve()
        try:
            self.server = webserver.ServerThread(self.app(), host, port, LIMITS)
        except OSError as exc:
            raise PortalError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another port") from None

    @property
    def url(self) -> str:
        return self.server.url

    def signin_url(self, token: str) -> str:
        return f"{self.url}/login?token={token}"

    def start(self) -> Portal:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    # ---- auth ------------------------------------------------------------------------------------
    def worker_for_token(self, token: str) -> str | None:
        digest = hash_token(token)
        for wid, rec in self.job.worker_record["workers"].items():
            if hmac.compare_digest(rec["tokenSha256"], digest):
                return wid
        return None

    def cookie_value(self, worker: str) -> str:
        return f"{worker}.{_sign(self.job.worker_record['cookieSecret'], worker)}"

    def worker_from_cookie(self, value: str | None) -> str | None:
        """The worker a ``dicomflow_worker`` cookie value signs, or None."""
        if not value or "." not in value:
            return None
        worker, sig = value.rsplit(".", 1)
        if worker in self.job.worker_record["workers"] and hmac.compare_digest(
                sig, _sign(self.job.worker_record["cookieSecret"], worker)):
            return worker
        return None

    # ---- HTTP ------------------------------------------------------------------------------------
    def app(self) -> ASGIApp:
        """The portal's routes (see the module docstring)."""
        portal = self

        def worker(request: Request) -> str | None:
            return portal.worker_from_cookie(request.cookies.get(COOKIE))

        async def login(request: Request) -> Response:
            token = request.query_params.get("token", "")
            who = portal.worker_for_token(token) if token else None
            if who is None:
                return _html(403, "Sign-in failed", "<p>This sign-in link is not valid for this labeling job.</p>")
            cookie = f"{COOKIE}={portal.cookie_value(who)}; HttpOnly; SameSite=Strict; Path=/"
            return Response(b"", status_code=303, headers={"Location": "/task", "Set-Cookie": cookie})

        async def favicon(_request: Request) -> Response:
            return Response(b"", status_code=204, media_type="image/x-icon")

        async def static(request: Request) -> Response:
            return webserver.static_file(STATIC_DIR, request.path_params["path"])

        async def viewer(request: Request) -> Response:
            return webserver.static_file(portal.viewer_dir, request.path_params["path"], cache=True)

        def signed_in(handler: Any) -> Any:
            async def guarded(request: Request) -> Response:
                who = worker(request)
                if who is None:
                    if request.url.path == "/wado":
                        return _text(401, "sign in first\n")
                    if request.method == "POST":
                        return _error(401, "sign in first")
                    return _html(401, "Sign in", "<p>Open the sign-in link you were given (it contains your "
                                                 "personal token).</p>")
                return await handler(request, who)
            return guarded

        async def task(_request: Request, who: str) -> Response:
            try:
                a = await run_in_threadpool(portal.job.next_assignment, who)
                if a is None:
                    st = portal.job.status()
                    return _html(200, "No tasks for you right now",
                                 f"<p>{st['answers']} of {st['answersNeeded']} answers are in; job "
                                 f"{html.escape(st['status'])}.</p>", done=True)
                page = await run_in_threadpool(portal.job.render, a, "/ui/")
            except (TemplateError, DicomflowError) as exc:
                return _html(500, "Task failed", f"<p>{html.escape(str(exc))}</p>")
            return Response(localize(page, shim_url="/static/crowd-shim.js", submit_url="/submit",
                                     assignment_id=a.id, title=portal.job.request.title),
                            media_type="text/html; charset=utf-8")

        async def status(_request: Request, _who: str) -> Response:
            return webserver.json_response(200, portal.job.status())

        async def wado(request: Request, _who: str) -> Response:
            resp = await run_in_threadpool(portal.gateway.fetch, request.url.query)
            ctype = resp.headers.pop("Content-Type", "application/octet-stream")
            if isinstance(resp.body, bytes):
                return Response(resp.body, status_code=resp.status, media_type=ctype, headers=resp.headers)
            return StreamingResponse(resp.body, status_code=resp.status, media_type=ctype, headers=resp.headers)

        async def submit(request: Request, who: str) -> Response:
            if not request.headers.get("content-type", "").startswith("application/json"):
                return _error(415, "send the answer as application/json")
            try:
                raw = await webserver.read_body(request, LIMITS)
            except webserver.HTTPProblem as problem:
                return _error(problem.status, "answer too large" if problem.status == 413 else problem.message)
            if not raw:
                return _error(400, "the body must be JSON {assignmentId, answer}")
            try:
                body = safejson.loads(raw, "the answer")
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                result = await run_in_threadpool(portal.job.submit, who, str(body.get("assignmentId", ""))[:200],
                                                 body.get("answer"))
            except (ValueError, UnicodeDecodeError):
                return _error(400, "the body must be JSON {assignmentId, answer} (at most 64 levels deep)")
            except LabelingJobError as exc:
                return _error(409, str(exc))
            return webserver.json_response(200, {**result, "next": "/task"})

        async def not_found(request: Request) -> Response:
            if request.method == "POST":
                return _error(404, "not found")
            if worker(request) is None:
                return _html(401, "Sign in", "<p>Open the sign-in link you were given (it contains your personal "
                                             "token).</p>")
            return _html(404, "Not found", "")

        methods = ["GET", "HEAD"]
        return webserver.SecurityHeaders(Starlette(routes=[
            Route("/login", login, methods=methods),
            Route("/favicon.ico", favicon, methods=methods),
            Route("/static/{path:path}", static, methods=methods),
            Route("/ui/{path:path}", viewer, methods=methods),
            Route("/", signed_in(task), methods=methods),
            Route("/task", signed_in(task), methods=methods),
            Route("/api/status", signed_in(status), methods=methods),
            Route("/wado", signed_in(wado), methods=methods),
            Route("/submit", signed_in(submit), methods=["POST"]),
            Route("/{path:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
        ]))
