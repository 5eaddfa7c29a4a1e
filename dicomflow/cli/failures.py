"""What the CLI says when a command fails: one line for every expected failure, with the fix.

Expected failures are :class:`~dicomflow.errors.DicomflowError` and the usual ways the world around a
command goes wrong: no or bad AWS credentials or region, an AWS or PACS endpoint that does not answer,
an AWS API error (unknown resource, throttling, validation), a missing file. Anything else is a bug:
the user gets one line and the path of a log file that holds the traceback (``--debug`` prints it).
"""

from __future__ import annotations

import logging
import os
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from dicomflow.errors import DicomflowError
from dicomflow.paths import data_dir, private_dir

LOCAL_CLOUD_FIX = 'for the local cloud run `dicomflow up` and `eval "$(dicomflow env)"`'
_THROTTLED = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
              "SlowDown", "ProvisionedThroughputExceededException"}
_BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                    "AuthFailure", "InvalidAccessKeyId", "IncompleteSignature"}
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


def quiet_third_party() -> None:
    """Silence the SageMaker SDK's v2 banner and its config INFO lines in this process."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    warnings.filterwarnings("ignore", message=r".*SageMaker Python SDK v2.*")
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)


def explain(exc: BaseException) -> str | None:
    """One line saying what went wrong and how to fix it, or None if ``exc`` is not an expected failure."""
    if isinstance(exc, DicomflowError):
        return str(exc)
    return _botocore(exc) or _requests(exc) or _sagemaker(exc) or _os(exc)


def _botocore(exc: BaseException) -> str | None:
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return (f"no AWS credentials: {LOCAL_CLOUD_FIX}; for AWS configure a profile (`aws configure`) "
                "or set AWS_PROFILE")
    if isinstance(exc, bx.NoRegionError):
        return f"no AWS region: {LOCAL_CLOUD_FIX}; for AWS set AWS_REGION or the profile's region"
    if isinstance(exc, bx.ProfileNotFound):
        return f"{exc}: name a profile from ~/.aws/config in AWS_PROFILE, or unset it"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        url = str(exc.kwargs.get("endpoint_url", ""))
        return _unreachable("AWS", url)
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", "")).strip()
        what = f"AWS {exc.operation_name} failed: {code}: {message}".rstrip(": ")
        if code in _THROTTLED:
            return f"{what} (throttled: retry in a moment, or ask for a higher quota)"
        if code in _EXPIRED:
            return f"{what} (the AWS credentials have expired: refresh them, e.g. `aws sso login`)"
        if code in _BAD_CREDENTIALS:
            return f"{what} (AWS does not accept these credentials: check AWS_PROFILE / AWS_ACCESS_KEY_ID; " \
                   f"{LOCAL_CLOUD_FIX})"
        if code in _DENIED:
            return f"{what} (the identity lacks this permission: see DEPLOY.md for the policy it needs)"
        return what
    return None


def _requests(exc: BaseException) -> str | None:
    import requests

    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        url = exc.request.url if exc.request is not None and exc.request.url else ""
        return _unreachable("the PACS", url)
    return None


def _unreachable(what: str, url: str) -> str:
    parts = urlsplit(url)
    # scheme, host and port only: never user:password@, a path or a query (a presigned URL's signature)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    where = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}" if host else "its endpoint"
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return f"{what} does not answer at {where}: the local cloud is down; start it with `dicomflow up`"
    return f"{what} does not answer at {where}: check the network, the URL (AWS_ENDPOINT_URL / " \
           "DICOMFLOW_PACS_URL) and that the service is up"


def _sagemaker(exc: BaseException) -> str | None:
    if type(exc).__module__.startswith("sagemaker.") and type(exc).__name__ in (
            "UnexpectedStatusException", "CapacityError", "AsyncInferenceModelError"):
        return f"SageMaker: {exc}"
    return None


def _os(exc: BaseException) -> str | None:
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return None


def record_unexpected(exc: BaseException) -> Path | None:
    """Write the traceback to ``<data dir>/logs/cli-errors.log`` (owner-only); its path, or None if unwritable."""
    try:
        logs = private_dir(data_dir() / "logs")
        path = logs / "cli-errors.log"
        text = "".join(traceback.format_exception(exc))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')}\n{text}")
        return path
    except OSError:
        return None
