"""Active learning: which objects to label next, from a model's probabilities.

Each strategy turns probabilities into one uncertainty score per object, higher meaning "label me first":

* ``entropy``: the mean binary entropy of the classes (sigmoid, multi-label) or the entropy of the softmax,
  in bits, normalised to 0..1;
* ``margin``: one minus the smallest distance to a decision (sigmoid: ``min |2p - 1|`` over the classes;
  softmax: the top two probabilities' difference);
* ``mc-dropout``: the mutual information between the prediction and the weights (BALD) over Monte-Carlo
  dropout samples, ``H[mean p] - mean H[p]`` summed over the classes: how much the samples disagree;
* ``random``: a seeded uniform draw, the baseline every other strategy has to beat.

Series for a segmentation model are objects too: their scorer gives each series its ``entropy`` and
``margin`` over the voxels the model is working on (:func:`dicomflow.inference.scoring.region_uncertainty`),
and :func:`choose_next` ranks those; ``mc-dropout`` is for classifiers only.

:func:`rank` sorts every object by its score once and keeps the first ``count`` in that order (sorting only
the chosen scores again, as MONAI Label's epistemic strategy does, would throw the ranking away).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dicomflow.errors import DicomflowError

STRATEGIES = ("entropy", "margin", "mc-dropout", "random")
MC_SAMPLES = 20  # dropout samples per image for mc-dropout
EXPLAIN = {
    "entropy": "mean binary entropy of the classes' probabilities (1 = every class at 0.5, 0 = all certain)",
    "margin": "1 - the smallest distance of a class's probability to a decision (1 = some class at 0.5)",
    "mc-dropout": "mutual information (BALD) between prediction and weights over Monte-Carlo dropout samples, "
                  "in bits summed over the classes (how much the samples disagree)",
    "random": "a seeded random draw (the baseline)",
}
SERIES_EXPLAIN = {
    "entropy": "a segmenter's mean normalised voxel entropy over the voxels it labels or doubts (1 = all classes "
               "alike there)",
    "margin": "a segmenter's mean 1 - (top - second probability) over the voxels it labels or doubts",
    "random": EXPLAIN["random"],
}
_EPS = 1e-12


class ActiveLearningError(DicomflowError):
    """The next batch cannot be chosen; the message says why and what to give instead."""


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _entropy(p: np.ndarray, activation: str) -> np.ndarray:
    """Per object: the mean binary entropy over the last axis (sigmoid), or the softmax's normalised entropy."""
    if activation == "softmax":
        q = np.clip(p, _EPS, 1.0)
        return -(q * np.log2(q)).sum(axis=-1) / max(np.log2(p.shape[-1]), _EPS)
    return _binary_entropy(p).mean(axis=-1)


SERIES_STRATEGIES = ("entropy", "margin", "random")


def uncertainty(probabilities: np.ndarray, strategy: str, *, activation: str = "sigmoid",
                samples: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """One score per object (higher: more worth labeling) from ``probabilities`` ``(objects, classes)``;
    ``mc-dropout`` needs ``samples`` ``(draws, objects, classes)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ActiveLearningError(f"probabilities must be (objects, classes), not shape {p.shape}")
    if strategy == "entropy":
        return _entropy(p, activation)
    if strategy == "margin":
        if activation == "softmax":
            top = np.sort(p, axis=1)[:, ::-1]
            return 1.0 - (top[:, 0] - (top[:, 1] if p.shape[1] > 1 else 0.0))
        return 1.0 - np.abs(2 * p - 1).min(axis=1)
    if strategy == "mc-dropout":
        if samples is None or np.ndim(samples) != 3 or np.shape(samples)[1:] != p.shape or len(samples) < 2:
            raise ActiveLearningError("mc-dropout needs at least 2 dropout samples of shape (draws, objects, classes)")
        s = np.asarray(samples, dtype=np.float64)
        mean = s.mean(axis=0)
        if activation == "softmax":
            h_mean = -(np.clip(mean, _EPS, 1) * np.log2(np.clip(mean, _EPS, 1))).sum(axis=-1)
            h_each = -(np.clip(s, _EPS, 1) * np.log2(np.clip(s, _EPS, 1))).sum(axis=-1).mean(axis=0)
            return np.maximum(h_mean - h_each, 0.0)
        return np.maximum(_binary_entropy(mean) - _binary_entropy(s).mean(axis=0), 0.0).sum(axis=-1)
    if strategy == "random":
        return np.random.default_rng(seed).random(len(p))
    raise ActiveLearningError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Ranked:
    """One chosen object: its 1-based rank, its score and the key it was scored under."""

    rank: int
    key: str
    score: float


def rank(keys: Sequence[str], scores: Sequence[float], count: int) -> list[Ranked]:
    """The ``count`` highest-scoring keys, highest first (ties: by key, so that a run is reproducible)."""
    if len(keys) != len(scores):
        raise ActiveLearningError(f"{len(keys)} objects but {len(scores)} scores")
    if count < 1:
        raise ActiveLearningError(f"count must be at least 1, not {count}")
    order = sorted(range(len(keys)), key=lambda i: (-float(scores[i]), keys[i]))
    return [Ranked(rank=n, key=keys[i], score=float(scores[i])) for n, i in enumerate(order[:count], start=1)]


# ---- which objects are already labeled --------------------------------------------------------------
def source_keys(source: Any) -> set[str]:
    """The identities a manifest ``source`` names: an Orthanc ID as given, the SOP (else series) Instance UID
    of a UID JSON source."""
    if not isinstance(source, str) or not source.strip():
        return set()
    text = source.strip()
    if text.startswith("{"):
        try:
            uids = json.loads(text)
        except ValueError:
            return {text}
        if isinstance(uids, Mapping):
            uid = uids.get("SOPInstanceUID") or uids.get("SeriesInstanceUID")
            return {str(uid)} if uid else set()
    return {text}


def labeled_keys(lines: Iterable[Mapping[str, Any]], label_attribute: str) -> set[str]:
    """Every object an output manifest's lines hold a ``label_attribute`` answer for (also the DICOM UIDs the
    consolidation recorded in it), so that a PACS object is matched however the manifest named it."""
    keys: set[str] = set()
    for line in lines:
        content = line.get(label_attribute)
        if content is None:
            continue
        for k in ("source", "source-ref"):
            keys |= source_keys(line.get(k))
        dicom = content.get("dicom") if isinstance(content, Mapping) else None
        if isinstance(dicom, Mapping):
            uid = dicom.get("SOPInstanceUID") or dicom.get("SeriesInstanceUID")
            if uid:
                keys.add(str(uid))
    return keys


# ---- the objects to choose from, and the next job's manifest ---------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One image (or, without ``sop_uid``, one series) in the PACS that could be labeled next."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str | None = None

    @property
    def key(self) -> str:
        """What it is scored and ranked under: its SOP Instance UID, a series' Series Instance UID."""
        return self.sop_uid or self.series_uid

    @property
    def orthanc_id(self) -> str:
        from dicomflow.dicom.orthanc import orthanc_id, series_id

        if self.sop_uid is None:
            return series_id(self.patient_id, self.study_uid, self.series_uid)
        return orthanc_id(self.patient_id, self.study_uid, self.series_uid, self.sop_uid)

    def source(self, source_format: str) -> str | dict[str, str]:
        if source_format == "uids":
            uids = {"StudyInstanceUID": self.study_uid, "SeriesInstanceUID": self.series_uid}
            return {**uids, "SOPInstanceUID": self.sop_uid} if self.sop_uid else uids
        return self.orthanc_id


def candidates(client: Any, filters: Mapping[str, str], *, per: str = "image") -> list[Candidate]:
    """Every image instance (``per="series"``: every series) the QIDO query ``filters`` finds, in the PACS's
    order, once each."""
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom import json as dj

    found = dicomweb.search_instances(client, None, None, get_remaining=True,
                                      fields=["PatientID", "StudyInstanceUID", "SeriesInstanceUID"], **filters)
    out: dict[str, Candidate] = {}
    for item in found:
        uids = [dj.text(item, k, "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not all(uids):
            continue
        cand = Candidate(dj.text(item, "PatientID", ""), *uids[:2], uids[2] if per == "image" else None)
        out.setdefault(cand.key, cand)
    return list(out.values())


def unlabeled(found: Iterable[Candidate], labeled: set[str]) -> list[Candidate]:
    """``found`` without the objects ``labeled`` names (by SOP or Series Instance UID, or Orthanc ID)."""
    return [c for c in found if c.key not in labeled and c.orthanc_id not in labeled]


def manifest_lines(chosen: Sequence[Ranked], by_key: Mapping[str, Candidate], *, strategy: str,
                   model: Mapping[str, Any], source_format: str = "orthanc-id",
                   probabilities: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """The next job's input manifest lines, most worth labeling first; each carries why it was chosen under
    ``dicomflow-active-learning`` (Ground Truth passes extra attributes on to the pre-label Lambda)."""
    from dicomflow.groundtruth.manifest import input_line

    lines = []
    for r in chosen:
        uid = "SOPInstanceUID" if by_key[r.key].sop_uid else "SeriesInstanceUID"
        why: dict[str, Any] = {"strategy": strategy, "rank": r.rank, "score": round(r.score, 6),
                               "model": dict(model), uid: r.key}
        if probabilities and r.key in probabilities:
            why["probabilities"] = dict(probabilities[r.key])
        lines.append(input_line(by_key[r.key].source(source_format), **{"dicomflow-active-learning": why}))
    return lines


class Scored(Protocol):
    """A scorer's answer for some candidates (e.g. :class:`dicomflow.inference.scoring.ScoredImages`):
    probabilities ``(scored, classes)`` of ``keys`` (the candidates' :attr:`Candidate.key`), dropout ``samples``
    ``(draws, scored, classes)`` or None, why each other candidate ``failed``, and ``scores`` (strategy -> one
    score per key) where the scorer computed them itself (a segmenter's region uncertainty) or None."""

    keys: list[str]
    probabilities: Any
    samples: Any
    failed: dict[str, str]
    scores: Mapping[str, Sequence[float]] | None


@dataclass
class NextBatch:
    """What :func:`choose_next` found, scored and chose, and the next job's manifest lines."""

    strategy: str
    model: dict[str, Any]
    found: int
    labeled: int
    scored: Scored
    scores: np.ndarray
    chosen: list[Ranked]
    probabilities: dict[str, dict[str, float]]
    lines: list[dict[str, Any]]
    per: str = "image"

    def summary(self) -> dict[str, Any]:
        picked = [r.score for r in self.chosen]
        explain = (SERIES_EXPLAIN if self.per == "series" else EXPLAIN)[self.strategy]
        return {"strategy": self.strategy, "explanation": explain, "model": self.model,
                "found": self.found, "labeled": self.labeled, "scored": len(self.scored.keys),
                "failed": self.scored.failed, "chosen": len(self.chosen),
                "scoreMean": {"chosen": round(float(np.mean(picked)), 6),
                              "pool": round(float(np.mean(self.scores)), 6)},
                "per": self.per,
                "ranking": [{"rank": r.rank, "SOPInstanceUID" if self.per == "image" else "SeriesInstanceUID": r.key,
                             "score": round(r.score, 6), "probabilities": self.probabilities[r.key]}
                            for r in self.chosen]}


def choose_next(client: Any, filters: Mapping[str, str], labeled: set[str],
                score: Callable[[list[Candidate]], Scored], *, count: int, strategy: str, labels: Sequence[str],
                activation: str = "sigmoid", model: Mapping[str, Any] | None = None, source_format: str = "orthanc-id",
                seed: int = 0, per: str = "image") -> NextBatch:
    """The ``count`` images (``per="series"``: series) of the QIDO query ``filters`` most worth labeling by
    ``strategy``, leaving out ``labeled`` (:func:`labeled_keys`); ``score`` gives the model's probabilities of
    the candidates (and, for series, their scores)."""
    if per == "series" and strategy not in SERIES_STRATEGIES:
        raise ActiveLearningError(f"strategy {strategy!r} ranks images for a classifier; series for a segmenter "
                                  f"are ranked by {', '.join(SERIES_STRATEGIES)}")
    found = candidates(client, filters, per=per)
    pool = unlabeled(found, labeled)
    what, kind = " ".join(f"{k}={v}" for k, v in filters.items()) or "(no filter)", per if per == "series" else "images"
    if not found:
        raise ActiveLearningError(f"no {per} on the PACS matches {what}; nothing written (check the query)")
    if not pool:
        raise ActiveLearningError(f"all {len(found)} {kind} matching {what} are labeled already; nothing written")
    scored = score(pool)
    if not scored.keys:
        raise ActiveLearningError(f"none of the {len(pool)} {kind} could be scored; first: "
                                  f"{next(iter(scored.failed.values()), 'no reason given')}")
    if strategy != "random" and scored.scores is not None:
        scores = np.asarray(scored.scores[strategy], dtype=np.float64)
    else:
        scores = uncertainty(scored.probabilities, strategy, activation=activation, samples=scored.samples, seed=seed)
    chosen = rank(scored.keys, list(scores), count)
    probs = {k: {c: round(float(p), 4) for c, p in zip(labels, row, strict=True)}
             for k, row in zip(scored.keys, scored.probabilities, strict=True)}
    model = dict(model or {})
    lines = manifest_lines(chosen, {c.key: c for c in pool}, strategy=strategy, model=model,
                           source_format=source_format, probabilities=probs)
    return NextBatch(strategy, model, len(found), len(found) - len(pool), scored, scores, chosen, probs, lines, per)
