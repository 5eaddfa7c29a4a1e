"""Input manifest lines from QIDO results, query parsing, JSON Lines, and the Lambdas' light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicomflow.dicom.orthanc import instance_id, orthanc_id, series_id
from dicomflow.groundtruth import manifest


def qido(patient: str, study: str, series: str, sop: str | None = None) -> dict:
    item = {"00100020": {"vr": "LO", "Value": [patient]}, "0020000D": {"vr": "UI", "Value": [study]},
            "0020000E": {"vr": "UI", "Value": [series]}}
    if sop:
        item["00080018"] = {"vr": "UI", "Value": [sop]}
    return item


def test_orthanc_id_format():
    oid = orthanc_id("P")
    assert len(oid) == 44 and oid.count("-") == 4
    assert instance_id("P", "1", "2", "3") == orthanc_id("P", "1", "2", "3") != series_id("P", "1", "2")


def test_lines_per_instance_and_series():
    results = [qido("P1", "1.1", "1.1.1", "1.1.1.1"), qido("P1", "1.1", "1.1.1", "1.1.1.2"),
               qido("P1", "1.1", "1.1.1", "1.1.1.1")]  # a duplicate (paging overlap) is dropped
    lines = manifest.input_lines_from_qido(results, "instance")
    assert lines == [{"source": instance_id("P1", "1.1", "1.1.1", "1.1.1.1")},
                     {"source": instance_id("P1", "1.1", "1.1.1", "1.1.1.2")}]
    (series,) = manifest.input_lines_from_qido([qido("P1", "1.1", "1.1.1")], "series")
    assert series == {"source": series_id("P1", "1.1", "1.1.1")}
    (uids,) = manifest.input_lines_from_qido([qido("P1", "1.1", "1.1.1", "1.1.1.1")], "instance", "uids")
    assert json.loads(uids["source"]) == {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1",
                                          "SOPInstanceUID": "1.1.1.1"}
    with pytest.raises(manifest.ManifestError, match="without SOPInstanceUID"):
        manifest.input_lines_from_qido([qido("P1", "1.1", "1.1.1")], "instance")


def test_ten_thousand_lines_build(benchmark_size: int = 10_000):
    results = [qido(f"P{i % 50}", f"1.2.{i % 50}", f"1.2.{i % 50}.{i % 7}", f"1.2.{i % 50}.{i % 7}.{i}")
               for i in range(benchmark_size)]
    body = manifest.dumps_jsonl(manifest.input_lines_from_qido(results, "instance"))
    assert body.count(b"\n") == benchmark_size
    assert len(manifest.loads_jsonl(body)) == benchmark_size


@pytest.mark.parametrize(("queries", "message"), [
    (["Modality"], "KEYWORD=VALUE"), (["Modality="], "KEYWORD=VALUE"), (["Modalty=CR"], "not a DICOM keyword"),
    (["Modality=CR", "Modality=DX"], "twice"),
])
def test_query_filters_invalid(queries, message):
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.parse_query_filters(queries)


def test_query_filters():
    assert manifest.parse_query_filters(["Modality=CR", " StudyDate = 2020- "]) == {"Modality": "CR",
                                                                                   "StudyDate": "2020-"}


def test_jsonl_roundtrip_and_errors():
    lines = [{"source": "a"}, {"source": "b", "note": "line\nbreak"}]
    assert manifest.loads_jsonl(manifest.dumps_jsonl(lines) + b"\n\n") == lines
    with pytest.raises(manifest.ManifestError, match="line 2 is not JSON"):
        manifest.loads_jsonl('{"source": "a"}\n{oops\n')
    with pytest.raises(manifest.ManifestError, match="folder"):
        manifest.check_object_uri("s3://bucket/prefix/")


def test_output_line():
    line = manifest.output_line({"source": "a"}, "chest", {"labels": ["Edema"]}, "job-1")
    assert line["chest"] == {"labels": ["Edema"]} and line["source"] == "a"
    assert line["chest-metadata"]["type"] == "groundtruth/custom"
    assert line["chest-metadata"]["human-annotated"] == "yes" and line["chest-metadata"]["job-name"] == "job-1"


@pytest.mark.parametrize("name", ["pre_label", "post_label"])
def test_lambda_imports_stay_light(name):
    """A Lambda zip carries only light dicomflow modules: no torch, monai, sagemaker, numpy-heavy stacks."""
    root = Path(__file__).resolve().parents[3]
    code = (f"import sys, importlib.util; sys.path.insert(0, {str(root)!r}); "
            f"spec = importlib.util.spec_from_file_location('h', {str(root / 'lambdas' / name / 'handler.py')!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(sorted({k.split('.')[0] for k in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("torch", "monai", "sagemaker", "highdicom", "nibabel", "moto", "click", "rich"):
        assert f"'{heavy}'" not in loaded
    assert "'dicomflow'" in loaded
