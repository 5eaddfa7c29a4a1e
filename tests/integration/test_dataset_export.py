"""``dicomflow dataset export`` against the real Orthanc and the emulated S3, then training on the channel.

The output manifest is built the way the consolidation Lambda builds it: worker answers consolidated by
:func:`dicomflow.groundtruth.consolidation.consolidate_object`, the DICOM reference resolved from the Orthanc ID in the
input line (:func:`dicomflow.groundtruth.consolidation.dicom_reference` + ``OrthancRest.resolve``), the line written
by :func:`dicomflow.groundtruth.manifest.output_line`.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomflow import aws
from dicomflow.demo import seed
from dicomflow.demo.synthetic import HIPPOCAMPUS_STRUCTURES
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import OrthancRest, instance_id
from dicomflow.dicom.seg import read_seg
from dicomflow.dicom.volume import load_image, save_label_nifti
from dicomflow.groundtruth import manifest
from dicomflow.groundtruth.consolidation import consolidate_object, dicom_reference
from dicomflow.groundtruth.labels import CHEXPERT_CLASSES
from dicomflow.training.export import export_dataset, patient_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ATTR = "chest-labels"


def _sr(study_uid: str, patient_id: str) -> Dataset:
    """A Basic Text SR in an existing study: a DICOM object that is not an image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study_uid, generate_uid(), patient_id
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 900, 1
    return ds


def _annotations(labels: list[str]) -> list[dict]:
    answer = json.dumps({"labels": labels})
    return [{"workerId": f"w{i}", "annotationData": {"content": answer}} for i in range(2)]


def _line(source: str, labels: list[str], rest: OrthancRest | None) -> dict:
    content = consolidate_object(_annotations(labels), list(CHEXPERT_CLASSES), 0.5)
    ref = dicom_reference({"content": source}, rest.resolve if rest else None)
    if ref is not None:
        content["dicom"] = ref
    return manifest.output_line(manifest.input_line(source), ATTR, content, "labeling-job-1")


@pytest.fixture(scope="module")
def seeded(local_cloud, tmp_path_factory) -> dict:
    """Seed chest images, hippocampus series and one SR into Orthanc; write the two output manifests."""
    data_dir = tmp_path_factory.mktemp("seed-home")
    studies = seed.plan(chest=8, hippocampus=4, seed=7, real=False, chest_size=64, hippocampus_shape=(16, 24, 24))
    client = dicomweb.connect(local_cloud.pacs)
    seed.seed(client, data_dir, studies)
    chest = [st for st in studies if st.kind == "chest"]
    sr = _sr(chest[0].entry["StudyInstanceUID"], chest[0].entry["PatientID"])
    dicomweb.store(client, [sr])
    rest = OrthancRest(local_cloud.pacs)
    bucket = "dicomflow-export-tests"
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=bucket)

    chest_lines = [_line(instance_id(e["PatientID"], e["StudyInstanceUID"], e["SeriesInstanceUID"],
                                     e["SOPInstanceUID"]), e["labels"], rest) for e in (st.entry for st in chest)]
    chest_lines.append(_line(instance_id(sr.PatientID, sr.StudyInstanceUID, sr.SeriesInstanceUID,
                                         sr.SOPInstanceUID), ["No Finding"], rest))
    missing = {"StudyInstanceUID": "1.2.826.0.1.9", "SeriesInstanceUID": "1.2.826.0.1.9.1",
               "SOPInstanceUID": "1.2.826.0.1.9.1.1"}  # labeled, then deleted from the PACS
    chest_lines.append(_line(json.dumps(missing), ["Edema"], rest))
    hippo = [st for st in studies if st.kind == "hippocampus"]
    manifest.write_jsonl_s3(f"s3://{bucket}/jobs/chest/output.manifest", chest_lines)
    # the hippocampus labels are NIfTI volumes brought with `dicomflow label import`, as a user would bring theirs
    labels = data_dir / "labels.jsonl"
    labels.write_text("".join(json.dumps({k: st.entry[k] for k in ("StudyInstanceUID", "SeriesInstanceUID")}
                                         | {"label": st.entry["label_path"]}) + "\n" for st in hippo))
    structures = data_dir / "structures.json"
    structures.write_text(json.dumps(HIPPOCAMPUS_STRUCTURES))
    imported = _cli("label", "import", "--labels", str(labels), "--structures", str(structures),
                    "--to", f"s3://{bucket}/jobs/hippo/output.manifest", "--label-attribute", "hippo", "--json")
    assert imported.returncode == 0, imported.stderr[-3000:]
    return {"bucket": bucket, "chest": chest, "sr": sr, "hippo": hippo, "missing": missing,
            "labels": labels, "structures": structures, "import": json.loads(imported.stdout)}


def _get(bucket: str, key: str) -> bytes:
    return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def _keys(bucket: str, prefix: str) -> set[str]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomflow.cli", *args], env=dict(os.environ), capture_output=True,
                          text=True, timeout=600, check=False)


def test_export_chest_instances_stages_objects_and_manifest(seeded) -> None:
    bucket, prefix = seeded["bucket"], "channels/chest/"
    to = f"s3://{bucket}/{prefix}"
    first = _cli("dataset", "export", "--manifest", f"s3://{bucket}/jobs/chest/output.manifest", "--to", to)
    assert first.returncode == 0, first.stderr[-3000:]
    # the progress bar's last state (10 lines in the manifest) and the summary, on stderr
    assert re.search(r"exporting.*10/10", first.stderr), first.stderr
    assert "9/10 lines exported for classification2d (9 objects staged, 0 already there)" in first.stderr
    assert "skipped" in first.stderr and seeded["missing"]["SOPInstanceUID"] in first.stderr

    chest, sr = seeded["chest"], seeded["sr"]
    images = {f"images/{e['StudyInstanceUID']}/{e['SeriesInstanceUID']}/{e['SOPInstanceUID']}.dcm"
              for e in (st.entry for st in chest)}
    images.add(f"images/{sr.StudyInstanceUID}/{sr.SeriesInstanceUID}/{sr.SOPInstanceUID}.dcm")
    assert _keys(bucket, prefix) == images | {"manifest.jsonl", "classes.json"}
    assert json.loads(_get(bucket, prefix + "classes.json")) == list(CHEXPERT_CLASSES)
    text = _get(bucket, prefix + "manifest.jsonl").decode()
    lines = [json.loads(x) for x in text.splitlines()]
    assert len(lines) == 9
    by_id = {line["id"]: line for line in lines}
    for st in chest:
        e = st.entry
        line = by_id[e["SOPInstanceUID"]]
        assert sorted(line["labels"]) == sorted(e["labels"])  # the consolidated vote of two agreeing workers
        assert line["patient"] == patient_key(e["PatientID"]) and e["PatientID"] not in text  # no PHI
        assert line["images"] == [f"images/{e['StudyInstanceUID']}/{e['SeriesInstanceUID']}/{e['SOPInstanceUID']}.dcm"]
    # a staged object is the PACS's instance, pixel for pixel, as a DICOM file
    e, original = chest[0].entry, chest[0].datasets[0]
    staged = pydicom.dcmread(io.BytesIO(_get(bucket, prefix + by_id[e["SOPInstanceUID"]]["images"][0])))
    assert staged.SOPInstanceUID == e["SOPInstanceUID"] and staged.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(staged.pixel_array, original.pixel_array)

    again = _cli("dataset", "export", "--manifest", f"s3://{bucket}/jobs/chest/output.manifest", "--to", to,
                 "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads(again.stdout)
    assert (result["staged_objects"], result["existing_objects"]) == (0, 9)
    assert (result["lines"], result["failed_lines"]) == (10, 1)
    assert seeded["missing"]["SOPInstanceUID"] in result["failures"][0]


def test_label_import_stores_segs_on_the_series_grid_and_refuses_what_does_not_fit(local_cloud, seeded,
                                                                                      tmp_path) -> None:
    assert seeded["import"]["lines"] == 4 and seeded["import"]["segsStored"] == 4 and not seeded["import"]["failures"]
    lines = manifest.read_jsonl_s3(f"s3://{seeded['bucket']}/jobs/hippo/output.manifest")
    client = dicomweb.connect(local_cloud.pacs)
    for st, line in zip(seeded["hippo"], lines, strict=True):
        ref = line["hippo"]["segmentation"]
        seg = dicomweb.retrieve_instance(client, st.entry["StudyInstanceUID"], ref["SeriesInstanceUID"],
                                         ref["SOPInstanceUID"])
        _, geometry = load_image(st.datasets)
        label, structures = read_seg(seg, list(geometry.sop_instance_uids))
        np.testing.assert_array_equal(label, st.label_volume)  # the NIfTI's voxels, on the series' slices
        assert [x.name for x in structures] == ["anterior", "posterior"] and line["hippo"]["structures"] == [
            "anterior", "posterior"] and line["hippo-metadata"]["job-name"] == "label-import"
    again = _cli("label", "import", "--labels", str(seeded["labels"]), "--structures", str(seeded["structures"]),
                 "--to", f"s3://{seeded['bucket']}/jobs/hippo/again.manifest", "--json")
    assert json.loads(again.stdout)["segsStored"] == 0 and json.loads(again.stdout)["segsReused"] == 4  # idempotent
    # a label volume 3 mm off the series' grid, and one for a series the PACS lacks: refused, reported, not guessed
    st = seeded["hippo"][0]
    _, geometry = load_image(st.datasets)
    shifted = tmp_path / "shifted.nii.gz"
    save_label_nifti(st.label_volume, replace(geometry, origin=(geometry.origin[0] + 3, *geometry.origin[1:])),
                     shifted)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"StudyInstanceUID": st.entry["StudyInstanceUID"],
                               "SeriesInstanceUID": st.entry["SeriesInstanceUID"], "label": str(shifted)}) + "\n"
                   + json.dumps({"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4",
                                 "label": st.entry["label_path"]}) + "\n")
    refused = _cli("label", "import", "--labels", str(bad), "--structures", str(seeded["structures"]),
                   "--to", f"s3://{seeded['bucket']}/jobs/hippo/bad.manifest")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "not on the image's grid" in refused.stderr and "line 2" in refused.stderr
    assert aws.read_bytes(f"s3://{seeded['bucket']}/jobs/hippo/bad.manifest") is None


def test_export_hippocampus_series_with_their_segs(seeded) -> None:
    bucket, prefix = seeded["bucket"], "channels/hippo/"
    result = export_dataset(f"s3://{bucket}/jobs/hippo/output.manifest", f"s3://{bucket}/{prefix}", workers=2)
    assert result.task == "segmentation3d" and result.classes == ["anterior", "posterior"]
    slices = sum(len(st.datasets) for st in seeded["hippo"])
    assert (result.lines, result.failed_lines, result.staged_objects) == (4, 0, slices + 4)
    lines = {x["id"]: x for x in map(json.loads, _get(bucket, prefix + "manifest.jsonl").decode().splitlines())}
    classes = json.loads(_get(bucket, prefix + "classes.json"))
    assert [c["name"] for c in classes] == ["anterior", "posterior"] and classes[0]["type"]["value"] == "5366008"
    for st in seeded["hippo"]:
        series = st.entry["SeriesInstanceUID"]
        line = lines[series]
        assert len(line["images"]) == len(st.datasets) == st.entry["instances"]
        assert sorted(Path(p).stem for p in line["images"]) == sorted(str(ds.SOPInstanceUID) for ds in st.datasets)
        assert line["label"].startswith(f"labels/{series}/") and line["label"].endswith(".dcm")
        assert pydicom.dcmread(io.BytesIO(_get(bucket, prefix + line["label"]))).Modality == "SEG"
        assert "labels" not in line
    rerun = export_dataset(f"s3://{bucket}/jobs/hippo/output.manifest", f"s3://{bucket}/{prefix}", workers=2)
    assert (rerun.staged_objects, rerun.existing_objects) == (0, slices + 4)


def test_training_runs_on_the_exported_channels(seeded, capsys, monkeypatch, tmp_path) -> None:
    """Both exported channels train with estimator.fit; the SR staged with the chest images is skipped, counted."""
    monkeypatch.setenv("DICOMFLOW_SAGEMAKER_MODE", "host")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    from dicomflow.emulator.sagemaker_sdk import sagemaker_session
    from dicomflow.modeling.artifact import load_artifact
    from dicomflow.training.launch import train_job

    bucket = seeded["bucket"]
    if "manifest.jsonl" not in _keys(bucket, "channels/chest/"):
        export_dataset(f"s3://{bucket}/jobs/chest/output.manifest", f"s3://{bucket}/channels/chest/")
    if "manifest.jsonl" not in _keys(bucket, "channels/hippo/"):
        export_dataset(f"s3://{bucket}/jobs/hippo/output.manifest", f"s3://{bucket}/channels/hippo/")
    chest = train_job("classification2d", f"s3://{bucket}/channels/chest/",
                      hps={"epochs": "1", "image_size": "32", "batch_size": "4", "val_fraction": "0.25"},
                      session=sagemaker_session())
    log = capsys.readouterr().err
    assert chest["status"] == "Completed", log[-3000:]
    assert "skipped_items=1;" in log and "not image" in log
    assert chest["metrics"]["skipped_items"] == 1 and chest["metrics"]["train_items"] == 6
    seg = train_job("segmentation3d", f"s3://{bucket}/channels/hippo/",
                    hps={"epochs": "1", "spatial_size": "16,24,24", "batch_size": "2"}, session=sagemaker_session())
    assert seg["status"] == "Completed", capsys.readouterr().err[-3000:]
    path = tmp_path / "model.tar.gz"
    b, key = aws.parse_s3_uri(seg["model_artifact"])
    path.write_bytes(_get(b, key))
    model = load_artifact(path)
    assert model.task == "segmentation3d" and model.labels == ["anterior", "posterior"]
    assert model.metadata["metrics"]["test_mean_dice"] == pytest.approx(seg["metrics"]["test_mean_dice"])
