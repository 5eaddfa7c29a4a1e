"""The data object a Ground Truth task is about: a manifest ``source`` (an Orthanc ID or a UID object) resolved
to study, series and (for one image) SOP Instance UIDs.

Used by the pre-label Lambda (what to show) and the consolidation Lambda (what the answer is about).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dicomflow import safejson
from dicomflow.dicom.errors import PacsError
from dicomflow.dicom.orthanc import ResolvedObject, is_orthanc_id
from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError


class LabelingTaskError(DicomflowError):
    """This data object cannot become a task. ``reason``: ``invalid``, ``not-found`` or ``unavailable``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ObjectRef:
    """The DICOM object a task is about; ``sop_uid`` is None for a whole series."""

    study_uid: str
    series_uid: str
    sop_uid: str | None = None
    object_id: str | None = None  # the Orthanc ID it came from, if any

    @property
    def level(self) -> str:
        return "series" if self.sop_uid is None else "instance"


def event_source(event: Mapping[str, Any]) -> Any:
    """``dataObject.source`` (or ``source-ref``) of a GT pre-annotation event."""
    data = event.get("dataObject") if isinstance(event, Mapping) else None
    if not isinstance(data, Mapping):
        raise LabelingTaskError("invalid", "event has no dataObject; expected Ground Truth's pre-annotation event")
    for key in ("source", "source-ref"):
        if data.get(key) not in (None, ""):
            return data[key]
    raise LabelingTaskError("invalid", "dataObject has neither source nor source-ref; each manifest line needs "
                                       "{\"source\": \"<Orthanc ID or UID JSON>\"}")


def require_uid(value: Any, name: str) -> str:
    """``value`` stripped if it is a DICOM UID, else :class:`LabelingTaskError` ("invalid")."""
    if not isinstance(value, str) or not is_uid(value.strip()):
        raise LabelingTaskError("invalid", f"{name} {value!r} is not a DICOM UID")
    return value.strip()


def parse_source(source: Any) -> ObjectRef | str:
    """A UID object becomes an :class:`ObjectRef`; an Orthanc ID is returned as is (resolve it next)."""
    if isinstance(source, str):
        text = source.strip()
        if is_orthanc_id(text):
            return text
        if text.startswith("{"):
            try:
                source = safejson.loads(text, "the source")
            except safejson.JsonDepthError as exc:
                raise LabelingTaskError("invalid", str(exc)) from None
            except ValueError:
                raise LabelingTaskError("invalid", "source looks like JSON but does not parse") from None
        elif text.startswith("s3://"):
            raise LabelingTaskError("invalid", "source is an S3 URI; give an Orthanc instance/series ID or "
                                               "{\"StudyInstanceUID\",\"SeriesInstanceUID\",\"SOPInstanceUID\"}")
        else:
            raise LabelingTaskError("invalid", f"source {text[:80]!r} is neither an Orthanc ID nor a UID object")
    if not isinstance(source, Mapping):
        raise LabelingTaskError("invalid", "source must be an Orthanc ID string or a UID object")
    try:
        safejson.check_depth(source, "the source")
    except safejson.JsonDepthError as exc:
        raise LabelingTaskError("invalid", str(exc)) from None
    if not source.get("SeriesInstanceUID") or not source.get("StudyInstanceUID"):
        raise LabelingTaskError("invalid", "a UID source needs StudyInstanceUID and SeriesInstanceUID "
                                           "(plus SOPInstanceUID for one instance)")
    sop = source.get("SOPInstanceUID")
    return ObjectRef(require_uid(source["StudyInstanceUID"], "StudyInstanceUID"),
                     require_uid(source["SeriesInstanceUID"], "SeriesInstanceUID"),
                     require_uid(sop, "SOPInstanceUID") if sop else None)


def resolve(source: Any, resolver: Callable[[str], ResolvedObject] | None) -> ObjectRef:
    """The object a source names; Orthanc IDs go through ``resolver`` (``OrthancRest.resolve``)."""
    parsed = parse_source(source)
    if isinstance(parsed, ObjectRef):
        return parsed
    if resolver is None:
        raise LabelingTaskError("invalid", "source is an Orthanc ID but no Orthanc REST access is configured")
    try:
        found = resolver(parsed)
    except PacsError as exc:
        raise LabelingTaskError("not-found" if exc.not_found else "unavailable", str(exc)) from None
    return ObjectRef(found.study_uid, found.series_uid, found.sop_uid, object_id=parsed)
