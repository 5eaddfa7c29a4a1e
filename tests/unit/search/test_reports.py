"""Report analysis: the rule engine on hand-written reports, its quality on the synthetic reports against a
keyword baseline, the Comprehend Medical engine's chunking by contract (botocore's Stubber checks every request
against the service model), and bad input."""

from __future__ import annotations

import boto3
import numpy as np
import pytest
import simple_icd_10_cm as icd
from botocore.stub import Stubber

from dicomflow.demo.reports import chest_report
from dicomflow.demo.synthetic import CHEST_CLASSES, _chest_labels
from dicomflow.search import lexicon
from dicomflow.search.reports import (
    COMPREHEND_LIMIT,
    ComprehendMedicalEngine,
    ReportError,
    RuleEngine,
    chunks,
    report_findings,
    sections,
)

ENGINE = RuleEngine()
CHEXPERT = {"Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
            "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
            "Support Devices"}


def _says(text: str) -> dict[str, str]:
    return report_findings(ENGINE.infer_icd10cm(text))


def test_the_lexicon_covers_chexpert_and_every_code_is_a_billable_icd10cm_code() -> None:
    assert {f.name for f in lexicon.FINDINGS} == CHEXPERT
    for finding in lexicon.FINDINGS:
        for wording, code in finding.terms:
            assert icd.is_valid_item(code) and icd.is_leaf(code), (wording, code)
            assert wording == wording.lower().strip()


@pytest.mark.parametrize(("text", "expected"), [
    ("FINDINGS: No pneumothorax or pleural effusion. The heart is enlarged.\nIMPRESSION: Cardiomegaly.",
     {"Pneumothorax": "negative", "Pleural Effusion": "negative", "Cardiomegaly": "positive"}),
    ("There is no focal consolidation, but there is a small left effusion.",
     {"Consolidation": "negative", "Pleural Effusion": "positive"}),
    ("Possible small right pleural effusion. Pneumothorax cannot be excluded.",
     {"Pleural Effusion": "uncertain", "Pneumothorax": "uncertain"}),
    ("No change in the left lower lobe nodule.", {"Lung Lesion": "positive"}),
    ("INDICATION: Rule out pneumonia.\nFINDINGS: Lungs are clear.", {}),
    ("History: pneumothorax on the left. Findings: the pneumothorax has resolved.", {"Pneumothorax": "negative"}),
    ("Right chest tube in place. No evidence of edema, effusion, or rib fracture.",
     {"Support Devices": "positive", "Edema": "negative", "Pleural Effusion": "negative", "Fracture": "negative"}),
    ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": "positive", "Edema": "negative"}),
    ("Bibasilar atelectasis. Is there a pneumothorax?", {"Atelectasis": "positive", "Pneumothorax": "uncertain"}),
    ("pa and lateral views. mild pulmonary vascular congestion, no focal consolidation",
     {"Edema": "positive", "Consolidation": "negative"}),
])
def test_hand_written_reports(text, expected) -> None:
    assert _says(text) == expected


def test_entities_have_comprehend_medicals_shape_and_offsets_into_the_text() -> None:
    text = "Findings: Small left pleural effusion. No pneumothorax."
    result = ENGINE.infer_icd10cm(text)
    assert result["ModelVersion"] and [e["Id"] for e in result["Entities"]] == [0, 1]
    effusion, ptx = result["Entities"]
    for e in (effusion, ptx):
        assert e["Category"] == "MEDICAL_CONDITION" and e["Type"] == "DX_NAME"
        assert text[e["BeginOffset"]:e["EndOffset"]] == e["Text"]
        assert {"Score", "Attributes", "Traits", "ICD10CMConcepts"} <= set(e)
    assert effusion["ICD10CMConcepts"][0] == {"Description": "Pleural effusion, not elsewhere classified",
                                              "Code": "J90", "Score": 0.9}
    assert [a["Text"] for a in effusion["Attributes"] if a["Type"] == "DIRECTION"] == ["left"]
    assert {t["Name"] for t in ptx["Traits"]} == {"DIAGNOSIS", "NEGATION"}


def test_sections_are_found_and_a_report_without_headers_is_one_body() -> None:
    text = "EXAM: Chest PA.\nINDICATION: cough\nFindings: clear.\nImpression: normal."
    assert [s.name for s in sections(text)] == ["EXAM", "INDICATION", "FINDINGS", "IMPRESSION"]
    assert [s.name for s in sections("The lungs are clear. No effusion.")] == ["BODY"]
    assert _says("The lungs are clear. No effusion.") == {"Pleural Effusion": "negative"}


def _keyword_baseline(text: str) -> dict[str, str]:
    """Every wording found counts as a positive finding (no context)."""
    return {m.finding.name: "positive" for m in lexicon.find_terms(text)}


def _precision_recall(pairs: list[tuple[dict[str, str], dict[str, str]]], status: str) -> tuple[float, float]:
    tp = sum(1 for truth, got in pairs for f, s in got.items() if s == status and truth.get(f) == status)
    predicted = sum(1 for _, got in pairs for s in got.values() if s == status)
    actual = sum(1 for truth, _ in pairs for s in truth.values() if s == status)
    return tp / max(1, predicted), tp / max(1, actual)


def test_on_synthetic_reports_positives_and_negations_reach_095_and_beat_keywords() -> None:
    reports = [chest_report(_chest_labels(np.random.default_rng([7, 1, i])), f"study-{i}", seed=7)
               for i in range(400)]
    ours = [(r.mentions, _says(r.text)) for r in reports]
    keywords = [(r.mentions, _keyword_baseline(r.text)) for r in reports]
    for status in ("positive", "negative"):
        precision, recall = _precision_recall(ours, status)
        base_p, base_r = _precision_recall(keywords, status)
        print(f"\n{status}: precision {precision:.3f} recall {recall:.3f}; keyword baseline {base_p:.3f} {base_r:.3f}")
        assert precision >= 0.95 and recall >= 0.95, (status, precision, recall)
        assert min(precision, recall) >= min(base_p, base_r) + 0.3, (status, base_p, base_r)


def test_synthetic_reports_say_what_the_labels_are_and_are_deterministic() -> None:
    for i in range(100):
        labels = _chest_labels(np.random.default_rng([3, 1, i]))
        report = chest_report(labels, f"k{i}", seed=3)
        asserted = {f for f, s in report.mentions.items() if s in ("positive", "uncertain")}
        assert asserted == {c for c in labels if c in CHEST_CLASSES}
        assert chest_report(labels, f"k{i}", seed=3) == report


def test_chunks_cut_at_sentences_below_the_limit_and_give_the_text_back() -> None:
    sentence = "Small left pleural effusion with adjacent atelectasis, unchanged from the prior study. "
    text = "FINDINGS: " + sentence * 300 + "IMPRESSION: No pneumothorax."
    pieces = chunks(text)
    assert len(pieces) >= 3 and "".join(p for _, p in pieces) == text
    assert all(len(p.encode("utf-8")) < COMPREHEND_LIMIT for _, p in pieces)
    assert all(p.endswith(". ") for _, p in pieces[:-1])
    assert [o for o, _ in pieces] == [sum(len(p) for _, p in pieces[:k]) for k in range(len(pieces))]
    wide = "é" * 12_000  # two bytes each, no boundary at all: cut anywhere, still below the limit in bytes
    assert all(len(p.encode("utf-8")) < COMPREHEND_LIMIT for _, p in chunks(wide))


def test_comprehend_engine_sends_chunks_and_maps_offsets_back() -> None:
    client = boto3.client("comprehendmedical", region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # noqa: S106 - a stubbed client never sends
    first = "Small left effusion. " * 476  # 9 996 characters: the next sentence would pass the limit
    text = first + "No pneumothorax."
    pieces = chunks(text)
    assert len(pieces) == 2 and pieces[1] == (len(first), "No pneumothorax.")
    entity = {"Id": 0, "Text": "pneumothorax", "Category": "MEDICAL_CONDITION", "Type": "DX_NAME", "Score": 0.98,
              "BeginOffset": 3, "EndOffset": 15, "Attributes": [], "Traits": [{"Name": "NEGATION", "Score": 0.9}],
              "ICD10CMConcepts": []}
    effusion = {**entity, "Text": "effusion", "BeginOffset": 11, "EndOffset": 19, "Traits": [],
                "ICD10CMConcepts": [{"Description": "Pleural effusion, not elsewhere classified", "Code": "J90",
                                     "Score": 0.8}]}
    with Stubber(client) as stub:
        stub.add_response("infer_icd10_cm", {"Entities": [effusion], "ModelVersion": "0.1"},
                          {"Text": pieces[0][1]})
        stub.add_response("infer_icd10_cm", {"Entities": [entity], "ModelVersion": "0.1"}, {"Text": pieces[1][1]})
        result = ComprehendMedicalEngine(client).infer_icd10cm(text)
        stub.assert_no_pending_responses()
    got = result["Entities"]
    assert [e["Id"] for e in got] == [0, 1]
    assert text[got[1]["BeginOffset"]:got[1]["EndOffset"]] == "pneumothorax"
    # an entity with no ICD-10-CM concept is still read (by its text), never an IndexError
    assert report_findings(result) == {"Pleural Effusion": "positive", "Pneumothorax": "negative"}


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"), ("   \n", "empty"), (None, "must be text"), (b"no effusion", "must be text"),
    ("x" * 200_001, "more than 200000"),
])
def test_bad_reports_get_a_clear_error(text, message) -> None:
    with pytest.raises(ReportError, match=message):
        ENGINE.infer_icd10cm(text)
