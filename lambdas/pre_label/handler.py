"""Ground Truth pre-annotation Lambda: one data object -> a task input with signed WADO-URIs.

Event: ``{"version": "2018-10-16", "labelingJobArn": "arn:...:labeling-job/<name>",
"dataObject": {"source": "<Orthanc instance/series ID or UID JSON>"}}`` (or ``source-ref``).
Response: ``{"taskInput": {...}, "isHumanAnnotationRequired": "true"}`` (shape in
``dicomflow.groundtruth.pre_label``). Any failure raises: Ground Truth marks that one object failed.

PACS credentials come from Secrets Manager / env (``dicomflow.credentials``), never from the event.
Logs carry the job, object level and timing; never patient data or credentials.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from dicomweb_client.protocol import DICOMClient

from dicomflow.credentials import pacs_connection
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import OrthancRest
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import pre_label

log = logging.getLogger("dicomflow.pre_label")
log.setLevel(logging.INFO)
if not logging.getLogger().handlers:  # outside the Lambda runtime (local host execution)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

_CONNECTION_TTL = 300.0
_cached: tuple[float, DICOMClient, OrthancRest] | None = None


def _pacs() -> tuple[DICOMClient, OrthancRest]:
    """The PACS's two clients, kept for a few minutes in a warm Lambda: one secret read and one pair of
    keep-alive HTTP sessions, not one per task."""
    global _cached
    if _cached is None or time.monotonic() - _cached[0] > _CONNECTION_TTL:
        conn = pacs_connection()
        _cached = (time.monotonic(), dicomweb.connect(conn, retries=2), OrthancRest(conn))
    return _cached[1], _cached[2]


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Resolve the object, sign one URL per instance, return GT's pre-annotation response."""
    started = time.perf_counter()
    job = "?"
    try:
        if not isinstance(event, dict):
            raise pre_label.LabelingTaskError("invalid", "event must be a JSON object")
        settings = pre_label.TaskSettings.from_env(event.get("labelingJobArn", ""))
        job = settings.scope
        client, rest = _pacs()
        response = pre_label.pre_label(event, client, rest.resolve, settings)
    except DicomflowError as exc:
        log.error(json.dumps({"event": "pre-label-failed", "job": job, "error": type(exc).__name__,
                              "reason": getattr(exc, "reason", None), "message": str(exc)}))
        raise
    task = response["taskInput"]
    log.info(json.dumps({"event": "pre-label", "job": job, "level": task["level"],
                         "instances": len(task["instances"]), "slices": task["numberOfSlices"],
                         "window": task["window"]["source"],
                         "ms": round((time.perf_counter() - started) * 1000, 1)}))
    return response
