"""The viewer gateway: OHIF v3 (the prebuilt npm package in ``viewer/dist``) and a read-only DICOMweb proxy of
the PACS on one origin, behind a sign-in.

Routes (127.0.0.1 only):

* ``GET /signin?ticket=..`` - redeems a sign-in ticket (:mod:`dicomflow.emulator.viewer.access`), sets the
  HttpOnly SameSite=Strict session cookie and redirects to the ticket's study (the ticket leaves the address bar);
  a used ticket is refused, unless the browser holds a session already (then it just opens the study).
* ``GET /signout`` - drops the cookie.
* ``GET|HEAD /dicom-web/..`` - QIDO-RS and WADO-RS only (:mod:`dicomflow.emulator.viewer.readonly`; any other
  method 405, any other path 403), sent to the configured PACS with the gateway's own credentials; the PACS's
  absolute URLs in JSON answers (bulk data, retrieve URLs) are rewritten to this origin.
* ``GET /app-config.js`` - the generated OHIF configuration (:mod:`dicomflow.emulator.viewer.ohif`).
* ``GET /..`` - the OHIF app; its client-side routes (``/viewer?StudyInstanceUIDs=..``) get ``index.html``.
* ``GET /healthz``.

Everything but ``/signin`` and ``/healthz`` needs the session cookie (401 without). The browser never receives a
PACS credential: the proxy adds it on the way out and passes back only the body and its content headers.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomflow import webserver
from dicomflow.config import Settings
from dicomflow.credentials import PacsConnection, pacs_connection
from dicomflow.emulator.viewer import access, ohif, readonly
from dicomflow.errors import DicomflowError

log = logging.getLogger(__name__)
LIMITS = webserver.Limits(max_body=0)
CHUNK = 256 * 1024
MAX_QUERY_CHARS = 4096
#: A JSON answer (QIDO results, metadata) is read whole to rewrite the PACS's URLs; over this it is refused.
MAX_JSON_BYTES = 256 * 1024 * 1024
PASSED_HEADERS = ("content-type", "content-length", "content-location")
#: OHIF runs inline bootstrap code, compiles its codecs (wasm) and code (``new Function`` in its SEG loader) and
#: starts workers from blob URLs, so scripts are not locked down; what the page may contact is: this origin only
#: (connect-src 'self'), so nothing it runs can send the study elsewhere.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval'; "
       "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "font-src 'self' data:; connect-src 'self'; media-src 'self' blob:; frame-src 'self' blob:; "
       "object-src 'self' blob:; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def _page(status: int, title: str, text: str) -> Response:
    body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body style=\"font:15px system-ui,sans-serif;margin:40px\"><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(text)}</p></body></html>")
    return Response(body, status_code=status, media_type="text/html; charset=utf-8")


_CODES = {401: "Unauthorized", 403: "Forbidden", 405: "MethodNotAllowed", 414: "URITooLong", 502: "BadGateway",
          503: "Unavailable"}


def _problem(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": _CODES.get(status, "Error"), "message": message, "status": status}
    return webserver.json_response(status, body, headers)


class ViewerGateway:
    """The Starlette app of the viewer over the PACS ``pacs()`` names (its DICOMweb root and credentials, looked up
    at the first DICOMweb request: the local cloud records its PACS once every service is up) and ``key``."""

    def __init__(self, pacs: Callable[[], PacsConnection], key: bytes, dist_dir: Path = ohif.DIST_DIR,
                 timeout: float = 120, redeemed: Path | None = None) -> None:
        self._pacs, self.key, self.timeout = pacs, key, timeout
        self._connection: PacsConnection | None = None
        self.dist_dir = dist_dir
        self.tickets = access.TicketBook(key, redeemed)
        self.http = requests.Session()

    def pacs(self) -> PacsConnection:
        if self._connection is None:
            self._connection = self._pacs()
        return self._connection

    # ---- sign-in ------------------------------------------------------------------------------------
    async def _signin(self, request: Request) -> Response:
        token = request.query_params.get("ticket", "")
        try:
            ticket = self.tickets.redeem(token)
        except access.Refused as exc:
            known = self.tickets.peek(token) if self._user(request) is not None else None
            if known is not None:  # a link followed again by whom it signed in: just open its study
                return Response(b"", status_code=303, headers={"Location": ohif.study_path(known.study)})
            return _page(403, "Sign-in failed", f"{exc}. Ask for a new link: dicomflow view --study UID")
        cookie = (f"{access.COOKIE}={access.session_token(self.key, ticket.user)}; HttpOnly; SameSite=Strict; "
                  f"Path=/; Max-Age={access.SESSION_TTL_S}")
        log.info("viewer sign-in: %s", ticket.user)
        return Response(b"", status_code=303, headers={"Location": ohif.study_path(ticket.study),
                                                       "Set-Cookie": cookie})

    async def _signout(self, _request: Request) -> Response:
        cookie = f"{access.COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        return Response(b"signed out\n", media_type="text/plain; charset=utf-8", headers={"Set-Cookie": cookie})

    def _user(self, request: Request) -> str | None:
        try:
            return access.session_user(self.key, request.cookies.get(access.COOKIE))
        except access.Refused:
            return None

    # ---- DICOMweb -----------------------------------------------------------------------------------
    async def _dicomweb(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        try:
            readonly.check(request.method, path)
        except readonly.NotReadOnly as exc:
            headers = {"Allow": "GET, HEAD"} if exc.status == 405 else None
            return _problem(exc.status, str(exc), headers)
        if len(request.url.query) > MAX_QUERY_CHARS:
            return _problem(414, f"the query is over {MAX_QUERY_CHARS} characters")
        own_root = f"{str(request.base_url).rstrip('/')}{ohif.DICOMWEB_PATH}"
        return await run_in_threadpool(self._forward, request.method, path, request.url.query,
                                       request.headers.get("accept"), own_root)

    def _forward(self, method: str, path: str, query: str, accept: str | None, own_root: str) -> Response:
        try:
            pacs = self.pacs()
        except DicomflowError as exc:
            return _problem(503, f"the viewer has no PACS yet: {exc}")
        root = pacs.url.rstrip("/")
        url = f"{root}/{path.strip('/')}" + (f"?{query}" if query else "")
        headers = {"Accept-Encoding": "identity", **({"Accept": accept} if accept else {})}
        try:
            upstream = self.http.request(method, url, headers=headers, auth=pacs.auth, stream=True,
                                         timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return _problem(502, f"the PACS is unreachable ({type(exc).__name__})")
        status = upstream.status_code
        if status >= 500 or status in (301, 302, 303, 307, 308, 401, 403):
            upstream.close()  # the PACS's own errors and redirects are not the browser's to follow
            log.warning("PACS answered %d for a viewer request", status)
            return _problem(502, f"the PACS answered {status}")
        passed = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_HEADERS}
        passed["Cache-Control"] = "private, no-cache"
        ctype = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("application/dicom+json", "application/json"):
            return self._rewritten(upstream, passed, root, own_root)
        if method == "HEAD":
            upstream.close()
            return Response(b"", status_code=status, headers=passed)

        def body() -> Iterator[bytes]:
            try:
                yield from upstream.iter_content(CHUNK)
            finally:
                upstream.close()

        return StreamingResponse(body(), status_code=status, headers=passed)

    def _rewritten(self, upstream: requests.Response, headers: dict[str, str], root: str, own_root: str) -> Response:
        """A JSON answer with the PACS's absolute DICOMweb URLs pointing at this gateway instead."""
        chunks, size = [], 0
        try:
            for chunk in upstream.iter_content(CHUNK):
                size += len(chunk)
                if size > MAX_JSON_BYTES:
                    return _problem(502, f"the PACS's answer is over {MAX_JSON_BYTES} bytes")
                chunks.append(chunk)
        finally:
            upstream.close()
        body = b"".join(chunks).replace(root.encode(), own_root.encode())
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        return Response(body, status_code=upstream.status_code, headers=headers)

    # ---- the app ------------------------------------------------------------------------------------
    async def _app_config(self, _request: Request) -> Response:
        return Response(ohif.app_config(), media_type="text/javascript; charset=utf-8")

    async def _static(self, request: Request) -> Response:
        rel = request.path_params.get("path") or "index.html"
        if not (self.dist_dir / "index.html").is_file():
            return Response("the OHIF viewer is not installed: run 'make setup' (viewer/fetch-ohif.sh)\n",
                            status_code=503, media_type="text/plain; charset=utf-8")
        if "." not in rel.rsplit("/", 1)[-1]:
            rel = "index.html"  # a client-side route of the app
        return webserver.static_file(self.dist_dir, rel, cache=rel != "index.html")

    def _signed_in(self, handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            if self._user(request) is None:
                if request.url.path.startswith(ohif.DICOMWEB_PATH + "/") or request.method != "GET":
                    return _problem(401, "sign in first: open the link 'dicomflow view' prints")
                return _page(401, "Sign in", "Open the sign-in link that 'dicomflow view --study UID' prints.")
            return await handler(request)
        return guarded

    def app(self) -> Any:
        every = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        return webserver.SecurityHeaders(Starlette(routes=[
            Route("/healthz", lambda _: webserver.json_response(200, {"ok": True}), methods=["GET"]),
            Route("/signin", self._signin, methods=["GET"]),
            Route("/signout", self._signout, methods=["GET"]),
            Route(ohif.DICOMWEB_PATH + "/{path:path}", self._signed_in(self._dicomweb), methods=every),
            Route("/app-config.js", self._signed_in(self._app_config), methods=["GET", "HEAD"]),
            Route("/", self._signed_in(self._static), methods=["GET", "HEAD"]),
            Route("/{path:path}", self._signed_in(self._static), methods=["GET", "HEAD"]),
        ]), extra=[(b"content-security-policy", CSP.encode())])


def local_gateway(settings: Settings) -> ViewerGateway:
    """The gateway of the local cloud in ``settings``: its PACS, its viewer key."""
    return ViewerGateway(pacs_connection, access.viewer_key(settings.secrets_dir),
                         redeemed=settings.run_dir / "viewer-redeemed.json")


def main(argv: list[str] | None = None) -> None:
    from dicomflow.emulator.cloud.module_service import serve_main

    serve_main("The local cloud's OHIF viewer and read-only DICOMweb gateway.", lambda s: local_gateway(s).app(), 0,
               argv)
