"""HMAC-signed WADO-URIs: what the gateway accepts and what it refuses (and why)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from dicomflow.config import ConfigError
from dicomflow.groundtruth import signing

KEY = "unit-test-signing-key-0123456789"
NOW = 1_800_000_000
STUDY, SERIES, SOP = "1.2.826.0.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.1.2.3"


def signed(sop: str = SOP, scope: str = "job-a", ttl: int = 600, key: str = KEY) -> str:
    return urlsplit(signing.sign_wado("http://gw/wado", STUDY, SERIES, sop, scope=scope, key=key, ttl=ttl,
                                      now=NOW)).query


def replace(query: str, name: str, value: str) -> str:
    return "&".join(f"{name}={value}" if p.split("=", 1)[0] == name else p for p in query.split("&"))


def test_roundtrip_and_upstream_query():
    query = signed()
    assert signing.verify_wado(query, KEY, now=NOW + 599) == "job-a"
    assert signing.verify_wado(query, KEY.encode(), now=NOW, expected_scope="job-a") == "job-a"
    obj = signing.verify_wado_object(query + "&frameNumber=2&anonymize=true", KEY, now=NOW)
    assert signing.upstream_query(obj) == (f"requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}"
                                           f"&objectUID={SOP}&contentType=application/dicom")


def test_expired():
    with pytest.raises(signing.SignatureError, match="expired") as err:
        signing.verify_wado(signed(), KEY, now=NOW + 600)
    assert err.value.reason == "expired"


@pytest.mark.parametrize(("name", "value"), [
    ("expires", str(NOW + 10_000)),      # extend the lifetime
    ("objectUID", SOP + ".9"),            # another object
    ("seriesUID", SERIES + ".9"),
    ("scope", "job-b"),                   # claim another job
    ("sig", "0" * 64),
])
def test_tampered(name, value):
    with pytest.raises(signing.SignatureError, match="does not match") as err:
        signing.verify_wado(replace(signed(), name, value), KEY, now=NOW)
    assert err.value.reason == "tampered"


def test_signature_of_another_object_does_not_transfer():
    other = dict(p.split("=", 1) for p in signed(sop=SOP + ".7").split("&"))
    query = replace(signed(), "sig", other["sig"])
    with pytest.raises(signing.SignatureError) as err:
        signing.verify_wado(query, KEY, now=NOW)
    assert err.value.reason == "tampered"


def test_other_scope_refused_by_expected_scope():
    with pytest.raises(signing.SignatureError, match="another labeling job") as err:
        signing.verify_wado(signed(scope="job-b"), KEY, now=NOW, expected_scope="job-a")
    assert err.value.reason == "scope"


def test_wrong_key():
    with pytest.raises(signing.SignatureError) as err:
        signing.verify_wado(signed(), "another-key-of-enough-length!!", now=NOW)
    assert err.value.reason == "tampered"


@pytest.mark.parametrize("query", [
    "requestType=WADO",                                         # missing everything else
    signed() + f"&objectUID={SOP}",                             # duplicate parameter
    replace(signed(), "expires", "soon"),
    replace(signed(), "objectUID", "1.2.x"),
])
def test_malformed(query):
    with pytest.raises(signing.SignatureError) as err:
        signing.verify_wado(query, KEY, now=NOW)
    assert err.value.reason == "malformed"


def test_content_type_is_fixed():
    with pytest.raises(signing.SignatureError, match="only requestType=WADO"):
        signing.verify_wado(replace(signed(), "contentType", "image/jpeg"), KEY, now=NOW)


def test_mapping_query_accepted():
    params = {k: [v] for k, v in (p.split("=", 1) for p in signed().split("&"))}
    assert signing.verify_wado(params, KEY, now=NOW) == "job-a"


def test_job_scope():
    assert signing.job_scope("arn:aws:sagemaker:us-east-1:1:labeling-job/chest-1") == "chest-1"
    assert signing.job_scope("chest-1") == "chest-1"
    with pytest.raises(signing.SignatureError):
        signing.job_scope("")


def test_keys_and_ttl(monkeypatch):
    monkeypatch.delenv(signing.SIGNING_SECRET_ENV, raising=False)
    monkeypatch.delenv(signing.SIGNING_KEY_ENV, raising=False)
    with pytest.raises(signing.SigningKeyError, match="DICOMFLOW_SIGNING_KEY"):
        signing.signing_key()
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, "short")
    with pytest.raises(signing.SigningKeyError, match="shorter"):
        signing.signing_key()
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, KEY)
    assert signing.signing_key() == KEY.encode()
    assert len(signing.generate_key()) >= 32
    assert signing.url_ttl_seconds({}) == 3600
    assert signing.url_ttl_seconds({signing.TTL_ENV: "120"}) == 120
    for bad in ("0", "-5", "abc", str(10**9)):
        with pytest.raises(ConfigError, match="DICOMFLOW_URL_TTL_SECONDS"):
            signing.url_ttl_seconds({signing.TTL_ENV: bad})


def test_sign_rejects_bad_input():
    with pytest.raises(signing.SignatureError):
        signing.sign_wado("http://gw/wado", "1.2", "1.2.3", "not a uid", scope="job", key=KEY)
    with pytest.raises(signing.SigningKeyError):
        signing.sign_wado("http://gw/wado?x=1", "1.2", "1.2.3", "1.2.3.4", scope="job", key=KEY)
