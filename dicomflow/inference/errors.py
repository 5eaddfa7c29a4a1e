"""Inference failures and the one place that maps them to HTTP status codes.

Every expected failure of a request is an :class:`InferenceError` subclass carrying its status;
:func:`http_status` / :func:`error_body` turn any exception into the wire answer, so the serving
process, the SageMaker PyTorch serving image and the tests agree on codes and messages.
"""

from __future__ import annotations

from dicomflow.dicom.errors import PacsError
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


class PacsFailed(InferenceError):
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


class ModelAlreadyLoaded(InferenceError):
    """Multi-model endpoint: ``POST /models`` for a model that is loaded."""

    status = 409
    code = "ModelAlreadyLoaded"


class ModelNotFound(InferenceError):
    """Multi-model endpoint: the named model is not loaded."""

    status = 404
    code = "ModelNotFound"


class InsufficientMemory(InferenceError):
    """Multi-model endpoint: loading the model would exceed the memory budget (unload one first)."""

    status = 507
    code = "InsufficientMemory"


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


def from_pacs_error(exc: PacsError, what: str = "the request") -> InferenceError:
    """A PACS failure (:class:`dicomflow.dicom.errors.PacsError`) as the request's answer, by its kind."""
    message = str(exc)
    if exc.kind in ("unauthorized", "forbidden"):
        return PacsAuthError(f"PACS rejected the credentials ({exc.status}) for {what}; check the secret named by "
                             "dicomweb.auth.secretArn (or DICOMFLOW_PACS_USERNAME/PASSWORD)")
    if exc.kind == "not-found":
        return StudyNotFound(message)
    if exc.transient:
        return PacsUnavailable(message)
    return PacsFailed(message)
