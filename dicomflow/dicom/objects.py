"""One DICOM object from bytes: a Part 10 file or a bare dataset, refused with a reason if it is neither."""

from __future__ import annotations

import io

import pydicom
from pydicom.errors import InvalidDicomError

from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError

#: The largest object read whole into memory (a large CR/DX image is ~30 MB).
MAX_OBJECT_BYTES = 64 * 2**20


class NotADicomObject(DicomflowError):
    """The bytes are not a DICOM object with its SOP Instance and Study Instance UIDs; the message says why."""


def read_object(data: bytes, source: str, max_bytes: int = MAX_OBJECT_BYTES) -> pydicom.Dataset:
    """The dataset in ``data`` (``source`` names it in errors); it carries valid SOP and Study Instance UIDs."""
    if len(data) > max_bytes:
        raise NotADicomObject(f"{source}: {len(data)} bytes, more than the {max_bytes} accepted")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=len(data) >= 132 and data[128:132] != b"DICM")
        sop = str(ds.get("SOPInstanceUID", ""))
        study = str(ds.get("StudyInstanceUID", ""))
    except (InvalidDicomError, ValueError, TypeError, AttributeError, EOFError, OSError) as exc:
        raise NotADicomObject(f"{source}: not a DICOM object ({str(exc)[:120]})") from None
    if not is_uid(sop) or not is_uid(study):
        raise NotADicomObject(f"{source}: not a DICOM object, or one without its SOPInstanceUID and StudyInstanceUID")
    return ds
