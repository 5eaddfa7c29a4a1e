"""DICOMweb access layer: one HTTP client factory plus helpers written against the ``DICOMClient`` protocol.

Code that needs a PACS takes any object with dicomweb-client's ``DICOMClient`` protocol: the HTTP
client from :func:`connect` for Orthanc (or any DICOMweb server), ``dicomweb_client.DICOMfileClient``
in unit tests. Every helper turns transport and HTTP failures into :class:`PacsError` with one line
saying what went wrong and how to fix it; credentials never appear in messages (Basic auth travels
in a header, not in the URL).

Search helpers return DICOM JSON objects (``list[dict]``, as dicomweb-client does); read attributes
from them with :mod:`dicomflow.dicom.json`.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import io
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.protocol import DICOMClient
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dicomflow.credentials import PacsConnection, pacs_connection
from dicomflow.dicom.elements import stored_text
from dicomflow.errors import DicomflowError

__all__ = [
    "PacsError",
    "connect",
    "make_session",
    "search_studies",
    "search_series",
    "search_instances",
    "retrieve_series",
    "retrieve_instance",
    "store",
    "ensure_file_meta",
    "parse_part",
]

#: Statuses retried with backoff (a restarting or overloaded server); 4xx are never retried.
RETRY_STATUSES = (500, 502, 503, 504)
#: Keep each STOW-RS request below this many bytes of DICOM (a multipart body is built in memory).
STORE_BATCH_BYTES = 32 * 1024 * 1024
#: Original transfer syntax, no transcoding by the server: retrieval is byte-identical to what was stored.
ORIGINAL_SYNTAX = (("application/dicom", "*"),)

_QIDO_OPTIONS = {"limit", "offset", "fields", "fuzzymatching", "get_remaining"}


class PacsError(DicomflowError):
    """The PACS refused, could not be reached, or does not hold what was asked for."""


# ---- connecting ------------------------------------------------------------------------------------
class _Session(requests.Session):
    """A session that sends QIDO wildcards as a literal ``*``.

    dicomweb-client percent-encodes ``*`` in query values (``%2A``) and Orthanc 1.10 then matches it
    literally, so ``PatientID=ABC*`` finds nothing. ``*`` is legal unescaped in a query (RFC 3986).
    """

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        url = prepared.url or ""
        if "?" in url and "%2A" in url.upper():
            path, query = url.split("?", 1)
            prepared.url = f"{path}?{query.replace('%2A', '*').replace('%2a', '*')}"
        return prepared


def make_session(conn: PacsConnection, retries: int = 4, backoff_factor: float = 0.2) -> requests.Session:
    """A requests session with Basic auth, ``Accept-Encoding: identity`` and retries with backoff.

    Retries cover connection errors, read errors and ``RETRY_STATUSES`` for every method, POST
    included: STOW-RS of the same instance twice is harmless (Orthanc keeps one copy).
    """
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        backoff_factor=backoff_factor,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # retry every verb
        raise_on_status=False,  # hand the last answer back, so the status maps to a clear PacsError
        respect_retry_after_header=True,
    )
    session = _Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.auth = conn.auth
    # Orthanc gzips single-instance answers otherwise, which is ~40x slower on loopback.
    session.headers["Accept-Encoding"] = "identity"
    return session


def connect(
    conn: PacsConnection | None = None,
    *,
    retries: int = 4,
    backoff_factor: float = 0.2,
    timeout: float = 60.0,
) -> DICOMwebClient:
    """An HTTP DICOMweb client for ``conn`` (default: :func:`dicomflow.credentials.pacs_connection`)."""
    if conn is None:
        conn = pacs_connection()
    if not conn.url.startswith(("http://", "https://")):
        raise PacsError(f"PACS URL {conn.url!r} is not http(s); set DICOMFLOW_PACS_URL to the DICOMweb root "
                        "(e.g. http://127.0.0.1:8042/dicom-web)")
    session = make_session(conn, retries=retries, backoff_factor=backoff_factor)
    # A large chunk size keeps STOW bodies as bytes (not a generator), so a retried POST resends them.
    client = DICOMwebClient(url=conn.url, session=session, chunk_size=1 << 40, timeout=timeout)
    client.set_http_retry_params(retry=False)  # the session's urllib3 Retry does it, once
    return client


# ---- errors -----------------------------------------------------------------------------------------
def _base_url(client: Any) -> str:
    return str(getattr(client, "base_url", "the PACS"))


@contextlib.contextmanager
def _pacs_errors(client: Any, what: str) -> Iterator[None]:
    """Map requests failures raised inside the block to one-line :class:`PacsError` messages."""
    base = _base_url(client)
    try:
        yield
    except requests.HTTPError as exc:
        resp = exc.response
        status = resp.status_code if resp is not None else None
        url = resp.url if resp is not None and resp.url else base
        if status == 401:
            has_auth = getattr(getattr(client, "_session", None), "auth", None) is not None
            if has_auth:
                raise PacsError(f"wrong PACS credentials: {base} answered 401 Unauthorized to {what}; check "
                                "DICOMFLOW_PACS_USERNAME/DICOMFLOW_PACS_PASSWORD or the PACS secret") from None
            raise PacsError(f"no PACS credentials: {base} answered 401 Unauthorized to {what}; set "
                            "DICOMFLOW_PACS_USERNAME/DICOMFLOW_PACS_PASSWORD or DICOMFLOW_PACS_SECRET_ARN "
                            "(or run 'dicomflow up' locally)") from None
        if status == 403:
            raise PacsError(f"the PACS user may not {what} ({url} answered 403 Forbidden); "
                            "grant it the right or use another account") from None
        if status == 404:
            raise PacsError(f"not found on the PACS: {what} ({url} answered 404); check the UIDs "
                            "(search first) and the DICOMweb root in DICOMFLOW_PACS_URL") from None
        reason = resp.reason if resp is not None else str(exc)
        raise PacsError(f"the PACS answered {status} {reason} to {what} ({url}); see the PACS log") from None
    except requests.exceptions.RetryError as exc:
        raise PacsError(f"the PACS kept failing for {what} at {base} after retries ({_short(exc)}); "
                        "check that it is healthy ('dicomflow status')") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsError(f"PACS unreachable at {base} for {what} ({_short(exc)}); start it with "
                        "'dicomflow up' or set DICOMFLOW_PACS_URL to a running DICOMweb server") from None


def _short(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without URLs full of parameters."""
    inner: BaseException = exc
    while True:
        nxt = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        nxt = nxt or getattr(inner, "reason", None)
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    text = str(inner)
    if ">: " in text:  # urllib3 "<HTTPConnection object at 0x..>: Failed to establish ..." noise
        text = text.split(">: ", 1)[1]
    return text[:200]


# ---- search (QIDO-RS) -------------------------------------------------------------------------------
def _split_filters(filters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    options = {k: v for k, v in filters.items() if k in _QIDO_OPTIONS and v is not None}
    search = {k: v for k, v in filters.items() if k not in _QIDO_OPTIONS and v is not None}
    return search, options


def search_studies(client: DICOMClient, **filters: Any) -> list[dict]:
    """QIDO-RS studies matching DICOM-keyword ``filters`` (e.g. ``PatientID="X"``, ``ModalitiesInStudy="CR"``).

    Also accepts ``limit``, ``offset``, ``fields`` (extra attributes to return), ``fuzzymatching``
    and ``get_remaining``.
    """
    search, options = _split_filters(filters)
    with _pacs_errors(client, "search studies"):
        return list(client.search_for_studies(search_filters=search or None, **options))


def search_series(client: DICOMClient, study_uid: str | None = None, **filters: Any) -> list[dict]:
    """QIDO-RS series (of one study, or of all when ``study_uid`` is None); filters as :func:`search_studies`."""
    search, options = _split_filters(filters)
    with _pacs_errors(client, f"search series of study {study_uid}" if study_uid else "search series"):
        return list(client.search_for_series(study_instance_uid=study_uid, search_filters=search or None,
                                             **options))


def search_instances(client: DICOMClient, study_uid: str | None = None, series_uid: str | None = None,
                     **filters: Any) -> list[dict]:
    """QIDO-RS instances of a study / series; filters as :func:`search_studies`."""
    search, options = _split_filters(filters)
    with _pacs_errors(client, f"search instances of series {series_uid or '*'}"):
        return list(client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid,
                                                search_filters=search or None, **options))


# ---- retrieve (WADO-RS) -----------------------------------------------------------------------------
def _instance_order(ds: pydicom.Dataset) -> tuple[int, str]:
    number, uid = stored_text(ds, 0x00200013), stored_text(ds, 0x00080018)  # InstanceNumber, SOPInstanceUID
    try:
        return int(number or 0), uid
    except ValueError:
        return 0, uid


def retrieve_series(client: DICOMClient, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    """Every instance of a series in ONE multipart WADO-RS request, in the stored transfer syntax.

    Instances are ordered by InstanceNumber (then SOP Instance UID); volume assembly must still sort
    by geometry.
    """
    with _pacs_errors(client, f"retrieve series {series_uid}"):
        if _is_plain_http(client):
            datasets = _http_retrieve_series(client, study_uid, series_uid)
        else:
            datasets = list(client.retrieve_series(study_uid, series_uid, media_types=ORIGINAL_SYNTAX))
    if not datasets:
        raise PacsError(f"series {series_uid} of study {study_uid} has no instances on the PACS")
    return sorted(datasets, key=_instance_order)


def _is_plain_http(client: Any) -> bool:
    """An HTTP client without per-service URL prefixes (what :func:`connect` makes)."""
    return isinstance(client, DICOMwebClient) and client.wado_url_prefix is None


def _http_retrieve_series(client: DICOMwebClient, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    """One multipart WADO-RS GET, parsed part by part as the body arrives.

    Same request as ``DICOMwebClient.retrieve_series``, which reads the body in 10 KiB chunks, splits
    parts byte by byte and parses each with ``dcmread`` (2-4x the bare GET on loopback). Here the
    socket is read into one reusable buffer, each complete part is parsed in place by
    :func:`parse_part` (a direct reader for the uncompressed little-endian syntaxes, ``dcmread`` for
    the rest), and every byte is copied once, into its element value. Copies, not parsing, were the
    cost: each fresh 26 MB costs ~15 ms of page faults, and a thread per side fought over the GIL.
    """
    url = f"{client.base_url}/studies/{study_uid}/series/{series_uid}"
    response = client._session.get(url, headers={"Accept": _ACCEPT_SERIES}, stream=True,
                                    timeout=getattr(client, "_timeout", 60))
    try:
        response.raise_for_status()
        splitter = _MultipartSplitter(response.headers.get("Content-Type", ""))
        readinto = _body_readinto(response)
        datasets: list[pydicom.Dataset] = []
        gc_was_on = gc.isenabled()
        gc.disable()  # ~60 objects per instance, none cyclic: full collections would rescan the caller's heap
        try:
            datasets.extend(parse_part(part) for part in splitter.read(readinto))
        except (OSError, http.client.HTTPException) as exc:
            raise requests.ConnectionError(exc) from exc
        finally:
            if gc_was_on:
                gc.enable()
        splitter.close()
    finally:
        response.close()
    return datasets


def _body_readinto(response: requests.Response) -> Callable[[memoryview], int]:
    """``readinto`` for the response body, straight from the socket where it can be.

    The ``http.client`` response under urllib3 (which undoes the transfer coding) reads into the
    buffer given; urllib3's own ``readinto`` would read into a new ``bytes`` first. With a content
    coding (we ask for ``identity``, a proxy may not honour it) urllib3 decodes, then we copy.
    """
    fp = getattr(response.raw, "_fp", None)
    coding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if isinstance(fp, http.client.HTTPResponse) and coding in ("", "identity"):
        return fp.readinto
    raw = response.raw

    def decoded_readinto(view: memoryview) -> int:
        data = raw.read(len(view), decode_content=True)  # urllib3 2: at most len(view) bytes
        view[:len(data)] = data
        return len(data)

    return decoded_readinto


_ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: Initial receive buffer; it doubles while a single part does not fit in half of it.
_READ_BUFFER = 1 << 20


class _MultipartSplitter:
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
                            "not multipart/related; is the URL a DICOMweb root?")
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
                raise PacsError("malformed multipart answer from the PACS; check the DICOMweb root URL")
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
                            "incomplete (connection dropped?) - retry")


def _split_multipart(body: bytes, content_type: str) -> list[pydicom.Dataset]:
    """The DICOM parts of a complete ``multipart/related`` body, parsed."""
    splitter = _MultipartSplitter(content_type)
    datasets = [parse_part(part) for part in splitter.read(io.BytesIO(body).readinto)]
    splitter.close()
    return datasets


# ---- parsing a DICOM part -------------------------------------------------------------------------
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


def retrieve_instance(client: DICOMClient, study_uid: str, series_uid: str, sop_uid: str) -> pydicom.Dataset:
    """One instance by WADO-RS, in the stored transfer syntax."""
    with _pacs_errors(client, f"retrieve instance {sop_uid}"):
        return client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=ORIGINAL_SYNTAX)


# ---- store (STOW-RS) --------------------------------------------------------------------------------
def ensure_file_meta(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` ready to be written as a DICOM Part 10 file: a shallow copy with complete File Meta.

    dicomweb-client + pydicom 3 upload a dataset without file meta as a bare data set, which Orthanc
    stores but cannot serve back; this fills in what ``save_as(enforce_file_format=True)`` would.
    """
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise PacsError(f"cannot store a dataset without {keyword}; set it before storing")
    # A plain Dataset over the same elements: copy.copy of a highdicom object would dump its frame
    # index (an SQLite database, usable only in the thread that built it) on every store.
    out = pydicom.Dataset(dict(ds.items()))
    meta = FileMetaDataset(getattr(ds, "file_meta", None) or FileMetaDataset())
    if "TransferSyntaxUID" not in meta:
        implicit = getattr(ds, "is_implicit_VR", None)
        if implicit is None and getattr(ds, "original_encoding", None):
            implicit = ds.original_encoding[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.FileMetaInformationVersion = b"\x00\x01"
    out.file_meta = meta
    out.preamble = getattr(ds, "preamble", None) or b"\x00" * 128
    return out


def _size_hint(ds: pydicom.Dataset) -> int:
    pixels = ds.get("PixelData")
    return 4096 + (len(pixels) if isinstance(pixels, bytes | bytearray) else 0)


def _batches(datasets: Iterable[pydicom.Dataset], max_bytes: int) -> Iterator[list[pydicom.Dataset]]:
    batch: list[pydicom.Dataset] = []
    size = 0
    for ds in datasets:
        n = _size_hint(ds)
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(ds)
        size += n
    if batch:
        yield batch


def store(client: DICOMClient, datasets: Sequence[pydicom.Dataset] | Iterable[pydicom.Dataset],
          *, max_batch_bytes: int = STORE_BATCH_BYTES) -> None:
    """STOW-RS ``datasets`` (any number; sent in batches of at most ``max_batch_bytes``).

    Datasets are given complete File Meta first (the caller's objects are not modified). Storing an
    instance the PACS already holds is not an error. Raises :class:`PacsError` if the server rejects any.
    """
    prepared = [ensure_file_meta(ds) for ds in datasets]
    for batch in _batches(prepared, max_batch_bytes):
        with _pacs_errors(client, f"store {len(batch)} instance(s)"):
            result = client.store_instances(batch)
        failed = result.get("FailedSOPSequence") if result is not None else None
        if failed:
            first = failed[0]
            reason = first.get("FailureReason", "unknown")
            raise PacsError(
                f"the PACS rejected {len(failed)} of {len(batch)} instance(s) (first: "
                f"{first.get('ReferencedSOPInstanceUID', '?')}, failure reason {reason}); see the PACS log"
            )
