"""Inference failures and the one place that maps them to HTTP status codes.

Every expected failure of a request is an :class:`InferenceError` subclass carrying its status;
:func:`http_status` / :func:`error_body` turn any exception into the wire answer, so the serving
process, the SageMaker PyTorch serving image and the tests agree on codes and messages.
"""

from __future__ import annotations

from dicomflow.errors import DicomflowError


class InferenceError(DicomflowError):
    """An expected failure of one inference request; ``status`` is its HTTP status code."""

    status: int = 500
    code: str = "InferenceError"


class BadRequest(InferenceError):
    """The study JSON is malformed or asks for something unknown."""

    status = 400
    code = "BadRequest"


class PacsRefused(BadRequest):
    """The request named a PACS or a secret this endpoint is not configured to use (refused before any call)."""

    code = "PacsNotAllowed"


class PayloadTooLarge(InferenceError):
    """The inline body is larger than an async endpoint accepts."""

    status = 413
    code = "PayloadTooLarge"


class NotAcceptable(InferenceError):
    """The caller asked for a response type other than JSON."""

    status = 406
    code = "NotAcceptable"


class StudyNotFound(InferenceError):
    """The PACS does not know the study (or the named series)."""

    status = 404
    code = "StudyNotFound"


class NoUsableSeries(InferenceError):
    """The study exists but no series fits the model (modality, image type, slices, orientation)."""

    status = 422
    code = "NoUsableSeries"


class UnusableSeries(InferenceError):
    """The series cannot be assembled into a volume (gaps, mixed geometry, wrong modality)."""

    status = 422
    code = "UnusableSeries"


class PacsAuthError(InferenceError):
    """The PACS answered 401/403 for the credentials the request resolved."""

    status = 502
    code = "PacsAuthError"


class PacsError(InferenceError):
    """The PACS answered with an unexpected error."""

    status = 502
    code = "PacsError"


class PacsUnavailable(InferenceError):
    """The PACS could not be reached (connection refused, DNS, timeout)."""

    status = 503
    code = "PacsUnavailable"


class ModelNotLoaded(InferenceError):
    """The serving process has no model (yet, or it failed to load)."""

    status = 503
    code = "ModelNotLoaded"


def http_status(exc: BaseException) -> int:
    """The HTTP status for any exception (unexpected ones are 500)."""
    if isinstance(exc, InferenceError):
        return exc.status
    if isinstance(exc, DicomflowError):  # configuration problems, e.g. a missing secret
        return 400
    return 500


def error_body(exc: BaseException) -> dict:
    """The JSON answer for a failed request: ``{"error": code, "message": text, "status": int}``."""
    status = http_status(exc)
    if isinstance(exc, InferenceError):
        code = exc.code
    elif isinstance(exc, DicomflowError):
        code = "ConfigError"
    else:
        code = "InternalError"
    message = str(exc) if status != 500 or isinstance(exc, DicomflowError) else (
        f"internal error ({type(exc).__name__}: {exc}); see the serving log")
    return {"error": code, "message": message, "status": status}


def from_pacs_error(exc: BaseException, what: str = "the request") -> InferenceError:
    """A DICOMweb-layer failure as an :class:`InferenceError` with the right status.

    The DICOMweb layer raises one ``PacsError`` type; the underlying requests error (kept as
    ``__context__``) tells unreachable (503) from refused credentials (502) and not found (404).
    """
    import requests

    inner = exc.__cause__ or exc.__context__
    message = str(exc)
    if isinstance(inner, requests.HTTPError) and inner.response is not None:
        status = inner.response.status_code
        if status in (401, 403):
            return PacsAuthError(f"PACS rejected the credentials ({status}) for {what}; check the secret named "
                                 "by dicomweb.auth.secretArn (or DICOMFLOW_PACS_USERNAME/PASSWORD)")
        if status == 404:
            return StudyNotFound(message)
        if status in (502, 503, 504):  # a gateway or a PACS that is starting or overloaded
            return PacsUnavailable(message)
        return PacsError(message)
    if isinstance(inner, requests.exceptions.RetryError):
        return PacsUnavailable(message)
    if isinstance(inner, requests.ConnectionError | requests.Timeout):
        return PacsUnavailable(message)
    return PacsError(message)
