"""DICOM UIDs (PS3.5 9.1): digits and dots, at most 64 characters. The one check every entry point uses."""

from __future__ import annotations

import re
import uuid
from typing import Any

MAX_LENGTH = 64
_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: Any) -> bool:
    """True for a string that is a DICOM UID (surrounding spaces are not part of it)."""
    return isinstance(value, str) and len(value) <= MAX_LENGTH and _PATTERN.match(value) is not None


def derived_uid(namespace: str, *parts: object) -> str:
    """A deterministic ``2.25`` UID from ``namespace`` and ``parts``: the same parts give the same UID.

    UUID v5 of the joined parts, as PS3.5 B.2 allows for ``2.25`` UIDs. (``pydicom.uid.generate_uid``
    with ``prefix=None`` ignores ``entropy_srcs`` and is random.)
    """
    name = "\x1f".join([namespace, *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def stable_study_uid(event: dict[str, Any], reader: str) -> str:
    """The StudyInstanceUID of a "study stable" event (``{"studyInstanceUID"}``), which ``reader`` (e.g. "the
    router") reads from its configured PACS only; ValueError says what is wrong with the event."""
    study = event.get("studyInstanceUID")
    if not isinstance(study, str) or not is_uid(study):
        raise ValueError(f"studyInstanceUID {study!r} is not a DICOM UID")
    if event.get("pacs") not in (None, "default"):
        raise ValueError(f"{reader} reads only its configured PACS; leave pacs out of the event")
    return study
