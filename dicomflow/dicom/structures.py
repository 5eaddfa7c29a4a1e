"""What each label value of a segmentation model means: the structure's name, its SEG segment label and codes.

A training channel's ``classes.json`` names the structures of a segmentation dataset, as strings
(``["anterior", "posterior"]``) or as objects carrying their codes::

    [{"name": "anterior", "label": "Hippocampus anterior",
      "type": {"value": "5366008", "scheme": "SCT", "meaning": "Hippocampus"}}, ...]

Label value ``i`` (1-based) is the ``i``-th structure. The training job records them in the model
artifact (``structures``), and the serving container writes each as one DICOM SEG segment with
these codes; a structure without a ``type`` gets a private code made from its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dicomflow.errors import DicomflowError

BACKGROUND_NAMES = ("background", "bg", "none")


class StructureError(DicomflowError):
    """A structure definition is malformed; the message says which and how to write it."""


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator and code meaning (DICOM PS3.3 8.8)."""

    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
PRIVATE_SCHEME = "99DCMFLOW"


@dataclass(frozen=True)
class Structure:
    """One segmented structure: its label value, name, segment label and codes."""

    value: int
    name: str
    label: str
    type: Code | None = None
    category: Code = ANATOMICAL_STRUCTURE

    @property
    def type_code(self) -> Code:
        """The segmented property type: the given code, else a private one made from the name."""
        return self.type or Code(self.name.upper().replace(" ", "_")[:16], PRIVATE_SCHEME, self.name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "name": self.name, "label": self.label,
                               "category": self.category.to_dict()}
        if self.type is not None:
            out["type"] = self.type.to_dict()
        return out


def _code(raw: Any, where: str) -> Code:
    if not isinstance(raw, Mapping) or not all(isinstance(raw.get(k), str) and raw.get(k)
                                               for k in ("value", "scheme", "meaning")):
        raise StructureError(f"{where} must be an object with string value, scheme and meaning")
    return Code(raw["value"], raw["scheme"], raw["meaning"])


def parse_structures(entries: Iterable[Any], where: str = "classes.json") -> list[Structure]:
    """Structures from names or definition objects, label values 1.. in order (a leading background entry
    is label value 0 and is left out)."""
    entries = list(entries)
    if entries and isinstance(entries[0], str) and entries[0].lower() in BACKGROUND_NAMES:
        entries = entries[1:]
    out = []
    for i, entry in enumerate(entries, start=1):
        if isinstance(entry, str) and entry.strip():
            out.append(Structure(i, entry, entry))
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"].strip():
            name = entry["name"]
            label = entry.get("label") or name
            if not isinstance(label, str):
                raise StructureError(f"{where} entry {i}: 'label' must be a string")
            out.append(Structure(
                i, name, label, _code(entry["type"], f"{where} entry {i} 'type'") if "type" in entry else None,
                _code(entry["category"], f"{where} entry {i} 'category'") if "category" in entry
                else ANATOMICAL_STRUCTURE))
        else:
            raise StructureError(f"{where} entry {i} must be a structure name or an object with 'name'")
    if len({s.name for s in out}) != len(out):
        raise StructureError(f"{where} names a structure twice")
    return out


def names(structures: Iterable[Structure]) -> list[str]:
    return [s.name for s in structures]
