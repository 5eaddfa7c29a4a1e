"""The retrieval fast path: incremental multipart splitting and the direct Part 10 reader agree with pydicom."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomflow import dicomweb, synthetic


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
        fast = dicomweb._fast_parse(data)
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
    _same(dicomweb.parse_part(data), ref)


def test_splitter_gives_the_same_parts_for_any_chunking() -> None:
    parts = [_part10(ds) for ds in synthetic.hippocampus_series(1, seed=4, shape=(8, 8, 8))[0].datasets]
    boundary = "b0undary-42"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    for size in (1, 7, 100, 4096, len(body)):
        splitter = dicomweb._MultipartSplitter(ctype)
        got = []
        for i in range(0, len(body), size):
            got += splitter.feed(body[i:i + size])
        splitter.close()
        assert got == parts, size
    truncated = dicomweb._MultipartSplitter(ctype)
    truncated.feed(body[: len(body) // 2])
    with pytest.raises(dicomweb.PacsError, match="incomplete"):
        truncated.close()
    with pytest.raises(dicomweb.PacsError, match="not multipart/related"):
        dicomweb._MultipartSplitter("application/dicom")
