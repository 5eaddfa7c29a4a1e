"""The AppSync Lambda resolver: an AppSync direct-Lambda event for each query field gives what the engine
gives, the identity's groups decide what is shown, and malformed events are refused with a message."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest

from dicomflow.api import appsync
from dicomflow.api.auth import Forbidden, Unauthorized
from dicomflow.api.engine import Engine
from dicomflow.api.resolvers import BadQuery
from dicomflow.paths import REPO_ROOT
from dicomflow.search.report_index import ReportIndex
from dicomflow.search.reports import RuleEngine
from dicomflow.search.vectors import ImageVector, VectorIndex

UID = "1.2.826.0.1.3680043.8.498.55{}"
REPORTS = ["FINDINGS: Small right pleural effusion.", "FINDINGS: No pleural effusion. Cardiomegaly."]


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # presigning needs credentials, not a network
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", raising=False)
    rules = RuleEngine()
    with ReportIndex.open(tmp_path / "reports.sqlite") as ix:
        for n, text in enumerate(REPORTS):
            ix.add(UID.format(100 + n), text, rules.infer_icd10cm(text), accession=f"A-{n}")
    rng = np.random.default_rng(2)
    with VectorIndex.open(tmp_path / "images", model={"name": "chest", "version": "1"}, dimensions=8) as ix:
        ix.add([ImageVector(UID.format(200 + n), UID.format(100 + n % 2), rng.standard_normal(8), modality="DX",
                            thumbnail=f"s3://bucket/search/thumbnails/{n}.png") for n in range(4)])
    return Engine(tmp_path / "reports.sqlite", tmp_path / "images")


def _event(field: str, arguments: dict, groups=("radiologist",)) -> dict:
    return {"arguments": arguments, "identity": {"username": "dr-a", "groups": list(groups), "sub": "x",
                                                 "issuer": "https://cognito-idp.us-east-1.amazonaws.com/p"},
            "info": {"parentTypeName": "Query", "fieldName": field, "variables": {}}, "source": None}


def test_each_field_resolves_as_the_engine_answers(engine, tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="dicomflow.audit"):
        page = appsync.handle(_event("reports", {"text": "effusion", "first": 5}), engine)
    with ReportIndex.open(tmp_path / "reports.sqlite", create=False) as ix:
        want = ix.search("effusion", limit=5)
    assert [(r["studyInstanceUID"], r["score"]) for r in page["reports"]] == [(h.study_uid, h.score) for h in want.hits]
    audit = json.loads(caplog.records[-1].getMessage())
    assert audit["user"] == "dr-a" and audit["query"] == "reports" and "effusion" not in caplog.text
    similar = appsync.handle(_event("similarImages", {"image": UID.format(200), "k": 2}), engine)
    with VectorIndex.open(tmp_path / "images") as ix:
        assert [n["image"]["sopInstanceUID"] for n in similar["neighbours"]] == [
            n.sop_uid for n in ix.similar_to(UID.format(200), 2)]
    link = similar["neighbours"][0]["image"]["thumbnailUrl"]
    assert "X-Amz-Expires=300" in link and "X-Amz-Signature=" in link and "/search/thumbnails/" in link
    study = appsync.handle(_event("study", {"uid": UID.format(101)}, groups=("researcher",)), engine)
    assert study["report"]["text"] is None and {m["code"] for m in study["report"]["mentions"]} >= {"J90"}
    assert appsync.handle(_event("me", {}, groups=()), engine) == {"username": "dr-a", "groups": [],
                                                                 "canReadReports": False}


def test_group_rules_and_bad_events(engine) -> None:
    with pytest.raises(Forbidden, match="radiologist"):
        appsync.handle(_event("reports", {"text": "effusion"}, groups=("researcher",)), engine)
    with pytest.raises(BadQuery, match="no resolver here"):
        appsync.handle({**_event("me", {}), "info": {"parentTypeName": "Mutation", "fieldName": "me"}}, engine)
    with pytest.raises(BadQuery, match="no resolver here"):
        appsync.handle(_event("__schema", {}), engine)
    with pytest.raises(BadQuery, match="JSON object"):
        appsync.handle(["not", "an", "event"], engine)
    with pytest.raises(BadQuery, match="arguments"):
        appsync.handle(_event("reports", ["x"]), engine)  # type: ignore[arg-type]
    with pytest.raises(Unauthorized, match="AMAZON_COGNITO_USER_POOLS"):
        appsync.handle({**_event("me", {}), "identity": {"sourceIp": ["1.2.3.4"]}}, engine)  # an API key caller
    # what the Lambda raises is written to CloudWatch too: the message names the problem, not the value
    with pytest.raises(BadQuery, match="not a DICOM UID") as err:
        appsync.handle(_event("study", {"uid": "1.2.3'; DROP TABLE reports; --"}), engine)
    assert "DROP" not in str(err.value)
    with pytest.raises(Exception, match="is not an ICD-10-CM code") as err:
        appsync.handle(_event("facets", {"codes": ["JANE.DOE"]}), engine)
    assert "JANE" not in str(err.value)
    with pytest.raises(BadQuery, match="no report or image") as err:
        appsync.handle(_event("study", {"uid": "1.2.826.0.1.3680043.8.498.999"}), engine)


def test_the_lambda_handler_builds_its_engine_from_the_runtime_settings(engine, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DICOMFLOW_SEARCH_REPORTS_INDEX", str(tmp_path / "reports.sqlite"))
    monkeypatch.setenv("DICOMFLOW_SEARCH_INDEX_DIR", str(tmp_path / "images"))
    spec = importlib.util.spec_from_file_location("search_api_handler", REPO_ROOT / "lambdas/search_api/handler.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    found = handler.lambda_handler(_event("facets", {"first": 3}), None)
    with ReportIndex.open(tmp_path / "reports.sqlite", create=False) as ix:
        assert found == ix.facets(limit=3)
