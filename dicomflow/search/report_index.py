"""The report index: radiology reports and their entities, for text search and ICD-10-CM facets.

One SQLite file (its directory 0700: reports are patient data):

* ``reports`` - one row per study: accession, the text, the engine (model version) that read it;
* ``reports_text`` - FTS5 over the text (porter stemming), ranked by BM25;
* ``mentions`` - each entity with its first ICD-10-CM concept: finding, code, status (positive, negative,
  uncertain; hypothetical mentions are not findings of the report and are left out) and offsets;
* ``mention_codes`` - each mention's code and its ancestors (category, block, chapter), so that a filter or
  a facet on ``J81``, ``J80-J84`` or chapter ``10`` counts every code below it.

Every value of a query is a bound parameter; the text a user types is turned into quoted FTS5 phrases, so
no character of it is query syntax. Pages are at most :data:`MAX_PAGE` reports, with an opaque cursor.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError
from dicomflow.paths import PRIVATE_FILE_MODE, private_dir
from dicomflow.search import lexicon
from dicomflow.search.reports import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    ReportError,
    mention_status,
    parse_report_file,
    study_date,
    validate_report,
)

STATUSES = (POSITIVE, NEGATIVE, UNCERTAIN)
MAX_PAGE = 100
MAX_QUERY_CHARS = 500
MAX_CODES = 50
_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    accession TEXT,
    text TEXT NOT NULL,
    engine TEXT,
    added TEXT NOT NULL,
    study_date TEXT
);
CREATE VIRTUAL TABLE IF NOT EXISTS reports_text USING fts5(text, content='reports', content_rowid='id',
                                                           tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS mentions (
    report INTEGER NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    finding TEXT,
    code TEXT NOT NULL,
    status TEXT NOT NULL,
    begin INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mention_codes (
    report INTEGER NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    code TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (report, code, status)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mention_codes_code ON mention_codes (code, status);
"""


class ReportIndexError(DicomflowError):
    """A report that cannot be indexed, or a search that cannot be run (what is wrong, how to fix it)."""


@dataclass(frozen=True)
class ReportHit:
    study_uid: str
    accession: str | None
    score: float
    snippet: str
    mentions: list[dict[str, Any]] = field(default_factory=list)
    study_date: str | None = None  # YYYY-MM-DD

    def as_dict(self) -> dict[str, Any]:
        return {"studyInstanceUID": self.study_uid, "accessionNumber": self.accession, "studyDate": self.study_date,
                "score": round(self.score, 6), "snippet": self.snippet, "mentions": self.mentions}


@dataclass(frozen=True)
class ReportPage:
    hits: list[ReportHit]
    total: int
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "nextCursor": self.next_cursor, "reports": [h.as_dict() for h in self.hits]}


def query_phrases(text: str) -> list[str]:
    """The user's words and "quoted phrases", each a phrase that must occur; nothing typed is syntax."""
    if len(text) > MAX_QUERY_CHARS:
        raise ReportIndexError(f"the search text has {len(text)} characters; at most {MAX_QUERY_CHARS}")
    phrases = [p for p in (a or b for a, b in re.findall(r'"([^"]*)"|([^\s"]+)', text)) if re.search(r"\w", p)]
    if not phrases:
        raise ReportIndexError(f"the search text {text[:60]!r} holds no word to look for")
    return phrases


def fts_query(text: str) -> str:
    """The user's words (and "quoted phrases") as FTS5 phrases joined by AND."""
    return " AND ".join('"' + p.replace('"', '""') + '"' for p in query_phrases(text))


def cursor_at(offset: int) -> str:
    """The opaque cursor of the page that starts at ``offset``."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def offset_of(cursor: str | None) -> int:
    """The offset a cursor of :func:`cursor_at` stands for; ReportIndexError for any other string."""
    if not cursor:
        return 0
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["o"]
    except (ValueError, KeyError, TypeError):
        raise ReportIndexError("the cursor is not one this index gave; start again without it") from None
    if not isinstance(value, int) or value < 0:
        raise ReportIndexError("the cursor is not one this index gave; start again without it")
    return value


def _check_codes(codes: Iterable[str]) -> list[str]:
    out = [str(c).strip().upper() for c in codes if str(c).strip()]
    if len(out) > MAX_CODES:
        raise ReportIndexError(f"{len(out)} codes given; at most {MAX_CODES}")
    for code in out:
        if not lexicon.is_item(code):
            raise ReportIndexError(f"{code[:20]!r} is not an ICD-10-CM code, block (e.g. J80-J84) or chapter")
    return out


def _check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise ReportIndexError(f"status {str(status)[:20]!r}: use one of {', '.join(STATUSES)}")
    return status


def report_mentions(text: str, answer: Mapping[str, Any]) -> list[tuple[str, str, int, int, str]]:
    """``(code, status, begin, end, text)`` of each finding the InferICD10CM-shaped ``answer`` coded (its first
    concept; entities without a concept or a status, and unknown codes, are no findings to index)."""
    mentions = []
    for entity in answer.get("Entities") or []:
        concepts = entity.get("ICD10CMConcepts") or []
        status = mention_status(entity)
        if not concepts or status is None:
            continue
        code = str(concepts[0].get("Code", "")).strip().upper()
        if not lexicon.is_item(code):
            continue
        try:
            begin, end = int(entity.get("BeginOffset", 0)), int(entity.get("EndOffset", 0))
        except (TypeError, ValueError):
            raise ReportIndexError("an entity's offsets are not whole numbers: not an InferICD10CM answer") from None
        mentions.append((code, status, begin, end, str(entity.get("Text", text[begin:end]))))
    return mentions


def check_limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise ReportIndexError(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return limit


def check_query(codes: Iterable[str], status: str | None) -> tuple[list[str], str | None]:
    """Validated codes (upper case, each an ICD-10-CM code, block or chapter) and status."""
    return _check_codes(codes), _check_status(status)


def check_dates(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """A study-date range (each end optional, inclusive) as ISO dates; ReportIndexError when one is not a date
    or the range is empty."""
    try:
        low, high = study_date(since, "since"), study_date(until, "until")
    except ReportError as exc:
        raise ReportIndexError(str(exc)) from None
    if low and high and low > high:
        raise ReportIndexError(f"the date range {low} to {high} is empty: since must not be after until")
    return low, high


class ReportIndex:
    """The reports of one site; open one per thread."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> ReportIndex:
        path = Path(path)
        if not path.is_file() and not create:
            raise ReportIndexError(f"no report index at {path}; fill one with 'dicomflow search add-reports'")
        private_dir(path.parent)
        try:
            db = sqlite3.connect(path)
            path.chmod(PRIVATE_FILE_MODE)
            db.execute("PRAGMA foreign_keys = ON")
            db.executescript(_SCHEMA)
            if "study_date" not in {row[1] for row in db.execute("PRAGMA table_info(reports)")}:
                db.execute("ALTER TABLE reports ADD COLUMN study_date TEXT")  # an index from before date ranges
        except sqlite3.Error as exc:
            raise ReportIndexError(f"{path} is not a usable report index: {exc}") from None
        return cls(path, db)

    def refresh(self) -> None:
        """Nothing to reload: every query reads the rows as they are now."""

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReportIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    # ---- writing -------------------------------------------------------------------------------
    def add(self, study_uid: str, text: str, answer: Mapping[str, Any], accession: str | None = None,
            study_date: str | None = None) -> None:
        """Index (or replace) a study's report with the engine's InferICD10CM-shaped ``answer`` for it and its
        study date (YYYY-MM-DD or DICOM's YYYYMMDD; a report without one is left out of date ranges)."""
        if not is_uid(study_uid):
            raise ReportIndexError(f"StudyInstanceUID {str(study_uid)[:70]!r} is not a DICOM UID")
        when, _ = check_dates(study_date, None)
        text = validate_report(text)
        mentions = report_mentions(text, answer)
        with self._db:
            old = self._db.execute("SELECT id, text FROM reports WHERE study_uid = ?", (study_uid,)).fetchone()
            if old:
                self._db.execute("INSERT INTO reports_text (reports_text, rowid, text) VALUES ('delete', ?, ?)", old)
                self._db.execute("DELETE FROM reports WHERE id = ?", (old[0],))
            report = self._db.execute(
                "INSERT INTO reports (study_uid, accession, text, engine, added, study_date) VALUES (?, ?, ?, ?, ?, ?)",
                (study_uid, accession or None, text, str(answer.get("ModelVersion") or ""),
                 datetime.now(UTC).isoformat(timespec="seconds"), when)).lastrowid
            self._db.execute("INSERT INTO reports_text (rowid, text) VALUES (?, ?)", (report, text))
            self._db.executemany(
                "INSERT INTO mentions (report, finding, code, status, begin, end, text) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(report, lexicon.finding_of_code(c), c, st, b, e, t) for c, st, b, e, t in mentions])
            self._db.executemany(
                "INSERT OR IGNORE INTO mention_codes (report, code, status) VALUES (?, ?, ?)",
                [(report, code, st) for c, st, *_ in mentions for code in [c, *lexicon.ancestors(c)]])

    # ---- reading -------------------------------------------------------------------------------
    def _matching(self, text: str | None, codes: list[str], status: str | None,
                  dates: tuple[str | None, str | None] = (None, None)) -> tuple[str, list[Any]]:
        """SQL selecting ``reports.id`` and a BM25 score of the reports that match, and its parameters."""
        where, params = [], []
        if text:
            sql = ("SELECT reports.id AS id, -bm25(reports_text) AS score FROM reports_text "
                   "JOIN reports ON reports.id = reports_text.rowid WHERE reports_text MATCH ?")
            params.append(fts_query(text))
        else:
            sql = "SELECT reports.id AS id, 0.0 AS score FROM reports WHERE 1"
        if codes or status:
            cond = ["mc.report = reports.id"]
            if codes:
                cond.append("mc.code IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(codes))
            if status:
                cond.append("mc.status = ?")
                params.append(status)
            where.append(f"EXISTS (SELECT 1 FROM mention_codes mc WHERE {' AND '.join(cond)})")  # noqa: S608 - constants
        for op, value in zip((">=", "<="), dates, strict=True):
            if value:
                where.append(f"reports.study_date {op} ?")
                params.append(value)
        return sql + "".join(f" AND {w}" for w in where), params

    def search(self, text: str | None = None, *, codes: Iterable[str] = (), status: str | None = None,
               limit: int = 20, cursor: str | None = None, since: str | None = None,
               until: str | None = None) -> ReportPage:
        """Reports matching all of: the words of ``text``, a mention coded in (or below) one of ``codes``
        with ``status`` (any status if None), a study date from ``since`` to ``until`` (inclusive, each
        optional); best BM25 first, else newest first."""
        check_limit(limit)
        codes_l, status = check_query(codes, status)
        dates = check_dates(since, until)
        offset = offset_of(cursor)
        sql, params = self._matching(text, codes_l, status, dates)
        total = int(self._db.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0])  # noqa: S608
        rows = self._db.execute(f"SELECT id, score FROM ({sql}) ORDER BY score DESC, id DESC LIMIT ? OFFSET ?",  # noqa: S608
                                [*params, limit, offset]).fetchall()
        hits = [self._hit(report, score, text) for report, score in rows]
        more = offset + len(hits) < total
        return ReportPage(hits, total, cursor_at(offset + len(hits)) if more else None)

    def _hit(self, report: int, score: float, text: str | None) -> ReportHit:
        study, accession, body, when = self._db.execute(
            "SELECT study_uid, accession, text, study_date FROM reports WHERE id = ?", (report,)).fetchone()
        if text:
            snippet = self._db.execute(
                "SELECT snippet(reports_text, 0, '[', ']', '…', 16) FROM reports_text WHERE reports_text MATCH ? "
                "AND rowid = ?", (fts_query(text), report)).fetchone()[0]
        else:
            snippet = body[:160] + ("…" if len(body) > 160 else "")
        mentions = [{"finding": f, "code": c, "description": lexicon.description(c), "status": st, "begin": b,
                     "end": e, "text": t} for f, c, st, b, e, t in self._db.execute(
            "SELECT finding, code, status, begin, end, text FROM mentions WHERE report = ? ORDER BY begin", (report,))]
        return ReportHit(study, accession, float(score), snippet, mentions, when)

    def report(self, study_uid: str) -> dict[str, Any]:
        """A study's report with its mentions (for highlighting: offsets into the text)."""
        row = self._db.execute("SELECT id, accession, text FROM reports WHERE study_uid = ?", (study_uid,)).fetchone()
        if row is None:
            raise ReportIndexError(f"no report of study {str(study_uid)[:70]} in the index")
        hit = self._hit(row[0], 0.0, None)
        return {"studyInstanceUID": study_uid, "accessionNumber": row[1], "studyDate": hit.study_date, "text": row[2],
                "mentions": hit.mentions}

    def facets(self, text: str | None = None, *, codes: Iterable[str] = (), status: str | None = POSITIVE,
               limit: int = 50, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """How many matching reports (words, codes, study dates as in :meth:`search`) mention each code with
        ``status``, and each category, block and chapter above the codes (``parent`` links them: a chart can
        draw the hierarchy; ``mentioned`` tells the codes the reports name themselves from those counted
        through a code below them); most reports first."""
        check_limit(limit)
        codes_l, status = check_query(codes, status)
        sql, params = self._matching(text, codes_l, None, check_dates(since, until))
        cond, extra = "", []
        if status:
            cond, extra = " AND mc.status = ?", [status]
        rows = self._db.execute(
            f"SELECT mc.code, COUNT(DISTINCT mc.report) AS n FROM mention_codes mc WHERE mc.report IN "  # noqa: S608
            f"(SELECT id FROM ({sql})){cond} GROUP BY mc.code ORDER BY n DESC, mc.code LIMIT ?",
            [*params, *extra, limit]).fetchall()
        mentioned = {c for (c,) in self._db.execute(
            f"SELECT DISTINCT m.code FROM mentions m WHERE m.report IN (SELECT id FROM ({sql}))"  # noqa: S608
            + (" AND m.status = ?" if status else ""), [*params, *extra])}
        out = []
        for code, n in rows:
            parents = lexicon.ancestors(code)
            out.append({"code": code, "description": lexicon.description(code), "kind": lexicon.kind(code),
                        "reports": int(n), "parent": parents[0] if parents else None, "mentioned": code in mentioned})
        return out


def open_report_index(path: str | Path, *, create: bool = True) -> Any:
    """The configured report index: OpenSearch when ``DICOMFLOW_SEARCH_OPENSEARCH_URL`` is set (index
    ``DICOMFLOW_SEARCH_OPENSEARCH_REPORTS_INDEX``), else the SQLite file at ``path``."""
    from dicomflow.config import runtime

    settings = runtime()
    if settings.search_opensearch_url:
        from dicomflow.search.opensearch import connect
        from dicomflow.search.opensearch_reports import OpenSearchReportIndex

        return OpenSearchReportIndex.open(connect(settings.search_opensearch_url),
                                          settings.search_opensearch_reports_index, create=create)
    return ReportIndex.open(path, create=create)


def add_report_records(index: Any, records: Iterable[tuple[str, bytes]], engine: Any,
                       progress: Any = None) -> dict[str, Any]:
    """Index each ``(name, file content)``, analysed by ``engine`` (``infer_icd10cm``) unless it carries its
    analysis; a record that fails is listed with its reason, never fatal. ``progress()`` after each."""
    added, failed, total = 0, [], 0
    for name, data in records:
        total += 1
        try:
            study, accession, text, analysis, when = parse_report_file(data, name)
            index.add(study, text, analysis if analysis is not None else engine.infer_icd10cm(text),
                      accession=accession, study_date=when)
            added += 1
        except DicomflowError as exc:
            failed.append({"file": name, "error": str(exc)})
        if progress:
            progress()
    return {"index": str(index.path), "records": total, "added": added, "reports": len(index), "failed": failed}
