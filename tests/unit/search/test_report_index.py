"""The report index: text search with BM25 and snippets, code and status filters through the ICD-10-CM
hierarchy, facets, paging, replacement, and input that is never query syntax."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dicomflow.search.report_index import ReportIndex, ReportIndexError, fts_query
from dicomflow.search.reports import RuleEngine

REPORTS = {
    "1.2.826.0.1.3680043.8.498.1": "FINDINGS: Small left pleural effusion. No pneumothorax.\n"
                                   "IMPRESSION: Left pleural effusion.",
    "1.2.826.0.1.3680043.8.498.2": "FINDINGS: Cardiomegaly with pulmonary edema.\nIMPRESSION: Edema.",
    "1.2.826.0.1.3680043.8.498.3": "FINDINGS: No pleural effusion. No edema.\nIMPRESSION: Normal chest.",
    "1.2.826.0.1.3680043.8.498.4": "INDICATION: Rule out pneumonia.\nFINDINGS: Possible pneumonia in the right "
                                   "lower lobe.\nIMPRESSION: Possible pneumonia.",
}


@pytest.fixture
def index(tmp_path: Path):
    engine = RuleEngine()
    with ReportIndex.open(tmp_path / "search" / "reports.sqlite") as ix:
        for n, (study, text) in enumerate(REPORTS.items()):
            ix.add(study, text, engine.infer_icd10cm(text), accession=f"ACC{n}",
                   study_date=f"2026010{n + 1}" if n < 3 else None)  # DICOM dates; the last has none
        yield ix


def _studies(page) -> list[str]:
    return [h.study_uid[-1] for h in page.hits]


def test_text_search_ranks_by_bm25_with_a_highlighted_snippet(index) -> None:
    page = index.search("pleural effusion")
    assert set(_studies(page)) == {"1", "3"} and page.total == 2
    assert _studies(page)[0] == "1"  # said twice there, once in study 3
    assert "[pleural] [effusion]" in page.hits[0].snippet
    assert index.search("effusions").total == 2  # porter stemming
    assert index.search('"left pleural"').total == 1  # a quoted phrase


def test_code_and_status_filters_follow_the_hierarchy(index) -> None:
    assert _studies(index.search(codes=["J90"], status="positive")) == ["1"]
    assert _studies(index.search(codes=["J90"], status="negative")) == ["3"]
    assert set(_studies(index.search(codes=["J81.0"]))) == {"2", "3"}  # edema said or denied
    assert _studies(index.search(codes=["J81.0"], status="positive")) == ["2"]
    # a block or chapter filter counts every code below it: pleural effusion (J90) is in J90-J94, chapter 10
    assert set(_studies(index.search(codes=["J90-J94"]))) == {"1", "3"}
    assert "4" in _studies(index.search(codes=["10"], status="uncertain"))  # possible pneumonia
    # the question in the indication is no finding: "rule out pneumonia" alone would not be positive
    assert index.search(codes=["J18.9"], status="positive").total == 0
    both = index.search("effusion", codes=["J90"], status="negative")
    assert _studies(both) == ["3"]


def test_facets_count_reports_per_code_and_per_block_and_chapter(index) -> None:
    facets = {f["code"]: f for f in index.facets(status="positive")}
    assert facets["J90"]["reports"] == 1 and facets["J90"]["parent"] == "J90-J94"
    assert facets["J90-J94"]["kind"] == "block" and facets["J90-J94"]["parent"] == "10"
    assert facets["10"]["kind"] == "chapter" and facets["10"]["parent"] is None
    assert facets["J90"]["mentioned"] and not facets["J90-J94"]["mentioned"] and not facets["10"]["mentioned"]
    assert facets["I51.7"]["description"].lower().startswith("cardiomegaly")
    negated = {f["code"]: f["reports"] for f in index.facets(status="negative")}
    assert negated["J90"] == 1 and negated["J93.9"] == 1  # "No pneumothorax"
    within = {f["code"] for f in index.facets("cardiomegaly", status="positive")}
    assert "J90" not in within and "I51.7" in within


def test_pages_walk_every_match_once_and_a_report_is_replaced_by_study(index, tmp_path) -> None:
    seen, cursor = [], None
    while True:
        page = index.search(limit=3, cursor=cursor)
        seen += _studies(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == ["1", "2", "3", "4"] and page.total == 4
    index.add("1.2.826.0.1.3680043.8.498.1", "FINDINGS: Clear lungs.", RuleEngine().infer_icd10cm("Clear lungs."))
    assert len(index) == 4 and index.search("effusion").total == 1 and index.search("clear").total == 1
    assert index.report("1.2.826.0.1.3680043.8.498.1")["mentions"] == []
    assert stat.S_IMODE((tmp_path / "search").stat().st_mode) == 0o700


def test_detail_gives_mentions_with_offsets_into_the_text(index) -> None:
    detail = index.report("1.2.826.0.1.3680043.8.498.2")
    text = detail["text"]
    assert detail["accessionNumber"] == "ACC1"
    assert {(m["finding"], m["status"]) for m in detail["mentions"]} >= {("Cardiomegaly", "positive"),
                                                                          ("Edema", "positive")}
    assert all(text[m["begin"]:m["end"]] == m["text"] for m in detail["mentions"])


@pytest.mark.parametrize("text", ['effusion" OR "edema', "NEAR(edema effusion)", "effusion*", "text:edema",
                                  "'; DROP TABLE reports; --", "edema AND", "-edema", "^edema"])
def test_what_a_user_types_is_never_query_syntax(index, text) -> None:
    page = index.search(text)  # no FTS5 syntax error, no SQL: the words are looked for as words
    assert page.total <= 4
    assert len(index) == 4


def test_a_study_date_range_narrows_searches_and_facets(index) -> None:
    assert _studies(index.search(since="2026-01-02")) == ["3", "2"]  # newest first
    assert _studies(index.search(until="20260102")) == ["2", "1"]
    assert _studies(index.search("effusion", since="2026-01-01", until="2026-01-01")) == ["1"]
    assert index.search(since="2026-01-04").total == 0  # the dateless report is in no range
    assert index.search().total == 4 and index.search().hits[0].study_date is None
    assert index.report("1.2.826.0.1.3680043.8.498.2")["studyDate"] == "2026-01-02"
    assert {f["code"] for f in index.facets(until="2026-01-01")} >= {"J90"}
    assert "J90" not in {f["code"] for f in index.facets(since="2026-01-02")}  # study 3 denies it
    with pytest.raises(ReportIndexError, match="is not a date"):
        index.search(since="last week")
    with pytest.raises(ReportIndexError, match="range 2026-01-03 to 2026-01-01 is empty"):
        index.facets(since="2026-01-03", until="2026-01-01")
    with pytest.raises(ReportIndexError, match="is not a date"):
        index.add("1.2.826.0.1.3680043.8.498.9", "Edema.", {"Entities": []}, study_date="2026-13-01")


def test_bad_searches_get_one_clear_error(index) -> None:
    with pytest.raises(ReportIndexError, match="holds no word"):
        index.search("?!")
    with pytest.raises(ReportIndexError, match="not an ICD-10-CM code"):
        index.search(codes=["X99.99"])
    with pytest.raises(ReportIndexError, match="status 'maybe'"):
        index.search(status="maybe")
    with pytest.raises(ReportIndexError, match="limit must be a whole number from 1 to 100"):
        index.search(limit=1000)
    with pytest.raises(ReportIndexError, match="cursor is not one this index gave"):
        index.search(cursor="bm90LWpzb24")
    with pytest.raises(ReportIndexError, match="at most 500"):
        fts_query("x" * 501)
    with pytest.raises(ReportIndexError, match="not a DICOM UID"):
        index.add("study-1", "Edema.", {"Entities": []})
    with pytest.raises(ReportIndexError, match="no report of study"):
        index.report("1.2.3")
