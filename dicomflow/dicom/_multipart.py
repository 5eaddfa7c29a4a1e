"""The fast path of series retrieval: a ``multipart/related`` splitter over one reusable receive buffer, and a
direct reader of uncompressed little-endian DICOM parts.

Private to :mod:`dicomflow.dicom.dicomweb` (``retrieve_series``); measured against the bare transfer
and dicomweb-client by ``bench/bench_retrieval.py``. Every byte of an answer is copied once, into its
element value (each fresh copy of a series costs page faults); the rest of the cost is Python work
per element. Anything the direct reader does not handle goes to ``pydicom.dcmread``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomflow.dicom.errors import PacsError

#: Initial receive buffer; it doubles while a single part does not fit in half of it.
_READ_BUFFER = 1 << 20


class MultipartSplitter:
    """Incremental ``multipart/related`` (RFC 2046) splitter over one reusable receive buffer.

    ``read`` yields every part body of a stream as a memoryview of the buffer, valid until the
    next one is asked for; ``fill`` and ``parts`` are its two steps.
    """

    def __init__(self, content_type: str, buffer_size: int = _READ_BUFFER) -> None:
        boundary = None
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary":
                boundary = value.strip().strip('"')
        if not content_type.lower().startswith("multipart/") or not boundary:
            raise PacsError(f"the PACS answered a series retrieval with {content_type or 'no content type'!r}, "
                            "not multipart/related; is the URL a DICOMweb root?", "protocol")
        self.delimiter = b"\r\n--" + boundary.encode("ascii")
        self.buf = bytearray(max(buffer_size, 2 * len(self.delimiter) + 8))
        self.view = memoryview(self.buf)
        self.buf[:2] = b"\r\n"  # the first delimiter may start the body without a CRLF
        self.start, self.end = 0, 2  # the unconsumed bytes are buf[start:end]
        self.done = False
        self.seen_first = False

    def fill(self, readinto: Callable[[memoryview], int]) -> bool:
        """Read once with ``readinto`` into the free space; False at the end of the body."""
        if self.end == len(self.buf):
            self._make_room()
        n = readinto(self.view[self.end:])
        self.end += n or 0
        return bool(n)

    def _make_room(self) -> None:
        pending = self.end - self.start
        if 2 * pending > len(self.buf):  # a part larger than half the buffer: grow it
            buf = bytearray(2 * len(self.buf))
            buf[:pending] = self.view[self.start:self.end]
            self.view.release()
            self.buf, self.view = buf, memoryview(buf)
        else:  # the pending bytes lie in the upper half: no overlap
            self.view[:pending] = self.view[self.start:self.end]
        self.start, self.end = 0, pending

    def parts(self) -> Iterator[memoryview]:
        """The bodies of the parts completed in the buffer, each a view valid until the next ``fill``."""
        buf, delim, end = self.buf, self.delimiter, self.end
        while not self.done:
            pos = buf.find(delim, self.start, end)
            if pos < 0:
                if not self.seen_first:  # preamble: keep only what may begin a delimiter
                    self.start = max(self.start, end - len(delim))
                return
            if not self.seen_first:
                self.start, self.seen_first = pos, True
            begin = pos + len(delim)
            if end < begin + 2:
                return
            if buf[begin:begin + 2] == b"--":  # close delimiter
                self.done = True
                self.start = end
                return
            stop = buf.find(delim, begin, end)
            if stop < 0:
                return
            head_end = buf.find(b"\r\n\r\n", begin, stop)
            if head_end < 0:
                raise PacsError("malformed multipart answer from the PACS; check the DICOMweb root URL", "protocol")
            self.start = stop
            yield self.view[head_end + 4:stop]

    def read(self, readinto: Callable[[memoryview], int]) -> Iterator[memoryview]:
        """The part bodies of the stream ``readinto`` reads, up to the close delimiter or the end."""
        while not self.done and self.fill(readinto):
            yield from self.parts()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the bodies of the parts completed by it."""
        return [bytes(part) for part in self.read(io.BytesIO(data).readinto)]

    def close(self) -> None:
        """Check that the body ended with the close delimiter."""
        if not self.done:
            raise PacsError("the PACS answer ended before the multipart close delimiter; the series is "
                            "incomplete (connection dropped?) - retry", "unreachable")


def split_multipart(body: bytes, content_type: str) -> list[pydicom.Dataset]:
    """The DICOM parts of a complete ``multipart/related`` body, parsed."""
    splitter = MultipartSplitter(content_type)
    datasets = [parse_part(part) for part in splitter.read(io.BytesIO(body).readinto)]
    splitter.close()
    return datasets


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_FAST_SYNTAXES = {ExplicitVRLittleEndian: False, ImplicitVRLittleEndian: True}
_TRANSFER_SYNTAX = BaseTag(0x00020010)


def parse_part(data: bytes | memoryview) -> pydicom.Dataset:
    """A DICOM Part 10 byte string as a :class:`pydicom.FileDataset` (what ``dcmread`` returns).

    Explicit and implicit VR little endian with defined lengths at the top level (what a PACS
    stores for uncompressed images) are read here in one pass, each value copied once out of
    ``data`` and kept raw, converted by pydicom on first access as ``dcmread`` does; anything else
    goes to ``dcmread``.
    """
    view = memoryview(data)
    try:
        ds = _fast_parse(view)
    except (struct.error, ValueError, IndexError):
        ds = None
    return ds if ds is not None else pydicom.dcmread(io.BytesIO(view.tobytes()))


_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, 32-bit length
_LONG_LENGTH = struct.Struct("<I")
_VR_NAMES: dict[bytes, str] = {}
#: The same few hundred tags recur in every instance: one BaseTag object each.
_TAGS: dict[int, BaseTag] = {}
_RAW_FIELDS_KNOWN = RawDataElement._fields == ("tag", "VR", "length", "value", "value_tell", "is_implicit_VR",
                                               "is_little_endian", "is_raw", "is_buffered")


def _read_elements(data: memoryview, pos: int, end: int, implicit: bool, group: int | None
                   ) -> tuple[dict[BaseTag, RawDataElement], int] | None:
    elements: dict[BaseTag, RawDataElement] = {}
    header = _IMPLICIT_HEADER.unpack_from if implicit else _EXPLICIT_HEADER.unpack_from
    long_length = _LONG_LENGTH.unpack_from
    tags, vr_names = _TAGS, _VR_NAMES
    new_raw, fast_raw = tuple.__new__, _RAW_FIELDS_KNOWN  # the NamedTuple's own __new__ is a Python-level call
    while pos + 8 <= end:
        if implicit:
            grp, elem, length = header(data, pos)
            if group is not None and grp != group:
                break
            vr = None
            value_at = pos + 8
        else:
            grp, elem, vr_bytes, length = header(data, pos)
            if group is not None and grp != group:
                break
            if vr_bytes in _LONG_VRS:
                length = long_length(data, pos + 8)[0]
                value_at = pos + 12
            else:
                value_at = pos + 8
            vr = vr_names.get(vr_bytes)
            if vr is None:
                vr = vr_names.setdefault(vr_bytes, vr_bytes.decode("ascii"))
        if length == _UNDEFINED or value_at + length > end:
            return None  # sequences / encapsulated data of undefined length: leave it to dcmread
        key = grp << 16 | elem
        tag = tags.get(key)
        if tag is None:
            tag = tags.setdefault(key, BaseTag(key)) if len(tags) < 65536 else BaseTag(key)
        pos = value_at + length
        value = data[value_at:pos].tobytes()
        elements[tag] = (new_raw(RawDataElement, (tag, vr, length, value, value_at, implicit, True, True, False))
                         if fast_raw else RawDataElement(tag, vr, length, value, value_at, implicit, True))
    return elements, pos


def _fast_parse(data: memoryview) -> pydicom.Dataset | None:
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    read = _read_elements(data, 132, len(data), False, 0x0002)
    if read is None:
        return None
    meta_elements, pos = read
    syntax = meta_elements.get(_TRANSFER_SYNTAX)
    syntax = syntax.value.decode("ascii", "replace").strip("\0 ") if syntax is not None else ""
    if syntax not in _FAST_SYNTAXES:
        return None
    meta = FileMetaDataset(meta_elements)
    implicit = _FAST_SYNTAXES[syntax]
    read = _read_elements(data, pos, len(data), implicit, None)
    if read is None or read[1] != len(data):
        return None
    elements = read[0]
    dataset = pydicom.Dataset(elements)
    charset = elements.get(BaseTag(0x00080005))
    encoding = convert_encodings(convert_raw_data_element(charset).value) if charset is not None else \
        default_encoding
    ds = FileDataset(None, dataset, data[:128].tobytes(), meta, implicit, True)
    ds.set_original_encoding(implicit, True, encoding)
    return ds
