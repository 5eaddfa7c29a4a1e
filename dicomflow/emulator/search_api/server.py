"""The local search API and page: ``POST /graphql`` (the schema of :mod:`dicomflow.api.graphql`) behind the
Cognito user pool of the last stack deployed to the local cloud, and the built ``search_ui`` page.

Routes (127.0.0.1 only):

* ``POST /graphql`` - ``Authorization: <ID or access token>`` (or ``Bearer <token>``) from the stack's user pool
  and app client, checked against moto's JWKS on every request (:class:`dicomflow.api.auth.TokenVerifier`):
  none, forged, expired, another pool's or another client's -> 401; a group rule -> 403; a malformed body or a
  query the limits refuse -> 400; otherwise 200 with GraphQL ``data``/``errors``. 503 until a stack is deployed.
* ``GET /config.json`` - what the page needs: the GraphQL URL, the user pool endpoint, region and app client id
  (public values; the page signs in directly with Cognito, as on AWS), the viewer URL when there is one.
* ``GET /`` and the page's assets - ``search_ui/dist`` under a strict Content-Security-Policy.
* ``GET /healthz``.

The page never receives an AWS or PACS credential: tokens come from Cognito, thumbnails are presigned links.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomflow import safejson, webserver
from dicomflow.api import graphql
from dicomflow.api.auth import SignInUnavailable, TokenVerifier, Unauthorized, bearer, issuer_of
from dicomflow.api.engine import Engine
from dicomflow.config import Settings, read_state
from dicomflow.errors import DicomflowError
from dicomflow.infra import stack
from dicomflow.infra.deployment import LOCAL_STACK_KEY
from dicomflow.paths import REPO_ROOT, image_index_dir, report_index_path

log = logging.getLogger(__name__)
PAGE_DIR = REPO_ROOT / "search_ui" / "dist"
LIMITS = webserver.Limits(max_body=64 * 1024)
#: How long a looked-up user pool is trusted before the state file and stack are read again.
SIGN_IN_TTL_S = 10.0
#: How long a study's viewer link from the API may be used (once).
VIEWER_LINK_S = 300
#: Threads that run queries; each keeps its own open indexes (an image graph in memory each), so few.
WORKERS = 2


@dataclass(frozen=True)
class SignIn:
    """A user pool and app client of the emulated Cognito."""

    pool_id: str
    client_id: str


def stack_sign_in(data_dir: Path) -> SignIn | None:
    """The user pool of the stack last deployed to this local cloud; None before one is."""
    name = read_state(data_dir).get(LOCAL_STACK_KEY)
    if not name:
        return None
    try:
        outputs = stack.outputs(name)
    except DicomflowError:
        return None
    if not outputs.get("SearchUserPoolId") or not outputs.get("SearchUserPoolClientId"):
        return None
    return SignIn(outputs["SearchUserPoolId"], outputs["SearchUserPoolClientId"])


def _errors(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    return webserver.json_response(status, {"errors": [{"message": message, "extensions": {"code": code}}]}, headers)


def _status_of(ok: bool, result: dict[str, Any]) -> int:
    codes = {(e.get("extensions") or {}).get("code") for e in result.get("errors") or []}
    if "FORBIDDEN" in codes:
        return 403
    if not ok and result.get("data") is None and codes & {"BAD_REQUEST", "GRAPHQL_VALIDATION_FAILED"}:
        return 400
    return 200


class SearchServer:
    """The Starlette app of the page and the API over ``engine``; ``sign_in()`` names the user pool (looked up
    again until one exists). Queries run on :data:`WORKERS` threads of its own, each with its open indexes."""

    def __init__(self, engine: Engine, sign_in: Callable[[], SignIn | None], aws_endpoint: str, region: str,
                 page_dir: Path = PAGE_DIR, viewer_url: str | None = None, workers: int = WORKERS) -> None:
        self.engine, self._sign_in = engine, sign_in
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search-api")
        self.aws_endpoint, self.region = aws_endpoint.rstrip("/"), region
        self.page_dir, self.viewer_url = page_dir, viewer_url
        self._verifier: tuple[SignIn, TokenVerifier] | None = None
        self._looked_up = -SIGN_IN_TTL_S
        self._lock = threading.Lock()

    def verifier(self) -> tuple[SignIn, TokenVerifier] | None:
        """The current user pool and its token checker (the pool looked up again after :data:`SIGN_IN_TTL_S`,
        by one thread while the others go on with the one they have)."""
        current = self._verifier
        if time.monotonic() - self._looked_up < SIGN_IN_TTL_S or not self._lock.acquire(blocking=current is None):
            return current
        try:
            if time.monotonic() - self._looked_up >= SIGN_IN_TTL_S:
                found = self._sign_in()
                self._looked_up = time.monotonic()
                if found is None:
                    self._verifier = None
                elif self._verifier is None or self._verifier[0] != found:
                    jwks = f"{self.aws_endpoint}/{found.pool_id}/.well-known/jwks.json"
                    self._verifier = found, TokenVerifier.from_jwks_url(issuer_of(found.pool_id, self.region),
                                                                        found.client_id, jwks)
            return self._verifier
        finally:
            self._lock.release()

    def _run(self, header: str | None, body: bytes) -> Response:
        found = self.verifier()
        if found is None:
            return _errors(503, "the search API has no user pool yet: deploy the stack ('dicomflow infra deploy')",
                           "SERVICE_UNAVAILABLE")
        try:
            user = found[1].verify(bearer(header))
        except Unauthorized as exc:
            return _errors(401, str(exc), "UNAUTHENTICATED", {"WWW-Authenticate": 'Bearer realm="dicomflow-search"'})
        except SignInUnavailable as exc:
            return _errors(503, str(exc), "SERVICE_UNAVAILABLE", {"Retry-After": "5"})
        try:
            doc = safejson.loads(body, "the request body")
        except ValueError as exc:
            return _errors(400, f"{exc}; send JSON {{\"query\": ..., \"variables\": {{...}}}}", "BAD_REQUEST")
        ok, result = graphql.execute(doc, self.engine.context(user))
        return webserver.json_response(_status_of(ok, result), result)

    async def _graphql(self, request: Request) -> Response:
        if request.method != "POST":
            return _errors(405, "send the query with POST", "METHOD_NOT_ALLOWED", {"Allow": "POST"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _errors(415, "send Content-Type: application/json", "BAD_REQUEST")
        try:
            body = await webserver.read_body(request, LIMITS)
        except webserver.HTTPProblem as problem:
            return _errors(problem.status, problem.message, "BAD_REQUEST", {"Connection": "close"})
        return await self._on_worker(self._run, request.headers.get("authorization"), body)

    async def _on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    async def _config(self, request: Request) -> Response:
        found = await self._on_worker(self.verifier)
        base = str(request.base_url).rstrip("/")
        return webserver.json_response(200, {
            "graphqlUrl": f"{base}/graphql", "viewerUrl": self.viewer_url,
            "cognito": {"endpoint": f"{self.aws_endpoint}/", "region": self.region,
                        "clientId": found[0].client_id if found else None}})

    async def _page(self, request: Request) -> Response:
        rel = request.path_params.get("path") or "index.html"
        if not (self.page_dir / "index.html").is_file():
            return Response("the search page is not built: run 'make setup' (or: cd search_ui && npm install "
                            "--no-save && npm run build)\n", status_code=503, media_type="text/plain; charset=utf-8")
        return webserver.static_file(self.page_dir, rel, cache=rel.startswith("assets/"))

    def app(self) -> Any:
        aws = self.aws_endpoint
        csp = (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: {aws}; "
               f"connect-src 'self' {aws}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        return webserver.SecurityHeaders(Starlette(routes=[
            Route("/graphql", self._graphql, methods=["GET", "POST"]),
            Route("/config.json", self._config, methods=["GET"]),
            Route("/healthz", lambda _: webserver.json_response(200, {"ok": True}), methods=["GET"]),
            Route("/", self._page, methods=["GET"]),
            Route("/{path:path}", self._page, methods=["GET"]),
        ]), extra=[(b"content-security-policy", csp.encode())])


def local_server(settings: Settings) -> SearchServer:
    """The server of the local cloud in ``settings``: its data dir's indexes, its deployed stack's user pool, and
    its viewer (a study's ``viewerUrl`` is a sign-in link of :data:`VIEWER_LINK_S`)."""
    from dicomflow.emulator.viewer.access import sign_in_link

    engine = Engine(report_index_path(settings.data_dir), image_index_dir(settings.data_dir),
                    viewer=lambda user, study: sign_in_link(settings, user, study, VIEWER_LINK_S))
    return SearchServer(engine, lambda: stack_sign_in(settings.data_dir), settings.aws_endpoint_url, settings.region)


def main(argv: list[str] | None = None) -> None:
    from dicomflow.emulator.cloud.module_service import serve_main

    serve_main("The local cloud's search page and GraphQL API.", lambda s: local_server(s).app(), LIMITS.max_body,
               argv)
