"""Radiology reports to entities linked to ICD-10-CM, in the JSON shape of Amazon Comprehend Medical's
``InferICD10CM``, by one of two engines with the same method ``infer_icd10cm(text) -> dict``:

* :class:`RuleEngine` (local, no service): sections (FINDINGS, IMPRESSION, INDICATION, ...; a report
  without headers is one section), sentences, the wordings of :mod:`.lexicon`, and NegEx/ConText-style
  triggers within the sentence: negation (``no``, ``without``, ``is not seen``), uncertainty (``possible``,
  ``cannot be excluded``: trait ``LOW_CONFIDENCE``), hypothesis (``rule out``, ``evaluate for``, and every
  mention in an INDICATION or HISTORY section: trait ``HYPOTHETICAL``), pseudo-triggers that are not
  negations (``no change in``), and terms that end a trigger's scope (``but``, ``however``, ``which``).
* :class:`ComprehendMedicalEngine` (AWS): the service itself, the text cut at sentence boundaries into
  chunks below its 10 000-character limit and the chunks' offsets mapped back onto the whole report.

Offsets are code points of the whole text (Python ``str`` indices, as the service counts them).
:func:`report_findings` turns either engine's answer into one status per finding for indexing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError
from dicomflow.search import lexicon

#: InferICD10CM's input limit is 10 000 characters; chunks stay below it in UTF-8 bytes, which is stricter.
COMPREHEND_LIMIT = 10_000
#: The longest report any engine accepts (a report is a few thousand characters; this is a safety bound).
MAX_REPORT_CHARS = 200_000
RULES_VERSION = "dicomflow-rules-1"
HYPOTHETICAL_SECTIONS = frozenset({"INDICATION", "HISTORY"})
SECTION_NAMES = {
    "findings": "FINDINGS", "finding": "FINDINGS", "impression": "IMPRESSION", "impressions": "IMPRESSION",
    "conclusion": "IMPRESSION", "conclusions": "IMPRESSION", "summary": "IMPRESSION",
    "indication": "INDICATION", "indications": "INDICATION", "reason for exam": "INDICATION",
    "reason for study": "INDICATION", "history": "HISTORY", "clinical history": "HISTORY",
    "clinical information": "HISTORY", "technique": "TECHNIQUE", "comparison": "COMPARISON",
    "exam": "EXAM", "examination": "EXAM", "procedure": "EXAM",
}
#: Statuses of a finding in one report, strongest first (see :func:`report_findings`).
POSITIVE, UNCERTAIN, NEGATIVE = "positive", "uncertain", "negative"


class ReportError(DicomflowError):
    """A report that cannot be analysed (not text, empty, too long)."""


class ReportEngine(Protocol):
    def infer_icd10cm(self, text: str) -> dict[str, Any]:
        """InferICD10CM's response body for ``text``: ``{"Entities": [...], "ModelVersion": ...}``."""


def validate_report(text: object) -> str:
    """``text`` if it is a non-empty report of at most :data:`MAX_REPORT_CHARS`, else :class:`ReportError`."""
    if not isinstance(text, str):
        raise ReportError(f"a report must be text, got {type(text).__name__}")
    if not text.strip():
        raise ReportError("the report is empty: nothing to analyse")
    if len(text) > MAX_REPORT_CHARS:
        raise ReportError(f"the report has {len(text)} characters, more than {MAX_REPORT_CHARS}: send the report "
                          "itself, not a whole document")
    return text


# ---- sections and sentences ---------------------------------------------------------------------------

MAX_REPORT_FILE_BYTES = 1_000_000


def study_date(value: object, what: str = "StudyDate") -> str | None:
    """A study date as ISO ``YYYY-MM-DD`` from DICOM's ``YYYYMMDD`` or ISO; None for none; :class:`ReportError`
    for anything else (a date is never guessed)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    raise ReportError(f"{what} {text[:20]!r} is not a date: use YYYY-MM-DD (or DICOM's YYYYMMDD)")


def parse_report_file(data: bytes, name: str) -> tuple[str, str | None, str, dict[str, Any] | None, str | None]:
    """``(StudyInstanceUID, AccessionNumber, text, analysis or None, StudyDate as YYYY-MM-DD or None)`` of a
    report file ``{"StudyInstanceUID", "AccessionNumber", "StudyDate", "text"}`` (what a RIS export or
    ``dicomflow seed`` writes; StudyDate optional, DICOM's YYYYMMDD or ISO; the ingestion Lambda's copy adds
    ``analysis``, the engine's answer); :class:`ReportError` names ``name`` and what is wrong."""
    if len(data) > MAX_REPORT_FILE_BYTES:
        raise ReportError(f"{name}: {len(data)} bytes, more than {MAX_REPORT_FILE_BYTES}; one report per file")
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{name}: not JSON ({str(exc)[:80]})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ReportError(f"{name}: expected {{\"StudyInstanceUID\", \"AccessionNumber\", \"text\"}}")
    study = record.get("StudyInstanceUID")
    if not isinstance(study, str) or not is_uid(study):
        raise ReportError(f"{name}: StudyInstanceUID is missing or not a DICOM UID")
    accession = record.get("AccessionNumber")
    analysis = record.get("analysis")
    if analysis is not None and not (isinstance(analysis, dict) and isinstance(analysis.get("Entities"), list)):
        raise ReportError(f"{name}: 'analysis' is not an InferICD10CM answer ({{\"Entities\": [...]}})")
    try:
        when = study_date(record.get("StudyDate"))
    except ReportError as exc:
        raise ReportError(f"{name}: {exc}") from None
    return study, (str(accession) if accession else None), record["text"], analysis, when


@dataclass(frozen=True)
class Section:
    name: str  # FINDINGS, IMPRESSION, ... or BODY (text before the first header, or a report without headers)
    begin: int
    end: int


#: A header starts a line or follows a sentence ("History: cough. Findings: ...").
_HEADER = re.compile(r"(?:^|(?<=[.!?] ))[ \t]*([A-Za-z][A-Za-z ]{2,30}?)[ \t]*:", re.MULTILINE)


def sections(text: str) -> list[Section]:
    """The report's sections in order; text outside any known header is ``BODY``."""
    headers = [(m.start(), m.end(), SECTION_NAMES[" ".join(m.group(1).lower().split())])
               for m in _HEADER.finditer(text) if " ".join(m.group(1).lower().split()) in SECTION_NAMES]
    out, cursor, name = [], 0, "BODY"
    for start, body, next_name in headers:
        if text[cursor:start].strip():
            out.append(Section(name, cursor, start))
        cursor, name = body, next_name
    if text[cursor:].strip() or not out:
        out.append(Section(name, cursor, len(text)))
    return out


_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|\n\s*\n|\n(?=\s*(?:[-*\u2022]|\d+[.)])\s)")


def sentences(text: str, begin: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """``[b, e)`` spans of the sentences of ``text[begin:end]`` (ended by . ! ? ; a blank line or a list item)."""
    end = len(text) if end is None else end
    start = begin
    for m in _SENTENCE_END.finditer(text, begin, end):
        if text[start:m.end()].strip():
            yield start, m.end()
        start = m.end()
    if text[start:end].strip():
        yield start, end


# ---- triggers -------------------------------------------------------------------------------------------

def _words(*phrases: str) -> re.Pattern[str]:
    alternation = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<![\w/-])(?:{alternation})(?![\w/-])", re.IGNORECASE)


PRE_NEGATION = _words("no", "not", "without", "negative for", "free of", "absence of", "no evidence of",
                      "no sign of", "no signs of", "no radiographic evidence of", "resolution of", "resolved",
                      "rather than", "clear of", "removal of", "interval removal of", "nor")
POST_NEGATION = _words("is not seen", "are not seen", "not seen", "is not identified", "are not identified",
                       "not identified", "not present", "is absent", "are absent", "has resolved", "have resolved",
                       "resolved", "ruled out", "has been removed", "have been removed", "removed")
PRE_UNCERTAIN = _words("possible", "possibly", "probable", "probably", "likely", "may represent", "may be",
                       "could represent", "could be", "cannot exclude", "can not exclude", "cannot rule out",
                       "questionable", "suspicious for", "suggestive of", "concerning for", "concern for",
                       "equivocal", "suspected", "question of", "borderline", "presumed", "differential includes",
                       "not excluded", "versus", "vs")
POST_UNCERTAIN = _words("cannot be excluded", "can not be excluded", "cannot be ruled out", "is not excluded",
                        "not excluded", "is possible", "is suspected", "is likely", "is questioned",
                        "versus", "vs")
PRE_HYPOTHETICAL = _words("rule out", "r/o", "evaluate for", "evaluation for", "evaluation of", "assess for",
                          "assessment for", "to exclude", "if", "in case of", "monitor for", "screen for")
#: Look like negations and are not ("no change in the effusion" says the effusion is there).
PSEUDO = _words("no change", "no interval change", "no significant change", "no increase", "no decrease",
                "not only", "no further", "not changed", "no significant interval change", "not significantly changed",
                "without change", "without interval change", "not well seen", "no longer")
#: End a trigger's scope inside a sentence.
TERMINATE = _words("but", "however", "although", "though", "except", "aside from", "apart from", "which",
                   "there is", "there are", "remains", "remain", "persists", "persist", "noted", "is seen",
                   "are seen", "is present", "are present", "with", "and", "also")
_DIRECTION = re.compile(r"(?<![\w-])(left|right|bilateral|bibasilar|biapical|left-sided|right-sided)(?![\w-])"
                        r"(?:\s+[\w-]+){0,2}\s+$", re.IGNORECASE)


def _spans(pattern: re.Pattern[str], text: str, begin: int, end: int) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text, begin, end)]


def _inside(span: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(b <= span[0] and span[1] <= e and (b, e) != span for b, e in others)


def _overlaps(span: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(span[0] < e and b < span[1] for b, e in others)


@dataclass
class _Sentence:
    text: str
    begin: int
    end: int
    terms: list[lexicon.Match]

    def __post_init__(self) -> None:
        t, b, e = self.text, self.begin, self.end
        pseudo = _spans(PSEUDO, t, b, e)
        uncertain_pre, uncertain_post = _spans(PRE_UNCERTAIN, t, b, e), _spans(POST_UNCERTAIN, t, b, e)
        uncertain = uncertain_pre + uncertain_post
        # a negation word inside "cannot exclude" or "no change" is not a negation
        blocked = pseudo + uncertain
        self.neg_pre = [s for s in _spans(PRE_NEGATION, t, b, e) if not _overlaps(s, blocked)]
        self.neg_post = [s for s in _spans(POST_NEGATION, t, b, e) if not _overlaps(s, blocked)]
        self.unc_pre = [s for s in uncertain_pre if not _inside(s, uncertain)]
        self.unc_post = [s for s in uncertain_post if not _inside(s, uncertain)]
        self.hyp_pre = _spans(PRE_HYPOTHETICAL, t, b, e)
        self.stops = _spans(TERMINATE, t, b, e)
        self.term_spans = [(m.begin, m.end) for m in self.terms]

    def _clear(self, left: int, right: int, trigger: tuple[int, int]) -> bool:
        """Nothing between ``left`` and ``right`` ends the trigger's scope (``and``/``with`` end it only when a
        positive verb or another term follows: lists such as "no effusion or pneumothorax" stay in scope)."""
        for b, e in self.stops:
            if left <= b and e <= right and not _overlaps((b, e), [trigger]):
                word = self.text[b:e].lower()
                if word in ("and", "with") and not self._verb_after(e, right):
                    continue
                return False
        return True

    def _verb_after(self, start: int, right: int) -> bool:
        return bool(re.search(r"(?<!\w)(is|are|was|were|has|have|there)(?!\w)", self.text[start:right], re.I))

    def _before(self, triggers: list[tuple[int, int]], term: lexicon.Match) -> bool:
        return any(e <= term.begin and self._clear(e, term.begin, (b, e)) for b, e in triggers)

    def _after(self, triggers: list[tuple[int, int]], term: lexicon.Match) -> bool:
        return any(b >= term.end and self._clear(term.end, b, (b, e)) for b, e in triggers)

    def traits(self, term: lexicon.Match) -> list[str]:
        out = []
        if self._before(self.hyp_pre, term):
            out.append("HYPOTHETICAL")
        if self._before(self.unc_pre, term) or self._after(self.unc_post, term) or self._question(term):
            out.append("LOW_CONFIDENCE")
        elif self._before(self.neg_pre, term) or self._after(self.neg_post, term):
            out.append("NEGATION")
        return out

    def _question(self, term: lexicon.Match) -> bool:
        return self.text[self.begin:self.end].rstrip().endswith("?")


class RuleEngine:
    """The local report engine (see the module docstring); deterministic, no service, no model file."""

    model_version = RULES_VERSION

    def infer_icd10cm(self, text: str) -> dict[str, Any]:
        text = validate_report(text)
        entities: list[dict[str, Any]] = []
        for section in sections(text):
            for b, e in sentences(text, section.begin, section.end):
                terms = [m for m in lexicon.find_terms(text[b:e])]
                if not terms:
                    continue
                terms = [lexicon.Match(b + m.begin, b + m.end, m.finding, m.code) for m in terms]
                sentence = _Sentence(text, b, e, terms)
                for term in terms:
                    traits = sentence.traits(term)
                    if section.name in HYPOTHETICAL_SECTIONS and "HYPOTHETICAL" not in traits:
                        traits.insert(0, "HYPOTHETICAL")
                    entities.append(_entity(len(entities), text, term, traits, b))
        return {"Entities": entities, "ModelVersion": RULES_VERSION}


def _entity(ident: int, text: str, term: lexicon.Match, traits: list[str], sentence_begin: int) -> dict[str, Any]:
    attributes = []
    direction = _DIRECTION.search(text, sentence_begin, term.begin)
    if direction is not None and "," not in text[direction.end(1):term.begin]:
        attributes.append({"Type": "DIRECTION", "Score": 0.9, "RelationshipScore": 0.9, "Id": ident + 10_000,
                           "BeginOffset": direction.start(1), "EndOffset": direction.end(1),
                           "Text": direction.group(1), "Traits": []})
    return {
        "Id": ident, "Text": text[term.begin:term.end], "Category": "MEDICAL_CONDITION", "Type": "DX_NAME",
        "Score": 0.99, "BeginOffset": term.begin, "EndOffset": term.end, "Attributes": attributes,
        "Traits": [{"Name": name, "Score": 0.95} for name in [term.finding.trait, *traits]],
        "ICD10CMConcepts": [{"Description": lexicon.description(term.code), "Code": term.code, "Score": 0.9}],
    }


# ---- Comprehend Medical ------------------------------------------------------------------------------------

def chunks(text: str, limit: int = COMPREHEND_LIMIT) -> list[tuple[int, str]]:
    """``(offset, chunk)`` pieces of ``text``, each below ``limit`` UTF-8 bytes, cut after a sentence where one
    fits (else at whitespace, else anywhere): concatenated they give ``text`` back."""
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(text):
        end = _cut(text, start, limit)
        out.append((start, text[start:end]))
        start = end
    return out


def _fits(text: str, start: int, end: int, limit: int) -> bool:
    return len(text[start:end].encode("utf-8")) < limit


def _cut(text: str, start: int, limit: int) -> int:
    if _fits(text, start, len(text), limit):
        return len(text)
    hi = start + limit  # a code point is at least one byte: nothing past here fits
    while not _fits(text, start, hi, limit):
        hi -= max(1, (len(text[start:hi].encode("utf-8")) - limit) // 4 + 1)
    window = text[start:hi]
    for pattern in (r"[.!?;]\s+|\n\s*\n", r"\s+"):
        ends = [m.end() for m in re.finditer(pattern, window)]
        if ends and ends[-1] > 0:
            return start + ends[-1]
    return hi


def _shift(entity: dict[str, Any], offset: int, ident: int) -> dict[str, Any]:
    out = {**entity, "Id": ident}
    for key in ("BeginOffset", "EndOffset"):
        if key in out:
            out[key] = int(out[key]) + offset
    out["Attributes"] = [{**a, **{k: int(a[k]) + offset for k in ("BeginOffset", "EndOffset") if k in a}}
                         for a in entity.get("Attributes", [])]
    return out


class ComprehendMedicalEngine:
    """Amazon Comprehend Medical ``InferICD10CM``, one call per chunk of :func:`chunks`, offsets and ids of the
    answers mapped back onto the whole report. ``client``: a boto3 ``comprehendmedical`` client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def infer_icd10cm(self, text: str) -> dict[str, Any]:
        text = validate_report(text)
        entities: list[dict[str, Any]] = []
        version = ""
        for offset, piece in chunks(text):
            if not piece.strip():
                continue
            answer = self.client.infer_icd10_cm(Text=piece)
            version = answer.get("ModelVersion", version)
            entities += [_shift(e, offset, len(entities) + i) for i, e in enumerate(answer.get("Entities", []))]
        return {"Entities": entities, "ModelVersion": version}


# ---- what a report says --------------------------------------------------------------------------------------

def _finding(entity: dict[str, Any]) -> str | None:
    found = lexicon.find_terms(str(entity.get("Text", "")))
    if found:
        return found[0].finding.name
    for concept in entity.get("ICD10CMConcepts") or []:  # an empty list is no concept, never an IndexError
        name = lexicon.finding_of_code(str(concept.get("Code", "")))
        if name:
            return name
    return None


def mention_status(entity: dict[str, Any]) -> str | None:
    """An entity's status: ``uncertain`` (LOW_CONFIDENCE), else ``negative`` (NEGATION), else ``positive``;
    None for a HYPOTHETICAL mention (a question in the indication is no finding of the report)."""
    traits = {t.get("Name") for t in entity.get("Traits") or []}
    if "HYPOTHETICAL" in traits:
        return None
    return UNCERTAIN if "LOW_CONFIDENCE" in traits else NEGATIVE if "NEGATION" in traits else POSITIVE


def report_findings(result: dict[str, Any]) -> dict[str, str]:
    """One status per mentioned finding: ``positive`` if any mention is asserted, else ``uncertain`` if any is
    LOW_CONFIDENCE, else ``negative`` if any is negated; HYPOTHETICAL-only mentions are left out."""
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    out: dict[str, str] = {}
    for entity in result.get("Entities", []):
        name, status = _finding(entity), mention_status(entity)
        if name is None or status is None:
            continue
        if rank[status] > rank.get(out.get(name, ""), 0):
            out[name] = status
    return out
