"""A tiny SageMaker-style serving process for the emulated-AWS tests (standard library only).

``GET /ping`` -> 200. ``POST /invocations`` -> the model prefix (``$SM_MODEL_DIR/prefix.txt``) + the
upper-cased body, after ``$SERVING_DELAY`` seconds. Magic bodies: ``FAIL`` -> 500 with a message,
``BAD`` -> 400, ``CRASH`` -> the process exits mid-request, ``HANG`` -> sleeps 600 s.
``GET /stats`` -> ``{"count", "in_flight", "max_in_flight"}`` (the most requests seen at once).
Listens on 127.0.0.1:``$SAGEMAKER_BIND_TO_PORT``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_lock = threading.Lock()
_stats = {"count": 0, "in_flight": 0, "max_in_flight": 0}
_prefix = ""


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/ping":
            self._send(200, b"")
        elif self.path == "/stats":
            with _lock:
                self._send(200, json.dumps(_stats).encode(), "application/json")
        else:
            self._send(404, b"not found")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/invocations":
            self._send(404, b"not found")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _lock:
            _stats["count"] += 1
            _stats["in_flight"] += 1
            _stats["max_in_flight"] = max(_stats["max_in_flight"], _stats["in_flight"])
        try:
            time.sleep(float(os.environ.get("SERVING_DELAY", "0")))
            if body.startswith(b"CRASH"):
                os._exit(3)
            if body.startswith(b"HANG"):
                time.sleep(600)
            if body.startswith(b"FAIL"):
                self._send(500, b"model failed on purpose")
            elif body.startswith(b"BAD"):
                self._send(400, b"bad input on purpose")
            else:
                accept = self.headers.get("Accept") or "text/plain"
                self._send(200, _prefix.encode() + body.upper(), accept)
        finally:
            with _lock:
                _stats["in_flight"] -= 1

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    global _prefix
    prefix_file = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model")) / "prefix.txt"
    _prefix = prefix_file.read_text() if prefix_file.exists() else ""
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
