"""The study JSON: parse and validate an inference request.

``{"dicomweb": {"url": "..", "auth": {"secretArn": ".."}}, "studyInstanceUID": "..",
"seriesInstanceUID": ".. (optional)", "outputs": ["json", "sr", "seg", "pdf", "occlusion", "embedding", "contours"],
"storeToPacs": true,
"outputS3Uri": "s3://.. (optional: where the occlusion PNG and the embedding's thumbnail go)"}``

Or one DICOM image as the body (content type ``application/dicom``, a Part 10 file or bare dataset): the
image itself is analysed (findings and embedding; nothing is fetched from or stored to a PACS), e.g. a
file on a workstation or the object an S3 notification names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dicomflow import safejson
from dicomflow.credentials import normalize_url, short
from dicomflow.dicom.objects import MAX_OBJECT_BYTES, NotADicomObject, read_object
from dicomflow.dicom.uid import is_uid
from dicomflow.inference.endpoint import DICOM
from dicomflow.inference.errors import BadRequest, PayloadTooLarge

MAX_INLINE_BYTES = 128_000
#: A study JSON nests 3 levels; anything much deeper is refused before it is walked.
MAX_DEPTH = 16
OUTPUTS = ("json", "sr", "seg", "pdf", "occlusion", "embedding", "contours")
DEFAULT_OUTPUTS = ("json",)
#: What an image body (application/dicom) gets: findings and its embedding.
IMAGE_OUTPUTS = ("json", "embedding")
_JSON_TYPES = ("application/json", "text/json", "application/x-json")
_KNOWN_KEYS = {"dicomweb", "studyInstanceUID", "seriesInstanceUID", "outputs", "storeToPacs", "outputS3Uri"}


@dataclass(frozen=True)
class StudyRequest:
    """A validated study JSON."""

    study_uid: str
    series_uid: str | None = None
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    store_to_pacs: bool = True
    dicomweb_url: str | None = None
    secret_arn: str | None = field(default=None, repr=False)
    output_s3_uri: str | None = None
    #: The image sent as the body (application/dicom) instead of a study in a PACS.
    image: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """The request as study JSON (secret ARN included: it names a secret, it is not one)."""
        body: dict[str, Any] = {"studyInstanceUID": self.study_uid, "outputs": list(self.outputs),
                                "storeToPacs": self.store_to_pacs}
        if self.series_uid:
            body["seriesInstanceUID"] = self.series_uid
        dw: dict[str, Any] = {}
        if self.dicomweb_url:
            dw["url"] = self.dicomweb_url
        if self.secret_arn:
            dw["auth"] = {"secretArn": self.secret_arn}
        if dw:
            body["dicomweb"] = dw
        if self.output_s3_uri:
            body["outputS3Uri"] = self.output_s3_uri
        return body


def _uid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"'{name}' must be a non-empty DICOM UID string")
    value = value.strip()
    if not is_uid(value):
        raise BadRequest(f"'{name}' is not a DICOM UID (digits and dots, at most 64 characters): {short(value, 70)}")
    return value


def parse_image(raw: bytes) -> StudyRequest:
    """A request for one DICOM image sent as the body; BadRequest / PayloadTooLarge say what is wrong."""
    if len(raw) > MAX_OBJECT_BYTES:
        raise PayloadTooLarge(f"the DICOM body is {len(raw)} bytes; at most {MAX_OBJECT_BYTES} are accepted")
    if not raw:
        raise BadRequest(f"empty request body; send one DICOM image (Part 10 file) as {DICOM}")
    try:
        ds = read_object(raw, "the request body")
    except NotADicomObject as exc:
        raise BadRequest(f"{exc}; send one DICOM image (Part 10 file) as {DICOM}") from None
    return StudyRequest(study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.get("SeriesInstanceUID", "")) or None,
                        outputs=IMAGE_OUTPUTS, store_to_pacs=False, image=ds)


def parse_request(body: bytes | str | dict, content_type: str | None = "application/json") -> StudyRequest:
    """Validate a study JSON (bytes, text or a decoded dict); raise BadRequest / PayloadTooLarge."""
    if isinstance(body, dict):
        try:
            data = safejson.check_depth(body, "the study JSON", MAX_DEPTH)
        except safejson.JsonDepthError as exc:
            raise BadRequest(str(exc)) from None
    else:
        raw = body.encode() if isinstance(body, str) else bytes(body)
        kind = (content_type or "application/json").split(";")[0].strip().lower()
        if kind == DICOM:
            return parse_image(raw)
        if len(raw) > MAX_INLINE_BYTES:
            raise PayloadTooLarge(
                f"request body is {len(raw)} bytes; the limit for an inline study JSON is "
                f"{MAX_INLINE_BYTES}. "
                "Send only the study JSON (the container fetches images from the PACS itself)")
        if kind not in _JSON_TYPES:
            raise BadRequest(f"content type {short(content_type)} is not supported; send the study JSON as "
                             f"application/json, or one DICOM image as {DICOM}")
        if not raw.strip():
            raise BadRequest("empty request body; send a study JSON with at least 'studyInstanceUID'")
        try:
            data = safejson.loads(raw, "the study JSON", MAX_DEPTH)
        except safejson.JsonDepthError as exc:
            raise BadRequest(str(exc)) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON ({str(exc)[:120]}); send a study JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the study JSON must be an object like {\"studyInstanceUID\": \"1.2.3\"}")
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(str(k)[:40] for k in unknown[:5])}; "
                         f"allowed: {', '.join(sorted(_KNOWN_KEYS))}")
    if "studyInstanceUID" not in data:
        raise BadRequest("missing 'studyInstanceUID': say which study to analyse")
    study = _uid(data["studyInstanceUID"], "studyInstanceUID")
    series = data.get("seriesInstanceUID")
    series = _uid(series, "seriesInstanceUID") if series not in (None, "") else None

    outputs = data.get("outputs", list(DEFAULT_OUTPUTS))
    if isinstance(outputs, str):
        outputs = [o.strip() for o in outputs.split(",") if o.strip()]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
        raise BadRequest(f"'outputs' must be a non-empty list drawn from {', '.join(OUTPUTS)}")
    bad = [o for o in outputs if o not in OUTPUTS]
    if bad:
        raise BadRequest(f"unknown output(s) {', '.join(map(short, bad[:5]))}; choose from {', '.join(OUTPUTS)}")
    outputs_t = tuple(dict.fromkeys(["json", *outputs]))  # json is always returned; keep order, no dupes

    store = data.get("storeToPacs", True)
    if not isinstance(store, bool):
        raise BadRequest("'storeToPacs' must be true or false")

    dw = data.get("dicomweb") or {}
    if not isinstance(dw, dict):
        raise BadRequest("'dicomweb' must be an object like {\"url\": \"https://pacs/dicom-web\"}")
    unknown_dw = sorted(set(dw) - {"url", "auth"})
    if unknown_dw:
        raise BadRequest(f"unknown field(s) {', '.join(map(short, unknown_dw))} in 'dicomweb'; allowed: auth, url")
    url = dw.get("url")
    if url is not None:
        try:
            normalize_url(url)
        except ValueError as exc:
            raise BadRequest(f"'dicomweb.url' must be an http(s) URL of a DICOMweb root: {exc}") from None
    auth = dw.get("auth") or {}
    if not isinstance(auth, dict):
        raise BadRequest("'dicomweb.auth' must be an object like "
                         "{\"secretArn\": \"arn:aws:secretsmanager:..\"}")
    extra_auth = sorted(set(auth) - {"secretArn"})
    if extra_auth:
        raise BadRequest("'dicomweb.auth' takes only 'secretArn' (credentials never travel in the request)")
    secret = auth.get("secretArn")
    if secret is not None and (not isinstance(secret, str) or not secret.strip() or len(secret) > 2048):
        raise BadRequest("'dicomweb.auth.secretArn' must be a Secrets Manager ARN or name")

    out_uri = data.get("outputS3Uri")
    if out_uri is not None and (not isinstance(out_uri, str) or len(out_uri) > 1024
                                or not re.match(r"^s3://[^/\s]+(/|$)", out_uri)):
        raise BadRequest(f"'outputS3Uri' must be an S3 URI like s3://bucket/prefix, got {short(out_uri)}")
    return StudyRequest(study_uid=study, series_uid=series, outputs=outputs_t, store_to_pacs=store,
                        dicomweb_url=url.rstrip("/") if url else None, secret_arn=secret,
                        output_s3_uri=out_uri)
