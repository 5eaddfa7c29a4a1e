"""Serving responses with an ``embedding`` output -> rows of the image index.

A row's labels are the model's own positive findings in that response (never a seeder's truth), so a
search can be narrowed to images the model called, e.g., "Edema".
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomflow.config import runtime
from dicomflow.inference import endpoint as ep
from dicomflow.paths import private_dir
from dicomflow.search.vectors import ImageIndexError, ImageVector, VectorIndex


def image_vector(response: Mapping[str, Any], *, accession: str | None = None) -> ImageVector:
    """The index row of one serving response that asked for ``embedding``; ImageIndexError names what is missing."""
    emb = response.get("embedding")
    if not isinstance(emb, Mapping) or not isinstance(emb.get("vector"), list):
        raise ImageIndexError("the response has no embedding; ask the endpoint for outputs 'embedding' "
                              "(a classification model)")
    sop = emb.get("sopInstanceUID")
    if not sop:
        raise ImageIndexError("the embedding names no image (a 3D classifier embeds a series; index 2D images)")
    findings = response.get("findings") or {}
    series = response.get("series") or {}
    return ImageVector(sop_uid=str(sop), study_uid=str(response.get("studyInstanceUID")), vector=emb["vector"],
                       series_uid=emb.get("seriesInstanceUID") or series.get("seriesInstanceUID"),
                       accession=accession, modality=series.get("modality"),
                       view_position=emb.get("viewPosition"), body_part=emb.get("bodyPart"),
                       labels=tuple(str(x) for x in findings.get("positive") or ()), thumbnail=emb.get("thumbnail"))


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


def model_of(response: Mapping[str, Any]) -> dict[str, str]:
    """The ``{"name", "version"}`` an embedding came from."""
    model = (response.get("embedding") or {}).get("model") or {}
    if not model.get("name") or not model.get("version"):
        raise ImageIndexError("the embedding does not say which model made it (name and version)")
    return {"name": str(model["name"]), "version": str(model["version"])}


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
    if rebuild and runtime().search_opensearch_url:
        raise ImageIndexError("--rebuild is for the embedded index; for OpenSearch set "
                              "DICOMFLOW_SEARCH_OPENSEARCH_INDEX to a new index name and index into it")
    target = Path(where)
    building = Path(tempfile.mkdtemp(prefix=".rebuild-", dir=private_dir(target.parent))) if rebuild else target
    failed: list[dict[str, str]] = []
    added = 0
    ix: Any = None
    try:
        for study, result in ep.analyse_all(endpoint, bodies, timeout_s=timeout_s):
            if progress:
                progress()
            try:
                if isinstance(result, ep.EndpointError):
                    raise result
                row = image_vector(result)
                if ix is None:
                    ix = open_image_index(building, model=model_of(result), dimensions=len(row.vector))
                added += ix.add([row])
            except (ep.EndpointError, ImageIndexError) as exc:
                failed.append({"study": study, "error": str(exc)})
        if ix is None:
            first = failed[0]["error"] if failed else "no study was given"
            raise ImageIndexError(f"no study could be embedded; first failure: {first}")
        run = IndexRun(str(target), ix.model, len(bodies), added, len(ix), failed)
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
