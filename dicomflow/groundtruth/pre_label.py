"""Build a labeling task's input (the pre-label Lambda's work): resolve the object, sign one URL per instance.

``taskInput`` (what the worker template reads as ``task.input``; no PHI, no credential)::

    {
      "schemaVersion": 1,
      "scope": "<labeling job name>",            # URLs are signed for this job only
      "level": "instance" | "series",
      "objectId": "<Orthanc ID>" | null,
      "studyInstanceUID": "..", "seriesInstanceUID": "..", "sopInstanceUID": ".." | null,
      "modality": "CR", "photometricInterpretation": "MONOCHROME1",
      "rows": 1955, "columns": 1841, "pixelSpacing": [0.2, 0.2] | null,   # null when absent or zero
      "labels": ["No Finding", ...],
      "numberOfSlices": 1,                       # frames over all instances
      "instances": [                             # a series in order along the slice normal
        {"sopInstanceUID": "..", "instanceNumber": 1, "frames": 1, "position": -12.5 | null, "url": "<signed>"}
      ],
      "window": {"center": 40.0, "width": 400.0, "source": "dicom" | "pixel-range" | "computed" | "bits"},
      "urlExpires": 1700000000,                  # unix seconds
      "suggestions": {..}                        # with DICOMFLOW_PRELABEL_ENDPOINT: the model's (suggestions.py)
    }

Environment: ``DICOMFLOW_GATEWAY_URL`` (required: the same-origin WADO gateway, e.g.
``http://127.0.0.1:PORT/wado``), ``DICOMFLOW_SIGNING_SECRET_ARN`` or ``DICOMFLOW_SIGNING_KEY``,
``DICOMFLOW_URL_TTL_SECONDS`` (default 3600), ``DICOMFLOW_LABELS`` (default CheXpert 14; a manifest line's
``dicomflow-labels`` list replaces it for that object),
``DICOMFLOW_PRELABEL_ENDPOINT`` / ``DICOMFLOW_PRELABEL_TIMEOUT_SECONDS`` (optional AI pre-labels), and the
PACS settings of :mod:`dicomflow.credentials`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dicomweb_client.protocol import DICOMClient

from dicomflow.config import runtime
from dicomflow.dicom import dicomweb, geometry
from dicomflow.dicom import json as dj
from dicomflow.dicom.elements import NON_IMAGE_MODALITIES
from dicomflow.dicom.errors import PacsError
from dicomflow.dicom.orthanc import ResolvedObject
from dicomflow.groundtruth import signing
from dicomflow.groundtruth.labels import LINE_LABELS, LabelSetError, label_set_from_env, validate_label_set
from dicomflow.groundtruth.source import LabelingTaskError, ObjectRef, event_source, require_uid, resolve

log = logging.getLogger(__name__)

GATEWAY_ENV = "DICOMFLOW_GATEWAY_URL"
SCHEMA_VERSION = 1
@dataclass(frozen=True)
class TaskSettings:
    """Everything besides the PACS that a task input needs."""

    gateway_url: str
    key: bytes
    scope: str
    labels: list[str]
    ttl: int = signing.DEFAULT_TTL_SECONDS

    @classmethod
    def from_env(cls, labeling_job_arn: str) -> TaskSettings:
        gateway = (runtime().gateway_url or "").strip()
        if not gateway:
            raise LabelingTaskError("invalid", f"{GATEWAY_ENV} is not set; set it to the WADO gateway URL "
                                               "workers reach (e.g. https://label.example.org/wado)")
        return cls(gateway_url=gateway.rstrip("/"), key=signing.signing_key(),
                   scope=signing.job_scope(labeling_job_arn), labels=label_set_from_env(),
                   ttl=signing.url_ttl_seconds())


# ---- metadata ------------------------------------------------------------------------------------
def _number(raw: Any) -> float | None:
    try:
        out = float(raw)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _exists(client: DICOMClient, ref: ObjectRef) -> bool:
    filters = {"SOPInstanceUID": ref.sop_uid} if ref.sop_uid else {}
    return bool(dicomweb.search_instances(client, ref.study_uid, ref.series_uid, limit=1, **filters))


def fetch_metadata(client: DICOMClient, ref: ObjectRef) -> list[dict[str, Any]]:
    """WADO-RS metadata of the instance, or of every instance of the series; image objects only.

    PACS failures become :class:`LabelingTaskError`: ``not-found`` when the object is not there (a
    PACS that answers otherwise is asked by a search), ``unavailable`` when the PACS cannot say.
    """
    what = f"{ref.level} {ref.sop_uid or ref.series_uid}"
    try:
        try:
            meta = dicomweb.retrieve_metadata(client, ref.study_uid, ref.series_uid, ref.sop_uid)
        except PacsError as exc:
            if exc.not_found or (exc.kind == "refused" and not _exists(client, ref)):
                raise LabelingTaskError("not-found", f"{what} is not on the PACS") from None
            raise
    except PacsError as exc:
        raise LabelingTaskError("unavailable", str(exc)) from None
    meta = [m for m in meta if isinstance(m, Mapping)]
    if not meta:
        raise LabelingTaskError("not-found", f"{what} is not on the PACS (no instances)")
    for m in meta:
        modality = str(dj.value(m, "Modality") or "")
        if modality.upper() in NON_IMAGE_MODALITIES or dj.value(m, "Rows") is None or dj.value(m, "Columns") is None:
            kind = f"a {modality} object" if modality else "an object without Rows/Columns"
            raise LabelingTaskError("invalid", f"{what} holds {kind}, not an image: a worker cannot display it; "
                                               "label image instances or series only (remove it from the manifest)")
    return meta


def order_instances(meta: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[float | None]]:
    """Order along the slice normal, and each instance's position (None without geometry)."""
    positions = [dj.values(m, "ImagePositionPatient") or None for m in meta]
    orientations = [dj.values(m, "ImageOrientationPatient") or None for m in meta]
    numbers = [dj.value(m, "InstanceNumber") for m in meta]
    try:
        order = geometry.slice_order(positions, orientations, numbers)
        if all(p is not None for p in positions) and all(o is not None for o in orientations):
            normal = geometry.slice_normal(orientations[0])  # type: ignore[arg-type]
            where: list[float | None] = [round(geometry.slice_position(p, normal), 4)  # type: ignore[arg-type]
                                         for p in positions]
        else:
            where = [None] * len(meta)
    except geometry.GeometryError as exc:
        raise LabelingTaskError("invalid", f"cannot order the slices: {exc}") from None
    return order, where


# ---- window hint ---------------------------------------------------------------------------------
def _rescale(meta: Mapping[str, Any]) -> tuple[float, float]:
    return (_number(dj.value(meta, "RescaleSlope")) or 1.0, _number(dj.value(meta, "RescaleIntercept")) or 0.0)


def _window(center: float, width: float, source: str) -> dict[str, Any]:
    return {"center": round(center, 3), "width": round(max(width, 1.0), 3), "source": source}


def window_hint(meta: Mapping[str, Any], pixels: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Window center/width in modality units: DICOM tags, stored pixel range, pixel statistics, or bit depth.

    ``pixels`` (optional) returns the instance's modality-rescaled pixel array; it is only called
    when the header has no window and no pixel range.
    """
    center, width = _number(dj.value(meta, "WindowCenter")), _number(dj.value(meta, "WindowWidth"))
    if center is not None and width is not None and width > 0:
        return _window(center, width, "dicom")
    slope, intercept = _rescale(meta)
    lo, hi = _number(dj.value(meta, "SmallestImagePixelValue")), _number(dj.value(meta, "LargestImagePixelValue"))
    if lo is not None and hi is not None and hi > lo:
        a, b = sorted((lo * slope + intercept, hi * slope + intercept))
        return _window((a + b) / 2, b - a, "pixel-range")
    if pixels is not None:
        try:
            import numpy as np

            arr = np.asarray(pixels(), dtype=np.float64)
            a, b = (float(v) for v in np.percentile(arr, [0.5, 99.5]))
            if math.isfinite(a) and math.isfinite(b) and b > a:
                return _window((a + b) / 2, b - a, "computed")
        except Exception as exc:  # noqa: BLE001 - a hint only: fall back to the bit depth
            log.info("window from pixels failed (%s); using bit depth", type(exc).__name__)
    bits = int(_number(dj.value(meta, "BitsStored")) or 12)
    signed = dj.value(meta, "PixelRepresentation") == 1
    raw_lo, raw_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    a, b = sorted((raw_lo * slope + intercept, raw_hi * slope + intercept))
    return _window((a + b) / 2, b - a, "bits")


def _pixel_loader(client: DICOMClient, ref: ObjectRef, sop_uid: str) -> Callable[[], Any]:
    def load() -> Any:
        from pydicom.pixels import apply_modality_lut

        ds = dicomweb.retrieve_instance(client, ref.study_uid, ref.series_uid, sop_uid)
        return apply_modality_lut(ds.pixel_array, ds)

    return load


# ---- the task input --------------------------------------------------------------------------------
def build_task_input(client: DICOMClient, ref: ObjectRef, settings: TaskSettings, now: float | None = None) -> dict:
    """The ``taskInput`` for one object (see the module docstring)."""
    meta = fetch_metadata(client, ref)
    order, positions = order_instances(meta)
    now = time.time() if now is None else now
    instances = []
    for i in order:
        m = meta[i]
        sop = dj.value(m, "SOPInstanceUID") or (ref.sop_uid if len(meta) == 1 else None)
        if not sop:
            raise LabelingTaskError("invalid", "the PACS returned an instance without SOPInstanceUID")
        sop = require_uid(sop, "SOPInstanceUID")
        number = dj.value(m, "InstanceNumber")
        instances.append({
            "sopInstanceUID": sop,
            "instanceNumber": int(number) if _number(number) is not None else None,
            "frames": int(_number(dj.value(m, "NumberOfFrames")) or 1),
            "position": positions[i],
            "url": signing.sign_wado(settings.gateway_url, ref.study_uid, ref.series_uid, sop,
                                     scope=settings.scope, key=settings.key, ttl=settings.ttl, now=now),
        })
    middle = meta[order[len(order) // 2]]
    spacing = [_number(v) for v in dj.values(middle, "PixelSpacing")]
    return {
        "schemaVersion": SCHEMA_VERSION,
        "scope": settings.scope,
        "level": ref.level,
        "objectId": ref.object_id,
        "studyInstanceUID": ref.study_uid,
        "seriesInstanceUID": ref.series_uid,
        "sopInstanceUID": ref.sop_uid,
        "modality": dj.value(middle, "Modality"),
        "photometricInterpretation": dj.value(middle, "PhotometricInterpretation"),
        "rows": dj.value(middle, "Rows"),
        "columns": dj.value(middle, "Columns"),
        "pixelSpacing": spacing if len(spacing) == 2 and all(s and s > 0 for s in spacing) else None,
        "labels": list(settings.labels),
        "numberOfSlices": sum(inst["frames"] for inst in instances),
        "instances": instances,
        "window": window_hint(middle, _pixel_loader(client, ref, instances[len(order) // 2]["sopInstanceUID"])),
        "urlExpires": int(now) + settings.ttl,
    }


def pre_label(event: Mapping[str, Any], client: DICOMClient, resolver: Callable[[str], ResolvedObject] | None,
              settings: TaskSettings, now: float | None = None) -> dict[str, Any]:
    """GT pre-annotation: event -> ``{"taskInput": .., "isHumanAnnotationRequired": "true"}``."""
    ref = resolve(event_source(event), resolver)
    own = (event.get("dataObject") or {}).get(LINE_LABELS)
    if own is not None:  # the manifest line names its own label set (e.g. a segmentation job's structures)
        settings = replace(settings, labels=line_label_names(own))
    task = build_task_input(client, ref, settings, now=now)
    settings_now = runtime()
    if settings_now.prelabel_endpoint or settings_now.prelabel_model_group:
        task["suggestions"] = model_suggestions(client, ref, task, settings_now.prelabel_endpoint,
                                                settings_now.prelabel_model_group)
    return {"taskInput": task, "isHumanAnnotationRequired": "true"}


def line_label_names(own: Any) -> list[str]:
    """The class names of a line's ``dicomflow-labels``: names, or structure definitions (``{"name", "label",
    "type": {..}}``, as ``dicomflow label import --structures`` takes them); LabelingTaskError when malformed."""
    from dicomflow.dicom.structures import StructureError, parse_structures

    try:
        if isinstance(own, list) and any(isinstance(x, Mapping) for x in own):
            own = [st.name for st in parse_structures(own, where=f"the line's {LINE_LABELS!r}")]
        return validate_label_set(own, where=f"the line's {LINE_LABELS!r}")
    except (LabelSetError, StructureError) as exc:
        raise LabelingTaskError("invalid", str(exc)) from None


def model_suggestions(client: DICOMClient, ref: ObjectRef, task: Mapping[str, Any], endpoint: str | None,
                      group: str | None = None) -> dict[str, Any]:
    """The model's suggestions for the task's object (:mod:`dicomflow.groundtruth.suggestions`) from ``endpoint``,
    else from the endpoint serving ``group``'s approved version; an image of a series of several is refused by the
    model's one-image-per-series rule, so its series is counted first."""
    from dicomflow.groundtruth.suggestions import serving_endpoint, suggest, unavailable

    if not endpoint:
        started = time.perf_counter()
        endpoint, why = serving_endpoint(str(group))
        if not endpoint:
            return unavailable(why, started)

    instances = len(task["instances"])
    if ref.sop_uid:
        try:
            instances = len(dicomweb.search_instances(client, ref.study_uid, ref.series_uid, limit=2))
        except PacsError:
            instances = 0
    return suggest(endpoint, ref.study_uid, ref.series_uid, task["labels"], instances=instances,
                   timeout_s=runtime().prelabel_timeout_seconds, series=ref.sop_uid is None and instances > 1)
