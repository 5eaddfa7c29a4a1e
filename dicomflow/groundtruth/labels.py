"""Label sets: the CheXpert default, validation, and Ground Truth's label-category formats.

A label set is an ordered list of unique, non-empty class names. It reaches the labeling task
from the environment (``DICOMFLOW_LABELS``, a JSON list) or from the job's label-category
config (``{"document-version": "2018-11-28", "labels": [{"label": ..}, ..]}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dicomflow.config import runtime
from dicomflow.errors import DicomflowError

#: The 14 CheXpert observations, in the order of the CheXpert label files.
CHEXPERT_CLASSES: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

LABELS_ENV = "DICOMFLOW_LABELS"
LABEL_CATEGORY_DOCUMENT_VERSION = "2018-11-28"
MAX_LABELS = 256
MAX_LABEL_LENGTH = 128


#: an input manifest line's own label set (names, or structure definitions with codes), over DICOMFLOW_LABELS:
#: one stack serves a chest job and a segmentation job of structures alike
LINE_LABELS = "dicomflow-labels"

class LabelSetError(DicomflowError):
    """A label set is malformed; the message says what and how to fix it."""


def validate_label_set(labels: Any, *, where: str = "label set") -> list[str]:
    """Return ``labels`` as a list of unique non-empty strings, or raise :class:`LabelSetError`."""
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise LabelSetError(f"{where} must be a JSON list of class names, e.g. [\"Edema\", \"Fracture\"]")
    out: list[str] = []
    for item in labels:
        if not isinstance(item, str) or not item.strip():
            raise LabelSetError(f"{where} contains {item!r}; every class name must be a non-empty string")
        name = item.strip()
        if len(name) > MAX_LABEL_LENGTH:
            raise LabelSetError(f"{where}: class name {name[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters")
        if name in out:
            raise LabelSetError(f"{where} lists {name!r} twice; class names must be unique")
        out.append(name)
    if not out:
        raise LabelSetError(f"{where} is empty; give at least one class name")
    if len(out) > MAX_LABELS:
        raise LabelSetError(f"{where} has {len(out)} classes; at most {MAX_LABELS} are supported")
    return out


def label_set_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The label set from ``DICOMFLOW_LABELS`` (JSON list), else the 14 CheXpert classes."""
    value = runtime(env).labels
    if value is None:
        return list(CHEXPERT_CLASSES)
    return validate_label_set(value, where=LABELS_ENV)


def label_set_from_categories(categories: Any, *, where: str = "labelCategories") -> list[str]:
    """Class names from GT's ``labelCategories`` (list of names or of ``{"label": name}``)."""
    if isinstance(categories, Mapping):
        return parse_label_category_config(categories)
    if isinstance(categories, str) or not isinstance(categories, Iterable):
        raise LabelSetError(f"{where} must be a list of class names")
    names = [c.get("label") if isinstance(c, Mapping) else c for c in categories]
    return validate_label_set(names, where=where)


def label_category_config(labels: Iterable[str]) -> dict[str, Any]:
    """The ``LabelCategoryConfigS3Uri`` document GT expects (document-version is required)."""
    names = validate_label_set(list(labels))
    return {"document-version": LABEL_CATEGORY_DOCUMENT_VERSION, "labels": [{"label": n} for n in names]}


def parse_label_category_config(doc: Mapping[str, Any]) -> list[str]:
    """Class names from a label-category config document; checks its document-version."""
    version = doc.get("document-version")
    if version != LABEL_CATEGORY_DOCUMENT_VERSION:
        raise LabelSetError(
            f"label category config has document-version {version!r}; Ground Truth requires "
            f"\"document-version\": \"{LABEL_CATEGORY_DOCUMENT_VERSION}\""
        )
    labels = doc.get("labels")
    if not isinstance(labels, list):
        raise LabelSetError("label category config needs \"labels\": [{\"label\": \"...\"}, ...]")
    return label_set_from_categories(labels, where="label category config")
