"""Active learning's scores, ranking and exclusion of labeled objects, on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dicomflow.groundtruth import active
from dicomflow.groundtruth.active import ActiveLearningError, Candidate


def test_entropy_is_highest_at_one_half_and_zero_when_certain() -> None:
    p = np.array([[0.5, 0.5], [0.0, 1.0], [0.9, 0.1], [0.5, 1.0]])
    s = active.uncertainty(p, "entropy")
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(0.0, abs=1e-9)
    assert s[3] == pytest.approx(0.5, abs=1e-6)  # one class certain, one at 0.5: half the mean entropy
    assert s[0] > s[3] > s[2] > s[1]


def test_softmax_entropy_is_normalised_by_the_class_count() -> None:
    s = active.uncertainty(np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]), "entropy", activation="softmax")
    assert s == pytest.approx([1.0, 0.0], abs=1e-6)


def test_margin_follows_the_class_nearest_a_decision() -> None:
    p = np.array([[0.99, 0.02], [0.99, 0.45], [0.8, 0.8]])
    s = active.uncertainty(p, "margin")
    assert s == pytest.approx([1 - 0.96, 1 - 0.10, 1 - 0.6])
    soft = active.uncertainty(np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05]]), "margin", activation="softmax")
    assert soft == pytest.approx([0.9, 0.15])


def test_mc_dropout_scores_disagreement_not_mere_uncertainty() -> None:
    # object 0: every sample says 0.5 (uncertain, but the samples agree: no mutual information);
    # object 1: samples split between 0.05 and 0.95 (the same mean, full disagreement).
    samples = np.array([[[0.5], [0.05]], [[0.5], [0.95]]] * 5)
    mean = samples.mean(axis=0)
    s = active.uncertainty(mean, "mc-dropout", samples=samples)
    assert s[0] == pytest.approx(0.0, abs=1e-9) and s[1] > 0.6
    assert active.uncertainty(mean, "entropy")[0] == pytest.approx(active.uncertainty(mean, "entropy")[1])
    with pytest.raises(ActiveLearningError, match="dropout samples"):
        active.uncertainty(mean, "mc-dropout")


def test_random_is_seeded_and_unknown_strategies_are_refused() -> None:
    p = np.full((50, 3), 0.5)
    a, b = active.uncertainty(p, "random", seed=3), active.uncertainty(p, "random", seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, active.uncertainty(p, "random", seed=4))
    with pytest.raises(ActiveLearningError, match="choose from entropy"):
        active.uncertainty(p, "least-confident")
    with pytest.raises(ActiveLearningError, match="objects, classes"):
        active.uncertainty(np.ones(3), "entropy")


def test_rank_keeps_the_top_scores_in_score_order() -> None:
    keys = [f"k{i}" for i in range(10)]
    scores = [0.3, 0.9, 0.1, 0.7, 0.9, 0.2, 0.8, 0.0, 0.5, 0.6]
    chosen = active.rank(keys, scores, 4)
    assert [r.key for r in chosen] == ["k1", "k4", "k6", "k3"]  # the tie broken by key
    assert [r.rank for r in chosen] == [1, 2, 3, 4]
    assert [r.score for r in chosen] == sorted((r.score for r in chosen), reverse=True)
    assert len(active.rank(keys, scores, 50)) == 10
    with pytest.raises(ActiveLearningError):
        active.rank(keys, scores[:3], 2)


def _candidate(n: int) -> Candidate:
    return Candidate(f"P{n}", f"1.2.3.{n}", f"1.2.3.{n}.1", f"1.2.3.{n}.1.1")


def test_labeled_objects_are_found_however_the_manifest_named_them() -> None:
    a, b, c, d = (_candidate(n) for n in range(4))
    lines = [
        {"source": a.orthanc_id, "labels": {"labels": ["Edema"]}},  # an Orthanc ID source
        {"source": json.dumps({"StudyInstanceUID": b.study_uid, "SeriesInstanceUID": b.series_uid,
                               "SOPInstanceUID": b.sop_uid}), "labels": {"labels": []}},  # a UID source
        {"source": "opaque", "labels": {"dicom": {"SOPInstanceUID": c.sop_uid}}},  # the consolidation's reference
        {"source": d.orthanc_id, "other-attribute": {"labels": []}},  # labeled under another attribute
        {"source": d.orthanc_id},  # not labeled (the job failed this object)
    ]
    keys = active.labeled_keys(lines, "labels")
    assert active.unlabeled([a, b, c, d], keys) == [d]


def test_manifest_lines_carry_rank_score_and_model() -> None:
    cands = {c.sop_uid: c for c in (_candidate(1), _candidate(2))}
    chosen = active.rank(list(cands), [0.2, 0.8], 2)
    lines = active.manifest_lines(chosen, cands, strategy="entropy", model={"name": "chest", "version": "3"},
                                  source_format="uids", probabilities={k: {"Edema": 0.5} for k in cands})
    assert [json.loads(line["source"])["SOPInstanceUID"] for line in lines] == ["1.2.3.2.1.1", "1.2.3.1.1.1"]
    why = lines[0]["dicomflow-active-learning"]
    assert why["rank"] == 1 and why["score"] == 0.8 and why["model"]["version"] == "3"
    assert why["probabilities"] == {"Edema": 0.5}
    ids = active.manifest_lines(chosen, cands, strategy="random", model={})
    assert ids[0]["source"] == cands["1.2.3.2.1.1"].orthanc_id


def test_series_candidates_are_ranked_by_the_scores_their_scorer_gave() -> None:
    series = [Candidate(f"P{n}", f"1.2.9.{n}", f"1.2.9.{n}.1") for n in range(3)]
    assert [c.key for c in series] == ["1.2.9.0.1", "1.2.9.1.1", "1.2.9.2.1"]

    entropy = {"1.2.9.0.1": 0.1, "1.2.9.1.1": 0.9, "1.2.9.2.1": 0.95}

    class Found:  # what a series scorer gives for the pool it is handed
        def __init__(self, pool: list[Candidate]) -> None:
            self.keys = [c.key for c in pool]
            self.probabilities = np.full((len(pool), 2), 0.8)
            self.samples, self.failed = None, {}
            self.scores = {"entropy": [entropy[k] for k in self.keys], "margin": [0.5] * len(pool)}

    class Pacs:  # the QIDO instance search the candidates come from: two instances per series
        def search_for_instances(self, **_: object) -> list[dict]:
            return [{"00100020": {"vr": "LO", "Value": [c.patient_id]},
                     "0020000D": {"vr": "UI", "Value": [c.study_uid]},
                     "0020000E": {"vr": "UI", "Value": [c.series_uid]},
                     "00080018": {"vr": "UI", "Value": [f"{c.series_uid}.{k}"]}} for c in series for k in (1, 2)]

    labeled = {series[2].orthanc_id}
    batch = active.choose_next(Pacs(), {"Modality": "MR"}, labeled, Found, count=2, strategy="entropy",
                               labels=["anterior", "posterior"], per="series")
    assert [r.key for r in batch.chosen] == ["1.2.9.1.1", "1.2.9.0.1"] and batch.labeled == 1
    why = batch.lines[0]["dicomflow-active-learning"]
    assert why["SeriesInstanceUID"] == "1.2.9.1.1" and "SOPInstanceUID" not in why
    assert batch.lines[0]["source"] == series[1].orthanc_id and batch.summary()["per"] == "series"
    with pytest.raises(ActiveLearningError, match="series for a segmenter"):
        active.choose_next(Pacs(), {}, set(), Found, count=1, strategy="mc-dropout", labels=[],
                           per="series")
