"""Consolidating worker answers: per-class majority vote, ROI clustering, per-slice votes. Pure functions.

Worker answer (what the worker template's ``crowd-form`` submits; one per worker and data object)::

    {
      "labels": ["Cardiomegaly", "Edema"],                     # classes present in the image/series
      "rois": [                                                 # image pixel coordinates (column x, row y)
        {"label": "Cardiomegaly", "sopInstanceUID": "1.2...", "x": 10, "y": 20, "width": 50, "height": 40},
        {"type": "freehand", "label": "Edema", "sopInstanceUID": "1.2...", "points": [[x, y], ...]},
        {"type": "freehand", "source": "brush", ...}             # the outline of a painted region
      ],
      "sliceLabels": {"<SOPInstanceUID>": ["Edema"]},          # series only: classes seen on a slice
      "timeSpentSeconds": 42.5
    }

GT hands it over as ``annotationData.content``, a JSON string. A form field holding the answer
as JSON (``{"annotation": "<json string>"}``, from a hidden input) is unwrapped too; the output is
always structured JSON. Garbled or empty answers are skipped and counted, never fatal.

Vote rule: with ``n`` valid answers and ``k`` of them naming a class, the share is ``k / n``; the
class is present if the share is **greater than** the threshold (``DICOMFLOW_VOTE_THRESHOLD``,
default 0.5). A share **equal** to the threshold is a tie: the class is absent and listed under
``ties``. ``agreement`` is the share of workers whose answer matches the decision. ROIs: boxes of
the same label on the same SOP instance are clustered greedily by IoU (>= 0.5 with the cluster
mean, one box per worker per cluster), averaged, and kept by the same vote rule over workers.
Freehand outlines cluster by their bounding boxes; the kept outline is the cluster's medoid.
Per-slice labels are voted per slice with the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from statistics import median
from typing import Any

from dicomflow import safejson
from dicomflow.config import runtime
from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth.source import LabelingTaskError, ObjectRef, parse_source
from dicomflow.groundtruth.suggestions import outcome, outline_outcome

THRESHOLD_ENV = "DICOMFLOW_VOTE_THRESHOLD"
IOU_THRESHOLD = 0.5
VOTE_RULE = "present if share of workers > threshold; share == threshold is a tie: absent, listed in ties"
_ANSWER_KEYS = ("labels", "rois", "sliceLabels")
_WRAPPER_KEYS = ("annotation", "answer", "taskOutput", "crowd-form")
_MAX_UNWRAP = 8
#: Bounds on one answer (clustering is quadratic in ROIs): far above what a person draws on one object.
MAX_ROIS, MAX_POINTS, MAX_SLICES = 500, 10_000, 5_000


class AnswerError(DicomflowError):
    """A worker answer cannot be used; ``reason`` is ``garbled`` or ``empty``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConsolidationError(DicomflowError):
    """The consolidation event or payload as a whole is malformed."""


@dataclass
class WorkerAnswer:
    """One worker's validated answer."""

    worker_id: str
    labels: list[str]
    rois: list[dict[str, Any]] = field(default_factory=list)
    slice_labels: dict[str, list[str]] = field(default_factory=dict)
    time_spent: float | None = None
    dropped: int = 0  # labels / ROIs that were invalid or not in the label set
    suggested: list[str] | None = None  # the model's suggested labels the worker was shown (None: none shown)
    suggestion_model: dict[str, Any] | None = None
    suggested_outlines: list[dict[str, Any]] | None = None  # the model's outlines the worker was shown (with "id")


def vote_threshold(env: Mapping[str, str] | None = None) -> float:
    """The threshold from ``DICOMFLOW_VOTE_THRESHOLD`` (default 0.5), checked to be in [0, 1)."""
    return runtime(env).vote_threshold


# ---- parsing -------------------------------------------------------------------------------
def _decode(content: Any) -> Mapping[str, Any]:
    obj = content
    for _ in range(_MAX_UNWRAP):
        if isinstance(obj, bytes | bytearray):
            obj = obj.decode("utf-8", errors="replace")
        if isinstance(obj, str):
            if not obj.strip():
                raise AnswerError("empty", "answer content is empty")
            try:
                obj = safejson.loads(obj, "the answer")
            except safejson.JsonDepthError as exc:
                raise AnswerError("garbled", str(exc)) from None
            except ValueError:
                raise AnswerError("garbled", "answer content is not JSON") from None
            continue
        if not isinstance(obj, Mapping):
            raise AnswerError("garbled", f"answer content is a JSON {type(obj).__name__}, not an object")
        try:
            safejson.check_depth(obj, "the answer")
        except safejson.JsonDepthError as exc:
            raise AnswerError("garbled", str(exc)) from None
        if any(k in obj for k in _ANSWER_KEYS):
            return obj
        wrapped = [obj[k] for k in _WRAPPER_KEYS if k in obj]
        if not wrapped and len(obj) == 1:
            wrapped = list(obj.values())
        if not wrapped:
            if not obj:
                raise AnswerError("empty", "answer content is an empty object")
            raise AnswerError("garbled", "answer has none of labels, rois, sliceLabels")
        obj = wrapped[0]
    raise AnswerError("garbled", "answer is nested too deeply")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _roi(raw: Any, allowed: set[str] | None) -> dict[str, Any] | None:
    """A validated ROI (with its bounding box), or None if unusable."""
    if not isinstance(raw, Mapping):
        return None
    label, sop = raw.get("label"), raw.get("sopInstanceUID")
    if not isinstance(label, str) or (allowed is not None and label not in allowed):
        return None
    if not is_uid(sop):
        return None
    kind = raw.get("type", "rectangle")
    if kind == "freehand":
        pts = raw.get("points")
        if not isinstance(pts, Sequence) or isinstance(pts, str) or not 3 <= len(pts) <= MAX_POINTS:
            return None
        points = []
        for p in pts:
            if not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2:
                return None
            x, y = _finite(p[0]), _finite(p[1])
            if x is None or y is None:
                return None
            points.append([x, y])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        if box[2] <= 0 or box[3] <= 0:
            return None
        roi = {"type": "freehand", "label": label, "sopInstanceUID": sop, "points": points,
               "x": box[0], "y": box[1], "width": box[2], "height": box[3]}
        if raw.get("source") == "brush":  # the outline of a painted region (unioned with drawn ones)
            roi["source"] = "brush"
        made = raw.get("suggestion")
        if isinstance(made, str) and 0 < len(made) <= 16:  # an outline the model suggested, as the worker left it
            roi.update(suggestion=made, edited=raw.get("edited") is True)
        return roi
    if kind not in ("rectangle", "box"):
        return None
    x, y, w, h = (_finite(raw.get(k)) for k in ("x", "y", "width", "height"))
    if x is None or y is None or w is None or h is None or w <= 0 or h <= 0:
        return None
    return {"type": "rectangle", "label": label, "sopInstanceUID": sop, "x": x, "y": y, "width": w, "height": h}


def parse_answer(worker_id: str, content: Any, label_set: Iterable[str] | None = None) -> WorkerAnswer:
    """Validate one worker's ``annotationData.content``; raise :class:`AnswerError` if unusable.

    Labels not in ``label_set`` and malformed ROIs are dropped (counted in ``dropped``).
    """
    obj = _decode(content)
    allowed = set(label_set) if label_set is not None else None
    dropped = 0

    def clean(values: Any) -> list[str]:
        nonlocal dropped
        if values is None:
            return []
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise AnswerError("garbled", "labels must be a list of class names")
        out: list[str] = []
        for v in values:
            if isinstance(v, str) and (allowed is None or v in allowed):
                if v not in out:
                    out.append(v)
            else:
                dropped += 1
        return out

    labels = clean(obj.get("labels"))
    rois_raw = obj.get("rois") or []
    if not isinstance(rois_raw, Sequence) or isinstance(rois_raw, str):
        raise AnswerError("garbled", "rois must be a list")
    if len(rois_raw) > MAX_ROIS:
        raise AnswerError("garbled", f"{len(rois_raw)} ROIs in one answer; at most {MAX_ROIS} are accepted")
    rois = []
    for r in rois_raw:
        roi = _roi(r, allowed)
        if roi is None:
            dropped += 1
        else:
            rois.append(roi)
    slices_raw = obj.get("sliceLabels") or {}
    if not isinstance(slices_raw, Mapping):
        raise AnswerError("garbled", "sliceLabels must be an object of SOPInstanceUID -> labels")
    if len(slices_raw) > MAX_SLICES:
        raise AnswerError("garbled", f"sliceLabels for {len(slices_raw)} slices; at most {MAX_SLICES} are accepted")
    slice_labels: dict[str, list[str]] = {}
    for sop, values in slices_raw.items():
        if not is_uid(sop):
            dropped += 1
            continue
        cleaned = clean(values)
        if cleaned:
            slice_labels[sop] = cleaned
    if not labels and not rois and not slice_labels:
        raise AnswerError("empty", "answer has no labels, ROIs or slice labels")
    spent = _finite(obj.get("timeSpentSeconds"))
    answer = WorkerAnswer(worker_id, labels, rois, slice_labels, spent if spent is None or spent >= 0 else None,
                          dropped)
    _read_suggestion(answer, obj.get("suggestion"), allowed)
    return answer


def _read_suggestion(answer: WorkerAnswer, raw: Any, allowed: set[str] | None) -> None:
    """What the answer says its worker was shown: suggested labels, or outlines (each with its ``id``)."""
    if not isinstance(raw, Mapping):
        return
    model = raw.get("model")
    answer.suggestion_model = ({k: str(v) for k, v in model.items() if k in ("name", "version") and v is not None}
                               if isinstance(model, Mapping) else None)
    outlines = raw.get("outlines")
    if isinstance(outlines, Sequence) and not isinstance(outlines, str):
        shown = []
        for item in outlines[:MAX_ROIS]:
            roi = _roi({**item, "type": "freehand", "suggestion": item.get("id")} if isinstance(item, Mapping)
                       else None, allowed)
            if roi is not None and "suggestion" in roi:
                shown.append(roi)
        answer.suggested_outlines = shown
        return
    names = raw.get("suggested")
    if isinstance(names, Sequence) and not isinstance(names, str):
        answer.suggested = [n for n in dict.fromkeys(names) if isinstance(n, str) and (allowed is None or n in allowed)]


# ---- voting --------------------------------------------------------------------------------
def decide(votes: int, n: int, threshold: float) -> tuple[bool, bool, float]:
    """``(present, tie, agreement)`` for ``votes`` of ``n`` workers (see the module's vote rule)."""
    if n <= 0:
        return False, False, 0.0
    share, limit = Fraction(votes, n), Fraction(str(threshold))
    present, tie = share > limit, share == limit
    agreeing = votes if present else n - votes
    return present, tie, round(agreeing / n, 4)


def iou(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Intersection over union of two ``x, y, width, height`` boxes."""
    ix = max(0.0, min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"]))
    iy = max(0.0, min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]))
    inter = ix * iy
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def _mean_box(members: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, float]:
    k = len(members)
    return {key: sum(m[1][key] for m in members) / k for key in ("x", "y", "width", "height")}


def cluster_rois(rois: Sequence[tuple[int, Mapping[str, Any]]],
                 iou_threshold: float = IOU_THRESHOLD) -> list[list[tuple[int, Mapping[str, Any]]]]:
    """Greedy IoU clustering of ``(worker index, roi)`` pairs; at most one ROI per worker per cluster."""
    order = sorted(range(len(rois)), key=lambda i: (-rois[i][1]["width"] * rois[i][1]["height"], i))
    clusters: list[list[tuple[int, Mapping[str, Any]]]] = []
    means: list[dict[str, float]] = []
    for i in order:
        worker, roi = rois[i]
        best, best_iou = None, iou_threshold
        for c, members in enumerate(clusters):
            if any(w == worker for w, _ in members):
                continue
            value = iou(roi, means[c])
            if value >= best_iou:
                best, best_iou = c, value
        if best is None:
            clusters.append([(worker, roi)])
            means.append(_mean_box(clusters[-1]))
        else:
            clusters[best].append((worker, roi))
            means[best] = _mean_box(clusters[best])
    return clusters


def _consolidated_roi(label: str, sop: str, kind: str, members: list[tuple[int, Mapping[str, Any]]],
                      agreement: float) -> dict[str, Any]:
    box = _mean_box(members)
    out: dict[str, Any] = {"label": label, "sopInstanceUID": sop, "type": kind,
                           **{k: round(v, 2) for k, v in box.items()},
                           "workers": len(members), "agreement": agreement,
                           "meanIoU": round(sum(iou(m[1], box) for m in members) / len(members), 4)}
    if kind == "freehand":
        medoid = max(members, key=lambda m: sum(iou(m[1], o[1]) for o in members))
        out["points"] = [[round(x, 2), round(y, 2)] for x, y in medoid[1]["points"]]
    return out


def consolidate_rois(answers: Sequence[WorkerAnswer], threshold: float) -> tuple[list[dict[str, Any]], int]:
    """Consensus ROIs and the number of tied clusters (dropped)."""
    n = len(answers)
    groups: dict[tuple[str, str, str], list[tuple[int, Mapping[str, Any]]]] = {}
    for w, answer in enumerate(answers):
        for roi in answer.rois:
            groups.setdefault((roi["label"], roi["sopInstanceUID"], roi["type"]), []).append((w, roi))
    kept, ties = [], 0
    for (label, sop, kind), rois in sorted(groups.items()):
        for members in cluster_rois(rois):
            present, tie, _ = decide(len(members), n, threshold)
            ties += tie
            if present:
                kept.append(_consolidated_roi(label, sop, kind, members, round(len(members) / n, 4)))
    return kept, ties


def consolidate(answers: Sequence[WorkerAnswer], label_set: Sequence[str] | None, threshold: float,
                skipped: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The consolidated content for one data object (see the module docstring for the rules)."""
    n = len(answers)
    classes_order = list(label_set) if label_set else sorted({lab for a in answers for lab in a.labels})
    classes: dict[str, dict[str, Any]] = {}
    present_labels, tied = [], []
    for name in classes_order:
        votes = sum(name in a.labels for a in answers)
        present, tie, agreement = decide(votes, n, threshold)
        classes[name] = {"present": present, "agreement": agreement, "votes": votes}
        if present:
            present_labels.append(name)
        if tie:
            tied.append(name)
    rois, roi_ties = consolidate_rois(answers, threshold)
    slice_labels: dict[str, list[str]] = {}
    slice_ties: dict[str, list[str]] = {}
    sops = sorted({sop for a in answers for sop in a.slice_labels})
    for sop in sops:
        names = [c for c in classes_order if any(c in a.slice_labels.get(sop, ()) for a in answers)]
        for name in names:
            present, tie, _ = decide(sum(name in a.slice_labels.get(sop, ()) for a in answers), n, threshold)
            if present:
                slice_labels.setdefault(sop, []).append(name)
            if tie:
                slice_ties.setdefault(sop, []).append(name)
    skipped = dict(skipped or {})
    spent = [a.time_spent for a in answers if a.time_spent is not None]
    content: dict[str, Any] = {
        "labels": present_labels,
        "classes": classes,
        "rois": rois,
        "sliceLabels": slice_labels,
        "workerCount": n,
        "skipped": sum(skipped.values()),
        "skippedReasons": skipped,
        "droppedItems": sum(a.dropped for a in answers),
        "ties": {"labels": tied, "sliceLabels": slice_ties, "rois": roi_ties},
        "vote": {"threshold": threshold, "rule": VOTE_RULE},
    }
    if spent:
        content["timeSpentSeconds"] = {"median": round(median(spent), 2), "total": round(sum(spent), 2)}
    shown = [a for a in answers if a.suggested is not None]
    if shown:
        content["suggestions"] = {
            "kind": "classes", "model": shown[0].suggestion_model, "suggested": shown[0].suggested,
            **outcome(shown[0].suggested, present_labels),
            "workerAcceptance": {a.worker_id: outcome(a.suggested or [], a.labels)["acceptance"] for a in shown}}
    outlined = [a for a in answers if a.suggested_outlines is not None]
    if outlined:
        per = {a.worker_id: outline_outcome(a.suggested_outlines or [], a.rois) for a in outlined}
        totals = {k: sum(p[k] for p in per.values()) for k in ("shown", "kept", "changed", "rejected")}
        content["suggestions"] = {
            "kind": "outlines", "model": outlined[0].suggestion_model, **totals,
            "acceptance": round(totals["kept"] / totals["shown"], 4) if totals["shown"] else None,
            "workers": per}
    return content


def parse_annotations(annotations: Iterable[Mapping[str, Any]], label_set: Sequence[str] | None
                      ) -> tuple[list[WorkerAnswer], dict[str, int]]:
    """GT's ``annotations`` list (``workerId`` + ``annotationData.content``) for one object: the valid answers
    (one per worker) and how many were skipped, by reason."""
    answers: list[WorkerAnswer] = []
    seen: set[str] = set()
    skipped: dict[str, int] = {}
    for annotation in annotations:
        if not isinstance(annotation, Mapping):
            skipped["garbled"] = skipped.get("garbled", 0) + 1
            continue
        worker = str(annotation.get("workerId") or f"anonymous-{len(seen) + sum(skipped.values())}")
        if worker in seen:
            skipped["duplicate"] = skipped.get("duplicate", 0) + 1
            continue
        data = annotation.get("annotationData")
        content = data.get("content") if isinstance(data, Mapping) else None
        try:
            answers.append(parse_answer(worker, content, label_set))
        except AnswerError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
            continue
        seen.add(worker)
    return answers, skipped


def consolidate_object(annotations: Iterable[Mapping[str, Any]], label_set: Sequence[str] | None,
                       threshold: float) -> dict[str, Any]:
    """Consolidate GT's ``annotations`` list (``workerId`` + ``annotationData.content``) for one object."""
    answers, skipped = parse_annotations(annotations, label_set)
    return consolidate(answers, label_set, threshold, skipped)


# ---- the consolidation event ---------------------------------------------------------------------
def dicom_reference(data_object: Any, resolver: Callable[[str], Any] | None) -> dict[str, str] | None:
    """``{"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"?, "PatientID"?}`` for a GT dataObject.

    GT's consolidation payload carries the manifest ``source`` as ``dataObject.content`` (or
    ``source``/``source-ref``). UID objects are read directly; Orthanc IDs need ``resolver``
    (``OrthancRest.resolve``), which also yields PatientID. None when neither works.
    """
    if not isinstance(data_object, Mapping):
        return None
    raw = next((data_object[k] for k in ("content", "source", "source-ref") if data_object.get(k)), None)
    if raw is None:
        return None
    try:
        parsed = parse_source(raw)
    except LabelingTaskError:
        return None
    patient = None
    if not isinstance(parsed, ObjectRef):
        if resolver is None:
            return None
        try:
            found = resolver(parsed)
        except DicomflowError:
            return None
        parsed, patient = ObjectRef(found.study_uid, found.series_uid, found.sop_uid), found.patient_id
    ref: dict[str, str] = {"StudyInstanceUID": parsed.study_uid, "SeriesInstanceUID": parsed.series_uid}
    if parsed.sop_uid:
        ref["SOPInstanceUID"] = parsed.sop_uid
    if patient is not None:
        ref["PatientID"] = patient
    return ref


#: ``segment(dicom reference, answers, structures: names or definitions)`` -> what the consolidated label records
#: of the SEG it stored
Segmenter = Callable[[Mapping[str, str], Sequence[WorkerAnswer], Sequence[str]], Mapping[str, Any]]


def consolidation_response(event: Mapping[str, Any], payload: Any, threshold: float,
                           resolver: Callable[[str], Any] | None = None,
                           segment: Segmenter | None = None) -> list[dict[str, Any]]:
    """GT's consolidation response for a payload (the list read from ``payload.s3Uri``).

    A series whose answers hold outlines is also segmented by ``segment`` (the label categories are its
    structures): its SEG's reference and the workers' agreement join the content. When that fails the
    object keeps its consolidated outlines and ``segmentationError`` says why; nothing is lost.
    """
    from dicomflow.groundtruth.labels import LINE_LABELS, label_set_from_categories

    attribute = event.get("labelAttributeName")
    if not isinstance(attribute, str) or not attribute:
        raise ConsolidationError("event lacks labelAttributeName; expected Ground Truth's consolidation event")
    categories = event.get("labelCategories")
    label_set = label_set_from_categories(categories) if categories else None
    if not isinstance(payload, list):
        raise ConsolidationError("the consolidation payload must be a JSON list of data objects")
    response = []
    for item in payload:
        if not isinstance(item, Mapping) or item.get("datasetObjectId") in (None, "") \
                or isinstance(item.get("datasetObjectId"), bool | dict | list):
            raise ConsolidationError("a payload entry lacks datasetObjectId (a string or number naming the object)")
        annotations = item.get("annotations") or []
        answers, skipped = parse_annotations(annotations if isinstance(annotations, list) else [annotations],
                                             label_set)
        content = consolidate(answers, label_set, threshold, skipped)
        ref = dicom_reference(item.get("dataObject"), resolver)
        if ref is not None:
            content["dicom"] = ref
        if segment is not None and ref is not None and "SOPInstanceUID" not in ref and label_set \
                and any(r.get("type") == "freehand" for a in answers for r in a.rois):
            data = item.get("dataObject") if isinstance(item.get("dataObject"), Mapping) else {}
            own = data.get(LINE_LABELS)  # the line's structure definitions (codes), when it has them
            try:
                content.update(segment(ref, answers, own if isinstance(own, list) and own else list(label_set)))
            except (DicomflowError, ValueError) as exc:
                content["segmentationError"] = str(exc)[:500]
        response.append({"datasetObjectId": str(item["datasetObjectId"]),
                         "consolidatedAnnotation": {"content": {attribute: content}}})
    return response
