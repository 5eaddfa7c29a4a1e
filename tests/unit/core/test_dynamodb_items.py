"""A plain record through DynamoDB's attribute values and back is the same record (what is stored is read)."""

from __future__ import annotations

from dicomflow import aws


def test_a_record_survives_the_round_trip() -> None:
    record = {"pk": "image#1.2.3", "rows": 64, "score": 0.25, "kept": True, "labels": ["Edema", "Atelectasis"],
              "model": "chest 3"}
    item = aws.dynamodb_item({**record, "gone": None, "none": []})
    assert item["rows"] == {"N": "64"} and item["labels"] == {"SS": ["Atelectasis", "Edema"]}
    assert aws.plain_item(item) == {**record, "labels": ["Atelectasis", "Edema"]}


def test_a_whole_number_written_with_a_point_stays_a_float() -> None:
    assert aws.plain_item({"x": {"N": "2.0"}, "y": {"N": "2"}}) == {"x": 2.0, "y": 2}
    assert isinstance(aws.plain_item({"x": {"N": "2.0"}})["x"], float)
