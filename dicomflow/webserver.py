"""The one HTTP server stack of the project: uvicorn (h11) serving Starlette apps, with limits on what clients send.

Every server here (the serving container, the local SageMaker serving process, the worker portal,
the viewer gateway) runs through :func:`serve` (a process's main server) or :class:`ServerThread`
(a server inside a larger process). HTTP parsing, chunked bodies, keep-alive and pipelining are
h11's; this module adds what uvicorn leaves to the application:

* **header timeout**: a connection that has not sent a complete request head within
  ``Limits.header_seconds`` is closed (uvicorn has no such timer; slow clients would hold it);
* **body limit and timeout**: :func:`read_body` refuses a declared or received body over the
  limit with 413 without reading it, and a body that stops arriving with 408;
* **clean shutdown**: SIGTERM/SIGINT stop accepting, let running requests finish (bounded),
  and the process exits 0 (uvicorn re-raises the signal, which would exit 143).

Malformed requests (``Content-Length: abc``, ``-5``, bad chunk sizes, oversized heads) are
answered 400 by h11 before any application code runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import signal
import socket
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from dicomflow.config import runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What a client may send and how slowly."""

    max_body: int = 1_000_000
    header_seconds: float = 10.0
    body_seconds: float = 30.0
    keep_alive_seconds: int = 5
    max_head_bytes: int = 32 * 1024
    graceful_seconds: int = 10

    @classmethod
    def from_env(cls, **defaults: Any) -> Limits:
        """``defaults`` with the head and body timeouts of the runtime settings (``DICOMFLOW_HTTP_*_SECONDS``)."""
        settings = runtime()
        return cls(**{"header_seconds": settings.http_header_seconds, "body_seconds": settings.http_body_seconds,
                      **defaults})


class HTTPProblem(Exception):
    """An expected client error with its status; :func:`problem_response` answers it as JSON."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                             405: "MethodNotAllowed", 408: "RequestTimeout", 411: "LengthRequired",
                             413: "PayloadTooLarge", 415: "UnsupportedMediaType"}.get(status, "Error")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def problem_response(problem: HTTPProblem) -> Response:
    """``{"error": code, "message": text, "status": int}``; the connection closes after a refused body."""
    headers = {"Connection": "close"} if problem.status in (408, 411, 413) else None
    return json_response(problem.status, {"error": problem.code, "message": problem.message,
                                          "status": problem.status}, headers)


async def read_body(request: Request, limits: Limits, max_body: int | None = None) -> bytes:
    """The whole request body, or :class:`HTTPProblem` 413 (too large), 408 (too slow) or 400 (cut off)."""
    limit = limits.max_body if max_body is None else max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_BYTES:
            await _discard(request, limits)
        raise HTTPProblem(413, f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPProblem(413, f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPProblem(408, f"the request body did not arrive within {limits.body_seconds:.0f} s") from None
    except ClientDisconnect:
        raise HTTPProblem(400, "the client closed the connection before the body was complete") from None
    return b"".join(chunks)


SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"))


class SecurityHeaders:
    """ASGI middleware for browser-facing apps: :data:`SECURITY_HEADERS` (plus ``extra``, e.g. a
    Content-Security-Policy) on every answer that does not set them itself, ``no-store`` unless it says otherwise."""

    def __init__(self, app: ASGIApp, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.app = app
        self.headers = (*SECURITY_HEADERS, *extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in self.headers if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def static_file(root: Path, rel: str, cache: bool = False) -> Response:
    """The file ``rel`` below ``root`` (never outside it: 404), typed for browsers (JS, wasm)."""
    try:
        target = (root / rel).resolve()
    except (OSError, ValueError):
        target = None
    if target is None or not target.is_file() or root.resolve() not in target.parents:
        return Response("not found\n", status_code=404, media_type="text/plain; charset=utf-8")
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix in (".js", ".mjs"):
        ctype = "text/javascript; charset=utf-8"
    elif target.suffix == ".wasm":
        ctype = "application/wasm"
    headers = {"Cache-Control": "public, max-age=3600"} if cache else {}
    return Response(target.read_bytes(), media_type=ctype, headers=headers)


#: A refused body up to this size is read and dropped before the answer, so the client reads the 413
#: instead of a connection reset (closing with unread bytes makes the kernel send RST).
DRAIN_BYTES = 16 * 1024 * 1024


async def _discard(request: Request, limits: Limits) -> None:
    try:
        async with asyncio.timeout(limits.body_seconds):
            async for _chunk in request.stream():
                pass
    except (TimeoutError, ClientDisconnect):
        pass


def no_delay(sock: socket.socket | None) -> None:
    """Send each write at once (TCP_NODELAY). asyncio sets it only on sockets made with proto IPPROTO_TCP;
    sockets bound with proto 0 (ours, and accept()'s children) are not, and a response's head and body
    then wait on the client's delayed ACK: about 40 ms per request on a kept-alive connection."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol plus a timer that closes connections whose request head does not arrive."""

    header_seconds: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport.get_extra_info("socket"))
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # bytes of a new request on a kept-alive connection
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_seconds, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


class _Server(uvicorn.Server):
    """SIGTERM/SIGINT end :meth:`run` normally (exit 0) instead of being re-raised after shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing running requests, then stopping", signum)
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free one); OSError says why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, limits: Limits = Limits(), log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for ``app`` with :class:`Limits` applied; run it with ``.run(sockets=[bind(...)])``."""
    protocol = type("GuardedH11", (_GuardedH11,), {"header_seconds": limits.header_seconds})
    config = uvicorn.Config(app, http=protocol, lifespan="off", log_level=log_level, access_log=False,
                            timeout_keep_alive=limits.keep_alive_seconds, server_header=False,
                            timeout_graceful_shutdown=limits.graceful_seconds,
                            h11_max_incomplete_event_size=limits.max_head_bytes)
    return _Server(config)


def serve(app: Any, sock: socket.socket, limits: Limits = Limits(), log_level: str = "warning") -> None:
    """Serve ``app`` on the bound ``sock`` until SIGTERM/SIGINT (then return normally)."""
    make_server(app, limits, log_level).run(sockets=[sock])


class ServerThread:
    """``app`` served on ``host:port`` from a background thread of this process (``port`` 0: a free one)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, limits: Limits = Limits(),
                 log_level: str = "warning") -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = make_server(app, limits, log_level)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"http-{self.port}", daemon=True)
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if self.server.started or not self.thread.is_alive():
                break
            deadline.wait(0.01)
        if not self.server.started:
            raise RuntimeError(f"the HTTP server on {self.url} did not start")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(timeout)
        self.sock.close()
