"""The report index on Amazon OpenSearch: the same interface as :class:`dicomflow.search.report_index.ReportIndex`.

One document per study (``_id`` = StudyInstanceUID, so adding a report again replaces it): the text under
the ``english`` analyzer (stemming, BM25), the mentions as stored data (offsets for highlighting, not
indexed), and per status the keyword lists of the codes mentioned and of those codes with every ancestor
(category, block, chapter), so that a filter or a facet on ``J81``, ``J80-J84`` or chapter ``10`` counts
every code below it, as the embedded index does. Searches are ``match_phrase`` clauses of the user's words
and phrases (never ``query_string``: nothing typed is query syntax), code and status filters are ``terms``
filters, facets are ``terms`` aggregations; pages are ``from``/``size`` behind the same opaque cursor.

Connection and signing as :mod:`dicomflow.search.opensearch` (SigV4, TLS with certificate checks). No
OpenSearch server runs in this project's tests: ``tests/unit/search/test_opensearch_reports.py`` checks
the exact request bodies and the reading of OpenSearch's answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dicomflow.dicom.uid import is_uid
from dicomflow.search import lexicon
from dicomflow.search.opensearch import OpenSearchIndex
from dicomflow.search.report_index import (
    STATUSES,
    ReportHit,
    ReportIndexError,
    ReportPage,
    check_dates,
    check_limit,
    check_query,
    cursor_at,
    offset_of,
    query_phrases,
    report_mentions,
)
from dicomflow.search.reports import POSITIVE, validate_report

#: OpenSearch's default index.max_result_window: a page may not end beyond it.
MAX_WINDOW = 10_000
SNIPPET_CHARS = 160


def index_body() -> dict[str, Any]:
    """The create-index request: the text analysed in English, everything else a keyword or stored only."""
    keywords = {f"{kind}_{status}": {"type": "keyword"} for kind in ("codes", "mentioned") for status in STATUSES}
    return {"mappings": {"dynamic": "strict", "properties": {
        "study_uid": {"type": "keyword"}, "accession": {"type": "keyword"}, "engine": {"type": "keyword"},
        "added": {"type": "date"}, "study_date": {"type": "date", "format": "strict_date"},
        "text": {"type": "text", "analyzer": "english"},
        "codes_any": {"type": "keyword"}, **keywords,
        "mentions": {"type": "object", "enabled": False}}}}


def document(study_uid: str, text: str, answer: Mapping[str, Any], accession: str | None,
             study_date: str | None = None) -> dict[str, Any]:
    """The document of one report, the engine's InferICD10CM-shaped ``answer`` and the study date."""
    if not is_uid(study_uid):
        raise ReportIndexError(f"StudyInstanceUID {str(study_uid)[:70]!r} is not a DICOM UID")
    when, _ = check_dates(study_date, None)
    text = validate_report(text)
    mentions = report_mentions(text, answer)
    doc: dict[str, Any] = {"study_uid": study_uid, "accession": accession or None, "study_date": when, "text": text,
                           "engine": str(answer.get("ModelVersion") or ""),
                           "added": datetime.now(UTC).isoformat(timespec="seconds"),
                           "mentions": [{"finding": lexicon.finding_of_code(c), "code": c, "status": st, "begin": b,
                                         "end": e, "text": t} for c, st, b, e, t in mentions]}
    every: set[str] = set()
    for status in STATUSES:
        codes = {c for c, st, *_ in mentions if st == status}
        with_ancestors = {x for c in codes for x in (c, *lexicon.ancestors(c))}
        doc[f"mentioned_{status}"], doc[f"codes_{status}"] = sorted(codes), sorted(with_ancestors)
        every |= with_ancestors
    doc["codes_any"] = sorted(every)
    return doc


def query_body(text: str | None, codes: list[str], status: str | None,
               dates: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
    """The bool query of reports with every phrase of ``text``, a mention in (or below) ``codes`` with
    ``status`` (any status when None) and a study date in ``dates`` (inclusive; either end open)."""
    must = [{"match_phrase": {"text": phrase}} for phrase in query_phrases(text)] if text else []
    field = f"codes_{status}" if status else "codes_any"
    filters: list[dict[str, Any]] = []
    if codes:
        filters.append({"terms": {field: codes}})
    elif status:
        filters.append({"exists": {"field": field}})
    bounds = {op: value for op, value in zip(("gte", "lte"), dates, strict=True) if value}
    if bounds:
        filters.append({"range": {"study_date": bounds}})
    return {"bool": {"must": must or [{"match_all": {}}], "filter": filters}}


def search_body(text: str | None, codes: list[str], status: str | None, limit: int, offset: int,
                dates: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
    """A page of matching reports: best score first, then newest; the match highlighted in ``[brackets]``."""
    body: dict[str, Any] = {
        "from": offset, "size": limit, "track_total_hits": True, "query": query_body(text, codes, status, dates),
        "sort": [{"_score": "desc"}, {"added": "desc"}, {"study_uid": "asc"}],
        "_source": ["study_uid", "accession", "study_date", "text", "mentions"]}
    if text:
        body["highlight"] = {"fields": {"text": {"pre_tags": ["["], "post_tags": ["]"], "number_of_fragments": 1,
                                                 "fragment_size": SNIPPET_CHARS}}}
    return body


def facets_body(text: str | None, codes: list[str], status: str | None, limit: int,
                dates: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
    """Counts of matching reports per code (with its ancestors) with ``status``, and the codes they name."""
    field = f"codes_{status}" if status else "codes_any"
    named = [f"mentioned_{status}"] if status else [f"mentioned_{s}" for s in STATUSES]
    aggs: dict[str, Any] = {"codes": {"terms": {"field": field, "size": limit,
                                                "order": [{"_count": "desc"}, {"_key": "asc"}]}}}
    for name in named:
        aggs[name] = {"terms": {"field": name, "size": 1000}}
    return {"size": 0, "track_total_hits": True, "query": query_body(text, codes, None, dates), "aggs": aggs}


def _hit(hit: Mapping[str, Any], text: str | None) -> ReportHit:
    src = hit.get("_source") or {}
    body = str(src.get("text") or "")
    fragments = (hit.get("highlight") or {}).get("text") or []
    snippet = fragments[0] if text and fragments else body[:SNIPPET_CHARS] + ("…" if len(body) > SNIPPET_CHARS else "")
    mentions = sorted((dict(m, description=lexicon.description(m["code"])) for m in src.get("mentions") or []),
                      key=lambda m: m.get("begin", 0))
    return ReportHit(str(src.get("study_uid")), src.get("accession"), float(hit.get("_score") or 0.0), snippet,
                     mentions, src.get("study_date"))


class OpenSearchReportIndex(OpenSearchIndex):
    """The reports of one site in an OpenSearch index."""

    def __init__(self, client: Any, name: str) -> None:
        super().__init__(client, name)
        self.path = f"opensearch:{name}"

    @classmethod
    def open(cls, client: Any, name: str, *, create: bool = True) -> OpenSearchReportIndex:
        if not client.indices.exists(index=name):
            if not create:
                raise ReportIndexError(f"no OpenSearch report index {name}; fill one with "
                                       "'dicomflow search add-reports'")
            client.indices.create(index=name, body=index_body())
        return cls(client, name)

    def add(self, study_uid: str, text: str, answer: Mapping[str, Any], accession: str | None = None,
            study_date: str | None = None) -> None:
        """Index (or replace) a study's report, visible to searches when this returns."""
        self.client.index(index=self.name, id=study_uid,
                          body=document(study_uid, text, answer, accession, study_date), refresh="wait_for")

    def search(self, text: str | None = None, *, codes: Iterable[str] = (), status: str | None = None,
               limit: int = 20, cursor: str | None = None, since: str | None = None,
               until: str | None = None) -> ReportPage:
        check_limit(limit)
        codes_l, status = check_query(codes, status)
        dates = check_dates(since, until)
        offset = offset_of(cursor)
        if offset + limit > MAX_WINDOW:
            raise ReportIndexError(f"pages end at the first {MAX_WINDOW} reports; narrow the search")
        answer = self.client.search(index=self.name, body=search_body(text, codes_l, status, limit, offset, dates))
        hits = [_hit(h, text) for h in answer["hits"]["hits"]]
        total = int(answer["hits"]["total"]["value"])
        more = offset + len(hits) < min(total, MAX_WINDOW)
        return ReportPage(hits, total, cursor_at(offset + len(hits)) if more else None)

    def report(self, study_uid: str) -> dict[str, Any]:
        found = self.client.get(index=self.name, id=study_uid, ignore=[404])
        if not found.get("found"):
            raise ReportIndexError(f"no report of study {str(study_uid)[:70]} in the index")
        hit = _hit({"_source": found["_source"]}, None)
        return {"studyInstanceUID": study_uid, "accessionNumber": hit.accession, "studyDate": hit.study_date,
                "text": found["_source"].get("text"), "mentions": hit.mentions}

    def facets(self, text: str | None = None, *, codes: Iterable[str] = (), status: str | None = POSITIVE,
               limit: int = 50, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        check_limit(limit)
        codes_l, status = check_query(codes, status)
        body = facets_body(text, codes_l, status, limit, check_dates(since, until))
        aggs = self.client.search(index=self.name, body=body)["aggregations"]
        mentioned = {b["key"] for name, agg in aggs.items() if name != "codes" for b in agg["buckets"]}
        out = []
        for bucket in aggs["codes"]["buckets"]:
            code = str(bucket["key"])
            parents = lexicon.ancestors(code)
            out.append({"code": code, "description": lexicon.description(code), "kind": lexicon.kind(code),
                        "reports": int(bucket["doc_count"]), "parent": parents[0] if parents else None,
                        "mentioned": code in mentioned})
        return out
