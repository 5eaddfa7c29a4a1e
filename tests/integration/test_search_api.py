"""The local search API over HTTP, signed in with the emulated Cognito: real user pools, app clients, groups and
tokens from moto's cognito-idp, checked against its JWKS; the real embedded indexes; thumbnails as presigned links
to the emulated S3.

What it proves: the API answers what the engine answers; every bad token is 401 and a group rule 403; an
injection attempt in any string argument is only text; oversized, deep and costly queries are refused; the
audit log names the user and the query kind, never the words searched."""

from __future__ import annotations

import json
import logging
import time

import jwt
import pytest
import requests
from moto.utilities.utils import load_resource
from search_api_setup import REPORTS, UID, png, seeded_indexes, seeded_pools, serving

from dicomflow.api.auth import issuer_of
from dicomflow.api.engine import LINK_SECONDS
from dicomflow.api.users import sign_in
from dicomflow.search.report_index import ReportIndex
from dicomflow.search.vectors import VectorIndex

pytestmark = pytest.mark.integration
INJECTIONS = ['") { __schema { types { name } } } #', "' OR 1=1 --", "*) DROP TABLE reports; --",
              '{"$where": "1"}', "effusion\" OR \"1\"=\"1", "../../etc/passwd", "\\u0000\u202e"]

REPORTS_Q = """query($text: String, $codes: [String!], $status: MentionStatus, $first: Int, $after: String,
               $since: String, $until: String) {
  reports(text: $text, codes: $codes, status: $status, first: $first, after: $after, since: $since, until: $until) {
    total nextCursor reports { studyInstanceUID accessionNumber studyDate score snippet
                               mentions { code status begin end text } } } }"""
FACETS_Q = """query($text: String, $codes: [String!], $since: String, $until: String) {
  facets(text: $text, codes: $codes, since: $since, until: $until, first: 10) {
    code kind reports parent mentioned } }"""
SIMILAR_Q = """query($image: ID, $study: ID, $filter: ImageFilter) {
  similarImages(image: $image, study: $study, k: 3, filter: $filter) {
    query model { name version } neighbours { rank score image { sopInstanceUID labels thumbnailUrl } } } }"""
STUDY_Q = """query($uid: ID!) { study(uid: $uid) { studyInstanceUID accessionNumber
  report { text mentions { code status } } images { sopInstanceUID modality labels thumbnailUrl } } }"""


@pytest.fixture(scope="module")
def pools(local_cloud):
    with seeded_pools("search-api-tests") as found:
        yield found


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, local_cloud):
    return seeded_indexes(tmp_path_factory.mktemp("search-api"))


@pytest.fixture(scope="module")
def server(local_cloud, pools, indexes):
    with serving(local_cloud.settings, pools, indexes, indexes / "no-page") as url:
        yield url


def _post(url: str, body: bytes | dict, token: str | None = None, ctype: str = "application/json"
          ) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": ctype, **({"Authorization": token} if token else {})}
    resp = requests.post(f"{url}/graphql", data=data, headers=headers, timeout=30)
    return resp.status_code, resp.json()


def _token(pools, user="dr-rad", client="client") -> str:
    return sign_in(pools[client], user, pools["passwords"][user])["IdToken"]


def _ask(server, token, query, variables=None) -> tuple[int, dict]:
    return _post(server, {"query": query, "variables": variables or {}}, token)


def test_each_query_answers_what_the_engine_answers(server, pools, indexes) -> None:
    token = _token(pools)
    with ReportIndex.open(indexes / "reports.sqlite", create=False) as reports, \
            VectorIndex.open(indexes / "images") as images:
        status, doc = _ask(server, token, REPORTS_Q, {"text": "effusion", "first": 2})
        assert status == 200 and "errors" not in doc, doc
        page = reports.search("effusion", limit=2)
        got = doc["data"]["reports"]
        assert (got["total"], got["nextCursor"]) == (page.total, page.next_cursor) and page.total == 3
        assert [(r["studyInstanceUID"], r["score"], r["snippet"]) for r in got["reports"]] == [
            (h.study_uid, h.score, h.snippet) for h in page.hits]
        status, doc = _ask(server, token, REPORTS_Q, {"codes": ["J90"], "status": "NEGATIVE"})
        assert [r["studyInstanceUID"] for r in doc["data"]["reports"]["reports"]] == [UID.format(101)]
        status, doc = _ask(server, token, REPORTS_Q, {"text": "effusion", "since": "2026-01-02",
                                                      "until": "2026-01-03"})
        assert [(r["studyInstanceUID"], r["studyDate"], r["score"]) for r in doc["data"]["reports"]["reports"]] == [
            (h.study_uid, h.study_date, h.score)
            for h in reports.search("effusion", since="2026-01-02", until="2026-01-03").hits]
        assert {r["studyDate"] for r in doc["data"]["reports"]["reports"]} == {"2026-01-02", "2026-01-03"}
        status, doc = _ask(server, token, FACETS_Q, {"since": "2026-01-02"})
        assert doc["data"]["facets"] == [{k: f[k] for k in ("code", "kind", "reports", "parent", "mentioned")}
                                         for f in reports.facets(since="2026-01-02", limit=10)]
        status, doc = _ask(server, token, REPORTS_Q, {"since": "yesterday"})
        assert doc["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT" and "not a date" in doc["errors"][0][
            "message"]

        status, doc = _ask(server, token, FACETS_Q, {"text": "effusion"})
        assert status == 200 and doc["data"]["facets"] == [
            {k: f[k] for k in ("code", "kind", "reports", "parent", "mentioned")}
            for f in reports.facets("effusion", status="positive", limit=10)]

        status, doc = _ask(server, token, SIMILAR_Q, {"image": UID.format(200), "filter": {"label": "Edema"}})
        assert status == 200 and "errors" not in doc, doc
        want = images.similar_to(UID.format(200), 3, label="Edema")
        got = doc["data"]["similarImages"]
        assert got["model"] == {"name": "chest", "version": "3"} and len(want) == 3
        assert [(n["rank"], n["score"], n["image"]["sopInstanceUID"]) for n in got["neighbours"]] == [
            (n.rank, n.score, n.sop_uid) for n in want]

        status, doc = _ask(server, token, STUDY_Q, {"uid": UID.format(101)})
        study = doc["data"]["study"]
        assert study["accessionNumber"] == "A-1" and study["report"]["text"] == REPORTS[1]
        assert [i["sopInstanceUID"] for i in study["images"]] == images.images_of_study(UID.format(101))
        assert [(i["modality"], i["labels"]) for i in study["images"]] == [("DX", []), ("DX", ["Edema"])]
        assert all("X-Amz-Signature=" in i["thumbnailUrl"] for i in study["images"])

    status, doc = _ask(server, token, STUDY_Q, {"uid": UID.format(999)})
    assert doc["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT" and "no report or image" in doc["errors"][0][
        "message"]
    # the thumbnail link is presigned and short-lived, and serves the PNG (moto does not check S3 signatures, so
    # that an unsigned link fails is AWS's to show)
    first = got["neighbours"][0]["image"]
    link, n = first["thumbnailUrl"], int(first["sopInstanceUID"].rsplit(".", 1)[1]) - 77200
    assert f"X-Amz-Expires={LINK_SECONDS}" in link and "X-Amz-Signature=" in link
    assert requests.get(link, timeout=10).content == png(n * 20)


def _expired_moto_token(pools) -> str:
    """A token exactly as moto issues them (its own signing key, kid "dummy"), expired an hour ago."""
    key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(load_resource("cognitoidp/resources/jwks-private.json")))
    now = int(time.time())
    claims = {"iss": issuer_of(pools["pool"], "us-east-1"), "sub": "x", "aud": pools["client"], "token_use": "id",
              "iat": now - 7200, "auth_time": now - 7200, "exp": now - 3600, "cognito:username": "dr-rad",
              "cognito:groups": ["radiologist"]}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "dummy"})


def test_bad_tokens_are_401_and_group_rules_403(server, pools) -> None:
    good = _token(pools)
    header, payload, signature = good.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["cognito:groups"] = ["radiologist", "admin"]
    tampered = ".".join([header, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), signature])
    cases = {
        "no token": None, "not a JWT": "Bearer not-a-token", "tampered claims": tampered,
        "expired": _expired_moto_token(pools),
        "another pool": sign_in(pools["other_pool_client"], "dr-rad", pools["passwords"]["dr-rad"])["IdToken"],
        "another app client": _token(pools, client="other_client"),
        "a refresh token": sign_in(pools["client"], "dr-rad", pools["passwords"]["dr-rad"])["RefreshToken"],
    }
    said = {"no token": "sign in", "expired": "expired", "another pool": "another user pool",
            "another app client": "another app client", "tampered claims": "not valid"}
    for why, token in cases.items():
        status, doc = _ask(server, token, "{ me { username } }")
        assert status == 401, (why, doc)
        assert doc["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED" and "data" not in doc, why
        assert said.get(why, "") in doc["errors"][0]["message"], (why, doc)
    for token in (good, "Bearer " + good, sign_in(pools["client"], "dr-rad", pools["passwords"]["dr-rad"])[
            "AccessToken"]):
        status, doc = _ask(server, token, "{ me { username groups canReadReports } }")
        assert status == 200 and doc["data"]["me"] == {"username": "dr-rad", "groups": ["radiologist"],
                                                       "canReadReports": True}, doc
    researcher = _token(pools, "ms-res")
    status, doc = _ask(server, researcher, REPORTS_Q, {"text": "effusion"})
    assert status == 403 and doc["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "radiologist" in doc["errors"][0]["message"]
    status, doc = _ask(server, researcher, REPORTS_Q, {"codes": ["J90"]})  # codes without words: allowed
    assert status == 200 and doc["data"]["reports"]["total"] == 3
    assert all(r["snippet"] is None and all(m["text"] is None for m in r["mentions"])
               for r in doc["data"]["reports"]["reports"])
    # nor the identifiers a study carries beside its UID
    assert all(r["accessionNumber"] is None and r["studyDate"] is None for r in doc["data"]["reports"]["reports"])
    status, doc = _ask(server, researcher, STUDY_Q, {"uid": UID.format(101)})
    assert doc["data"]["study"]["accessionNumber"] is None and doc["data"]["study"]["report"]["text"] is None


def test_an_injection_in_any_string_argument_is_only_text(server, pools, indexes) -> None:
    token = _token(pools)
    with ReportIndex.open(indexes / "reports.sqlite", create=False) as reports:
        before = reports.search(None, limit=10).total
    for attack in INJECTIONS:
        for query, variables in ((REPORTS_Q, {"text": attack}), (REPORTS_Q, {"codes": [attack]}),
                                 (REPORTS_Q, {"after": attack}), (REPORTS_Q, {"since": attack}),
                                 (REPORTS_Q, {"until": attack}), (FACETS_Q, {"text": attack}),
                                 (FACETS_Q, {"codes": [attack]}), (SIMILAR_Q, {"image": attack}),
                                 (SIMILAR_Q, {"study": attack}),
                                 (SIMILAR_Q, {"image": UID.format(200), "filter": {
                                     "modality": attack, "label": attack, "viewPosition": attack,
                                     "bodyPart": attack}}),
                                 (STUDY_Q, {"uid": attack})):
            status, doc = _ask(server, token, query, variables)
            assert status == 200, (attack, variables, doc)
            if "errors" in doc:  # refused as bad input with a message, never a server error
                assert {e["extensions"]["code"] for e in doc["errors"]} == {"BAD_USER_INPUT"}, (attack, doc)
            elif "reports" in doc["data"]:
                assert doc["data"]["reports"]["total"] == 0, (attack, doc)
            elif "similarImages" in doc["data"]:
                assert doc["data"]["similarImages"]["neighbours"] == [], (attack, doc)
            elif "facets" in doc["data"]:
                assert doc["data"]["facets"] == [], (attack, doc)
    with ReportIndex.open(indexes / "reports.sqlite", create=False) as reports:
        assert reports.search(None, limit=10).total == before == len(REPORTS)


def test_oversized_deep_costly_and_malformed_requests_are_refused(server, pools) -> None:
    token = _token(pools)
    deep = "{ study(uid: \"1.2.3\") { report { mentions { code } } images { sopInstanceUID } } }"
    assert _ask(server, token, deep)[0] == 200  # four levels: fine
    fragments = "fragment F on Query { study(uid: \"1.2.3\") { images { sopInstanceUID } } } "
    nested = "query { ...F } " + fragments
    assert _ask(server, token, nested)[0] == 200
    too_deep = "{ a: __schema { types { fields { type { ofType { ofType { name } } } } } } }"
    status, doc = _ask(server, token, too_deep)
    assert status == 400 and "levels deep" in " ".join(e["message"] for e in doc["errors"])
    status, doc = _ask(server, token, "{ me { username } }" + " " * 10_001)
    assert status == 400 and "characters" in doc["errors"][0]["message"]
    costly = "{ " + " ".join(f"r{i}: reports(first: 100) {{ reports {{ mentions {{ code }} }} }}"
                             for i in range(60)) + " }"
    status, doc = _ask(server, token, costly)
    assert status == 400 and "cost" in doc["errors"][0]["message"].lower()
    status, doc = _post(server, b"x" * (65 * 1024), token)
    assert status == 413
    status, doc = _post(server, b"{not json", token)
    assert status == 400 and "JSON" in doc["errors"][0]["message"]
    status, doc = _post(server, b"[" * 200 + b"]" * 200, token)
    assert status == 400
    status, doc = _post(server, {"query": "{ me { username } }"}, token, ctype="text/plain")
    assert status == 415
    status, doc = _ask(server, token, "{ reports(first: 101) { total } }")
    assert status == 200 and doc["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_searches_are_audited_without_what_was_searched(server, pools, caplog) -> None:
    token = _token(pools)
    with caplog.at_level(logging.DEBUG):
        _ask(server, token, REPORTS_Q, {"text": "pneumothorax", "codes": ["J93"]})
        _ask(server, _token(pools, "ms-res"), REPORTS_Q, {"text": "pneumothorax"})
        # values written into the query itself, refused for the group, for the input or for the index
        _ask(server, _token(pools, "ms-res"), '{ reports(text: "Jane Doe 1961") { total } }')
        _ask(server, token, '{ study(uid: "Jane-Doe-1961") { studyInstanceUID } }')
        _ask(server, token, '{ facets(codes: ["JANE.DOE"]) { code } }')
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomflow.audit"]
    assert [(x["user"], x["query"], x["outcome"]) for x in lines] == [
        ("dr-rad", "reports", "ok"), ("ms-res", "reports", "refused"), ("ms-res", "reports", "refused"),
        ("dr-rad", "study", "invalid"), ("dr-rad", "facets", "invalid")]
    assert lines[0]["arguments"] == ["codes", "first", "text"] and isinstance(lines[0]["results"], int)
    logged = "\n".join(r.getMessage() + (caplog.text if r.exc_info else "") for r in caplog.records)
    for value in ("pneumothorax", "J93", "Jane", "JANE"):
        assert value not in logged and value not in caplog.text, value


def test_the_page_and_its_config_carry_no_credential(server, pools, local_cloud) -> None:
    resp = requests.get(f"{server}/config.json", timeout=10)
    config, csp = resp.json(), resp.headers["Content-Security-Policy"]
    assert config["cognito"] == {"endpoint": local_cloud.settings.aws_endpoint_url + "/", "region": "us-east-1",
                                 "clientId": pools["client"]}
    assert config["graphqlUrl"] == f"{server}/graphql"
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    text = json.dumps(config)
    assert "testing" not in text and local_cloud.pacs.password not in text  # no AWS key, no PACS password
    page = requests.get(f"{server}/", timeout=10)  # no bundle in this test's page dir: it says how to build one
    assert page.status_code == 503 and "make setup" in page.text
