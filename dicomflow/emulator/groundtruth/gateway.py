"""The same-origin WADO gateway: verify a signed WADO-URI, then fetch the object from the PACS with
server-side credentials and stream it back. The browser never sees a PACS credential, and Orthanc
(which has no CORS) is never called cross-origin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from dicomflow.credentials import PacsConnection
from dicomflow.dicom.orthanc import rest_root
from dicomflow.groundtruth import signing

CHUNK = 256 * 1024


@dataclass
class GatewayResponse:
    status: int
    headers: dict[str, str]
    body: Iterator[bytes] | bytes


class WadoGateway:
    """Checks signatures for one labeling job (its scope) and proxies to the PACS's ``/wado``."""

    def __init__(self, pacs: PacsConnection, key: bytes, scope: str, timeout: float = 60) -> None:
        self.pacs = pacs
        self.key = key
        self.scope = scope
        self.timeout = timeout
        self.http = requests.Session()

    def fetch(self, query: str) -> GatewayResponse:
        """403 with the reason for a bad signature; the PACS's answer otherwise."""
        try:
            obj = signing.verify_wado_object(query, self.key, time.time(), expected_scope=self.scope)
        except signing.SignatureError as exc:
            return GatewayResponse(403, {"Content-Type": "text/plain; charset=utf-8"},
                                   f"forbidden ({exc.reason}): {exc}\n".encode())
        url = f"{rest_root(self.pacs)}/wado?{signing.upstream_query(obj)}"
        try:
            upstream = self.http.get(url, auth=self.pacs.auth, stream=True, timeout=self.timeout,
                                     headers={"Accept-Encoding": "identity", "Accept": "application/dicom"})
        except requests.RequestException as exc:
            return GatewayResponse(502, {"Content-Type": "text/plain; charset=utf-8"},
                                   f"PACS unreachable: {type(exc).__name__}\n".encode())
        if upstream.status_code != 200:
            upstream.close()
            status = 404 if upstream.status_code == 404 else 502
            return GatewayResponse(status, {"Content-Type": "text/plain; charset=utf-8"},
                                   f"PACS answered {upstream.status_code} for this object\n".encode())
        headers = {"Content-Type": upstream.headers.get("Content-Type", "application/dicom"),
                   "Cache-Control": "private, max-age=300"}
        if "Content-Length" in upstream.headers:
            headers["Content-Length"] = upstream.headers["Content-Length"]

        def stream() -> Iterator[bytes]:
            try:
                yield from upstream.iter_content(CHUNK)
            finally:
                upstream.close()

        return GatewayResponse(200, headers, stream())
