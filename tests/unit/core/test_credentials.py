"""Credentials are bound to their PACS: what a caller may name, and what each target gets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from dicomflow.config import write_secret_file, write_state
from dicomflow.credentials import PacsNotAllowed, normalize_url, pacs_connection

CONFIGURED = "https://pacs.example.org/dicom-web"


@pytest.fixture
def env(monkeypatch, tmp_path) -> Iterator[pytest.MonkeyPatch]:
    for var in ("DICOMFLOW_PACS_URL", "DICOMFLOW_PACS_USERNAME", "DICOMFLOW_PACS_PASSWORD",
                "DICOMFLOW_PACS_SECRET_ARN", "DICOMFLOW_ALLOWED_PACS", "DICOMFLOW_ALLOWED_PACS_SECRETS",
                "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield monkeypatch


@pytest.mark.parametrize(("url", "normal"), [
    ("HTTPS://PACS.Example.org/dicom-web/", "https://pacs.example.org:443/dicom-web"),
    ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
    ("http://[::1]:8042/dicom-web", "http://[::1]:8042/dicom-web"),
    ("http://pacs", "http://pacs:80"),
])
def test_urls_normalise(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(("url", "needle"), [
    ("http://[::1/dicom-web", "not valid"),
    ("http://pacs:99999/dicom-web", "not valid"),
    ("http://x/" + "a" * 100_000, "at most 2048"),
    ("ftp://pacs/dicom-web", "http:// or https://"),
    ("http://user:pw@pacs/dicom-web", "credentials"),
    ("http://pacs/dicom-web?x=1", "query"),
    ("http://pacs/dicom-web/../admin", "dot segments"),
    ("http://pacs/dicom-web/%2E%2E/admin", "dot segments"),
    ("http://pacs/dicom web", "whitespace"),
    ("http:///dicom-web", "no host"),
    (42, "non-empty string"),
])
def test_unusable_urls_are_refused_with_the_reason(url: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        normalize_url(url)
    assert len(str(info.value)) < 300  # a 100 kB URL is not echoed back


def test_environment_credentials_go_only_to_the_configured_pacs(env) -> None:
    env.setenv("DICOMFLOW_PACS_URL", CONFIGURED)
    env.setenv("DICOMFLOW_PACS_USERNAME", "admin")
    env.setenv("DICOMFLOW_PACS_PASSWORD", "s3cret")
    assert pacs_connection().auth == ("admin", "s3cret")
    assert pacs_connection("https://PACS.example.org:443/dicom-web/").auth == ("admin", "s3cret")
    for evil in ("http://127.0.0.1:9/dicom-web", "http://localhost:9/dicom-web", "https://pacs.example.org.evil/x",
                 "http://pacs.example.org/dicom-web", "https://pacs.example.org:8443/dicom-web",
                 "https://pacs.example.org/dicom-webx"):
        with pytest.raises(PacsNotAllowed, match="DICOMFLOW_ALLOWED_PACS") as info:
            pacs_connection(evil)
        assert CONFIGURED.replace("https://pacs.example.org", "https://pacs.example.org:443") in str(info.value)
    # Allow-listed: reachable, but the credentials stay bound to their own PACS.
    env.setenv("DICOMFLOW_ALLOWED_PACS", "http://127.0.0.1:9/dicom-web")
    other = pacs_connection("http://127.0.0.1:9/dicom-web")
    assert other.url == "http://127.0.0.1:9/dicom-web" and other.auth is None
    assert "s3cret" not in repr(other) + repr(pacs_connection())


def test_local_credentials_are_bound_to_the_local_orthanc(env, tmp_path) -> None:
    home = tmp_path / "home"
    env.setenv("DICOMFLOW_HOME", str(home))
    home.mkdir()
    write_state(home, {"settings": {"orthanc_http_port": 8999}})
    write_secret_file(home / "secrets" / "orthanc.json", {"username": "dicomflow", "password": "local-pw"})
    conn = pacs_connection()
    assert conn.url == "http://127.0.0.1:8999/dicom-web" and conn.auth == ("dicomflow", "local-pw")
    with pytest.raises(PacsNotAllowed):
        pacs_connection("http://127.0.0.1:8998/dicom-web")
    # A configured remote PACS does not receive the local Orthanc's password.
    env.setenv("DICOMFLOW_PACS_URL", CONFIGURED)
    assert pacs_connection().url == CONFIGURED and pacs_connection().auth is None


def test_secrets_bind_to_their_own_url_and_must_be_configured(env) -> None:
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        own = sm.create_secret(Name="pacs", SecretString=json.dumps(
            {"username": "u", "password": "secret-pw", "url": CONFIGURED}))["ARN"]
        other = sm.create_secret(Name="other", SecretString=json.dumps(
            {"username": "o", "password": "other-pw", "url": "https://other.example.org/dicom-web"}))["ARN"]
        env.setenv("DICOMFLOW_PACS_SECRET_ARN", own)
        assert pacs_connection().auth == ("u", "secret-pw") and pacs_connection().url == CONFIGURED
        assert pacs_connection(secret_arn=own).auth == ("u", "secret-pw")
        with pytest.raises(PacsNotAllowed, match="attacker.example"):
            pacs_connection("https://attacker.example/dicom-web", own)
        with pytest.raises(PacsNotAllowed, match="DICOMFLOW_ALLOWED_PACS_SECRETS"):
            pacs_connection(secret_arn=other)
        env.setenv("DICOMFLOW_ALLOWED_PACS_SECRETS", other)
        conn = pacs_connection(secret_arn=other)
        assert conn.url == "https://other.example.org/dicom-web" and conn.auth == ("o", "other-pw")
        with pytest.raises(PacsNotAllowed):  # a permitted secret still goes only to its own PACS
            pacs_connection("https://attacker.example/dicom-web", other)
