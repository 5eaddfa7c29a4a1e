"""The local worker portal: sign-in, task pages, answer submission, the WADO gateway, the viewer bundle.

Routes (all on 127.0.0.1):
``GET /login?token=..`` signs a worker in (HttpOnly SameSite=Strict cookie, then redirect so the token
leaves the address bar) · ``GET /`` / ``GET /task`` the worker's next task page (the rendered GT
template) · ``POST /submit`` the crowd-form answer · ``GET /wado?..&sig=`` the gateway (signed
WADO-URIs; also needs a signed-in worker) · ``GET /ui/..`` the built viewer · ``GET /static/..`` the
crowd-elements shim · ``GET /api/status`` progress JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dicomflow.errors import DicomflowError
from dicomflow.labeling.gateway import WadoGateway
from dicomflow.labeling.job import LabelingJobError, LocalLabelingJob
from dicomflow.labeling.render import TemplateError, localize
from dicomflow.labeling.store import hash_token

log = logging.getLogger(__name__)
COOKIE = "dicomflow_worker"
STATIC_DIR = Path(__file__).with_name("static")
VIEWER_DIR = Path(__file__).resolve().parents[2] / "labeling_ui" / "dist"
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
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def signin_url(self, token: str) -> str:
        return f"{self.url}/login?token={token}"

    def start(self) -> Portal:
        self._thread = threading.Thread(target=self.server.serve_forever, name="portal", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- auth ------------------------------------------------------------------------------------
    def worker_for_token(self, token: str) -> str | None:
        digest = hash_token(token)
        for wid, rec in self.job.worker_record["workers"].items():
            if hmac.compare_digest(rec["tokenSha256"], digest):
                return wid
        return None

    def cookie_value(self, worker: str) -> str:
        return f"{worker}.{_sign(self.job.worker_record['cookieSecret'], worker)}"

    def worker_from_cookie(self, header: str | None) -> str | None:
        if not header:
            return None
        cookie = SimpleCookie()
        try:
            cookie.load(header)
        except Exception:  # noqa: BLE001 - a garbled cookie is no sign-in
            return None
        morsel = cookie.get(COOKIE)
        if morsel is None or "." not in morsel.value:
            return None
        worker, sig = morsel.value.rsplit(".", 1)
        if worker in self.job.worker_record["workers"] and hmac.compare_digest(
                sig, _sign(self.job.worker_record["cookieSecret"], worker)):
            return worker
        return None

    # ---- HTTP ------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        portal = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "dicomflow-portal"
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # no query strings (tokens) in logs
                log.debug("%s %s", self.command, urlsplit(self.path).path)

            def _send(self, status: int, body: bytes | str, ctype: str = "text/html; charset=utf-8",
                      headers: dict[str, str] | None = None) -> None:
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("X-Frame-Options", "DENY")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Cache-Control" not in (headers or {}):
                    self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj), "application/json")

            def _worker(self) -> str | None:
                return portal.worker_from_cookie(self.headers.get("Cookie"))

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                path = parts.path
                try:
                    if path == "/login":
                        return self._login(parse_qs(parts.query).get("token", [""])[0])
                    if path == "/favicon.ico":
                        return self._send(204, b"", "image/x-icon")
                    if path.startswith("/static/"):
                        return self._file(STATIC_DIR, path[len("/static/"):])
                    if path.startswith("/ui/"):
                        return self._file(portal.viewer_dir, path[len("/ui/"):], cache=True)
                    worker = self._worker()
                    if worker is None:
                        status = HTTPStatus.UNAUTHORIZED
                        if path == "/wado":
                            return self._send(status, "sign in first\n", "text/plain; charset=utf-8")
                        return self._send(status, _page("Sign in", "<p>Open the sign-in link you were given "
                                                        "(it contains your personal token).</p>"))
                    if path == "/wado":
                        return self._wado(parts.query)
                    if path in ("/", "/task"):
                        return self._task(worker)
                    if path == "/api/status":
                        return self._json(200, portal.job.status())
                    return self._send(404, _page("Not found", ""))
                except (BrokenPipeError, ConnectionResetError):
                    return None

            def _reject(self, status: int, message: str) -> None:
                """Answer without reading the body; close the connection so an unread body is not taken
                for the next request on a keep-alive connection."""
                self.close_connection = True
                self._send(status, json.dumps({"error": message}), "application/json", {"Connection": "close"})

            def do_POST(self) -> None:  # noqa: N802
                if urlsplit(self.path).path != "/submit":
                    return self._reject(404, "not found")
                worker = self._worker()
                if worker is None:
                    return self._reject(401, "sign in first")
                if not self.headers.get("Content-Type", "").startswith("application/json"):
                    return self._reject(415, "send the answer as application/json")
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length <= 0 or length > MAX_BODY:
                    return self._reject(413, "answer missing or too large")
                try:
                    body = json.loads(self.rfile.read(length))
                    result = portal.job.submit(worker, str(body.get("assignmentId", "")), body.get("answer"))
                except (ValueError, AttributeError):
                    return self._json(400, {"error": "the body must be JSON {assignmentId, answer}"})
                except LabelingJobError as exc:
                    return self._json(409, {"error": str(exc)})
                return self._json(200, {**result, "next": "/task"})

            def _login(self, token: str) -> None:
                worker = portal.worker_for_token(token) if token else None
                if worker is None:
                    return self._send(403, _page("Sign-in failed", "<p>This sign-in link is not valid for "
                                                 "this labeling job.</p>"))
                cookie = f"{COOKIE}={portal.cookie_value(worker)}; HttpOnly; SameSite=Strict; Path=/"
                self._send(303, "", headers={"Location": "/task", "Set-Cookie": cookie})

            def _task(self, worker: str) -> None:
                try:
                    a = portal.job.next_assignment(worker)
                    if a is None:
                        st = portal.job.status()
                        return self._send(200, _page("No tasks for you right now",
                                                     f"<p>{st['answers']} of {st['answersNeeded']} answers are "
                                                     f"in; job {html.escape(st['status'])}.</p>", done=True))
                    page = portal.job.render(a, viewer_base_url="/ui/")
                except (TemplateError, DicomflowError) as exc:
                    return self._send(500, _page("Task failed", f"<p>{html.escape(str(exc))}</p>"))
                self._send(200, localize(page, shim_url="/static/crowd-shim.js", submit_url="/submit",
                                         assignment_id=a.id, title=portal.job.request.title))

            def _wado(self, query: str) -> None:
                resp = portal.gateway.fetch(query)
                if isinstance(resp.body, bytes):
                    return self._send(resp.status, resp.body, resp.headers.pop("Content-Type"), resp.headers)
                self.send_response(resp.status)
                chunked = "Content-Length" not in resp.headers
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("X-Content-Type-Options", "nosniff")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in resp.body:
                    if chunked:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")

            def _file(self, root: Path, rel: str, cache: bool = False) -> None:
                target = (root / rel).resolve()
                if not target.is_file() or root.resolve() not in target.parents:
                    return self._send(404, "not found\n", "text/plain; charset=utf-8")
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix in (".js", ".mjs"):
                    ctype = "text/javascript; charset=utf-8"
                elif target.suffix == ".wasm":
                    ctype = "application/wasm"
                headers = {"Cache-Control": "public, max-age=3600"} if cache else {}
                self._send(200, target.read_bytes(), ctype, headers)

        return Handler
