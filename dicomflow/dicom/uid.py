"""DICOM UIDs (PS3.5 9.1): digits and dots, at most 64 characters. The one check every entry point uses."""

from __future__ import annotations

import re
from typing import Any

MAX_LENGTH = 64
_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: Any) -> bool:
    """True for a string that is a DICOM UID (surrounding spaces are not part of it)."""
    return isinstance(value, str) and len(value) <= MAX_LENGTH and _PATTERN.match(value) is not None
