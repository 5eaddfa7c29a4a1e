"""Short-lived HMAC-signed WADO-URIs: the only way a worker's browser reaches a DICOM object.

The pre-label Lambda signs one URL per instance; the same-origin gateway verifies it and calls
the PACS with server-side credentials. A URL looks like::

    <gateway>?requestType=WADO&studyUID=1.2&seriesUID=1.2.3&objectUID=1.2.3.4
        &contentType=application/dicom&scope=<job>&expires=<unix seconds>&sig=<hex>

``sig`` is HMAC-SHA256 over ``v1``, the scope (the labeling job, so a worker of one job cannot
fetch another job's objects), the three UIDs and the expiry. Anything else in the query is not
signed and never forwarded: :func:`upstream_query` rebuilds the PACS query from signed fields only.
The query string is built by hand because Orthanc rejects ``contentType=application%2Fdicom``.

The key comes from Secrets Manager (``DICOMFLOW_SIGNING_SECRET_ARN``; the secret is the key, or
JSON ``{"key": ..}``) or from ``DICOMFLOW_SIGNING_KEY``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

from dicomflow.config import ConfigError, runtime
from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError

SIGNING_KEY_ENV = "DICOMFLOW_SIGNING_KEY"
SIGNING_SECRET_ENV = "DICOMFLOW_SIGNING_SECRET_ARN"  # noqa: S105 - a variable name
TTL_ENV = "DICOMFLOW_URL_TTL_SECONDS"
DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 7 * 24 * 3600
MIN_KEY_BYTES = 16
CONTENT_TYPE = "application/dicom"
_VERSION = "v1"
_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}$")
_SIGNED = ("requestType", "studyUID", "seriesUID", "objectUID", "contentType", "scope", "expires", "sig")
_KEY_CACHE: dict[str, tuple[float, bytes]] = {}
_KEY_CACHE_SECONDS = 300


class SignatureError(DicomflowError):
    """A signed URL is not acceptable; ``reason`` is one of expired, tampered, malformed, scope."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SigningKeyError(ConfigError):
    """No usable signing key is configured."""


@dataclass(frozen=True)
class WadoObject:
    """What a verified URL grants: one instance, for one scope (labeling job)."""

    scope: str
    study_uid: str
    series_uid: str
    sop_uid: str
    expires: int


def job_scope(labeling_job_arn: str) -> str:
    """The signing scope for a labeling job: its name (the ARN's last path part), or the name itself."""
    if not isinstance(labeling_job_arn, str) or not labeling_job_arn.strip():
        raise SignatureError("scope", "labelingJobArn is missing; Ground Truth always sends it")
    scope = labeling_job_arn.strip().rsplit("/", 1)[-1]
    if not _SCOPE.match(scope):
        raise SignatureError("scope", f"cannot derive a signing scope from labelingJobArn {labeling_job_arn!r}")
    return scope


def url_ttl_seconds(env: Mapping[str, str] | None = None) -> int:
    """URL lifetime from ``DICOMFLOW_URL_TTL_SECONDS`` (default 3600), checked to be 1 s .. 7 days."""
    return runtime(env).url_ttl_seconds


def generate_key() -> str:
    """A new random signing key (URL-safe text, 256 bits)."""
    return secrets.token_urlsafe(32)


def _coerce_key(key: bytes | str) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise SigningKeyError(f"the signing key is shorter than {MIN_KEY_BYTES} bytes; use signing.generate_key()")
    return raw


def signing_key(secret_arn: str | None = None) -> bytes:
    """The signing key: Secrets Manager (arg or ``DICOMFLOW_SIGNING_SECRET_ARN``) > ``DICOMFLOW_SIGNING_KEY``.

    Secrets are cached for a few minutes per process (warm Lambdas), so rotation takes effect soon.
    """
    settings = runtime()
    secret_arn = secret_arn or settings.signing_secret_arn
    if secret_arn:
        cached = _KEY_CACHE.get(secret_arn)
        if cached and time.monotonic() - cached[0] < _KEY_CACHE_SECONDS:
            return cached[1]
        key = _key_from_secret(secret_arn)
        _KEY_CACHE[secret_arn] = (time.monotonic(), key)
        return key
    if settings.signing_key:
        return _coerce_key(settings.signing_key)
    raise SigningKeyError(
        f"no URL signing key: set {SIGNING_SECRET_ENV} (Secrets Manager) or {SIGNING_KEY_ENV}"
    )


def _key_from_secret(secret_arn: str) -> bytes:
    from dicomflow import aws

    sm = aws.client("secretsmanager")
    try:
        value = sm.get_secret_value(SecretId=secret_arn)["SecretString"]
    except sm.exceptions.ResourceNotFoundException:
        raise SigningKeyError(f"signing secret {secret_arn} does not exist; check {SIGNING_SECRET_ENV}") from None
    if value.lstrip().startswith("{"):
        try:
            value = json.loads(value)["key"]
        except (ValueError, KeyError, TypeError):
            raise SigningKeyError(f"signing secret {secret_arn} is JSON without a \"key\" string") from None
    return _coerce_key(value)


def _check_uid(name: str, value: str) -> str:
    if not is_uid(value):
        raise SignatureError("malformed", f"{name} {value!r} is not a DICOM UID")
    return value


def _check_scope(scope: str) -> str:
    if not isinstance(scope, str) or not _SCOPE.match(scope):
        raise SignatureError("malformed", f"scope {scope!r} is not a valid job scope")
    return scope


def _digest(key: bytes, scope: str, study: str, series: str, sop: str, expires: int) -> str:
    message = "\n".join((_VERSION, scope, study, series, sop, str(expires))).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _query(study: str, series: str, sop: str) -> str:
    # Built by hand: Orthanc answers 400 to contentType=application%2Fdicom.
    return (f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
            f"&contentType={CONTENT_TYPE}")


def sign_wado(base_url: str, study_uid: str, series_uid: str, sop_uid: str, *, scope: str,
              key: bytes | str, ttl: int = DEFAULT_TTL_SECONDS, now: float | None = None) -> str:
    """A signed WADO-URI for one instance, valid for ``ttl`` seconds from ``now``, for ``scope`` only."""
    if not base_url or "?" in base_url or "#" in base_url:
        raise SigningKeyError(f"gateway URL {base_url!r} must be a plain URL without query, e.g. http://host/wado")
    for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                      ("SOPInstanceUID", sop_uid)):
        _check_uid(name, uid)
    _check_scope(scope)
    if not 0 < int(ttl) <= MAX_TTL_SECONDS:
        raise SigningKeyError(f"URL lifetime {ttl}s must be from 1 to {MAX_TTL_SECONDS} seconds")
    expires = int(time.time() if now is None else now) + int(ttl)
    sig = _digest(_coerce_key(key), scope, study_uid, series_uid, sop_uid, expires)
    return (f"{base_url}?{_query(study_uid, series_uid, sop_uid)}"
            f"&scope={quote(scope, safe='')}&expires={expires}&sig={sig}")


def _single_values(query: str | Mapping[str, str | Sequence[str]]) -> dict[str, str]:
    if isinstance(query, str):
        parsed: Mapping[str, str | Sequence[str]] = parse_qs(query.lstrip("?"), keep_blank_values=True)
    else:
        parsed = query
    out: dict[str, str] = {}
    for name, value in parsed.items():
        if isinstance(value, str):
            out[name] = value
            continue
        values = list(value)
        if len(values) != 1:
            # Two values for one name: the verifier and the PACS might read different ones.
            raise SignatureError("malformed", f"query parameter {name!r} is given {len(values)} times")
        out[name] = values[0]
    return out


def verify_wado(query: str | Mapping[str, str | Sequence[str]], key: bytes | str, now: float | None = None,
                *, expected_scope: str | None = None) -> str:
    """Check a signed WADO-URI query; return its scope or raise :class:`SignatureError`.

    Reasons: ``malformed`` (missing/duplicate/invalid parameter), ``expired``, ``tampered``
    (signature does not match: altered, or signed for another object or key), ``scope``
    (valid, but for another job than ``expected_scope``).
    """
    return verify_wado_object(query, key, now, expected_scope=expected_scope).scope


def verify_wado_object(query: str | Mapping[str, str | Sequence[str]], key: bytes | str,
                       now: float | None = None, *, expected_scope: str | None = None) -> WadoObject:
    """Like :func:`verify_wado` but return everything the signature grants."""
    params = _single_values(query)
    missing = [n for n in _SIGNED if not params.get(n)]
    if missing:
        raise SignatureError("malformed", f"signed URL lacks {', '.join(missing)}; ask for a fresh task")
    if params["requestType"] != "WADO" or params["contentType"] != CONTENT_TYPE:
        raise SignatureError("tampered", "only requestType=WADO&contentType=application/dicom is signed")
    study = _check_uid("studyUID", params["studyUID"])
    series = _check_uid("seriesUID", params["seriesUID"])
    sop = _check_uid("objectUID", params["objectUID"])
    scope = _check_scope(params["scope"])
    try:
        expires = int(params["expires"])
    except ValueError:
        raise SignatureError("malformed", "expires is not a whole number of seconds") from None
    expected = _digest(_coerce_key(key), scope, study, series, sop, expires)
    if not hmac.compare_digest(expected, params["sig"].lower()):
        raise SignatureError("tampered", "signature does not match this object (altered or signed for another)")
    if expires <= int(time.time() if now is None else now):
        raise SignatureError("expired", "signed URL has expired; reopen the task to get fresh links")
    if expected_scope is not None and scope != expected_scope:
        raise SignatureError("scope", "signed URL belongs to another labeling job")
    return WadoObject(scope, study, series, sop, expires)


def upstream_query(obj: WadoObject) -> str:
    """The PACS WADO-URI query for a verified object (signature and unsigned extras dropped)."""
    return _query(obj.study_uid, obj.series_uid, obj.sop_uid)
