"""DICOM JSON (PS3.18 F.2) attributes by keyword: the one reader for QIDO-RS results and WADO-RS metadata.

An attribute is ``{"<8 hex digits>": {"vr": .., "Value": [..]}}``; :func:`values` and :func:`value`
read it by DICOM keyword, :func:`tag` gives the hex key (for QIDO ``includefield``), :func:`element`
builds one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword


@functools.cache
def tag(keyword: str) -> str:
    """``"Modality"`` -> ``"00080060"``; ValueError for a word that is not a DICOM keyword."""
    number = tag_for_keyword(keyword)
    if number is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return f"{number:08X}"


def values(item: Mapping[str, Any], keyword: str) -> list[Any]:
    """Every value of ``keyword`` in a DICOM JSON object ([] when absent or empty)."""
    element = item.get(tag(keyword)) if isinstance(item, Mapping) else None
    found = element.get("Value") if isinstance(element, Mapping) else None
    return list(found) if isinstance(found, list) else []


def value(item: Mapping[str, Any], keyword: str, default: Any = None) -> Any:
    """The first value of ``keyword``, or ``default``; a person name comes back as its ``Alphabetic`` string."""
    found = values(item, keyword)
    if not found:
        return default
    first = found[0]
    if isinstance(first, Mapping) and "Alphabetic" in first:
        return first["Alphabetic"]
    return first


def text(item: Mapping[str, Any], keyword: str, default: str = "") -> str:
    """The first value as ``str`` (``default`` when absent)."""
    found = value(item, keyword)
    return default if found is None else str(found)


def element(keyword: str, items: list[Any]) -> dict[str, dict[str, list[Any]]]:
    """``{tag: {"Value": items}}``: one attribute, to build or merge into a DICOM JSON object."""
    return {tag(keyword): {"Value": list(items)}}
