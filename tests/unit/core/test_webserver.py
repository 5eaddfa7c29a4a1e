"""The shared HTTP stack refuses hostile framing: the probes that broke the hand-written servers, on raw sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomflow import webserver

LIMITS = webserver.Limits(max_body=1000, header_seconds=0.5, body_seconds=0.5, keep_alive_seconds=5)


@pytest.fixture
def server() -> Iterator[tuple[webserver.ServerThread, list[str]]]:
    hits: list[str] = []

    async def echo(request: Request) -> Response:
        hits.append(f"{request.method} {request.url.path}")
        try:
            body = await webserver.read_body(request, LIMITS)
        except webserver.HTTPProblem as problem:
            return webserver.problem_response(problem)
        return Response(body, media_type="application/octet-stream")

    async def secret(request: Request) -> Response:
        hits.append(f"{request.method} {request.url.path}")
        return Response(b"secret")

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/secret", secret, methods=["GET"])])
    srv = webserver.ServerThread(app, limits=LIMITS).start()
    yield srv, hits
    srv.stop()


def _exchange(srv: webserver.ServerThread, raw: bytes, wait: float = 3.0) -> bytes:
    """Send ``raw`` on a fresh connection; everything the server sends until it closes or ``wait`` passes."""
    with socket.create_connection((srv.host, srv.port), timeout=wait) as sock:
        sock.sendall(raw)
        chunks = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_a_chunked_body_is_a_body_not_a_second_request(server) -> None:
    srv, hits = server
    smuggled = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           + f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n")
    answer = _exchange(srv, raw)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert hits == ["POST /echo"]


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1e3", b"5, 6"])
def test_a_malformed_content_length_is_400_without_reaching_the_app(server, length: bytes) -> None:
    srv, hits = server
    answer = _exchange(srv, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"Traceback" not in answer and hits == []


def test_a_body_that_never_arrives_is_408_and_frees_the_server(server) -> None:
    srv, _hits = server
    started = time.monotonic()
    with socket.create_connection((srv.host, srv.port), timeout=5) as slow:
        slow.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b"x" * 27)
        other = _exchange(srv, b"GET /secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert other.startswith(b"HTTP/1.1 200")  # served while the slow body is pending
        answer = b""
        while chunk := slow.recv(65536):  # the server closes after the 408
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
    assert time.monotonic() - started < 4


def test_a_request_head_that_never_ends_is_closed(server) -> None:
    srv, hits = server
    started = time.monotonic()
    answer = _exchange(srv, b"GET /secret HTTP/1.1\r\nHost: x\r\nX-Slow: 1", wait=4)
    assert answer == b"" and time.monotonic() - started < 3 and hits == []


def test_a_body_over_the_limit_is_413_declared_or_chunked(server) -> None:
    srv, _hits = server
    declared = _exchange(srv, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    assert declared.startswith(b"HTTP/1.1 413") and b"5000 bytes" in declared
    chunk = b"y" * 800
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    assert _exchange(srv, raw).startswith(b"HTTP/1.1 413")


def test_keep_alive_requests_on_one_connection_each_get_their_answer(server) -> None:
    srv, hits = server
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nde")
    answer = _exchange(srv, raw)
    assert answer.count(b"HTTP/1.1 200") == 2 and answer.endswith(b"de") and hits == ["POST /echo", "POST /echo"]


def test_answers_are_sent_at_once_not_held_for_the_clients_ack(server) -> None:
    """Every accepted connection has TCP_NODELAY: without it a kept-alive client waited ~40 ms per answer
    (the head and the body, two writes, held by Nagle until the client's delayed ACK)."""
    srv, _ = server
    with socket.create_connection((srv.host, srv.port), timeout=3) as sock:
        sock.sendall(b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        accepted = [p.transport.get_extra_info("socket") for p in srv.server.server_state.connections]
        assert accepted and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted)
