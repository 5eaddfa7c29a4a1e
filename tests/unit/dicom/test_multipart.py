"""The retrieval fast path: incremental multipart splitting and the direct Part 10 reader agree with pydicom."""

from __future__ import annotations

import gzip
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomflow.credentials import PacsConnection
from dicomflow.demo import synthetic
from dicomflow.dicom import _multipart as multipart
from dicomflow.dicom import dicomweb
from dicomflow.dicom.errors import PacsError


def _part10(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    ds = dicomweb.ensure_file_meta(ds)
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _same(a: pydicom.Dataset, b: pydicom.Dataset) -> None:
    assert [e.tag for e in a] == [e.tag for e in b]
    for ea, eb in zip(a, b, strict=True):
        assert ea.VR == eb.VR and ea.value == eb.value, ea.tag
    assert a.file_meta == b.file_meta


@pytest.mark.parametrize("implicit", [False, True])
def test_fast_reader_matches_dcmread_on_synthetic_images(implicit: bool) -> None:
    series = synthetic.hippocampus_series(1, seed=3, shape=(8, 8, 8))[0]
    chest = synthetic.chest_radiographs(1, seed=3, size=32)[0]
    for ds in [*series.datasets, chest.dataset]:
        data = _part10(ds, implicit)
        fast = multipart._fast_parse(memoryview(data))
        assert fast is not None
        ref = pydicom.dcmread(io.BytesIO(data))
        _same(fast, ref)
        assert np.array_equal(fast.pixel_array, ref.pixel_array)
        assert fast.original_encoding == ref.original_encoding
        assert fast.preamble == ref.preamble


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_parse_part_reads_any_file_like_dcmread(name: str) -> None:
    data = open(get_testdata_file(name), "rb").read()  # noqa: SIM115 - tiny test file
    ref = pydicom.dcmread(io.BytesIO(data))
    _same(multipart.parse_part(data), ref)


def _body(parts: list[bytes], boundary: str) -> bytes:
    return b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"


def test_splitter_gives_the_same_parts_for_any_chunking() -> None:
    parts = [_part10(ds) for ds in synthetic.hippocampus_series(1, seed=4, shape=(8, 8, 8))[0].datasets]
    boundary = "b0undary-42"
    body = _body(parts, boundary)
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    # a 64-byte receive buffer has to compact and to grow to hold each part
    for size, buffer_size in ((1, 1 << 20), (7, 64), (100, 1 << 20), (4096, 64), (len(body), 64)):
        splitter = multipart.MultipartSplitter(ctype, buffer_size=buffer_size)
        got = []
        for i in range(0, len(body), size):
            got += splitter.feed(body[i:i + size])
        splitter.close()
        assert got == parts, (size, buffer_size)
    truncated = multipart.MultipartSplitter(ctype)
    truncated.feed(body[: len(body) // 2])
    with pytest.raises(PacsError, match="incomplete"):
        truncated.close()
    with pytest.raises(PacsError, match="not multipart/related"):
        multipart.MultipartSplitter("application/dicom")


@pytest.fixture
def multipart_server(request):
    """An HTTP server answering every GET with one multipart body, framed as ``request.param`` says."""
    mode = request.param
    series = synthetic.hippocampus_series(1, seed=5, shape=(8, 8, 8))[0]
    body = _body([_part10(ds) for ds in series.datasets], "bnd-7")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=bnd-7')
            payload = gzip.compress(body) if mode == "gzip" else body
            if mode == "gzip":
                self.send_header("Content-Encoding", "gzip")
            if mode == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(payload), 1000):
                    piece = payload[i:i + 1000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            if mode == "length":  # a keep-alive answer framed by its Content-Length
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2] if mode == "truncated" else payload)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", series
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("multipart_server", ["close", "length", "chunked", "gzip"], indirect=True)
def test_http_retrieval_parses_any_framing(multipart_server) -> None:
    url, series = multipart_server
    client = dicomweb.connect(PacsConnection(url, "user", "pw"), retries=0)
    got = dicomweb.retrieve_series(client, series.study_uid, series.series_uid)
    assert [ds.SOPInstanceUID for ds in got] == [ds.SOPInstanceUID for ds in series.datasets]
    assert [ds.PixelData for ds in got] == [ds.PixelData for ds in series.datasets]
    assert all(type(ds.PixelData) is bytes for ds in got)


@pytest.mark.parametrize("multipart_server", ["truncated"], indirect=True)
def test_http_retrieval_of_a_truncated_body_is_a_clear_error(multipart_server) -> None:
    url, series = multipart_server
    client = dicomweb.connect(PacsConnection(url, "user", "pw"), retries=0)
    with pytest.raises(PacsError, match="incomplete"):
        dicomweb.retrieve_series(client, series.study_uid, series.series_uid)
