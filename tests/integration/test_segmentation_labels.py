"""A series outlined by three workers through the real consolidation Lambda: their outlines become one DICOM
SEG in the study (majority of the workers, an outlier outvoted), stored once however often the consolidation
runs, and the SEG comes back as the same mask through ``dataset export`` and the training loader."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from baselines import mean_dice
from lambda_handlers import load_handler

from dicomflow import aws
from dicomflow.demo import synthetic
from dicomflow.demo.annotators import annotator_outlines
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import series_id
from dicomflow.dicom.seg import read_seg
from dicomflow.dicom.volume import load_image, load_label_volume
from dicomflow.groundtruth import manifest
from dicomflow.training.export import export_dataset

pytestmark = pytest.mark.integration
JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/hippo-outlines"
STRUCTURES = ["anterior", "posterior"]


def _answer(truth: np.ndarray, sops: list[str], shift: int = 0) -> str:
    rois = annotator_outlines(truth, sops, STRUCTURES, seed=0)
    for roi in rois:
        roi["points"] = [[x + shift, y] for x, y in roi["points"]]
    return json.dumps({"labels": [], "rois": rois})


@pytest.fixture(scope="module")
def outlined(local_cloud) -> dict:
    series = synthetic.hippocampus_series(1, seed=77, shape=(10, 32, 28))[0]
    client = dicomweb.connect(local_cloud.pacs)
    dicomweb.store(client, series.datasets)
    _, geometry = load_image(series.datasets)
    sops = list(geometry.sop_instance_uids)
    truth = series.label_volume
    ds = series.datasets[0]
    source = series_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    answers = [_answer(truth, sops), _answer(truth, sops), _answer(truth, sops, shift=4)]  # the third is off
    payload = [{"datasetObjectId": "0", "dataObject": {"source-ref": source}, "annotations": [
        {"workerId": f"w{i}", "annotationData": {"content": a}} for i, a in enumerate(answers)]}]
    bucket = "dicomflow-outline-tests"
    aws.client("s3").create_bucket(Bucket=bucket)
    aws.write(f"s3://{bucket}/payload.json", json.dumps(payload).encode())
    event = {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "labelCategories": STRUCTURES,
             "labelAttributeName": "hippo", "roleArn": "arn:aws:iam::123456789012:role/gt",
             "payload": {"s3Uri": f"s3://{bucket}/payload.json"}, "outputConfig": f"s3://{bucket}/out"}
    handler = load_handler("post_label")
    (first,) = handler.lambda_handler(event, None)
    (again,) = handler.lambda_handler(event, None)
    return {"series": series, "sops": sops, "client": client, "bucket": bucket, "source": source,
            "content": first["consolidatedAnnotation"]["content"]["hippo"],
            "again": again["consolidatedAnnotation"]["content"]["hippo"]}


def test_outlines_become_one_seg_in_the_study_with_the_outlier_outvoted(outlined) -> None:
    content, series = outlined["content"], outlined["series"]
    assert "segmentationError" not in content, content.get("segmentationError")
    ref = content["segmentation"]
    assert ref["StudyInstanceUID"] == series.datasets[0].StudyInstanceUID
    seg = dicomweb.retrieve_instance(outlined["client"], ref["StudyInstanceUID"], ref["SeriesInstanceUID"],
                                     ref["SOPInstanceUID"])
    assert seg.Modality == "SEG" and {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    label, structures = read_seg(seg, outlined["sops"])
    assert [s.name for s in structures] == STRUCTURES
    dice = mean_dice(label, series.label_volume, 2)
    agreement = content["segmentationAgreement"]["structures"]
    print(f"\nconsolidated SEG against the truth: mean Dice {dice:.3f}; per worker "
          f"{ {n: a['workerDice'] for n, a in agreement.items()} }")
    assert dice >= 0.95  # two of three workers outlined the truth
    for name in STRUCTURES:
        worker = agreement[name]["workerDice"]
        assert worker["w2"] < 0.9 < min(worker["w0"], worker["w1"]), agreement
        assert 0 < agreement[name]["interAnnotatorDice"] < 1
    assert content["segmentationWorkers"] == ["w0", "w1", "w2"] and content["structures"] == STRUCTURES
    # the consolidation ran twice: the same SEG, kept once
    assert outlined["again"]["segmentation"] == ref
    assert len(dicomweb.search_instances(outlined["client"], ref["StudyInstanceUID"], ref["SeriesInstanceUID"])) == 1


def test_the_consolidated_seg_round_trips_through_export_and_the_training_loader(outlined, tmp_path) -> None:
    bucket, content = outlined["bucket"], outlined["content"]
    line = manifest.output_line(manifest.input_line(outlined["source"]), "hippo", content, "hippo-outlines")
    manifest.write_jsonl_s3(f"s3://{bucket}/output.manifest", [line])
    result = export_dataset(f"s3://{bucket}/output.manifest", f"s3://{bucket}/channel/")
    assert result.task == "segmentation3d" and result.classes == STRUCTURES and result.failed_lines == 0
    staged = json.loads(aws.read(f"s3://{bucket}/channel/manifest.jsonl").decode().splitlines()[0])
    label_path = tmp_path / "label.dcm"
    label_path.write_bytes(aws.read(f"s3://{bucket}/channel/{staged['label']}"))
    images = [pydicom.dcmread(io.BytesIO(aws.read(f"s3://{bucket}/channel/{p}"))) for p in staged["images"]]
    _, geometry = load_image(images)
    loaded = load_label_volume(label_path, geometry)
    seg = dicomweb.retrieve_instance(outlined["client"], content["segmentation"]["StudyInstanceUID"],
                                     content["segmentation"]["SeriesInstanceUID"],
                                     content["segmentation"]["SOPInstanceUID"])
    stored, _ = read_seg(seg, list(geometry.sop_instance_uids))
    assert np.array_equal(loaded, stored)
