"""Ground Truth manifests: JSON Lines in S3, input lines, output lines.

* Input manifest line: ``{"source": "<orthanc id or UID JSON>"}`` (or ``"source-ref"``), plus any
  extra attributes.
* Output manifest line: the input line plus ``"<labelAttributeName>"`` (the consolidated content)
  and ``"<labelAttributeName>-metadata"`` (``type``, ``job-name``, ``human-annotated``,
  ``creation-date``).

Writes are atomic from a reader's view: the whole body is built first and sent with one
``put_object`` (S3 never shows a half-written object).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dicomweb_client.protocol import DICOMClient

from dicomflow import aws, safejson
from dicomflow.dicom import json as dj
from dicomflow.errors import DicomflowError

SOURCE_KEYS = ("source", "source-ref")
METADATA_TYPE = "groundtruth/custom"


class ManifestError(DicomflowError):
    """A manifest cannot be read or written; the message says where and why."""


def dumps_jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """JSON Lines body: one compact JSON object per line, newline-terminated."""
    parts = []
    for line in lines:
        if not isinstance(line, Mapping):
            raise ManifestError(f"manifest lines must be JSON objects, got {type(line).__name__}")
        parts.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(parts) + "\n").encode() if parts else b""


def loads_jsonl(body: bytes | str, *, where: str = "manifest") -> list[dict[str, Any]]:
    """Parse JSON Lines; blank lines are ignored, a bad line is an error naming its number."""
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = safejson.loads(raw, f"{where} line {number}")
        except safejson.JsonDepthError as exc:
            raise ManifestError(str(exc)) from None
        except ValueError as exc:
            raise ManifestError(f"{where} line {number} is not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} line {number} is not a JSON object")
        out.append(obj)
    return out


def line_source(line: Mapping[str, Any]) -> Any:
    """The ``source`` / ``source-ref`` value of a manifest line or GT ``dataObject``."""
    for key in SOURCE_KEYS:
        if key in line:
            return line[key]
    raise ManifestError("manifest line has neither \"source\" nor \"source-ref\"")


def input_line(source: str | Mapping[str, str], **extra: Any) -> dict[str, Any]:
    """An input manifest line; UID objects are stored as a JSON string (GT's ``source`` is a string)."""
    value = source if isinstance(source, str) else json.dumps(dict(source), separators=(",", ":"))
    return {"source": value, **extra}


def output_line(input_obj: Mapping[str, Any], label_attribute: str, content: Mapping[str, Any],
                job_name: str, created: datetime | None = None) -> dict[str, Any]:
    """The output manifest line GT writes for one data object."""
    created = created or datetime.now(UTC)
    return {
        **input_obj,
        label_attribute: dict(content),
        f"{label_attribute}-metadata": {
            "type": METADATA_TYPE,
            "job-name": job_name,
            "human-annotated": "yes",
            "creation-date": created.strftime("%Y-%m-%dT%H:%M:%S.%f"),
        },
    }


def check_object_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an S3 object URI, or :class:`ManifestError` saying how to write one."""
    try:
        bucket, key = aws.parse_s3_uri(uri)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    if not key or key.endswith("/"):
        raise ManifestError(f"{uri} names a folder; give an object key such as s3://bucket/job/input.manifest")
    return bucket, key


def write_jsonl_s3(uri: str, lines: Iterable[Mapping[str, Any]], s3: Any = None) -> int:
    """Upload ``lines`` as one JSON Lines object (one request, all or nothing); returns the line count."""
    check_object_uri(uri)  # fail on a bad URI before building the body
    body = dumps_jsonl(lines)
    aws.write(uri, body, "application/jsonl", s3=s3)
    return body.count(b"\n")


def read_jsonl_s3(uri: str, s3: Any = None) -> list[dict[str, Any]]:
    """Read a JSON Lines object from S3."""
    check_object_uri(uri)
    return loads_jsonl(aws.read(uri, s3=s3), where=uri)


def read_json_s3(uri: str, s3: Any = None) -> Any:
    """Read one JSON document from S3 (e.g. GT's consolidation payload)."""
    check_object_uri(uri)
    body = aws.read(uri, s3=s3)
    try:
        return safejson.loads(body, uri)
    except safejson.JsonDepthError as exc:
        raise ManifestError(str(exc)) from None
    except ValueError as exc:
        raise ManifestError(f"{uri} is not JSON ({str(exc)[:120]})") from None


# ---- input manifest from a QIDO query ----------------------------------------------------------
PER_LEVELS = ("instance", "series")
SOURCE_FORMATS = ("orthanc-id", "uids")


def parse_query_filters(queries: Iterable[str]) -> dict[str, str]:
    """``["Modality=CR", "StudyDate=2020-"]`` -> QIDO filters; keys must be DICOM keywords."""
    from pydicom.datadict import tag_for_keyword

    filters: dict[str, str] = {}
    for q in queries:
        key, sep, value = q.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ManifestError(f"query {q!r} must look like KEYWORD=VALUE, e.g. Modality=CR")
        if tag_for_keyword(key) is None:
            raise ManifestError(f"query key {key!r} is not a DICOM keyword "
                                "(e.g. Modality, StudyDate, BodyPartExamined)")
        if key in filters:
            raise ManifestError(f"query key {key} is given twice; use one value (QIDO accepts wildcards like CT*)")
        filters[key] = value
    return filters


def input_lines_from_qido(results: Iterable[Mapping[str, Any]], per: str,
                          source_format: str = "orthanc-id") -> list[dict[str, Any]]:
    """Input manifest lines for QIDO results (instances or series), in result order, deduplicated.

    ``orthanc-id`` sources are computed (SHA-1 of the UIDs, as Orthanc names resources);
    ``uids`` sources are UID JSON strings and work with any DICOMweb PACS.
    """
    from dicomflow.dicom.orthanc import orthanc_id

    if per not in PER_LEVELS:
        raise ManifestError(f"--per must be one of {', '.join(PER_LEVELS)}, not {per!r}")
    if source_format not in SOURCE_FORMATS:
        raise ManifestError(f"source format must be one of {', '.join(SOURCE_FORMATS)}, not {source_format!r}")
    keys = ["StudyInstanceUID", "SeriesInstanceUID"] + (["SOPInstanceUID"] if per == "instance" else [])
    lines: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for item in results:
        uids = [dj.text(item, k) or None for k in keys]
        missing = [k for k, u in zip(keys, uids, strict=True) if u is None]
        if missing:
            raise ManifestError(f"the PACS returned a {per} without {', '.join(missing)}")
        ident = tuple(uids)  # type: ignore[arg-type]
        if ident in seen:
            continue
        seen.add(ident)
        if source_format == "uids":
            lines.append(input_line(dict(zip(keys, ident, strict=True))))
        else:
            lines.append(input_line(orthanc_id(dj.text(item, "PatientID"), *ident)))
    return lines


def orthanc_input_lines(orthanc: Any, filters: Mapping[str, str], per: str) -> list[dict[str, Any]]:
    """Input lines from Orthanc's ``/tools/find`` (``orthanc``: an ``OrthancRest``): IDs without QIDO.

    Measured on the local Orthanc: 10 000 instances in well under a second, against ~16 s by QIDO-RS
    (Orthanc's DICOMweb plugin spends ~1.6 ms per returned instance).
    """
    if per not in PER_LEVELS:
        raise ManifestError(f"--per must be one of {', '.join(PER_LEVELS)}, not {per!r}")
    ids = orthanc.find("Instance" if per == "instance" else "Series", dict(filters))
    return [input_line(i) for i in dict.fromkeys(ids)]


def query_input_lines(client: DICOMClient, filters: Mapping[str, str], per: str,
                      source_format: str = "orthanc-id") -> list[dict[str, Any]]:
    """Run one QIDO query over the whole PACS (paged to the end) and return the input manifest lines."""
    from dicomflow.dicom import dicomweb

    fields = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
    if per == "instance":
        results = dicomweb.search_instances(client, None, None, fields=fields, get_remaining=True, **filters)
    elif per == "series":
        results = dicomweb.search_series(client, None, fields=fields, get_remaining=True, **filters)
    else:
        raise ManifestError(f"--per must be one of {', '.join(PER_LEVELS)}, not {per!r}")
    return input_lines_from_qido(results, per, source_format)
