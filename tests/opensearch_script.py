"""A scripted OpenSearch connection: the real opensearch-py client with its last step, the HTTP connection,
replaced by one that records each request and answers from a script (no OpenSearch server runs here)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from opensearchpy.connection import Connection


class Scripted(Connection):
    """Answers each request with the next scripted ``(method, path, status, body)``; records what was sent."""

    script: ClassVar[list[tuple[str, str, int, Any]]] = []
    sent: ClassVar[list[dict[str, Any]]] = []

    def perform_request(self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None):
        want_method, want_path, status, answer = self.script.pop(0)
        text = body.decode() if isinstance(body, bytes) else body
        lines = [json.loads(line) for line in text.splitlines() if line.strip()] if text else []
        sent = {k: v.decode() if isinstance(v, bytes) else v for k, v in (params or {}).items()}
        self.sent.append({"method": method, "path": url.split("?")[0], "params": sent,
                          "body": lines[0] if len(lines) == 1 and not url.endswith("_bulk") else lines})
        assert (method, url.split("?")[0]) == (want_method, want_path), (method, url)
        data = json.dumps(answer)
        if status >= 300 and status not in ignore:
            self._raise_error(status, data)
        return status, {"content-type": "application/json"}, data
