"""The DICOMweb requests the viewer may make: QIDO-RS searches and WADO-RS retrievals, nothing that writes or
deletes (STOW-RS, rejection, Orthanc's ``servers`` client) and nothing outside the standard resource paths."""

from __future__ import annotations

import re

from dicomflow.dicom.uid import is_uid

READ_METHODS = ("GET", "HEAD")
#: What may follow a study, series or instance: its metadata, a rendered image, a thumbnail.
_RENDERINGS = {"metadata", "rendered", "thumbnail"}
_FRAME_LIST = re.compile(r"^[1-9][0-9]{0,5}(,[1-9][0-9]{0,5}){0,99}$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_ITEM = re.compile(r"^[0-9]{1,6}$")


class NotReadOnly(Exception):
    """A request the read-only gateway refuses: ``status`` 405 (a method that writes) or 403 (a path)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _bulk(parts: list[str]) -> bool:
    """``bulk/TAG`` or ``bulk/TAG/ITEM/TAG...`` (a bulk data URI into a sequence)."""
    return (len(parts) % 2 == 1 and all(_TAG.match(p) for p in parts[::2])
            and all(_ITEM.match(p) for p in parts[1::2]))


def _instance_tail(tail: list[str]) -> bool:
    if not tail or (len(tail) == 1 and tail[0] in _RENDERINGS):
        return True
    if tail[0] == "frames":
        return (len(tail) == 2 and bool(_FRAME_LIST.match(tail[1]))) or (
            len(tail) == 3 and bool(_FRAME_LIST.match(tail[1])) and tail[2] in ("rendered", "thumbnail"))
    return tail[0] == "bulk" and _bulk(tail[1:])


def _allowed(parts: list[str]) -> bool:
    """The path below the DICOMweb root, split at ``/``, against the resource grammar of PS3.18."""
    if parts in (["studies"], ["series"], ["instances"]):
        return True
    if len(parts) < 2 or parts[0] != "studies" or not is_uid(parts[1]):
        return False
    rest = parts[2:]
    if not rest or rest in (["series"], ["instances"]) or (len(rest) == 1 and rest[0] in _RENDERINGS):
        return True
    if rest[0] == "instances":  # studies/{s}/instances/{i} is not a PS3.18 resource; series first
        return False
    if rest[0] != "series" or len(rest) < 2 or not is_uid(rest[1]):
        return False
    rest = rest[2:]
    if not rest or rest == ["instances"] or (len(rest) == 1 and rest[0] in _RENDERINGS):
        return True
    if rest[0] != "instances" or len(rest) < 2 or not is_uid(rest[1]):
        return False
    return _instance_tail(rest[2:])


def check(method: str, path: str) -> None:
    """Raise :class:`NotReadOnly` unless ``method`` on ``path`` (below the DICOMweb root) only reads."""
    if method.upper() not in READ_METHODS:
        raise NotReadOnly(405, f"{method} is not allowed: the viewer's DICOMweb is read-only (GET, HEAD)")
    parts = path.strip("/").split("/") if path.strip("/") else []
    if not _allowed(parts):
        raise NotReadOnly(403, "not a QIDO-RS or WADO-RS resource this viewer may read: studies, series, "
                               "instances, their metadata, frames, rendered images, thumbnails and bulk data")
