"""boto3 access that honours the standard AWS configuration.

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
