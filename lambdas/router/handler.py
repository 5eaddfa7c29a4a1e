"""Router Lambda: a "study stable" event -> the routing rules -> inference on every matching series, once.

Event: ``{"studyInstanceUID": "1.2...."}`` (``"retry": true`` tries the failed analyses of the study again).
Locally the local cloud's Orthanc change feed invokes it for each ``StableStudy``
(:mod:`dicomflow.routing.feed`); on AWS the PACS side does (see DEPLOY.md). Response: what was started
or skipped per series (``dicomflow.routing.router.route``); a malformed event answers ``{"error": ...}``
without a retry. The PACS is always the configured one (credentials from its secret, never from the
event). Logs carry UIDs, rules and endpoints; never patient data or credentials.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dicomflow.credentials import pacs_connection
from dicomflow.dicom import dicomweb
from dicomflow.routing.router import RoutingError, route

log = logging.getLogger("dicomflow.router")
log.setLevel(logging.INFO)
if not logging.getLogger().handlers:  # outside the Lambda runtime (local host execution)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

_CONNECTION_TTL = 300.0
_cached: tuple[float, Any] | None = None


def _client() -> Any:
    """The PACS's DICOMweb client, kept for a few minutes in a warm Lambda."""
    global _cached
    if _cached is None or time.monotonic() - _cached[0] > _CONNECTION_TTL:
        _cached = (time.monotonic(), dicomweb.connect(pacs_connection()))
    return _cached[1]


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        result = route(event, _client())
    except RoutingError as exc:
        log.warning("routing refused the event: %s", exc)
        return {"error": str(exc)}
    log.info("study %s: %d analysis(es) started, %d series skipped in %.0f ms", result["studyInstanceUID"],
             len(result["analyses"]), len(result["skipped"]), (time.perf_counter() - t0) * 1000)
    return result
