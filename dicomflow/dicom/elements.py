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

#: SOP classes no model analyses and search does not index: results (SR of every kind, SEG, encapsulated
#: PDF, key objects).
RESULT_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35", "1.2.840.10008.5.1.4.1.1.88.59",
})


def is_result(sop_class: str, manufacturer: str) -> bool:
    """An object a system wrote as a result (an SR, SEG, PDF or key-object SOP class) or dicomflow wrote."""
    return sop_class in RESULT_SOP_CLASSES or manufacturer == MANUFACTURER


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
