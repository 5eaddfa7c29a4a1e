"""Serving responses with an ``embedding`` output (and the ingestion Lambda's embedding records) -> rows of
the image index; the configured index; the same patient's studies for a query."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomflow import aws, safejson
from dicomflow.config import runtime
from dicomflow.inference import endpoint as ep
from dicomflow.paths import private_dir
from dicomflow.search.embeddings import ImageIndexError, embedding_record
from dicomflow.search.vectors import ImageVector, VectorIndex


def image_vector(response: Mapping[str, Any], *, accession: str | None = None) -> ImageVector:
    """The index row of one serving response that asked for ``embedding``; ImageIndexError names what is missing."""
    return row_of(embedding_record(response, accession=accession))


def row_of(record: Mapping[str, Any]) -> ImageVector:
    """The index row of an embedding record (:mod:`dicomflow.search.embeddings`)."""
    try:
        return ImageVector(sop_uid=str(record["sopInstanceUID"]), study_uid=str(record["studyInstanceUID"]),
                           vector=record["vector"], series_uid=record.get("seriesInstanceUID"),
                           accession=record.get("accessionNumber"), modality=record.get("modality"),
                           view_position=record.get("viewPosition"), body_part=record.get("bodyPart"),
                           labels=tuple(str(x) for x in record.get("labels") or ()),
                           thumbnail=record.get("thumbnail"))
    except (KeyError, TypeError, AttributeError):
        raise ImageIndexError("not an embedding record: it needs sopInstanceUID, studyInstanceUID and "
                              "vector") from None


def same_patient_studies(client: Any, study_uid: str) -> list[str]:
    """Every study the PACS holds of the patient of ``study_uid`` (by PatientID and IssuerOfPatientID), asked
    at query time so that the index never stores a patient identifier; ImageIndexError if it cannot tell.
    A PACS that returns no IssuerOfPatientID makes every study of the PatientID count: more are left out,
    never a study of the same patient kept."""
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom import json as dj

    found = dicomweb.search_studies(client, StudyInstanceUID=study_uid, fields=["PatientID", "IssuerOfPatientID"])
    patient = dj.text(found[0], "PatientID", "") if found else ""
    if not patient:
        raise ImageIndexError(f"the PACS has no PatientID for study {study_uid}: cannot tell which studies are "
                              "the same patient's (leave out --exclude-same-patient)")
    issuer = dj.text(found[0], "IssuerOfPatientID", "")
    studies = dicomweb.search_studies(client, PatientID=patient, fields=["IssuerOfPatientID"], get_remaining=True)
    same = {dj.text(s, "StudyInstanceUID", "") for s in studies if dj.text(s, "IssuerOfPatientID", "") == issuer}
    return sorted((same - {""}) | {study_uid})


@dataclass
class IndexRun:
    """What :func:`index_studies` did."""

    index: str
    model: dict[str, str]
    studies: int
    indexed: int
    images: int
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "model": self.model, "studies": self.studies, "indexed": self.indexed,
                "images": self.images, "failed": self.failed}


def open_image_index(where: Path, *, model: Mapping[str, str] | None = None, dimensions: int | None = None) -> Any:
    """The configured image index: OpenSearch when ``DICOMFLOW_SEARCH_OPENSEARCH_URL`` is set, else the
    embedded index in ``where``; with ``model`` and ``dimensions`` it is created when new."""
    settings = runtime()
    if settings.search_opensearch_url:
        from dicomflow.search.opensearch import OpenSearchVectorIndex, connect

        return OpenSearchVectorIndex.open(connect(settings.search_opensearch_url), settings.search_opensearch_index,
                                          model=model, dimensions=dimensions)
    return VectorIndex.open(where, model=model, dimensions=dimensions)


def index_studies(endpoint: str, bodies: Mapping[str, dict], where: Path, *, rebuild: bool = False,
                  timeout_s: float = 900, progress: Callable[[], None] | None = None) -> IndexRun:
    """Each study JSON (asking for ``embedding``) through ``endpoint``, its vector into the index at ``where``.

    A study that fails is listed, never fatal; the first answer fixes the model (an index of another model
    is refused unless ``rebuild``, which builds a new index beside it and replaces the old one only when
    every study has been tried). ``progress()`` is called once per study answered.
    """
    def records() -> Iterator[tuple[str, Mapping[str, Any] | Exception]]:
        for study, result in ep.analyse_all(endpoint, bodies, timeout_s=timeout_s):
            try:
                yield study, (embedding_record(result) if not isinstance(result, Exception) else result)
            except ImageIndexError as exc:
                yield study, exc

    return fill_index(records(), len(bodies), where, rebuild=rebuild, progress=progress)


def read_records(uris: Iterable[str]) -> Iterator[tuple[str, Mapping[str, Any] | Exception]]:
    """``(uri, record or error)`` for objects in S3 that hold an embedding record (what the ingestion Lambda
    writes) or a whole serving response that asked for ``embedding`` (an async endpoint's ``.out``, e.g. of a
    routing rule with ``outputs: [embedding]``)."""
    for uri in uris:
        try:
            data = aws.read_bytes(uri)
            if data is None:
                raise ImageIndexError("the object is gone")
            doc = safejson.loads(data, uri, 8)
            if isinstance(doc, dict) and isinstance(doc.get("embedding"), dict):
                doc = embedding_record(doc)
            if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
                raise ImageIndexError("neither an embedding record nor a response with an embedding")
            yield uri, doc
        except (ImageIndexError, ValueError, UnicodeDecodeError) as exc:
            yield uri, ImageIndexError(f"{uri}: {exc}")


def fill_index(records: Iterable[tuple[str, Mapping[str, Any] | Exception]], total: int, where: Path, *,
               rebuild: bool = False, progress: Callable[[], None] | None = None) -> IndexRun:
    """Embedding records into the index at ``where`` (see :func:`index_studies`); an error is listed under its
    key, never fatal."""
    if rebuild and runtime().search_opensearch_url:
        raise ImageIndexError("--rebuild is for the embedded index; for OpenSearch set "
                              "DICOMFLOW_SEARCH_OPENSEARCH_INDEX to a new index name and index into it")
    target = Path(where)
    building = Path(tempfile.mkdtemp(prefix=".rebuild-", dir=private_dir(target.parent))) if rebuild else target
    failed: list[dict[str, str]] = []
    added = 0
    ix: Any = None
    try:
        for key, record in records:
            if progress:
                progress()
            try:
                if isinstance(record, Exception):
                    raise record
                row = row_of(record)
                if ix is None:
                    ix = open_image_index(building, model=record["model"], dimensions=len(row.vector))
                elif dict(record["model"]) != ix.model:
                    raise ImageIndexError(f"made by {record['model']}, the index holds {ix.model}")
                added += ix.add([row])
            except (ep.EndpointError, ImageIndexError) as exc:
                failed.append({"study": key, "error": str(exc)})
        if ix is None:
            first = failed[0]["error"] if failed else "nothing was given"
            raise ImageIndexError(f"nothing could be indexed; first failure: {first}")
        run = IndexRun(str(target), ix.model, total, added, len(ix), failed)
        ix.close()
        ix = None
        if rebuild:
            shutil.rmtree(target, ignore_errors=True)
            building.rename(target)
        return run
    finally:
        if ix is not None:
            ix.close()
        if rebuild and building.exists():
            shutil.rmtree(building, ignore_errors=True)
