"""DICOMweb access layer: file-backed round trip, retries with backoff, error mapping."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dicomweb_client import DICOMfileClient

from dicomflow.credentials import PacsConnection
from dicomflow.demo import synthetic
from dicomflow.dicom import _multipart, dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.errors import PacsError
from dicomflow.emulator.cloud.service import free_port

# dicomweb-client encodes with a pydicom 3 deprecated argument; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.write_like_original.:DeprecationWarning")


@pytest.fixture
def file_client(tmp_path) -> DICOMfileClient:
    return DICOMfileClient(url=f"file://{tmp_path}", in_memory=True)


def test_file_client_round_trip(file_client: DICOMfileClient) -> None:
    images = synthetic.chest_radiographs(2, seed=3, size=64)
    series = synthetic.hippocampus_series(1, seed=3, shape=(8, 16, 12))[0]
    dicomweb.store(file_client, [im.dataset for im in images] + list(reversed(series.datasets)))

    assert len(dicomweb.search_studies(file_client)) == 3
    found = dicomweb.search_studies(file_client, PatientID=images[0].patient_id)
    assert [dj.value(s, "StudyInstanceUID") for s in found] == [images[0].dataset.StudyInstanceUID]
    assert dj.value(found[0], "PatientName") == str(images[0].dataset.PatientName)
    assert dj.value(found[0], "AccessionNumber", "none") == "none"
    assert len(dicomweb.search_series(file_client, series.study_uid)) == 1
    assert len(dicomweb.search_instances(file_client, series.study_uid, series.series_uid)) == 8

    got = dicomweb.retrieve_series(file_client, series.study_uid, series.series_uid)
    assert [int(ds.InstanceNumber) for ds in got] == list(range(1, 9))  # sorted, though stored reversed
    assert [ds.PixelData for ds in got] == [ds.PixelData for ds in series.datasets]
    one = images[1].dataset
    inst = dicomweb.retrieve_instance(file_client, one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID)
    assert inst.PixelData == one.PixelData
    assert inst.SOPInstanceUID == one.SOPInstanceUID


def test_missing_series_is_a_pacs_error(file_client: DICOMfileClient) -> None:
    with pytest.raises(PacsError):
        dicomweb.retrieve_series(file_client, "1.2.3", "1.2.4")


def test_store_adds_file_meta_without_touching_the_caller(file_client: DICOMfileClient) -> None:
    ds = synthetic.chest_radiographs(1, seed=4, size=32)[0].dataset
    del ds.file_meta
    prepared = dicomweb.ensure_file_meta(ds)
    assert "file_meta" not in ds.__dict__ or not getattr(ds, "file_meta", None)
    assert prepared.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert prepared.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    dicomweb.store(file_client, [ds])
    assert len(dicomweb.search_instances(file_client, ds.StudyInstanceUID)) == 1


# ---- a flaky HTTP server -----------------------------------------------------------------------------
class _Flaky:
    """State shared with the handler: fail the first ``failures`` requests with ``status``."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.requests: list[tuple[str, str, bytes, dict]] = []


def _serve(state: _Flaky) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append((self.command, self.path, body, dict(self.headers)))
            if len(state.requests) <= state.failures:
                self.send_response(state.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.command == "GET":
                payload = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
            else:
                payload = b""
                self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def flaky(request) -> Iterator[tuple[_Flaky, str]]:
    failures, status = getattr(request, "param", (2, 503))
    state = _Flaky(failures, status)
    for url in _serve(state):
        yield state, url


def _client(url: str, retries: int = 4):
    return dicomweb.connect(PacsConnection(url, "user", "s3cr3t-pw"), retries=retries, backoff_factor=0.01)


def test_search_retries_on_503_then_succeeds(flaky) -> None:
    state, url = flaky
    found = dicomweb.search_studies(_client(url), PatientID="P1*")
    assert [dj.value(s, "StudyInstanceUID") for s in found] == ["1.2.3"]
    assert len(state.requests) == 3
    method, path, _, headers = state.requests[-1]
    assert (method, path.split("?")[0]) == ("GET", "/dicom-web/studies")
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Authorization"].startswith("Basic ")
    assert "s3cr3t-pw" not in path
    assert "PatientID=P1*" in path  # a literal wildcard: Orthanc does not match "%2A"


def test_store_retries_post_with_the_whole_body(flaky) -> None:
    state, url = flaky
    ds = synthetic.chest_radiographs(1, seed=5, size=32)[0].dataset
    dicomweb.store(_client(url), [ds])
    assert [r[0] for r in state.requests] == ["POST"] * 3
    bodies = {r[2] for r in state.requests}
    assert len(bodies) == 1 and ds.SOPInstanceUID.encode() in bodies.pop()


@pytest.mark.parametrize("flaky", [(99, 503)], indirect=True)
def test_persistent_503_gives_a_clear_error(flaky) -> None:
    state, url = flaky
    with pytest.raises(PacsError, match="answered 503"):
        dicomweb.search_studies(_client(url, retries=2))
    assert len(state.requests) == 3  # first try + 2 retries


@pytest.mark.parametrize("flaky", [(99, 401)], indirect=True)
def test_401_is_wrong_credentials_and_not_retried(flaky) -> None:
    state, url = flaky
    with pytest.raises(PacsError, match="wrong PACS credentials") as err:
        dicomweb.search_studies(_client(url))
    assert "s3cr3t-pw" not in str(err.value)
    assert len(state.requests) == 1


@pytest.mark.parametrize("flaky", [(99, 404)], indirect=True)
def test_404_is_not_found(flaky) -> None:
    _, url = flaky
    with pytest.raises(PacsError, match="not found on the PACS"):
        dicomweb.retrieve_series(_client(url), "1.2.3", "1.2.4")


def test_unreachable_pacs_gives_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    with pytest.raises(PacsError, match="PACS unreachable at .*dicomflow up"):
        dicomweb.search_studies(_client(url, retries=1))


def test_connect_rejects_a_non_http_url() -> None:
    with pytest.raises(PacsError, match="not http"):
        dicomweb.connect(PacsConnection("ftp://example/dicom-web", "u", "p"))


def _part10(ds) -> bytes:
    import io

    buf = io.BytesIO()
    dicomweb.ensure_file_meta(ds).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_multipart_split_round_trip() -> None:
    images = synthetic.chest_radiographs(2, seed=6, size=32)
    boundary = "b0undary-1234"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + _part10(im.dataset)
                    + b"\r\n" for im in images) + b"--" + boundary.encode() + b"--\r\n"
    got = _multipart.split_multipart(body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert [ds.SOPInstanceUID for ds in got] == [im.dataset.SOPInstanceUID for im in images]
    assert [ds.PixelData for ds in got] == [im.dataset.PixelData for im in images]
    with pytest.raises(PacsError, match="not multipart/related"):
        _multipart.split_multipart(b"<html>", "text/html")
