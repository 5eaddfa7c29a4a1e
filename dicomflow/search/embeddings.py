"""An ``embedding`` serving response -> the record the image index stores (Lambda-safe: plain dicts).

A record is ``{"model": {"name", "version"}, "sopInstanceUID", "studyInstanceUID", "seriesInstanceUID",
"accessionNumber", "modality", "viewPosition", "bodyPart", "labels", "thumbnail", "vector"}``: what the
ingestion Lambda writes to ``<search output>embeddings/<SOPInstanceUID>.json`` and what
``dicomflow search index --from`` loads. Its labels are the model's own positive findings in that response
(never a seeder's truth), so a search can be narrowed to images the model called, e.g., "Edema".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dicomflow.errors import DicomflowError

EMBEDDINGS_PREFIX = "embeddings/"


class ImageIndexError(DicomflowError):
    """An index that cannot be opened or written, a vector that does not fit it, or a bad query."""


def model_of(response: Mapping[str, Any]) -> dict[str, str]:
    """The ``{"name", "version"}`` an embedding came from."""
    model = (response.get("embedding") or {}).get("model") or {}
    if not isinstance(model, Mapping) or not model.get("name") or not model.get("version"):
        raise ImageIndexError("the embedding does not say which model made it (name and version)")
    return {"name": str(model["name"]), "version": str(model["version"])}


def embedding_record(response: Mapping[str, Any], *, accession: str | None = None) -> dict[str, Any]:
    """The record of one serving response that asked for ``embedding``; ImageIndexError names what is missing."""
    emb = response.get("embedding")
    if not isinstance(emb, Mapping) or not isinstance(emb.get("vector"), list):
        raise ImageIndexError("the response has no embedding; ask the endpoint for outputs 'embedding' "
                              "(a classification model)")
    sop = emb.get("sopInstanceUID")
    if not sop:
        raise ImageIndexError("the embedding names no image (a 3D classifier embeds a series; index 2D images)")
    findings = response.get("findings") or {}
    series = response.get("series") or {}
    return {"model": model_of(response), "sopInstanceUID": str(sop),
            "studyInstanceUID": str(response.get("studyInstanceUID")),
            "seriesInstanceUID": emb.get("seriesInstanceUID") or series.get("seriesInstanceUID"),
            "accessionNumber": accession, "modality": series.get("modality"), "viewPosition": emb.get("viewPosition"),
            "bodyPart": emb.get("bodyPart"), "labels": [str(x) for x in findings.get("positive") or ()],
            "thumbnail": emb.get("thumbnail"), "vector": emb["vector"]}
