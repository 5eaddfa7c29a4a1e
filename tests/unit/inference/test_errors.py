"""Errors -> HTTP status in one place (dicomflow.inference.errors)."""

from __future__ import annotations

import pytest

from dicomflow.config import ConfigError
from dicomflow.dicom.errors import PacsError
from dicomflow.inference import errors as E


@pytest.mark.parametrize(("exc", "status", "code"), [
    (E.BadRequest("x"), 400, "BadRequest"),
    (E.PayloadTooLarge("x"), 413, "PayloadTooLarge"),
    (E.NotAcceptable("x"), 406, "NotAcceptable"),
    (E.StudyNotFound("x"), 404, "StudyNotFound"),
    (E.NoUsableSeries("x"), 422, "NoUsableSeries"),
    (E.UnusableSeries("x"), 422, "UnusableSeries"),
    (E.PacsAuthError("x"), 502, "PacsAuthError"),
    (E.PacsFailed("x"), 502, "PacsError"),
    (E.PacsUnavailable("x"), 503, "PacsUnavailable"),
    (E.ModelNotLoaded("x"), 503, "ModelNotLoaded"),
    (ConfigError("no secret"), 400, "ConfigError"),
    (RuntimeError("boom"), 500, "InternalError"),
])
def test_status_and_body(exc: Exception, status: int, code: str) -> None:
    assert E.http_status(exc) == status
    body = E.error_body(exc)
    assert body["status"] == status and body["error"] == code and body["message"]


@pytest.mark.parametrize(("kind", "status", "answer"), [
    ("unauthorized", 401, E.PacsAuthError), ("forbidden", 403, E.PacsAuthError), ("not-found", 404, E.StudyNotFound),
    ("refused", 500, E.PacsFailed), ("unavailable", 503, E.PacsUnavailable), ("unreachable", None, E.PacsUnavailable),
    ("protocol", None, E.PacsFailed),
])
def test_pacs_errors_map_by_their_kind(kind: str, status: int | None, answer: type) -> None:
    mapped = E.from_pacs_error(PacsError("layer message", kind, status))
    assert type(mapped) is answer
    if answer is E.PacsAuthError:
        assert "PACS rejected the credentials" in str(mapped)
    else:
        assert str(mapped) == "layer message"


def test_an_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown PACS error kind"):
        PacsError("x", "odd")
