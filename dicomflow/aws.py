"""boto3 access that honours the standard AWS configuration, and S3 objects by URI.

``AWS_ENDPOINT_URL`` (and the per-service ``AWS_ENDPOINT_URL_<SERVICE>``), ``AWS_PROFILE``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION`` and the credential chain are read by boto3 itself;
with them unset the same code talks to real AWS. :func:`is_emulated` is the one place that asks
whether the endpoint is overridden.
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dicomflow.errors import DicomflowError

DEFAULT_REGION = "us-east-1"


def region() -> str:
    """The configured region (``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / profile), else us-east-1."""
    return (
        os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or boto3.session.Session().region_name
        or DEFAULT_REGION
    )


@functools.lru_cache(maxsize=8)
def session(profile: str | None = None) -> boto3.session.Session:
    return boto3.session.Session(profile_name=profile, region_name=region())


def client(service: str, **kwargs: Any) -> Any:
    """A boto3 client with retries on; endpoint and credentials come from the standard chain."""
    cfg = Config(retries={"max_attempts": 5, "mode": "standard"})
    return session().client(service, config=kwargs.pop("config", cfg), **kwargs)


def require_credentials() -> None:
    """Raise botocore's ``NoCredentialsError`` now, before long work, if the credential chain finds none."""
    if session().get_credentials() is None:
        from botocore.exceptions import NoCredentialsError

        raise NoCredentialsError()


def is_emulated() -> bool:
    """True when the AWS endpoint is overridden (the local emulator, LocalStack), i.e. not real AWS."""
    return bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_CLOUDFORMATION"))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; raises ValueError with a fix-it message."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected an S3 URI like s3://bucket/key, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# ---- S3 objects by URI: the one place that reads, writes and asks for them ----------------------------
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


class S3Error(DicomflowError):
    """An S3 object could not be read or written; the message names the URI, the error and the fix."""


def is_missing(exc: ClientError) -> bool:
    """True when an S3 ``ClientError`` says the object (or its bucket) does not exist."""
    return exc.response.get("Error", {}).get("Code") in _MISSING


def _object(uri: str) -> tuple[str, str]:
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise S3Error(str(exc)) from None
    if not key or key.endswith("/"):
        raise S3Error(f"{uri} names a folder; give an object key such as s3://bucket/prefix/object")
    return bucket, key


def _failed(verb: str, uri: str, exc: Exception) -> S3Error:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "error")
        hint = "check the bucket exists and you may write it" if verb == "write" else "check the URI"
        return S3Error(f"cannot {verb} {uri}: {code}; {hint}")
    return S3Error(f"cannot {verb} {uri}: S3 does not answer ({exc}); for the local cloud run `dicomflow up`")


def read_bytes(uri: str, s3: Any = None) -> bytes | None:
    """The bytes of the object at ``uri``, or None if it does not exist; other failures are :class:`S3Error`."""
    bucket, key = _object(uri)
    try:
        return (s3 or client("s3")).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise _failed("read", uri, exc) from None
    except BotoCoreError as exc:
        raise _failed("read", uri, exc) from None


def read(uri: str, s3: Any = None) -> bytes:
    """The bytes of the object at ``uri``; a missing object is an :class:`S3Error` too."""
    data = read_bytes(uri, s3)
    if data is None:
        raise S3Error(f"cannot read {uri}: NoSuchKey; check the URI")
    return data


def write(uri: str, body: bytes, content_type: str = "application/octet-stream", s3: Any = None,
          **extra: Any) -> None:
    """One PUT of ``body`` to ``uri`` (``extra``: e.g. ``ServerSideEncryption``); failures are :class:`S3Error`."""
    bucket, key = _object(uri)
    try:
        (s3 or client("s3")).put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **extra)
    except (ClientError, BotoCoreError) as exc:
        raise _failed("write", uri, exc) from None


#: Client config for presigned links: SigV4 (``X-Amz-Expires``), which every region takes.
SIGV4 = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"})


def presigned_get(uri: str, seconds: int, s3: Any = None) -> str:
    """A link that GETs the object at ``uri`` for ``seconds`` without credentials (SigV4 query signature)."""
    bucket, key = _object(uri)
    s3 = s3 or client("s3", config=SIGV4)
    return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds)


def plain_item(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as a plain record (the inverse of :func:`dynamodb_item`): ``N`` an int or float,
    ``BOOL`` a bool, ``SS`` a sorted list of strings, ``S`` its text."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if "N" in value:
            number = float(value["N"])
            out[key] = int(number) if number.is_integer() and "." not in value["N"] else number
        elif "BOOL" in value:
            out[key] = bool(value["BOOL"])
        elif "SS" in value:
            out[key] = sorted(value["SS"])
        else:
            out[key] = value.get("S")
    return out


def dynamodb_item(record: dict[str, Any]) -> dict[str, Any]:
    """A plain record as DynamoDB attribute values: numbers ``N``, booleans ``BOOL``, non-empty lists of
    strings ``SS``, anything else its text ``S``; None and empty lists are left out (DynamoDB has no empty set)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = {"BOOL": value}
        elif isinstance(value, int | float):
            out[key] = {"N": str(value)}
        elif isinstance(value, list | tuple | set):
            if value:
                out[key] = {"SS": sorted(str(v) for v in value)}
        else:
            out[key] = {"S": str(value)}
    return out


def list_keys(prefix_uri: str, suffix: str = "", s3: Any = None) -> list[str]:
    """The ``s3://`` URIs of every object under ``prefix_uri`` whose key ends in ``suffix``, in key order."""
    bucket, prefix = parse_s3_uri(prefix_uri)
    s3 = s3 or client("s3")
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [s3_uri(bucket, o["Key"]) for page in pages for o in page.get("Contents", [])
                if o["Key"].endswith(suffix)]
    except ClientError as exc:
        raise _failed("list", prefix_uri, exc) from exc


def exists(uri: str, s3: Any = None) -> bool:
    """True if the object at ``uri`` exists (a HEAD request); failures other than "missing" are :class:`S3Error`."""
    bucket, key = _object(uri)
    try:
        (s3 or client("s3")).head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise _failed("read", uri, exc) from None
    except BotoCoreError as exc:
        raise _failed("read", uri, exc) from None


def bucket_exists(bucket: str, s3: Any = None) -> bool:
    """True if ``bucket`` exists and may be used; other failures are :class:`S3Error`."""
    try:
        (s3 or client("s3")).head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise _failed("use bucket", s3_uri(bucket, ""), exc) from None
    except BotoCoreError as exc:
        raise _failed("use bucket", s3_uri(bucket, ""), exc) from None
