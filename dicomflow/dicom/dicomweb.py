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
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.protocol import DICOMClient
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dicomflow.credentials import PacsConnection, pacs_connection
from dicomflow.dicom._multipart import MultipartSplitter, parse_part
from dicomflow.dicom.elements import stored_text
from dicomflow.dicom.errors import PacsError

__all__ = [
    "PacsError",
    "connect",
    "make_session",
    "search_studies",
    "search_series",
    "search_instances",
    "retrieve_series",
    "retrieve_instance",
    "retrieve_metadata",
    "store",
    "ensure_file_meta",
]

#: Statuses retried with backoff (a restarting or overloaded server); 4xx are never retried.
RETRY_STATUSES = (500, 502, 503, 504)
#: Keep each STOW-RS request below this many bytes of DICOM (a multipart body is built in memory).
STORE_BATCH_BYTES = 32 * 1024 * 1024
#: Original transfer syntax, no transcoding by the server: retrieval is byte-identical to what was stored.
ORIGINAL_SYNTAX = (("application/dicom", "*"),)

_QIDO_OPTIONS = {"limit", "offset", "fields", "fuzzymatching", "get_remaining"}


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
    return pacs_session(conn, session)


def pacs_session(conn: PacsConnection, session: requests.Session | None = None) -> requests.Session:
    """``session`` (default: a new one) set up for the PACS of ``conn``: its Basic auth, ``Accept-Encoding:
    identity`` (Orthanc gzips single-instance answers otherwise, ~40x slower on loopback), and the
    environment's proxy and CA-bundle settings read once for this URL. requests would read them again on
    every request (~1 ms each), and with them ``~/.netrc``, which could add credentials of its own."""
    session = session if session is not None else requests.Session()
    session.auth = conn.auth
    session.headers["Accept-Encoding"] = "identity"
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(conn.url)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
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
                        "(e.g. http://127.0.0.1:8042/dicom-web)", "protocol")
    session = make_session(conn, retries=retries, backoff_factor=backoff_factor)
    # A large chunk size keeps STOW bodies as bytes (not a generator), so a retried POST resends them.
    client = DICOMwebClient(url=conn.url, session=session, chunk_size=1 << 40, timeout=timeout)
    client.set_http_retry_params(retry=False)  # the session's urllib3 Retry does it, once
    return client


# ---- errors -----------------------------------------------------------------------------------------
def _base_url(client: DICOMClient) -> str:
    return str(getattr(client, "base_url", "the PACS"))


def instance_url(client: DICOMClient, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The WADO-RS address of one instance on the client's PACS (no credentials: they are never in a URL)."""
    return f"{_base_url(client).rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (file meta added where missing)."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ensure_file_meta(ds), enforce_file_format=True)
    return buf.getvalue()


@contextlib.contextmanager
def _pacs_errors(client: DICOMClient, what: str) -> Iterator[None]:
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
                                "DICOMFLOW_PACS_USERNAME/DICOMFLOW_PACS_PASSWORD or the PACS secret",
                                "unauthorized", 401) from None
            raise PacsError(f"no PACS credentials: {base} answered 401 Unauthorized to {what}; set "
                            "DICOMFLOW_PACS_USERNAME/DICOMFLOW_PACS_PASSWORD or DICOMFLOW_PACS_SECRET_ARN "
                            "(or run 'dicomflow up' locally)", "unauthorized", 401) from None
        if status == 403:
            raise PacsError(f"the PACS user may not {what} ({url} answered 403 Forbidden); "
                            "grant it the right or use another account", "forbidden", 403) from None
        if status == 404:
            raise PacsError(f"not found on the PACS: {what} ({url} answered 404); check the UIDs "
                            "(search first) and the DICOMweb root in DICOMFLOW_PACS_URL", "not-found", 404) from None
        reason = resp.reason if resp is not None else str(exc)
        kind = "unavailable" if status in (502, 503, 504) else "refused"
        raise PacsError(f"the PACS answered {status} {reason} to {what} ({url}); see the PACS log", kind,
                        status) from None
    except requests.exceptions.RetryError as exc:
        raise PacsError(f"the PACS kept failing for {what} at {base} after retries ({_short(exc)}); "
                        "check that it is healthy ('dicomflow status')", "unavailable") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsError(f"PACS unreachable at {base} for {what} ({_short(exc)}); start it with "
                        "'dicomflow up' or set DICOMFLOW_PACS_URL to a running DICOMweb server",
                        "unreachable") from None


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
        raise PacsError(f"series {series_uid} of study {study_uid} has no instances on the PACS", "not-found")
    return sorted(datasets, key=_instance_order)


def _is_plain_http(client: DICOMClient) -> bool:
    """An HTTP client without per-service URL prefixes (what :func:`connect` makes)."""
    return isinstance(client, DICOMwebClient) and client.wado_url_prefix is None


def _http_retrieve_series(client: DICOMwebClient, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    """One multipart WADO-RS GET, parsed part by part as the body arrives.

    Same request as ``DICOMwebClient.retrieve_series``, which reads the body in 10 KiB chunks, splits
    parts byte by byte and parses each with ``dcmread`` (2-4x the bare GET on loopback). Here the
    socket is read into one reusable buffer, each complete part is parsed in place by
    :func:`parse_part` (a direct reader for the uncompressed little-endian syntaxes, ``dcmread`` for
    the rest), and every byte is copied once, into its element value (each fresh copy of a 26 MB
    series costs page faults), in the calling thread (a reader thread would fight the parser for the
    GIL). What remains above the raw transfer is Python work per element (``bench/bench_retrieval.py``).
    """
    url = f"{client.base_url}/studies/{study_uid}/series/{series_uid}"
    response = client._session.get(url, headers={"Accept": _ACCEPT_SERIES}, stream=True,
                                    timeout=getattr(client, "_timeout", 60))
    try:
        response.raise_for_status()
        splitter = MultipartSplitter(response.headers.get("Content-Type", ""))
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
def retrieve_instance(client: DICOMClient, study_uid: str, series_uid: str, sop_uid: str) -> pydicom.Dataset:
    """One instance by WADO-RS, in the stored transfer syntax."""
    with _pacs_errors(client, f"retrieve instance {sop_uid}"):
        return client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=ORIGINAL_SYNTAX)


def retrieve_metadata(client: DICOMClient, study_uid: str, series_uid: str,
                      sop_uid: str | None = None) -> list[dict]:
    """WADO-RS metadata (DICOM JSON) of one instance, or of every instance of the series when ``sop_uid`` is None."""
    with _pacs_errors(client, f"retrieve metadata of {'instance ' + sop_uid if sop_uid else 'series ' + series_uid}"):
        if sop_uid:
            return [client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)]
        return list(client.retrieve_series_metadata(study_uid, series_uid))


# ---- store (STOW-RS) --------------------------------------------------------------------------------
def ensure_file_meta(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` ready to be written as a DICOM Part 10 file: a shallow copy with complete File Meta.

    dicomweb-client + pydicom 3 upload a dataset without file meta as a bare data set, which Orthanc
    stores but cannot serve back; this fills in what ``save_as(enforce_file_format=True)`` would.
    """
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise PacsError(f"cannot store a dataset without {keyword}; set it before storing", "protocol")
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


def store_batch(client: DICOMClient, batch: Sequence[pydicom.Dataset]) -> dict[str, str]:
    """STOW-RS one request of datasets that already have File Meta; returns the instances the PACS
    refused (SOP Instance UID -> failure reason). Raises :class:`PacsError` if the request itself fails."""
    with _pacs_errors(client, f"store {len(batch)} instance(s)"):
        result = client.store_instances(list(batch))
    failed = result.get("FailedSOPSequence") if result is not None else None
    return {str(item.get("ReferencedSOPInstanceUID", "?")): str(item.get("FailureReason", "unknown"))
            for item in failed or ()}


def store(client: DICOMClient, datasets: Sequence[pydicom.Dataset] | Iterable[pydicom.Dataset],
          *, max_batch_bytes: int = STORE_BATCH_BYTES) -> None:
    """STOW-RS ``datasets`` (any number; sent in batches of at most ``max_batch_bytes``).

    Datasets are given complete File Meta first (the caller's objects are not modified). Storing an
    instance the PACS already holds is not an error. Raises :class:`PacsError` if the server rejects any.
    """
    prepared = [ensure_file_meta(ds) for ds in datasets]
    for batch in _batches(prepared, max_batch_bytes):
        failed = store_batch(client, batch)
        if failed:
            sop, reason = next(iter(failed.items()))
            raise PacsError(
                f"the PACS rejected {len(failed)} of {len(batch)} instance(s) (first: {sop}, failure reason "
                f"{reason}); see the PACS log"
            )
