"""DICOM element values as a dataset holds them, read without pydicom's conversion.

pydicom converts a raw element (IS, DS, UI text, ...) on first access, ~10-20 µs each. Across the
hundreds of instances of a series, sorting keys and equality tests are cheaper on the stored value.
"""

from __future__ import annotations

from pydicom import Dataset

#: Manufacturer (0008,0070) of every object dicomflow writes (SR, SEG): how its own results are recognised.
MANUFACTURER = "dicomflow"

#: Modalities of objects that carry no image to look at or analyse (reports, segmentations, key
#: object selections, presentation states, RT plans, waveforms, ...).
NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG",
                                  "DOC", "AU", "ECG", "FID", "PLAN", "RWV"})


def stored_value(ds: Dataset, tag: int) -> object:
    """The element's value as ``ds`` holds it (raw bytes until something reads it), None if absent.

    Equal stored values mean equal values; a raw and an already converted one compare unequal.
    """
    elem = ds.get_item(tag)
    return None if elem is None else elem.value


def stored_text(ds: Dataset, tag: int) -> str:
    """A short text value (IS, UI, CS, ...) as ``str``, padding stripped, without converting the element."""
    value = stored_value(ds, tag)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return "" if value is None else str(value)
