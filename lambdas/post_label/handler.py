"""Ground Truth annotation-consolidation Lambda: worker answers -> one consolidated label per object.

Event: ``{"version": "2018-10-16", "labelingJobArn": .., "labelCategories": [..],
"labelAttributeName": "..", "roleArn": .., "payload": {"s3Uri": "s3://.."}, "outputConfig": ..}``.
The payload object is a list of ``{"datasetObjectId", "dataObject", "annotations": [{"workerId",
"annotationData": {"content": "<json>"}}]}``. Response: a list of ``{"datasetObjectId",
"consolidatedAnnotation": {"content": {"<labelAttributeName>": {...}}}}``; the rules (vote threshold
``DICOMFLOW_VOTE_THRESHOLD``, ties, ROI clustering) are in ``dicomflow.groundtruth.consolidation``.

Garbled or empty worker answers are skipped and counted per object, never fatal. When the PACS is
configured, Orthanc-ID sources are resolved to UIDs (+ PatientID) for the ``dicom`` block, and a series the
workers outlined becomes a DICOM SEG stored into its study (``dicomflow.groundtruth.segmentation``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from dicomflow.config import ConfigError
from dicomflow.credentials import PacsConnection, pacs_connection
from dicomflow.dicom.orthanc import OrthancRest
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import consolidation, manifest

log = logging.getLogger("dicomflow.post_label")
log.setLevel(logging.INFO)
if not logging.getLogger().handlers:  # outside the Lambda runtime (local host execution)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


def _pacs() -> PacsConnection | None:
    """The configured PACS (one secret read per invocation), else None: UIDs then come from the source only and
    outlined series get no SEG."""
    try:
        return pacs_connection()
    except ConfigError:
        return None


def _segmenter(conn: PacsConnection, job: str) -> consolidation.Segmenter:
    """Outlined series become a SEG stored into their study."""

    def segment(ref, answers, structures):  # noqa: ANN001, ANN202 - the Segmenter signature
        from dicomflow.dicom import dicomweb
        from dicomflow.groundtruth.segmentation import consolidate_series

        return consolidate_series(dicomweb.connect(conn), ref, answers, structures, job)

    return segment


def lambda_handler(event: dict[str, Any], context: Any) -> list[dict[str, Any]]:
    """Read the payload from S3, consolidate each object, return GT's consolidation response."""
    started = time.perf_counter()
    try:
        if not isinstance(event, dict):
            raise consolidation.ConsolidationError("event must be a JSON object")
        uri = (event.get("payload") or {}).get("s3Uri") if isinstance(event.get("payload"), dict) else None
        if not uri:
            raise consolidation.ConsolidationError("event lacks payload.s3Uri; expected GT's consolidation event")
        payload = manifest.read_json_s3(uri)
        needs_pacs = any(
            isinstance(item, dict) and isinstance(item.get("dataObject"), dict)
            and not str(item["dataObject"].get("content") or item["dataObject"].get("source") or "").startswith("{")
            for item in (payload if isinstance(payload, list) else [])
        )
        conn = _pacs()
        response = consolidation.consolidation_response(
            event, payload, consolidation.vote_threshold(), OrthancRest(conn).resolve if conn and needs_pacs else None,
            _segmenter(conn, str(event.get("labelingJobArn") or "")) if conn else None)
    except DicomflowError as exc:
        log.error(json.dumps({"event": "consolidation-failed", "error": type(exc).__name__, "message": str(exc)}))
        raise
    attribute = event["labelAttributeName"]
    contents = [r["consolidatedAnnotation"]["content"][attribute] for r in response]
    log.info(json.dumps({
        "event": "consolidation", "job": str(event.get("labelingJobArn", "")).rsplit("/", 1)[-1],
        "objects": len(response), "answers": sum(c["workerCount"] for c in contents),
        "skipped": sum(c["skipped"] for c in contents),
        "ties": sum(len(c["ties"]["labels"]) for c in contents),
        "ms": round((time.perf_counter() - started) * 1000, 1)}))
    return response
