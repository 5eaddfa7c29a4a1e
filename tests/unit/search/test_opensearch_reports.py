"""The OpenSearch report index by contract: the exact requests opensearch-py sends and the reading of the
answers (no OpenSearch server runs here; see ``opensearch_script``). The embedded index's own tests
(``test_report_index.py``) run for real; these check that the same questions become the right requests."""

from __future__ import annotations

import pytest
from opensearch_script import Scripted

from dicomflow.search.opensearch_reports import OpenSearchReportIndex, document, facets_body, index_body, search_body
from dicomflow.search.report_index import ReportIndexError, cursor_at, open_report_index
from dicomflow.search.reports import RuleEngine

INDEX = "dicomflow-reports"
STUDY = "1.2.826.0.1.3680043.8.498.77"
TEXT = "FINDINGS: No pleural effusion. Possible small pneumothorax. Cardiomegaly."


def _opened(client) -> OpenSearchReportIndex:
    Scripted.script += [("HEAD", f"/{INDEX}", 404, {}), ("PUT", f"/{INDEX}", 200, {"acknowledged": True})]
    return OpenSearchReportIndex.open(client, INDEX)


def test_a_report_is_one_document_per_study_with_its_codes_per_status_and_their_ancestors(client) -> None:
    ix = _opened(client)
    assert Scripted.sent[1]["body"] == index_body()
    assert index_body()["mappings"]["properties"]["text"] == {"type": "text", "analyzer": "english"}
    Scripted.script.append(("PUT", f"/{INDEX}/_doc/{STUDY}", 200, {"result": "created"}))
    ix.add(STUDY, TEXT, RuleEngine().infer_icd10cm(TEXT), accession="ACC1")
    sent = Scripted.sent[-1]
    assert sent["params"] == {"refresh": "wait_for"}  # visible to the next search
    doc = sent["body"]
    assert (doc["study_uid"], doc["accession"], doc["text"]) == (STUDY, "ACC1", TEXT)
    assert doc["mentioned_negative"] == ["J90"] and doc["codes_negative"] == ["10", "J90", "J90-J94"]
    assert doc["mentioned_uncertain"] == ["J93.9"] and doc["codes_uncertain"] == ["10", "J90-J94", "J93", "J93.9"]
    assert doc["mentioned_positive"] == ["I51.7"] and set(doc["codes_positive"]) == {"I51.7", "I51", "I30-I5A", "9"}
    assert set(doc["codes_any"]) == set(doc["codes_negative"]) | set(doc["codes_uncertain"]) | set(
        doc["codes_positive"])
    assert [(m["code"], m["status"], TEXT[m["begin"]:m["end"]]) for m in doc["mentions"]] == [
        ("J90", "negative", "pleural effusion"), ("J93.9", "uncertain", "pneumothorax"),
        ("I51.7", "positive", "Cardiomegaly")]
    assert doc == {**document(STUDY, TEXT, RuleEngine().infer_icd10cm(TEXT), "ACC1"), "added": doc["added"]}


def test_a_search_is_phrases_and_filters_and_its_answer_becomes_a_page(client) -> None:
    ix = _opened(client)
    hit = {"_score": 3.5, "_source": {"study_uid": STUDY, "accession": "ACC1", "text": TEXT, "mentions": [
        {"finding": "Pleural Effusion", "code": "J90", "status": "negative", "begin": 13, "end": 29,
         "text": "pleural effusion"}]}, "highlight": {"text": ["FINDINGS: No [pleural] [effusion]."]}}
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, {"hits": {"total": {"value": 3}, "hits": [hit]}}))
    page = ix.search('"pleural effusion" small', codes=["j90"], status="negative", limit=1)
    body = Scripted.sent[-1]["body"]
    assert body == search_body('"pleural effusion" small', ["J90"], "negative", 1, 0)
    assert body["query"] == {"bool": {"must": [{"match_phrase": {"text": "pleural effusion"}},
                                               {"match_phrase": {"text": "small"}}],
                                      "filter": [{"terms": {"codes_negative": ["J90"]}}]}}
    assert body["highlight"]["fields"]["text"]["pre_tags"] == ["["] and body["track_total_hits"] is True
    assert page.total == 3 and page.next_cursor == cursor_at(1)
    (found,) = page.hits
    assert (found.study_uid, found.accession, found.score) == (STUDY, "ACC1", 3.5)
    assert found.snippet == "FINDINGS: No [pleural] [effusion]."
    assert found.mentions[0]["description"].lower().startswith("pleural effusion")
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, {"hits": {"total": {"value": 3}, "hits": [hit]}}))
    ix.search(status="uncertain", cursor=page.next_cursor, limit=1)
    again = Scripted.sent[-1]["body"]
    assert again["from"] == 1 and "highlight" not in again
    assert again["query"] == {"bool": {"must": [{"match_all": {}}],
                                       "filter": [{"exists": {"field": "codes_uncertain"}}]}}


def test_a_study_date_range_is_a_range_filter_on_the_stored_date(client) -> None:
    ix = _opened(client)
    assert index_body()["mappings"]["properties"]["study_date"] == {"type": "date", "format": "strict_date"}
    Scripted.script.append(("PUT", f"/{INDEX}/_doc/{STUDY}", 200, {"result": "created"}))
    ix.add(STUDY, TEXT, RuleEngine().infer_icd10cm(TEXT), study_date="20260105")
    assert Scripted.sent[-1]["body"]["study_date"] == "2026-01-05"
    hit = {"_score": 1.0, "_source": {"study_uid": STUDY, "study_date": "2026-01-05", "text": TEXT, "mentions": []}}
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, {"hits": {"total": {"value": 1}, "hits": [hit]}}))
    page = ix.search(codes=["J90"], since="2026-01-01", until="20260131")
    assert Scripted.sent[-1]["body"]["query"]["bool"]["filter"] == [
        {"terms": {"codes_any": ["J90"]}}, {"range": {"study_date": {"gte": "2026-01-01", "lte": "2026-01-31"}}}]
    assert page.hits[0].study_date == "2026-01-05"
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, {"hits": {"total": {"value": 0}, "hits": []},
                                                                 "aggregations": {"codes": {"buckets": []},
                                                                                  "mentioned_positive": {
                                                                                      "buckets": []}}}))
    ix.facets(since="2026-02-01")
    assert Scripted.sent[-1]["body"]["query"]["bool"]["filter"] == [{"range": {"study_date": {"gte": "2026-02-01"}}}]
    sent = len(Scripted.sent)
    with pytest.raises(ReportIndexError, match="is not a date"):
        ix.search(until="soon")
    assert len(Scripted.sent) == sent  # refused before anything is sent


def test_text_a_user_types_is_never_query_syntax(client) -> None:
    ix = _opened(client)
    typed = 'effusion) OR *:* {"script": 1} text:"x'
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, {"hits": {"total": {"value": 0}, "hits": []}}))
    ix.search(typed)
    query = Scripted.sent[-1]["body"]["query"]
    assert all(set(clause) == {"match_phrase"} for clause in query["bool"]["must"])
    assert "query_string" not in str(Scripted.sent[-1]["body"]) and "script" not in Scripted.sent[-1]["body"]


def test_facets_are_terms_aggregations_with_the_hierarchy_and_what_reports_name_themselves(client) -> None:
    ix = _opened(client)
    answer = {"hits": {"total": {"value": 2}, "hits": []}, "aggregations": {
        "codes": {"buckets": [{"key": "10", "doc_count": 2}, {"key": "J90", "doc_count": 1}]},
        "mentioned_positive": {"buckets": [{"key": "J90", "doc_count": 1}]}}}
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, answer))
    rows = ix.facets("effusion", limit=5)
    assert Scripted.sent[-1]["body"] == facets_body("effusion", [], "positive", 5)
    assert Scripted.sent[-1]["body"]["aggs"]["codes"]["terms"] == {
        "field": "codes_positive", "size": 5, "order": [{"_count": "desc"}, {"_key": "asc"}]}
    assert [(r["code"], r["kind"], r["reports"], r["parent"], r["mentioned"]) for r in rows] == [
        ("10", "chapter", 2, None, False), ("J90", "code", 1, "J90-J94", True)]


def test_bad_input_is_refused_before_anything_is_sent(client) -> None:
    ix = _opened(client)
    sent = len(Scripted.sent)
    for bad in ({"limit": 0}, {"limit": 101}, {"codes": ["nonsense"]}, {"status": "maybe"}, {"cursor": "garbage"},
                {"cursor": cursor_at(9_990), "limit": 20}):
        with pytest.raises(ReportIndexError):
            ix.search("effusion", **bad)
    with pytest.raises(ReportIndexError, match="not a DICOM UID"):
        ix.add("not-a-uid", TEXT, {"Entities": []})
    with pytest.raises(ReportIndexError, match="holds no word"):
        ix.search('"" ***')
    assert len(Scripted.sent) == sent


def test_configuration_selects_the_backend(client, monkeypatch, tmp_path) -> None:
    from dicomflow.search import opensearch
    from dicomflow.search.report_index import ReportIndex

    monkeypatch.delenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", raising=False)
    with open_report_index(tmp_path / "reports.sqlite") as embedded:
        assert isinstance(embedded, ReportIndex)
    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", "https://search.example")
    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_REPORTS_INDEX", INDEX)
    monkeypatch.setattr(opensearch, "connect", lambda url, region=None: client)
    Scripted.script.append(("HEAD", f"/{INDEX}", 404, {}))
    with pytest.raises(ReportIndexError, match="no OpenSearch report index"):
        open_report_index(tmp_path / "unused", create=False)
    Scripted.script += [("HEAD", f"/{INDEX}", 200, {}), ("POST", f"/{INDEX}/_count", 200, {"count": 7})]
    with open_report_index(tmp_path / "unused") as remote:
        assert isinstance(remote, OpenSearchReportIndex) and len(remote) == 7
