"""The chest-radiograph findings the report engine knows: the 13 CheXpert findings, their usual wordings in
reports, and the ICD-10-CM code each wording links to.

Codes are checked against ``simple-icd-10-cm`` (the offline code list) in the tests; descriptions and the
code hierarchy come from it at run time. Each :class:`Term` is one wording; a finding has several. The
entity ``Type`` is always ``DX_NAME`` and the category ``MEDICAL_CONDITION``, as InferICD10CM returns; a
finding is a ``DIAGNOSIS`` (a named condition) or a ``SIGN`` (an imaging sign such as an opacity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from types import ModuleType

NO_FINDING = "No Finding"


@dataclass(frozen=True)
class Finding:
    """One CheXpert finding: its name, the trait its mentions carry, and its wordings with their codes."""

    name: str
    trait: str  # DIAGNOSIS or SIGN
    terms: tuple[tuple[str, str], ...]  # (wording, ICD-10-CM code); wordings are lower-case, plural forms listed


FINDINGS: tuple[Finding, ...] = (
    Finding("Enlarged Cardiomediastinum", "SIGN", (
        ("enlarged cardiomediastinum", "J98.59"), ("widened mediastinum", "J98.59"),
        ("mediastinal widening", "J98.59"), ("enlarged cardiomediastinal silhouette", "J98.59"),
        ("widening of the mediastinum", "J98.59"))),
    Finding("Cardiomegaly", "DIAGNOSIS", (
        ("cardiomegaly", "I51.7"), ("enlarged heart", "I51.7"), ("cardiac enlargement", "I51.7"),
        ("enlarged cardiac silhouette", "I51.7"), ("enlargement of the cardiac silhouette", "I51.7"),
        ("heart is enlarged", "I51.7"), ("heart size is enlarged", "I51.7"),
        ("cardiac silhouette is enlarged", "I51.7"), ("heart is mildly enlarged", "I51.7"))),
    Finding("Lung Opacity", "SIGN", (
        ("opacity", "R91.8"), ("opacities", "R91.8"), ("opacification", "R91.8"), ("airspace disease", "R91.8"),
        ("airspace opacity", "R91.8"), ("airspace opacities", "R91.8"), ("hazy opacity", "R91.8"))),
    Finding("Lung Lesion", "SIGN", (
        ("nodule", "R91.1"), ("pulmonary nodule", "R91.1"), ("nodular opacity", "R91.1"), ("nodules", "R91.8"),
        ("mass", "R91.8"), ("lung mass", "R91.8"), ("pulmonary mass", "R91.8"), ("lesion", "R91.8"),
        ("lung lesion", "R91.8"))),
    Finding("Edema", "DIAGNOSIS", (
        ("pulmonary edema", "J81.0"), ("edema", "J81.0"), ("interstitial edema", "J81.0"),
        ("vascular congestion", "J81.0"), ("pulmonary vascular congestion", "J81.0"))),
    Finding("Consolidation", "SIGN", (
        ("consolidation", "R91.8"), ("consolidations", "R91.8"), ("consolidative opacity", "R91.8"))),
    Finding("Pneumonia", "DIAGNOSIS", (
        ("pneumonia", "J18.9"), ("infectious process", "J18.9"), ("bronchopneumonia", "J18.9"))),
    Finding("Atelectasis", "DIAGNOSIS", (
        ("atelectasis", "J98.11"), ("atelectatic change", "J98.11"), ("atelectatic changes", "J98.11"),
        ("subsegmental atelectasis", "J98.11"), ("bibasilar atelectasis", "J98.11"))),
    Finding("Pneumothorax", "DIAGNOSIS", (
        ("pneumothorax", "J93.9"), ("pneumothoraces", "J93.9"), ("pneumothoraxes", "J93.9"))),
    Finding("Pleural Effusion", "DIAGNOSIS", (
        ("pleural effusion", "J90"), ("pleural effusions", "J90"), ("effusion", "J90"), ("effusions", "J90"),
        ("pleural fluid", "J90"), ("layering fluid", "J90"))),
    Finding("Pleural Other", "DIAGNOSIS", (
        ("pleural thickening", "J94.9"), ("pleural plaque", "J92.9"), ("pleural plaques", "J92.9"),
        ("fibrothorax", "J94.1"))),
    Finding("Fracture", "DIAGNOSIS", (
        ("fracture", "T14.8XXA"), ("fractures", "T14.8XXA"), ("rib fracture", "S22.39XA"),
        ("rib fractures", "S22.49XA"), ("fractured rib", "S22.39XA"))),
    Finding("Support Devices", "SIGN", (
        ("support devices", "Z97.8"), ("support device", "Z97.8"), ("pacemaker", "Z95.0"),
        ("pacemaker leads", "Z95.0"), ("cardiac device", "Z95.0"), ("endotracheal tube", "Z97.8"),
        ("nasogastric tube", "Z97.8"), ("enteric tube", "Z97.8"), ("central venous catheter", "Z97.8"),
        ("central line", "Z97.8"), ("chest tube", "Z97.8"), ("picc line", "Z97.8"), ("tube", "Z97.8"),
        ("tubes and lines", "Z97.8"), ("catheter", "Z97.8"))),
)
BY_NAME = {f.name: f for f in FINDINGS}


@dataclass(frozen=True)
class Match:
    """A wording found in a text: ``[begin, end)`` code-point offsets, its finding and code."""

    begin: int
    end: int
    finding: Finding
    code: str


@cache
def _pattern() -> tuple[re.Pattern[str], dict[str, tuple[Finding, str]]]:
    table = {term: (f, code) for f in FINDINGS for term, code in f.terms}
    # longest wording first, so "pleural effusion" wins over "effusion" at the same place
    words = sorted(table, key=len, reverse=True)
    alternation = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    return re.compile(rf"(?<![\w-])(?:{alternation})(?![\w-])", re.IGNORECASE), table


def find_terms(text: str) -> list[Match]:
    """Every known wording in ``text``, left to right, never overlapping (the longest at each place)."""
    pattern, table = _pattern()
    out = []
    for m in pattern.finditer(text):
        key = " ".join(m.group(0).lower().split())
        finding, code = table[key]
        out.append(Match(m.start(), m.end(), finding, code))
    return out


@cache
def _icd() -> ModuleType:
    """simple_icd_10_cm, imported on first use: it parses the whole code list (seconds), which a command or a
    Lambda that never looks a code up should not pay."""
    import simple_icd_10_cm

    return simple_icd_10_cm


def description(code: str) -> str:
    """The ICD-10-CM description of ``code`` (KeyError-free: an unknown code is refused by the tests)."""
    return _icd().get_description(code)


def ancestors(code: str) -> list[str]:
    """``code``'s ICD-10-CM ancestors, nearest first (category, block, chapter)."""
    return list(_icd().get_ancestors(code))


def is_item(code: str) -> bool:
    """Whether ``code`` is an ICD-10-CM code, block (``J80-J84``) or chapter (``10``)."""
    return bool(_icd().is_valid_item(code))


def kind(code: str) -> str:
    """``chapter``, ``block`` or ``code`` (a category or any code below one)."""
    return "chapter" if _icd().is_chapter(code) else "block" if _icd().is_block(code) else "code"


def finding_of_code(code: str) -> str | None:
    """The first finding one of whose wordings links to ``code`` (for another engine's entities)."""
    for f in FINDINGS:
        if any(c == code for _, c in f.terms):
            return f.name
    return None
