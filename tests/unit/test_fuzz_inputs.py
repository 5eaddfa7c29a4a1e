"""The reliability suite, part 1: every hostile or careless input to a request parser ends in a clear error or a
correct result - never an unexpected exception (which the entry points would answer as a 500 with a traceback).

Corpus: :mod:`fuzz_corpus` (seeded). Each test prints its tally: tried / clear errors / correct results / crashes.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from dicomweb_client import DICOMfileClient
from fuzz_corpus import consolidation_cases, pre_label_events, study_json_bodies
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import consolidation, pre_label
from dicomflow.inference.errors import InferenceError, error_body, http_status
from dicomflow.inference.request import StudyRequest, parse_request

LABELS = list(synthetic.CHEST_CLASSES)


def _tally(kind: str, outcomes: Counter) -> None:
    print(f"\n{kind}: tried {sum(outcomes.values())} / clear errors {outcomes['clear']} / correct results "
          f"{outcomes['ok']} / crashes {outcomes['crash']}")


def test_study_json_corpus_gets_400_413_or_a_request() -> None:
    corpus = study_json_bodies(seed=1)
    assert len(corpus) >= 150
    outcomes: Counter = Counter()
    crashes = []
    for name, body in corpus:
        try:
            request = parse_request(body, "application/json")
        except InferenceError as exc:
            outcomes["clear"] += 1
            assert http_status(exc) in (400, 413), name
            assert len(error_body(exc)["message"]) < 600, f"{name}: the message echoes the input"
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            outcomes["crash"] += 1
            crashes.append(f"{name}: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        outcomes["ok"] += 1
        assert isinstance(request, StudyRequest) and parse_request(request.as_dict()) == request, name
    _tally("study JSON", outcomes)
    assert crashes == []
    assert outcomes["ok"] >= 1 and outcomes["clear"] >= 100


@pytest.fixture(scope="module")
def file_pacs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A file-backed DICOMweb store with a CR image, an MR series and a Basic Text SR."""
    client = DICOMfileClient(url=f"file://{tmp_path_factory.mktemp('fuzz-pacs')}", in_memory=True)
    chest = synthetic.chest_radiographs(1, seed=3, size=32)[0].dataset
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.SOPInstanceUID, sr.SeriesInstanceUID = generate_uid(), generate_uid()
    sr.StudyInstanceUID, sr.PatientID, sr.Modality = chest.StudyInstanceUID, chest.PatientID, "SR"
    sr.PatientName, sr.StudyDate, sr.StudyTime, sr.AccessionNumber = "Fuzz^SR", "20260101", "120000", ""
    sr.SeriesNumber, sr.InstanceNumber = 99, 1
    dicomweb.store(client, [chest, sr])
    return {"client": client, "study": str(chest.StudyInstanceUID), "series": str(chest.SeriesInstanceUID),
            "sop": str(chest.SOPInstanceUID), "sr_series": str(sr.SeriesInstanceUID), "sr_sop": str(sr.SOPInstanceUID)}


def test_pre_label_event_corpus_gets_a_task_or_one_clear_error(file_pacs) -> None:
    p = file_pacs
    corpus = pre_label_events(p["study"], p["series"], p["sop"], p["sr_series"], p["sr_sop"], seed=1)
    assert len(corpus) >= 50
    settings = pre_label.TaskSettings(gateway_url="http://127.0.0.1:1/wado", key=b"k" * 32, scope="fuzz",
                                          labels=LABELS)
    outcomes: Counter = Counter()
    crashes, reasons = [], {}
    for name, event in corpus:
        try:
            result = pre_label.pre_label(event, p["client"], None, settings, now=1_700_000_000)
        except pre_label.LabelingTaskError as exc:
            outcomes["clear"] += 1
            reasons[name] = (exc.reason, str(exc))
            assert len(str(exc)) < 600, name
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            outcomes["crash"] += 1
            crashes.append(f"{name}: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        outcomes["ok"] += 1
        task = result["taskInput"]
        assert task["rows"] and task["columns"] and task["modality"] == "CR", name
        json.dumps(result)  # what the Lambda runtime must be able to encode
    _tally("pre-label events", outcomes)
    assert crashes == []
    assert reasons["sr-instance"][0] == "invalid" and "not an image" in reasons["sr-instance"][1]
    assert reasons["sr-series"][0] == "invalid" and "not an image" in reasons["sr-series"][1]
    assert reasons["missing-instance"][0] == "not-found"
    assert all(reasons[f"deep-source-{n}"][0] == "invalid" for n in (1_000, 5_000, 50_000))
    assert "valid-instance" not in reasons and "valid-series-ref" not in reasons


def test_consolidation_corpus_skips_and_counts_bad_answers_and_never_fails_a_batch_for_one() -> None:
    corpus = consolidation_cases(LABELS, "1.2.826.0.1.3680043.8.498.3", seed=1)
    assert len(corpus) >= 50
    outcomes: Counter = Counter()
    crashes, results = [], {}
    for name, event, payload in corpus:
        try:
            results[name] = consolidation.consolidation_response(event, payload, 0.5)
        except DicomflowError as exc:  # ConsolidationError, LabelSetError: one clear line, as the Lambda raises it
            outcomes["clear"] += 1
            results[name] = exc
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            outcomes["crash"] += 1
            crashes.append(f"{name}: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        outcomes["ok"] += 1
        assert len(results[name]) == len(payload), name
        json.dumps(results[name])
    _tally("consolidation payloads", outcomes)
    assert crashes == []
    content = results["object-id-zero"][0]
    assert content["datasetObjectId"] == "0"
    for n in (1_000, 5_000, 50_000):  # a deep answer is one skipped answer; the other worker's answer counts
        c = results[f"deep-answer-{n}"][0]["consolidatedAnnotation"]["content"]["findings"]
        assert c["workerCount"] == 1 and c["skipped"] == 1 and c["labels"] == [LABELS[0]]
    for name in ("payload-dict", "payload-none", "missing-object-id", "object-id-null", "no-attribute"):
        assert isinstance(results[name], consolidation.ConsolidationError), name
