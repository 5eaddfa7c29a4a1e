"""Errors -> HTTP status in one place (dicomflow.inference.errors)."""

from __future__ import annotations

import pytest
import requests

from dicomflow.config import ConfigError
from dicomflow.dicom.dicomweb import PacsError as LayerPacsError
from dicomflow.inference import errors as E


@pytest.mark.parametrize(("exc", "status", "code"), [
    (E.BadRequest("x"), 400, "BadRequest"),
    (E.PayloadTooLarge("x"), 413, "PayloadTooLarge"),
    (E.NotAcceptable("x"), 406, "NotAcceptable"),
    (E.StudyNotFound("x"), 404, "StudyNotFound"),
    (E.NoUsableSeries("x"), 422, "NoUsableSeries"),
    (E.UnusableSeries("x"), 422, "UnusableSeries"),
    (E.PacsAuthError("x"), 502, "PacsAuthError"),
    (E.PacsError("x"), 502, "PacsError"),
    (E.PacsUnavailable("x"), 503, "PacsUnavailable"),
    (E.ModelNotLoaded("x"), 503, "ModelNotLoaded"),
    (ConfigError("no secret"), 400, "ConfigError"),
    (RuntimeError("boom"), 500, "InternalError"),
])
def test_status_and_body(exc: Exception, status: int, code: str) -> None:
    assert E.http_status(exc) == status
    body = E.error_body(exc)
    assert body["status"] == status and body["error"] == code and body["message"]


def _layer_error(inner: BaseException) -> LayerPacsError:
    try:
        try:
            raise inner
        except BaseException:
            raise LayerPacsError("layer message") from None
    except LayerPacsError as exc:
        return exc


def _http_error(status: int) -> requests.HTTPError:
    resp = requests.Response()
    resp.status_code = status
    return requests.HTTPError(response=resp)


def test_pacs_layer_errors_map_by_their_cause() -> None:
    auth = E.from_pacs_error(_layer_error(_http_error(401)))
    assert isinstance(auth, E.PacsAuthError) and "PACS rejected the credentials" in str(auth)
    assert isinstance(E.from_pacs_error(_layer_error(_http_error(403))), E.PacsAuthError)
    assert isinstance(E.from_pacs_error(_layer_error(_http_error(404))), E.StudyNotFound)
    assert isinstance(E.from_pacs_error(_layer_error(_http_error(500))), E.PacsError)
    assert isinstance(E.from_pacs_error(_layer_error(requests.ConnectionError("refused"))), E.PacsUnavailable)
    assert isinstance(E.from_pacs_error(_layer_error(ValueError("odd"))), E.PacsError)
