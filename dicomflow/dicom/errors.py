"""The one PACS error: what went wrong talking to a DICOMweb server or Orthanc's REST API, by kind.

Every DICOM access layer raises :class:`PacsError`; callers decide by ``kind`` (never by parsing the
message), and each entry point maps kinds to its own contract once (HTTP statuses in
``inference.errors``, Ground Truth failure reasons in ``groundtruth.pre_label``).
"""

from __future__ import annotations

from dicomflow.errors import DicomflowError

#: ``unreachable``: no connection (refused, DNS, timeout); ``unavailable``: the server answered
#: 502/503/504 or kept failing through retries (starting, overloaded, behind a broken gateway);
#: ``unauthorized``: 401; ``forbidden``: 403; ``not-found``: 404 or no such object; ``refused``: any
#: other error answer; ``protocol``: an answer that is not what the standard says (not multipart, cut off).
KINDS = ("unreachable", "unavailable", "unauthorized", "forbidden", "not-found", "refused", "protocol")


class PacsError(DicomflowError):
    """The PACS refused, could not be reached, or does not hold what was asked for; ``kind`` says which."""

    def __init__(self, message: str, kind: str = "refused", status: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown PACS error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.kind == "not-found"

    @property
    def transient(self) -> bool:
        """Worth retrying: the PACS may be back in a moment (restarting, overloaded)."""
        return self.kind in ("unreachable", "unavailable")


class NotAnImageError(DicomflowError):
    """The DICOM object carries no pixel data (e.g. a Structured Report)."""


class InvalidImageError(NotAnImageError):
    """An image whose header or pixel data cannot be used as it is (missing attribute, zero slope, corrupt pixels)."""
