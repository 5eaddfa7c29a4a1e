"""Consolidation rules: votes, ties, ROI clustering, slice labels, garbled answers."""

from __future__ import annotations

import json

import pytest

from dicomflow.config import ConfigError
from dicomflow.groundtruth import consolidation as c

LABELS = ["No Finding", "Cardiomegaly", "Edema", "Fracture"]
SOP, SOP2 = "1.2.3.4.1", "1.2.3.4.2"


def ann(worker: str, answer) -> dict:
    content = answer if isinstance(answer, str) else json.dumps(answer)
    return {"workerId": worker, "annotationData": {"content": content}}


def box(label: str, x: float, y: float, w: float = 40, h: float = 30, sop: str = SOP) -> dict:
    return {"label": label, "sopInstanceUID": sop, "x": x, "y": y, "width": w, "height": h}


def test_majority_vote_and_agreement():
    out = c.consolidate_object([
        ann("w1", {"labels": ["Cardiomegaly", "Edema"]}),
        ann("w2", {"labels": ["Cardiomegaly"]}),
        ann("w3", {"labels": ["Cardiomegaly", "Fracture"]}),
    ], LABELS, 0.5)
    assert out["labels"] == ["Cardiomegaly"]
    assert out["classes"]["Cardiomegaly"] == {"present": True, "agreement": 1.0, "votes": 3}
    assert out["classes"]["Edema"] == {"present": False, "agreement": 0.6667, "votes": 1}
    assert out["classes"]["No Finding"] == {"present": False, "agreement": 1.0, "votes": 0}
    assert out["workerCount"] == 3 and out["skipped"] == 0
    assert out["ties"]["labels"] == []


def test_tie_is_absent_and_reported():
    out = c.consolidate_object([ann("w1", {"labels": ["Edema"]}), ann("w2", {"labels": ["Fracture"]})],
                               LABELS, 0.5)
    assert out["labels"] == []
    assert out["ties"]["labels"] == ["Edema", "Fracture"]
    assert out["classes"]["Edema"] == {"present": False, "agreement": 0.5, "votes": 1}
    assert "tie" in out["vote"]["rule"]


def test_threshold_changes_the_decision():
    answers = [ann("w1", {"labels": ["Edema"]}), ann("w2", {"labels": ["No Finding"]}),
               ann("w3", {"labels": ["No Finding"]})]
    assert c.consolidate_object(answers, LABELS, 0.3)["labels"] == ["No Finding", "Edema"]
    assert c.consolidate_object(answers, LABELS, 0.5)["labels"] == ["No Finding"]


@pytest.mark.parametrize(("raw", "value"), [("", 0.5), ("0.25", 0.25), ("0", 0.0)])
def test_threshold_env(raw, value):
    assert c.vote_threshold({c.THRESHOLD_ENV: raw}) == value


@pytest.mark.parametrize("raw", ["1", "1.5", "-0.1", "half", "nan"])
def test_threshold_env_invalid(raw):
    with pytest.raises(ConfigError, match="DICOMFLOW_VOTE_THRESHOLD"):
        c.vote_threshold({c.THRESHOLD_ENV: raw})


@pytest.mark.parametrize("content", [
    json.dumps({"labels": ["Edema"]}),                                         # structured
    json.dumps({"annotation": json.dumps({"labels": ["Edema"]})}),             # hidden input, double-encoded
    json.dumps({"crowd-form": {"annotation": json.dumps({"labels": ["Edema"]})}}),
    {"labels": ["Edema"]},                                                      # already a dict
])
def test_answer_shapes_accepted(content):
    answer = c.parse_answer("w", content, LABELS)
    assert answer.labels == ["Edema"]


@pytest.mark.parametrize(("content", "reason"), [
    ("{not json", "garbled"), ("[1, 2]", "garbled"), ('{"foo": 1, "bar": 2}', "garbled"),
    ('{"labels": "Edema"}', "garbled"), ("", "empty"), ("{}", "empty"), ('{"labels": []}', "empty"),
    (None, "garbled"), ('"just a string"', "garbled"),
])
def test_bad_answers(content, reason):
    with pytest.raises(c.AnswerError) as err:
        c.parse_answer("w", content, LABELS)
    assert err.value.reason == reason


def test_garbled_skipped_and_counted_not_fatal():
    out = c.consolidate_object([
        ann("w1", {"labels": ["Edema"]}),
        ann("w2", "{garbage"),
        ann("w3", ""),
        ann("w1", {"labels": ["Fracture"]}),      # the same worker twice: second ignored
        {"workerId": "w4"},                       # no annotationData
        "not an object",
    ], LABELS, 0.5)
    assert out["workerCount"] == 1 and out["labels"] == ["Edema"]
    assert out["skipped"] == 5
    assert out["skippedReasons"] == {"garbled": 3, "empty": 1, "duplicate": 1}


def test_all_garbled_gives_empty_consensus():
    out = c.consolidate_object([ann("w1", "x")], LABELS, 0.5)
    assert out["workerCount"] == 0 and out["labels"] == [] and out["skipped"] == 1


def test_unknown_labels_and_bad_rois_dropped():
    a = c.parse_answer("w", {"labels": ["Edema", "Unicorn", 3],
                             "rois": [box("Edema", 1, 1), box("Unicorn", 1, 1), box("Edema", 1, 1, w=0),
                                      {"label": "Edema", "sopInstanceUID": "bad uid", "x": 1, "y": 1,
                                       "width": 2, "height": 2}]}, LABELS)
    assert a.labels == ["Edema"] and len(a.rois) == 1 and a.dropped == 5


def test_rois_clustered_by_iou_and_kept_by_majority():
    out = c.consolidate_object([
        ann("w1", {"labels": ["Cardiomegaly"], "rois": [box("Cardiomegaly", 100, 100), box("Edema", 5, 5)]}),
        ann("w2", {"labels": ["Cardiomegaly"], "rois": [box("Cardiomegaly", 104, 98)]}),
        ann("w3", {"labels": ["Cardiomegaly"], "rois": [box("Cardiomegaly", 300, 300),
                                                         box("Cardiomegaly", 102, 102, w=44)]}),
    ], LABELS, 0.5)
    assert len(out["rois"]) == 1
    roi = out["rois"][0]
    assert roi["label"] == "Cardiomegaly" and roi["sopInstanceUID"] == SOP and roi["type"] == "rectangle"
    assert roi["workers"] == 3 and roi["agreement"] == 1.0
    assert (roi["x"], roi["y"], roi["width"], roi["height"]) == (102.0, 100.0, 41.33, 30.0)
    # IoU of each member with the mean box [102, 143.33] x [100, 130]: 1140/1300, 1101.3/1338.7, 1157.3/1402.7
    assert roi["meanIoU"] == pytest.approx((0.8769 + 0.8227 + 0.8251) / 3, abs=2e-4)


def test_one_box_per_worker_per_cluster():
    out = c.consolidate_object([
        ann("w1", {"labels": ["Edema"], "rois": [box("Edema", 10, 10), box("Edema", 11, 11)]}),
        ann("w2", {"labels": ["Edema"]}),
        ann("w3", {"labels": ["Edema"]}),
    ], LABELS, 0.5)
    assert out["rois"] == []  # one worker drawing two boxes is not a majority


def test_roi_tie_reported():
    out = c.consolidate_object([ann("w1", {"labels": ["Edema"], "rois": [box("Edema", 10, 10)]}),
                                ann("w2", {"labels": ["Edema"]})], LABELS, 0.5)
    assert out["rois"] == [] and out["ties"]["rois"] == 1


def test_freehand_medoid():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    shifted = [[1, 1], [11, 1], [11, 11], [1, 11]]
    out = c.consolidate_object([
        ann(w, {"labels": ["Edema"], "rois": [{"type": "freehand", "label": "Edema", "sopInstanceUID": SOP,
                                               "points": pts}]})
        for w, pts in (("w1", square), ("w2", shifted), ("w3", square))
    ], LABELS, 0.5)
    (roi,) = out["rois"]
    assert roi["type"] == "freehand" and roi["points"] == square and roi["workers"] == 3


def test_a_painted_region_keeps_its_source_and_nothing_else_passes_as_one():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    answer = c.parse_answer("w1", {"rois": [
        {"type": "freehand", "source": "brush", "label": "Edema", "sopInstanceUID": SOP, "points": square},
        {"type": "freehand", "source": "<script>", "label": "Edema", "sopInstanceUID": SOP, "points": square}]},
        LABELS)
    assert [r.get("source") for r in answer.rois] == ["brush", None]


def test_slice_labels_voted_per_slice():
    out = c.consolidate_object([
        ann("w1", {"labels": ["Edema"], "sliceLabels": {SOP: ["Edema"], SOP2: ["Edema", "Fracture"]}}),
        ann("w2", {"labels": ["Edema"], "sliceLabels": {SOP: ["Edema"]}}),
        ann("w3", {"labels": ["Edema"], "sliceLabels": {SOP2: ["Fracture"], "x": ["Edema"]}}),
    ], LABELS, 0.5)
    assert out["sliceLabels"] == {SOP: ["Edema"], SOP2: ["Fracture"]}
    assert out["droppedItems"] == 1


def test_time_spent_summary():
    out = c.consolidate_object([ann("w1", {"labels": ["Edema"], "timeSpentSeconds": 10}),
                                ann("w2", {"labels": ["Edema"], "timeSpentSeconds": 30})], LABELS, 0.5)
    assert out["timeSpentSeconds"] == {"median": 20.0, "total": 40.0}


def test_iou():
    assert c.iou(box("a", 0, 0, 10, 10), box("a", 0, 0, 10, 10)) == 1.0
    assert c.iou(box("a", 0, 0, 10, 10), box("a", 5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert c.iou(box("a", 0, 0, 10, 10), box("a", 20, 20, 10, 10)) == 0.0
