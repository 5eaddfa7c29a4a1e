"""What the search ingestion Lambda makes of one S3 object (Lambda-safe: no torch, no index files).

* A DICOM object -> its metadata item (UIDs, accession, modality, body part, view position, study date,
  size; no patient name, birth date or free text) and a PNG thumbnail (:mod:`dicomflow.dicom.thumbnail`).
* with an embedding endpoint, a DICOM image also -> its embedding record (:mod:`dicomflow.search.embeddings`),
  the endpoint reading the object where it lies (async) or from the request body (real-time);
* A report file (``{"StudyInstanceUID", "AccessionNumber", "text"}``) -> its item (the ICD-10-CM codes it
  asserts, denies and is unsure of, by the engine's InferICD10CM-shaped answer) and that answer, kept so the
  report index can be filled without reading the report again.

Items are keyed ``image#<SOPInstanceUID>`` / ``report#<StudyInstanceUID>``: ingesting an object again writes
the same item. Every refusal is an :class:`IngestError` naming the object and what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

import pydicom

from dicomflow import aws
from dicomflow.dicom.errors import NotAnImageError
from dicomflow.dicom.objects import MAX_OBJECT_BYTES, NotADicomObject, read_object
from dicomflow.dicom.thumbnail import thumbnail_key
from dicomflow.errors import DicomflowError
from dicomflow.search.embeddings import EMBEDDINGS_PREFIX, ImageIndexError, embedding_record
from dicomflow.search.reports import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    ReportError,
    mention_status,
    parse_report_file,
    validate_report,
)

REPORT_SUFFIX = ".json"
_IMAGE_FIELDS = {"studyInstanceUID": "StudyInstanceUID", "seriesInstanceUID": "SeriesInstanceUID",
                 "sopClassUID": "SOPClassUID", "accessionNumber": "AccessionNumber", "modality": "Modality",
                 "bodyPart": "BodyPartExamined", "viewPosition": "ViewPosition", "studyDate": "StudyDate",
                 "seriesNumber": "SeriesNumber", "instanceNumber": "InstanceNumber"}


class IngestError(DicomflowError):
    """An object that cannot be ingested; the message names it and the reason."""


def read_dicom(data: bytes, source: str) -> pydicom.Dataset:
    """The dataset of a DICOM object (Part 10 file, or a bare dataset), refused with a reason if it is not one."""
    try:
        return read_object(data, source, MAX_OBJECT_BYTES)
    except NotADicomObject as exc:
        raise IngestError(f"{exc}; not ingested") from None


def image_item(ds: pydicom.Dataset, source: str) -> dict[str, Any]:
    """The metadata item of an image (strings and numbers only; no patient names or free text)."""
    item: dict[str, Any] = {"pk": f"image#{ds.SOPInstanceUID}", "kind": "image",
                            "sopInstanceUID": str(ds.SOPInstanceUID), "source": source}
    for key, keyword in _IMAGE_FIELDS.items():
        value = ds.get(keyword)
        if value not in (None, ""):
            item[key] = str(value)
    if "Rows" in ds and "Columns" in ds:
        item["rows"], item["columns"] = int(ds.Rows), int(ds.Columns)
    return item


def image(data: bytes, source: str) -> tuple[dict[str, Any], bytes]:
    """(metadata item, PNG thumbnail) of a DICOM image object."""
    from dicomflow.dicom.thumbnail import thumbnail_png

    ds = read_dicom(data, source)
    try:
        png = thumbnail_png(ds)
    except NotAnImageError as exc:
        raise IngestError(f"{source}: {exc}") from None
    return image_item(ds, source), png


def report(data: bytes, source: str, engine: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report item, ``{StudyInstanceUID, AccessionNumber, text, analysis}``) of a report file."""
    try:
        study, accession, text, _ = parse_report_file(data, source)
    except ReportError as exc:
        raise IngestError(str(exc)) from None
    try:
        text = validate_report(text)
    except ReportError as exc:
        raise IngestError(f"{source}: {exc}") from None
    answer = engine.infer_icd10cm(text)
    codes: dict[str, set[str]] = {POSITIVE: set(), NEGATIVE: set(), UNCERTAIN: set()}
    for entity in answer.get("Entities") or []:
        concepts, status = entity.get("ICD10CMConcepts") or [], mention_status(entity)
        if concepts and status:
            codes[status].add(str(concepts[0].get("Code")))
    item = {"pk": f"report#{study}", "kind": "report", "studyInstanceUID": study, "source": source,
            "engine": str(answer.get("ModelVersion") or ""), "mentions": len(answer.get("Entities") or []),
            **{f"{status}Codes": sorted(c) for status, c in codes.items() if c}}
    if accession:
        item["accessionNumber"] = accession
    return item, {"StudyInstanceUID": study, "AccessionNumber": accession, "text": text, "analysis": answer}


def embed(endpoint: str, data: bytes, source: str, item: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The embedding record of an image through ``endpoint`` (async endpoints read ``source`` itself)."""
    from dicomflow.inference import endpoint as ep

    try:
        response = ep.analyse_image(endpoint, data, input_location=source, timeout_s=timeout_s)
        return embedding_record(response, accession=item.get("accessionNumber"))
    except (ep.EndpointError, ImageIndexError) as exc:
        raise IngestError(f"{source}: not embedded by {endpoint}: {exc}") from None


def ingest_object(bucket: str, key: str, settings: Any, engine: Any, *,
                  embed_timeout_s: float = 240) -> dict[str, Any]:
    """Ingest one S3 object (what the Lambda does per record); the item written. ``settings``
    (:func:`dicomflow.config.runtime`) names the table, the output prefix and, optionally, the embedding
    endpoint; an image the endpoint cannot embed keeps its item (with ``embeddingError``) and raises.
    Embedding records go to S3 only (the index, embedded or OpenSearch, loads them with
    ``dicomflow search index --from``): the Lambda stays free of the index libraries."""
    source = aws.s3_uri(bucket, key)
    data = aws.read_bytes(source)
    if data is None:
        raise IngestError(f"{source}: the object is gone (deleted before it was ingested)")
    out = settings.search_output_uri.rstrip("/") + "/"
    if key.endswith(REPORT_SUFFIX):
        item, analysis = report(data, source, engine)
        aws.write(f"{out}reports/{item['studyInstanceUID']}.json", json.dumps(analysis).encode(), "application/json")
    else:
        item, png = image(data, source)
        item["thumbnail"] = out + thumbnail_key(png)
        aws.write(item["thumbnail"], png, "image/png")
        if settings.search_endpoint:
            try:
                record = {**embed(settings.search_endpoint, data, source, item, embed_timeout_s),
                          "thumbnail": item["thumbnail"]}
            except IngestError as exc:  # the metadata and thumbnail are kept; the object is still dead-lettered
                item["embeddingError"] = str(exc)[:1000]
                _put(settings, item)
                raise
            item["embedding"] = f"{out}{EMBEDDINGS_PREFIX}{item['sopInstanceUID']}.json"
            item["model"] = f"{record['model']['name']} {record['model']['version']}"
            if record["labels"]:
                item["labels"] = record["labels"]
            aws.write(item["embedding"], json.dumps(record).encode(), "application/json")
    _put(settings, item)
    return item


def _put(settings: Any, item: dict[str, Any]) -> None:
    aws.client("dynamodb").put_item(TableName=settings.search_table, Item=aws.dynamodb_item(item))

