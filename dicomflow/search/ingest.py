"""What the search ingestion Lambda makes of one S3 object or of a study in the PACS (Lambda-safe: no torch).

* A DICOM object -> its metadata item (UIDs, accession, modality, body part, view position, study date,
  size; no patient name, birth date or free text) and a PNG thumbnail (:mod:`dicomflow.dicom.thumbnail`).
* with an embedding endpoint, a DICOM image also -> its embedding record (:mod:`dicomflow.search.embeddings`),
  the endpoint reading the object where it lies (async) or from the request body (real-time), written to S3
  and into the configured image index (:func:`index_record`);
* A report file (``{"StudyInstanceUID", "AccessionNumber", "StudyDate", "text"}``) -> its item (the ICD-10-CM codes it
  asserts, denies and is unsure of, by the engine's InferICD10CM-shaped answer) and that answer, kept so the
  report index can be filled without reading the report again.

A study that turned stable in the configured PACS is read image by image over DICOMweb and each image
ingested as above (:func:`ingest_study`).

Items are keyed ``image#<SOPInstanceUID>`` / ``report#<StudyInstanceUID>``: ingesting an object again writes
the same item. Every refusal is an :class:`IngestError` naming the object and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pydicom

from dicomflow import aws
from dicomflow.dicom.elements import NON_IMAGE_MODALITIES, is_result
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


def image(ds: pydicom.Dataset, source: str) -> tuple[dict[str, Any], bytes]:
    """(metadata item, PNG thumbnail) of a DICOM image."""
    from dicomflow.dicom.thumbnail import thumbnail_png

    try:
        png = thumbnail_png(ds)
    except NotAnImageError as exc:
        raise IngestError(f"{source}: {exc}") from None
    return image_item(ds, source), png


def report(data: bytes, source: str, engine: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report item, ``{StudyInstanceUID, AccessionNumber, text, analysis}``) of a report file."""
    try:
        study, accession, text, _, when = parse_report_file(data, source)
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
    if when:
        item["studyDate"] = when
    return item, {"StudyInstanceUID": study, "AccessionNumber": accession, "StudyDate": when, "text": text,
                  "analysis": answer}


def embed(endpoint: str, data: bytes, input_location: str | None, item: dict[str, Any], timeout_s: float
          ) -> dict[str, Any]:
    """The embedding record of an image through ``endpoint`` (an async endpoint reads ``input_location``, an
    s3:// object, when given; else the bytes are sent)."""
    from dicomflow.inference import endpoint as ep

    try:
        response = ep.analyse_image(endpoint, data, input_location=input_location, timeout_s=timeout_s)
        return embedding_record(response, accession=item.get("accessionNumber"))
    except (ep.EndpointError, ImageIndexError) as exc:
        raise IngestError(f"{item['source']}: not embedded by {endpoint}: {exc}") from None


def ingest_object(bucket: str, key: str, settings: Any, engine: Any, *,
                  embed_timeout_s: float = 240) -> dict[str, Any]:
    """Ingest one S3 object (what the Lambda does per record); the item written. ``settings``
    (:func:`dicomflow.config.runtime`) names the table, the output prefix and, optionally, the embedding
    endpoint; an image the endpoint cannot embed keeps its item (with ``embeddingError``) and raises.
    Embedding records go to S3 and into the configured image index (:func:`index_record`)."""
    source = aws.s3_uri(bucket, key)
    data = aws.read_bytes(source)
    if data is None:
        raise IngestError(f"{source}: the object is gone (deleted before it was ingested)")
    if key.endswith(REPORT_SUFFIX):
        item, analysis = report(data, source, engine)
        aws.write(f"{_output(settings)}reports/{item['studyInstanceUID']}.json", json.dumps(analysis).encode(),
                  "application/json")
        _put(settings, item)
        return item
    return ingest_image(read_dicom(data, source), data, source, settings, input_location=source,
                        embed_timeout_s=embed_timeout_s)


def ingest_image(ds: pydicom.Dataset, data: bytes, source: str, settings: Any, *, input_location: str | None = None,
                 embed_timeout_s: float = 240) -> dict[str, Any]:
    """One DICOM image (``ds``, its file ``data``) -> its item, thumbnail and, for a modality of
    ``settings.search_embed_modalities`` when an endpoint is set, its embedding record; the item written.
    ``input_location`` is where an async endpoint can read the object (else its bytes are sent)."""
    item, png = image(ds, source)
    out = _output(settings)
    item["thumbnail"] = out + thumbnail_key(png)
    aws.write(item["thumbnail"], png, "image/png")
    embeddable = {m.upper() for m in settings.search_embed_modalities}
    if settings.search_endpoint and item.get("modality", "").upper() in embeddable:
        try:
            record = {**embed(settings.search_endpoint, data, input_location, item, embed_timeout_s),
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
        try:
            index_record(settings, record)
        except ImageIndexError as exc:  # the record is kept: `dicomflow search index --from` can load it later
            item["indexError"] = str(exc)[:1000]
            _put(settings, item)
            raise IngestError(f"{source}: embedded, but not indexed: {exc}") from None
    _put(settings, item)
    return item


def index_record(settings: Any, record: dict[str, Any]) -> bool:
    """An embedding record into the configured image index: the OpenSearch domain of
    ``DICOMFLOW_SEARCH_OPENSEARCH_URL``, else the embedded index in ``settings.search_index_dir``; False
    (nothing done) when neither is set. An index of another model refuses it, and an index that cannot be
    reached or written fails (both ImageIndexError: one object's failure, never the batch's)."""
    if not (settings.search_opensearch_url or settings.search_index_dir):
        return False
    import sqlite3
    from pathlib import Path

    from dicomflow.search.images import open_image_index, row_of

    unreachable: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    if settings.search_opensearch_url:
        from opensearchpy.exceptions import OpenSearchException

        unreachable += (OpenSearchException,)
    row = row_of(record)
    try:
        ix = open_image_index(Path(settings.search_index_dir or "."), model=record["model"],
                              dimensions=len(row.vector))
        try:
            ix.add([row])
        finally:
            ix.close()
    except unreachable as exc:
        raise ImageIndexError(f"the image index could not be written: {str(exc)[:300]}") from None
    return True


@dataclass
class StudyIngestion:
    """What :func:`ingest_study` did: the items written, the images that failed (SOP UID and reason), and the
    series left out (result objects, no image)."""

    study: str
    items: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"studyInstanceUID": self.study, "ingested": [i["pk"] for i in self.items], "failed": self.failed,
                "skipped": self.skipped}


def ingest_study(client: Any, study_uid: str, settings: Any, *, embed_timeout_s: float = 240) -> StudyIngestion:
    """Every image of a study in the PACS of ``client`` (the *configured* PACS: the caller connects it) ->
    items, thumbnails and embeddings as :func:`ingest_image` makes them, each item's ``source`` its WADO-RS
    address. Series of results (SR, SEG, PDF, dicomflow's own) and without images are skipped; an image that
    fails is listed and the others go on. A PACS that cannot be read raises :class:`dicomflow.dicom.errors.
    PacsError` (the event is worth retrying)."""
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom import json as dj

    run = StudyIngestion(study_uid)
    for row in dicomweb.search_series(client, study_uid):
        series, modality = dj.text(row, "SeriesInstanceUID"), dj.text(row, "Modality")
        if modality.upper() in NON_IMAGE_MODALITIES:
            run.skipped.append({"series": series, "why": f"no image to index ({modality})"})
            continue
        for inst in dicomweb.search_instances(client, study_uid, series):
            sop = dj.text(inst, "SOPInstanceUID")
            source = dicomweb.instance_url(client, study_uid, series, sop)
            ds = dicomweb.retrieve_instance(client, study_uid, series, sop)
            if is_result(str(ds.get("SOPClassUID", "")), str(ds.get("Manufacturer", ""))):
                run.skipped.append({"series": series, "why": "a result object (SR/SEG/PDF or dicomflow's own)"})
                break
            try:
                run.items.append(ingest_image(ds, dicomweb.dataset_bytes(ds), source, settings,
                                              embed_timeout_s=embed_timeout_s))
            except IngestError as exc:
                run.failed.append({"sopInstanceUID": sop, "reason": str(exc)})
    return run


def _output(settings: Any) -> str:
    return settings.search_output_uri.rstrip("/") + "/"

def _put(settings: Any, item: dict[str, Any]) -> None:
    aws.client("dynamodb").put_item(TableName=settings.search_table, Item=aws.dynamodb_item(item))

