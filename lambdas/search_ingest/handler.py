"""Search ingestion Lambda: S3 ObjectCreated, or a study turned stable in the PACS -> metadata in DynamoDB,
thumbnails, embeddings and report analyses in S3.

Events:

* a "study stable" event, ``{"studyInstanceUID": UID}`` (what the router gets; locally the stable-study feed
  delivers it to both): every image of the study, read from the *configured* PACS over DICOMweb (its
  credentials from its secret; an event cannot name another PACS), is ingested as an image object below,
  its item's ``source`` the instance's WADO-RS address. Series of results (SR, SEG, PDF) are skipped. A
  PACS that cannot be read fails the invocation (the sender tries again); an image that fails is
  dead-lettered (``{"study", "sopInstanceUID", "reason"}``) and the others go on;
* an S3 event notification (``Records[].s3.bucket.name`` / ``.s3.object.key``, URL-encoded). An object
whose key ends in ``.json`` is a report file (``{"StudyInstanceUID", "AccessionNumber", "text"}``); any other
is read as DICOM (:mod:`dicomflow.search.ingest`). Per object:

* image -> its item in ``DICOMFLOW_SEARCH_TABLE`` (key ``image#<SOPInstanceUID>``) naming its thumbnail,
  ``<DICOMFLOW_SEARCH_OUTPUT_URI>thumbnails/<sha256>.png`` (content-addressed: stored once); with
  ``DICOMFLOW_SEARCH_ENDPOINT`` (a classification endpoint) also, for the modalities of
  ``DICOMFLOW_SEARCH_EMBED_MODALITIES`` (default CR, DX), its embedding,
  ``<DICOMFLOW_SEARCH_OUTPUT_URI>embeddings/<SOPInstanceUID>.json`` (which ``dicomflow search index --from``
  loads into the configured index);
* report -> its item (key ``report#<StudyInstanceUID>``: the codes it asserts, denies and is unsure of) and
  the analysis ``<DICOMFLOW_SEARCH_OUTPUT_URI>reports/<StudyInstanceUID>.json``, which
  ``dicomflow search add-reports --from`` loads into the report index without reading the report again.

An object that cannot be ingested goes to ``DICOMFLOW_SEARCH_DLQ`` with its bucket, key and reason, and the
others go on. Ingesting an object again writes the same item and objects. The response counts both. Logs
name keys and UIDs, never patient data.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote_plus

from dicomflow import aws
from dicomflow.config import runtime
from dicomflow.credentials import pacs_connection
from dicomflow.dicom import dicomweb
from dicomflow.dicom.uid import stable_study_uid
from dicomflow.errors import DicomflowError
from dicomflow.search import ingest
from dicomflow.search.reports import ComprehendMedicalEngine, RuleEngine

log = logging.getLogger("dicomflow.search_ingest")
log.setLevel(logging.INFO)
if not logging.getLogger().handlers:  # outside the Lambda runtime (local host execution)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


def _engine() -> Any:
    if runtime().report_engine == "comprehend-medical":
        return ComprehendMedicalEngine(aws.client("comprehendmedical"))
    return RuleEngine()


def _objects(event: Any) -> list[tuple[str, str]]:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise ingest.IngestError("not an S3 event notification: expected {\"Records\": [{\"s3\": ...}]}")
    out = []
    for record in records:
        s3 = record.get("s3") if isinstance(record, dict) else None
        try:
            out.append((str(s3["bucket"]["name"]), unquote_plus(str(s3["object"]["key"]))))
        except (KeyError, TypeError):
            raise ingest.IngestError("an S3 record without s3.bucket.name and s3.object.key") from None
    return out


def _embed_budget(context: Any) -> float:
    """Seconds an embedding may take: what is left of the invocation, less a margin to record a failure."""
    left = getattr(context, "get_remaining_time_in_millis", None)
    return max(5.0, left() / 1000 - 15) if callable(left) else 240.0


def _dead_letter(settings: Any, letter: dict[str, str]) -> None:
    body = json.dumps(letter)
    try:
        aws.client("sqs").send_message(QueueUrl=settings.search_dlq, MessageBody=body)
    except Exception:  # the DLQ itself failing must not hide the object's own failure
        log.exception("could not dead-letter %s", letter.get("key") or letter.get("sopInstanceUID"))
        raise


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    settings = runtime()
    if not (settings.search_table and settings.search_output_uri and settings.search_dlq):
        raise DicomflowError("DICOMFLOW_SEARCH_TABLE, DICOMFLOW_SEARCH_OUTPUT_URI and DICOMFLOW_SEARCH_DLQ must "
                             "be set (the stack sets them)")
    if isinstance(event, dict) and "studyInstanceUID" in event:
        return _stable_study(event, settings, context)
    try:
        objects = _objects(event)
    except ingest.IngestError as exc:
        log.warning("refused the event: %s", exc)
        return {"error": str(exc)}
    engine = _engine()
    done, failed = [], []
    for bucket, key in objects:
        try:
            item = ingest.ingest_object(bucket, key, settings, engine, embed_timeout_s=_embed_budget(context))
            done.append(item["pk"])
        except DicomflowError as exc:
            log.warning("not ingested: %s", exc)
            _dead_letter(settings, {"bucket": bucket, "key": key, "reason": str(exc)})
            failed.append({"key": key, "reason": str(exc)})
    log.info("ingested %d object(s), %d dead-lettered", len(done), len(failed))
    return {"ingested": done, "failed": failed}


def _stable_study(event: dict[str, Any], settings: Any, context: Any) -> dict[str, Any]:
    try:
        study = stable_study_uid(event, "search ingestion")
    except ValueError as exc:
        return {"error": str(exc)}
    client = dicomweb.connect(pacs_connection())
    run = ingest.ingest_study(client, study, settings, embed_timeout_s=_embed_budget(context))
    for failure in run.failed:
        log.warning("not ingested: %s", failure["reason"])
        _dead_letter(settings, {"study": study, **failure})
    log.info("study %s: ingested %d image(s), %d dead-lettered, %d series skipped", study, len(run.items),
             len(run.failed), len(run.skipped))
    return run.as_dict()
