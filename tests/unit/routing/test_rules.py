"""Routing rules: parsing (YAML and JSON), anchored matching, and errors that name the line."""

from __future__ import annotations

import json

import pytest

from dicomflow.dicom.elements import RESULT_SOP_CLASSES
from dicomflow.routing.router import is_own_result
from dicomflow.routing.rules import RulesError, SeriesInfo, parse_rules

GOOD = """\
version: 1
rules:
  - name: hippocampus
    endpoint: hippo
    outputs: [json, sr, seg]
    match:
      modality: mr
      seriesDescription: "T1"
      imageType: [ORIGINAL, PRIMARY]
      minSlices: 10
  - name: chest
    endpoint: chest
    match:
      modality: [CR, DX]
"""


def _series(**kw) -> SeriesInfo:
    base = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "modality": "MR", "description": "T1",
            "image_type": ("ORIGINAL", "PRIMARY", "M"), "slices": 20}
    return SeriesInfo(**{**base, **kw})


def test_rules_match_anchored_and_case_insensitive() -> None:
    rules = parse_rules(GOOD)
    assert [r.name for r in rules.for_series(_series())] == ["hippocampus"]
    assert rules.rules[0].outputs == ("json", "sr", "seg") and rules.rules[1].outputs == ("json", "sr")
    assert rules.for_series(_series(description="T1post")) == []  # not a substring search
    assert rules.for_series(_series(image_type=("DERIVED", "PRIMARY"))) == []
    assert rules.for_series(_series(slices=9)) == []
    assert [r.name for r in rules.for_series(_series(modality="dx", description=""))] == ["chest"]


def test_json_rules_work_too() -> None:
    text = json.dumps({"version": 1, "rules": [{"name": "a", "endpoint": "e", "match": {"modality": "CT"}}]})
    assert parse_rules(text).rules[0].modality == ("CT",)


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace('"T1"', '"T1("'), r"line 7: rule 'hippocampus': seriesDescription 'T1\(' is not a regular"),
    (GOOD.replace("minSlices: 10", "minSlice: 10"), r"line 7: rule 'hippocampus': unknown match key\(s\) minSlice"),
    (GOOD.replace("outputs: [json, sr, seg]", "outputs: [html]"), r"line 3: rule 'hippocampus': outputs must be"),
    (GOOD.replace("    match:\n      modality: [CR, DX]\n", ""), r"rule 'chest' needs a match"),
    (GOOD.replace("endpoint: chest", "endpoint: not an endpoint"), r"line 11: rule 'chest': endpoint must be"),
    (GOOD.replace("version: 1", "version: 2"), r"line 1: version must be 1"),
    (GOOD.replace("  - name: chest", "  - name: hippocampus"), r"two rules are named 'hippocampus'"),
    (GOOD.replace("rules:\n", "rules:\n  - [\n", 1), r"line \d+: not valid YAML/JSON"),
    (GOOD.replace("    endpoint: hippo\n", "    endpoint: hippo\n    colour: red\n"),
     r"line 3: rule 1 has unknown key\(s\) colour"),
])
def test_a_bad_file_is_refused_with_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules(text, "rules.yaml")


def test_the_systems_own_results_are_recognised() -> None:
    assert is_own_result(_series(sop_class=next(iter(RESULT_SOP_CLASSES))))
    assert is_own_result(_series(manufacturer="dicomflow"))
    assert not is_own_result(_series(sop_class="1.2.840.10008.5.1.4.1.1.4", manufacturer="ACME"))
