"""AI pre-labels never block a task: a model that is down or slow gives an 'unavailable' suggestion that says
why (real sockets, real botocore timeouts); the consolidation records which suggestions people kept."""

from __future__ import annotations

import json
import socket
import threading
import time

from dicomflow import aws
from dicomflow.groundtruth import suggestions
from dicomflow.groundtruth.consolidation import consolidate_object

LABELS = ["Edema", "Pneumothorax", "No Finding"]


def _runtime(port: int, timeout: float):
    from botocore.config import Config

    return aws.client("sagemaker-runtime", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      config=Config(read_timeout=timeout, connect_timeout=timeout, retries={"max_attempts": 1}))


def test_a_model_that_never_answers_times_out_into_an_unavailable_suggestion() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()  # accepts, never answers
    started = time.perf_counter()
    got = suggestions.suggest("chest", "1.2.3", "1.2.3.4", LABELS, instances=1, timeout_s=0.5,
                              runtime_client=_runtime(server.getsockname()[1], 0.5))
    assert got["status"] == "unavailable" and "did not answer within 0.5 s" in got["reason"], got
    assert time.perf_counter() - started < 5
    server.close()


def test_a_model_that_is_down_or_of_other_classes_says_so() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    down = suggestions.suggest("chest", "1.2.3", "1.2.3.4", LABELS, instances=1, timeout_s=0.5,
                               runtime_client=_runtime(port, 0.5))
    assert down["status"] == "unavailable" and down["reason"]
    many = suggestions.suggest("chest", "1.2.3", "1.2.3.4", LABELS, instances=40, timeout_s=0.5)
    assert many["status"] == "unavailable" and "this series has 40" in many["reason"]


def _answer(worker: str, labels: list[str], suggested: list[str] | None) -> dict:
    body: dict = {"labels": labels}
    if suggested is not None:
        body["suggestion"] = {"suggested": suggested, "model": {"name": "chest", "version": "3"}, "accepted": True}
    return {"workerId": worker, "annotationData": {"content": json.dumps(body)}}


def test_consolidation_records_kept_rejected_and_added_suggestions() -> None:
    annotations = [_answer("w1", ["Edema"], ["Edema", "Pneumothorax"]),
                   _answer("w2", ["Edema", "No Finding"], ["Edema", "Pneumothorax"]),
                   _answer("w3", ["Edema", "Pneumothorax"], ["Edema", "Pneumothorax"])]
    content = consolidate_object(annotations, LABELS, 0.5)
    s = content["suggestions"]
    assert s["classes"] == {"Edema": "kept", "Pneumothorax": "rejected"} and s["acceptance"] == 0.5
    assert s["added"] == [] and s["model"] == {"name": "chest", "version": "3"}
    assert s["workerAcceptance"] == {"w1": 0.5, "w2": 0.5, "w3": 1.0}
    plain = consolidate_object([_answer("w1", ["Edema"], None)], LABELS, 0.5)
    assert "suggestions" not in plain
    unknown = consolidate_object([_answer("w1", ["Edema"], ["Cardiomegaly"])], LABELS, 0.5)
    assert unknown["suggestions"]["suggested"] == [] and unknown["suggestions"]["acceptance"] is None


def test_outcome_counts_what_people_added() -> None:
    got = suggestions.outcome(["Edema"], ["Edema", "No Finding"])
    assert got == {"classes": {"Edema": "kept"}, "added": ["No Finding"], "acceptance": 1.0}
    assert suggestions.outcome([], ["Edema"])["acceptance"] is None  # nothing suggested: no rate
