"""Serving responses with an ``embedding`` output -> rows of the image index.

A row's labels are the model's own positive findings in that response (never a seeder's truth), so a
search can be narrowed to images the model called, e.g., "Edema".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dicomflow.search.vectors import ImageIndexError, ImageVector


def image_vector(response: Mapping[str, Any], *, accession: str | None = None,
                 thumbnail: str | None = None) -> ImageVector:
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
                       labels=tuple(str(x) for x in findings.get("positive") or ()), thumbnail=thumbnail)


def model_of(response: Mapping[str, Any]) -> dict[str, str]:
    """The ``{"name", "version"}`` an embedding came from."""
    model = (response.get("embedding") or {}).get("model") or {}
    if not model.get("name") or not model.get("version"):
        raise ImageIndexError("the embedding does not say which model made it (name and version)")
    return {"name": str(model["name"]), "version": str(model["version"])}
