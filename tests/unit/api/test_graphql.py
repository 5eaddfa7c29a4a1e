"""The search API through GraphQL: the engine's answers, group rules, token checks, and refusals.

Tokens are real RS256 JWTs shaped as Cognito issues them, signed by a key made here and checked against its
JWKS by PyJWT; the indexes are the real embedded ones over reports and vectors written in the test."""

from __future__ import annotations

import json
import time

import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from dicomflow.api import graphql as api
from dicomflow.api.auth import TokenVerifier, Unauthorized, bearer, issuer_of
from dicomflow.api.resolvers import Context
from dicomflow.search.report_index import ReportIndex
from dicomflow.search.reports import RuleEngine
from dicomflow.search.vectors import ImageVector, VectorIndex

POOL, CLIENT, REGION = "us-east-1_TestPool", "client-abc", "us-east-1"
ISSUER = issuer_of(POOL, REGION)
UID = "1.2.826.0.1.3680043.8.498.{}"
REPORTS = [
    "FINDINGS: Small right pleural effusion. No pneumothorax. IMPRESSION: Effusion.",
    "FINDINGS: No pleural effusion. Cardiomegaly. IMPRESSION: Enlarged heart.",
    "FINDINGS: Possible small left effusion. Lungs otherwise clear.",
    "FINDINGS: Clear lungs. No acute disease.",
]


def _key(kid: str):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "alg": "RS256", "use": "sig"}


@pytest.fixture(scope="module")
def keys():
    good, good_jwk = _key("k1")
    other, _ = _key("k1")  # same kid, another key: a forgery
    return {"good": good, "other": other, "jwks": jwt.PyJWKSet.from_dict({"keys": [good_jwk]})}


def _token(keys, *, key="good", groups=("radiologist",), use="id", client=CLIENT, issuer=ISSUER, ttl=600,
           kid="k1") -> str:
    now = int(time.time())
    claims = {"sub": "u-1", "cognito:username": "dr-who", "cognito:groups": list(groups), "iss": issuer,
              "iat": now - 5, "exp": now + ttl, "token_use": use, "auth_time": now - 5}
    claims["aud" if use == "id" else "client_id"] = client
    return jwt.encode(claims, keys[key], algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def verifier(keys) -> TokenVerifier:
    def signing_key(token: str):
        kid = jwt.get_unverified_header(token).get("kid")
        for k in keys["jwks"].keys:
            if k.key_id == kid:
                return k.key
        raise jwt.InvalidTokenError(f"no key {kid}")

    return TokenVerifier(ISSUER, CLIENT, signing_key)


@pytest.fixture
def indexes(tmp_path):
    engine = RuleEngine()
    reports = ReportIndex.open(tmp_path / "reports.sqlite")
    for n, text in enumerate(REPORTS):
        reports.add(UID.format(100 + n), text, engine.infer_icd10cm(text), accession=f"A-{n}")
    images = VectorIndex.open(tmp_path / "images", model={"name": "chest", "version": "3"}, dimensions=8)
    rng = np.random.default_rng(1)
    images.add([ImageVector(sop_uid=UID.format(200 + n), study_uid=UID.format(100 + n // 2),
                            vector=rng.standard_normal(8).astype(np.float32), modality="DX",
                            labels=("Edema",) if n % 2 else (), thumbnail=f"s3://b/search/thumbnails/{n}.png")
                for n in range(8)])
    yield reports, images
    reports.close()
    images.close()


def _ask(verifier, indexes, token, query, variables=None, viewer=None):
    user = verifier.verify(token)
    ctx = Context(user, indexes[0], indexes[1], sign=lambda uri: "https://signed.example/" + uri.rsplit("/", 1)[-1],
                  **({"viewer": viewer} if viewer else {}))
    return api.execute({"query": query, "variables": variables or {}}, ctx)


def test_a_radiologist_gets_a_viewer_link_for_the_study_and_a_researcher_none(keys, verifier, indexes) -> None:
    made = []

    def viewer(user: str, study: str) -> str:
        made.append((user, study))
        return f"http://127.0.0.1:8045/signin?ticket=for-{user}"

    q = "query($u: ID!) { study(uid: $u) { viewerUrl } }"
    ok, doc = _ask(verifier, indexes, _token(keys), q, {"u": UID.format(100)}, viewer)
    assert ok and doc["data"]["study"]["viewerUrl"] == "http://127.0.0.1:8045/signin?ticket=for-dr-who"
    assert made == [("dr-who", UID.format(100))]
    ok, doc = _ask(verifier, indexes, _token(keys, groups=("researcher",)), q, {"u": UID.format(100)}, viewer)
    assert ok and doc["data"]["study"]["viewerUrl"] is None and len(made) == 1  # none made for a researcher
    ok, doc = _ask(verifier, indexes, _token(keys), q, {"u": UID.format(100)})
    assert ok and doc["data"]["study"]["viewerUrl"] is None  # no viewer configured (AppSync)


REPORTS_Q = """query($text: String, $codes: [String!], $status: MentionStatus, $first: Int, $after: String) {
  reports(text: $text, codes: $codes, status: $status, first: $first, after: $after) {
    total nextCursor reports { studyInstanceUID accessionNumber score snippet
                               mentions { finding code status begin end text } } } }"""


def test_report_search_returns_what_the_engine_returns(keys, verifier, indexes) -> None:
    ok, doc = _ask(verifier, indexes, _token(keys), REPORTS_Q, {"text": "effusion", "first": 2})
    assert ok, doc
    page = indexes[0].search("effusion", limit=2)
    got = doc["data"]["reports"]
    assert got["total"] == page.total == 3 and got["nextCursor"] == page.next_cursor
    assert [(r["studyInstanceUID"], r["score"], r["snippet"]) for r in got["reports"]] == [
        (h.study_uid, h.score, h.snippet) for h in page.hits]
    ok, rest = _ask(verifier, indexes, _token(keys), REPORTS_Q, {"text": "effusion", "after": got["nextCursor"]})
    assert ok and len(rest["data"]["reports"]["reports"]) == 1
    # a denied finding is marked: "No pleural effusion" is NEGATIVE
    ok, neg = _ask(verifier, indexes, _token(keys), REPORTS_Q, {"codes": ["J90"], "status": "NEGATIVE"})
    assert ok and [r["studyInstanceUID"] for r in neg["data"]["reports"]["reports"]] == [UID.format(101)]
    assert {m["status"] for r in neg["data"]["reports"]["reports"] for m in r["mentions"] if m["code"] == "J90"} == {
        "NEGATIVE"}


def test_facets_and_similar_images_are_the_engines(keys, verifier, indexes) -> None:
    ok, doc = _ask(verifier, indexes, _token(keys), "{ facets(first: 5) { code kind reports parent mentioned } }")
    assert ok and doc["data"]["facets"] == [
        {k: f[k] for k in ("code", "kind", "reports", "parent", "mentioned")} for f in indexes[0].facets(limit=5)]
    q = """query($id: ID) { similarImages(image: $id, k: 3, filter: {label: "Edema"}) {
             query model { name version } neighbours { rank score image { sopInstanceUID labels thumbnailUrl } } } }"""
    ok, doc = _ask(verifier, indexes, _token(keys, groups=("researcher",)), q, {"id": UID.format(200)})
    assert ok, doc
    want = indexes[1].similar_to(UID.format(200), 3, label="Edema")
    got = doc["data"]["similarImages"]
    assert got["model"] == {"name": "chest", "version": "3"}
    assert [(n["rank"], n["score"], n["image"]["sopInstanceUID"]) for n in got["neighbours"]] == [
        (n.rank, n.score, n.sop_uid) for n in want]
    assert all(n["image"]["labels"] == ["Edema"] and n["image"]["thumbnailUrl"].startswith("https://signed.example/")
               for n in got["neighbours"])


def test_groups_decide_who_reads_report_words(keys, verifier, indexes) -> None:
    researcher = _token(keys, groups=("researcher",))
    ok, doc = _ask(verifier, indexes, researcher, REPORTS_Q, {"text": "effusion"})
    assert not ok and doc["errors"][0]["extensions"]["code"] == "FORBIDDEN", doc
    ok, doc = _ask(verifier, indexes, researcher, REPORTS_Q, {"codes": ["J90"]})
    assert ok and doc["data"]["reports"]["total"] == 3  # asserted, denied or unsure, by code: allowed
    assert all(r["snippet"] is None and all(m["text"] is None for m in r["mentions"])
               for r in doc["data"]["reports"]["reports"])
    study_q = "query($u: ID!) { study(uid: $u) { report { text mentions { code } } } }"
    ok, doc = _ask(verifier, indexes, researcher, study_q, {"u": UID.format(100)})
    assert ok and doc["data"]["study"]["report"]["text"] is None and doc["data"]["study"]["report"]["mentions"]
    ok, me = _ask(verifier, indexes, researcher, "{ me { username groups canReadReports } }")
    assert me["data"]["me"] == {"username": "dr-who", "groups": ["researcher"], "canReadReports": False}


@pytest.mark.parametrize("change, reason", [
    ({"ttl": -120}, "expired"),
    ({"key": "other"}, "not valid"),
    ({"issuer": issuer_of("us-east-1_Other", REGION)}, "another user pool"),
    ({"client": "someone-else"}, "another app client"),
    ({"use": "refresh"}, "neither id nor access"),
    ({"kid": "k9"}, "not valid"),
])
def test_a_bad_token_is_unauthorized_with_its_reason(keys, verifier, change, reason) -> None:
    with pytest.raises(Unauthorized, match=reason):
        verifier.verify(_token(keys, **change))


def test_no_token_is_unauthorized_and_an_access_token_works(keys, verifier) -> None:
    for header in (None, "", "Basic not-a-bearer-token", "Bearer "):
        with pytest.raises(Unauthorized, match="sign in"):
            verifier.verify(bearer(header))
    with pytest.raises(Unauthorized, match="not valid"):
        verifier.verify("not.a.jwt")
    user = verifier.verify(bearer("Bearer " + _token(keys, use="access", groups=())))
    assert user.username == "dr-who" and not user.can_read_reports


@pytest.mark.parametrize("text", ['effusion" OR 1=1 --', "') ; DROP TABLE reports; --", "effusion*", "NEAR(a b)",
                                  '{"$ne": null}', "<script>alert(1)</script>"])
def test_an_injection_attempt_in_a_string_argument_is_just_text(keys, verifier, indexes, text) -> None:
    ok, doc = _ask(verifier, indexes, _token(keys), REPORTS_Q, {"text": text, "codes": None})
    if ok:
        assert doc["data"]["reports"]["total"] == indexes[0].search(text).total <= 3
    else:  # only the engine's own refusal of text without a word
        assert doc["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", doc
    assert len(indexes[0].search("effusion").hits) == 3  # nothing was changed
    ok, doc = _ask(verifier, indexes, _token(keys), "query($u: ID!) { study(uid: $u) { studyInstanceUID } }",
                   {"u": "1' OR '1'='1"})
    assert not ok and "is not a DICOM UID" in doc["errors"][0]["message"]


def test_over_deep_oversized_and_costly_queries_are_refused(keys, verifier, indexes) -> None:
    sop, study = UID.format(200), UID.format(100)
    deep = f'{{ similarImages(image: "{sop}") {{ neighbours {{ image {{ sopInstanceUID }} }} }} }}'
    ok, _ = _ask(verifier, indexes, _token(keys), deep)
    assert ok
    nested = ("fragment F on Neighbour { image { sopInstanceUID } } "
              f'{{ a: similarImages(image: "{sop}") {{ neighbours {{ ...F }} }} '
              f'  b: study(uid: "{study}") {{ report {{ mentions {{ code }} }} }} }}')
    assert _ask(verifier, indexes, _token(keys), nested)[0]
    too_deep = "{ " + "__schema { types { fields { type { ofType { ofType { ofType { name } } } } } } }" + " }"
    ok, doc = _ask(verifier, indexes, _token(keys), too_deep)  # introspection is off, as on AppSync, and too deep
    messages = " ".join(e["message"] for e in doc["errors"])
    assert not ok and "levels deep" in messages and "introspection" in messages.lower(), doc
    ok, doc = _ask(verifier, indexes, _token(keys), "{ me { username } }" + " " * api.MAX_QUERY_CHARS)
    assert not ok and "characters" in doc["errors"][0]["message"]
    costly = "{ " + " ".join(f"r{n}: reports(codes: [\"J90\"], first: 100) {{ total }}" for n in range(60)) + " }"
    ok, doc = _ask(verifier, indexes, _token(keys), costly)
    assert not ok and "cost" in doc["errors"][0]["message"].lower(), doc
    ok, doc = _ask(verifier, indexes, _token(keys), REPORTS_Q, {"codes": ["J90"], "first": 1000})
    assert not ok and "first must be an integer from 1 to 100" in doc["errors"][0]["message"]
    ok, doc = _ask(verifier, indexes, _token(keys), "{ nope }")
    assert not ok and doc["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_the_schema_file_is_one_appsync_can_parse() -> None:
    """AppSync's SDL parser refuses GraphQL descriptions (string literals before a definition) and comments
    inside enums: the file documents itself in comments outside enums only."""
    import re

    from graphql import parse
    from graphql.language import Node

    from dicomflow.api import SCHEMA_FILE

    text = SCHEMA_FILE.read_text()
    described = []

    def walk(node: object) -> None:
        if isinstance(node, Node):
            if getattr(node, "description", None) is not None:
                described.append(node)
            for key in node.keys:
                walk(getattr(node, key, None))
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(parse(text))
    assert described == []
    for enum in re.findall(r"enum \w+ \{([^}]*)\}", text):
        assert "#" not in enum
    assert api.schema().query_type.fields.keys() == {"reports", "facets", "similarImages", "study", "me"}


def test_a_user_pool_that_cannot_be_reached_is_unavailable_not_a_bad_token(keys) -> None:
    from dicomflow.api.auth import SignInUnavailable

    closed = TokenVerifier.from_jwks_url(ISSUER, CLIENT, "http://127.0.0.1:9/pool/.well-known/jwks.json")
    with pytest.raises(SignInUnavailable, match="cannot be fetched"):
        closed.verify(_token(keys))
