"""A segmentation model really trained here, served two ways against the local cloud.

* async endpoint through the emulator (``dicomflow.inference.endpoint``): on held-out synthetic series
  the SEG it stores in the PACS, read back, beats the no-image prior mask by :data:`MARGIN_DICE` and
  reaches :data:`MIN_DICE`; the reported total volume is within :data:`VOLUME_TOLERANCE` of the truth;
* SageMaker SDK local real-time mode: ``PyTorchModel(entry_point="inference.py",
  source_dir="inference_container", dependencies=["dicomflow"]).deploy(instance_type="local")``, then
  ``predictor.predict(study_json)`` returns the findings and stores SR + SEG in the study.

Training is training_job/train.py run as a subprocess, as the training tests do (12 series of
24x40x40, 20 epochs: seconds on 2 cores). The synthetic structures vary in size, place, orientation
and contrast, so the prior mask computed without any image scores far below a model that looks.

A second model is trained on random 16^3 patches at a fixed voxel spacing (``spacing``): served in
process, it resamples series larger than anything it saw whole to that spacing, runs a sliding
window of patches over them and measures the volume on the series' own grid; it is held to the
same kind of bars.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from baselines import item_labels, mean_dice, prior_mask_dice
from botocore.exceptions import ClientError
from model_helpers import model_tarball
from training_channels import hippocampus_channel, run_entry, sm_layout

from dicomflow import aws
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom.seg import read_seg
from dicomflow.emulator.moto.endpoints import register_image
from dicomflow.inference import endpoint as ep
from dicomflow.training.data import scan_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "dicomflow-inference-trained:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SHAPE = (24, 40, 40)
STRUCTURES = 2  # anterior, posterior
#: mean Dice over both structures of the held-out series, read back from the SEG in the PACS, must reach
#: MIN_DICE and beat the no-image prior mask (the training labels' mean mask) by MARGIN_DICE.
#: Measured: whole-volume model 0.86-0.96 against a prior of 0.26; patch model 0.73-0.82 against 0.2-0.3.
MIN_DICE = 0.7
MIN_PATCH_DICE = 0.6
MARGIN_DICE = 0.3
#: |predicted - true| / true for the total hippocampus volume of each held-out series. Measured: 0.01-0.10
#: (whole-volume model), 0.03-0.21 (patch model); the prior mask, which has one volume for every
#: subject, is off by 40-150 % on these series (their sizes vary 0.7-1.2x in each dimension).
VOLUME_TOLERANCE = 0.30


def _true_volume_mm3(series: synthetic.SyntheticSeries) -> float:
    return float((series.label_volume > 0).sum()) * float(np.prod(series.spacing))


@pytest.fixture(scope="module")
def trained(local_cloud, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A segmentation3d artifact trained on synthetic series, in S3 as model.tar.gz."""
    root = tmp_path_factory.mktemp("trained-seg")
    env = sm_layout(root)
    hippocampus_channel(root / "input/data/train", 12, seed=0, shape=SHAPE)
    r = run_entry(env, {"task": "segmentation3d", "epochs": 20, "spatial_size": ",".join(map(str, SHAPE)),
                        "batch_size": 2, "lr": 0.01, "val_fraction": 0.2, "test_fraction": 0.0, "seed": 0})
    assert r.returncode == 0, r.stderr[-3000:]
    s3 = aws.client("s3")
    bucket = f"trained-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="models/seg/model.tar.gz", Body=model_tarball(root / "model"))
    return {"model_dir": root / "model", "model_uri": f"s3://{bucket}/models/seg/model.tar.gz", "root": root,
            "train_labels": item_labels(scan_manifest(root / "input/data/train", "segmentation3d").items)}


@pytest.fixture(scope="module")
def held_out(local_cloud) -> list[synthetic.SyntheticSeries]:
    """Series the model never saw (another seed), stored in Orthanc."""
    series = synthetic.hippocampus_series(3, seed=4242, shape=SHAPE)
    dicomweb.store(dicomweb.connect(), [ds for s in series for ds in s.datasets])
    return series


def _stored_seg_label(out: dict, series: synthetic.SyntheticSeries) -> np.ndarray:
    """The label volume of the SEG the model stored in the PACS, on the series' own slices."""
    ref = out["outputs"]["seg"]
    assert ref["storedToPacs"] is True
    seg = dicomweb.retrieve_instance(dicomweb.connect(), series.study_uid, ref["SeriesInstanceUID"],
                                     ref["SOPInstanceUID"])
    label, _ = read_seg(seg, [str(ds.SOPInstanceUID) for ds in series.datasets])
    return label


def _ellipsoid_series(like: synthetic.SyntheticSeries) -> list:
    """A new study on ``like``'s grid: a bright 3D ellipsoid much larger than a hippocampus in a
    sinusoidal background (the case once measured at 16 381 mm³ against a true 2 669 with no warning)."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    ref = np.stack([ds.pixel_array for ds in like.datasets]).astype(np.float64)
    background = ref.mean() * (1.0 + 0.9 * np.sin(x / 2.0) * np.sin(y / 3.0))
    inside = ((z - 12) / 9) ** 2 + ((y - 20) / 14) ** 2 + ((x - 20) / 14) ** 2 <= 1.0
    volume = np.where(inside, ref.max() * 3.0, background)
    out = []
    for k, src in enumerate(like.datasets):
        ds = copy.deepcopy(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = np.clip(volume[k], 0, np.iinfo(src.pixel_array.dtype).max).astype(
            src.pixel_array.dtype).tobytes()
        out.append(ds)
    return out


def _content_items(ds) -> list:
    """Every content item of an SR, depth first."""
    found = []
    for item in getattr(ds, "ContentSequence", []):
        found.append(item)
        found.extend(_content_items(item))
    return found


def _assert_beats_the_prior(name: str, figures: list[tuple[float, float, float]], prior: float,
                            min_dice: float) -> None:
    """``figures``: (Dice, true mm3, predicted mm3) per held-out series."""
    print(f"\n{name}: prior-mask Dice {prior:.3f}; per series (Dice, true mm3, predicted mm3):",
          [(round(d, 3), round(t), round(p)) for d, t, p in figures])
    dice = float(np.mean([d for d, _, _ in figures]))
    assert dice >= min_dice and dice >= prior + MARGIN_DICE, (dice, prior)
    for _, true, predicted in figures:
        assert abs(predicted - true) / true <= VOLUME_TOLERANCE, f"predicted {predicted:.0f} mm3 vs true {true:.0f}"


def test_async_endpoint_segments_held_out_series_better_than_the_prior(local_cloud, trained, held_out) -> None:
    register_image(local_cloud.settings.data_dir, IMAGE.split(":")[0],
                   {"command": ["python", "-m", "inference_container.serve"], "cwd": str(REPO)})
    name = f"hippo-trained-{uuid.uuid4().hex[:6]}"
    ep.deploy(name, trained["model_uri"], image=IMAGE, max_concurrency=2)
    try:
        figures = []
        for series in held_out:
            inv = ep.invoke_async(name, {"studyInstanceUID": series.study_uid, "outputs": ["json", "sr", "seg"],
                                         "storeToPacs": True})
            ok, data = ep.wait_result(inv, timeout_s=300)
            assert ok, data[:500]
            out = ep.with_queue_time(inv, json.loads(data))
            assert out["series"]["seriesInstanceUID"] == series.series_uid
            parts = out["findings"]["volumesMm3"]
            assert parts["total"] == pytest.approx(parts["anterior"] + parts["posterior"], rel=1e-6)
            label = _stored_seg_label(out, series)
            # the SEG in the PACS and the reported volume describe the same voxels
            assert float((label > 0).sum()) * float(np.prod(series.spacing)) == pytest.approx(parts["total"], rel=1e-6)
            figures.append((mean_dice(label, series.label_volume, STRUCTURES), _true_volume_mm3(series),
                            parts["total"]))
            # the queue time is the invocation to the start of processing: inside the request's wall time
            assert 0 < out["timingMs"]["queue"] < (time.time() - inv.invoked_at) * 1000
            quality = out["findings"]["quality"]
            assert quality["outOfDistribution"] is False, quality["reasons"]  # like the training series
            assert set(quality["expected"]["structures"]) == {"anterior", "posterior"}
        prior = prior_mask_dice(trained["train_labels"], [s.label_volume for s in held_out], STRUCTURES)
        _assert_beats_the_prior("whole-volume model, held-out 24x40x40 series", figures, prior, MIN_DICE)

        # a bright ellipsoid in a sinusoidal background: unlike anything in training, and said so
        odd = _ellipsoid_series(held_out[0])
        dicomweb.store(dicomweb.connect(), odd)
        inv = ep.invoke_async(name, {"studyInstanceUID": str(odd[0].StudyInstanceUID),
                                     "outputs": ["json", "sr"], "storeToPacs": True})
        ok, data = ep.wait_result(inv, timeout_s=300)
        assert ok, data[:500]
        quality = json.loads(data)["findings"]["quality"]
        print("\nellipsoid in a sinusoidal background:", quality["reasons"])
        assert quality["outOfDistribution"] is True and quality["reasons"]
        sr = dicomweb.retrieve_instance(dicomweb.connect(), str(odd[0].StudyInstanceUID),
                                        json.loads(data)["outputs"]["sr"]["SeriesInstanceUID"],
                                        json.loads(data)["outputs"]["sr"]["SOPInstanceUID"])
        flags = [item for item in _content_items(sr) if item.ConceptNameCodeSequence[0].CodeValue == "OOD"]
        assert flags and all(f.ConceptCodeSequence[0].CodeMeaning == "Yes" for f in flags)
    finally:
        aws.client("sagemaker").delete_endpoint(EndpointName=name)


@pytest.fixture(scope="module")
def trained_on_patches(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A segmentation3d artifact trained on 16^3 patches resampled to 1.5 mm voxels, z-score intensities."""
    root = tmp_path_factory.mktemp("trained-patches")
    env = sm_layout(root)
    hippocampus_channel(root / "input/data/train", 10, seed=0, shape=SHAPE)
    r = run_entry(env, {"task": "segmentation3d", "epochs": 30, "spatial_size": "16,16,16", "spacing": "1.5",
                        "intensity": "zscore", "val_every": 3, "batch_size": 2, "lr": 0.01, "val_fraction": 0.2,
                        "test_fraction": 0.0, "seed": 0})
    assert r.returncode == 0, r.stderr[-3000:]
    return {"model_dir": root / "model",
            "train_labels": item_labels(scan_manifest(root / "input/data/train", "segmentation3d").items)}


def test_patch_model_segments_larger_series_at_its_spacing(local_cloud, trained_on_patches) -> None:
    from dicomflow.inference.request import parse_request
    from dicomflow.inference.service import InferenceService

    service = InferenceService.from_model_dir(trained_on_patches["model_dir"])
    assert service.transform.spacing == (1.5, 1.5, 1.5) and service.transform.size == (16, 16, 16)
    assert service.transform.spec["intensity"] == {"mode": "zscore"}
    held_out = synthetic.hippocampus_series(2, seed=4343, shape=(32, 48, 48))  # bigger than any training series
    dicomweb.store(dicomweb.connect(), [ds for s in held_out for ds in s.datasets])
    figures = []
    for series in held_out:
        out = service.run(parse_request({"dicomweb": {"url": local_cloud.pacs.url},
                                         "studyInstanceUID": series.study_uid, "outputs": ["json", "seg"],
                                         "storeToPacs": True}))
        assert out["volume"]["shape"] == [32, 48, 48]
        label = _stored_seg_label(out, series)
        figures.append((mean_dice(label, series.label_volume, STRUCTURES), _true_volume_mm3(series),
                        out["findings"]["volumesMm3"]["total"]))
    # the prior is centred on the larger field of view: the best a no-image guess can do there
    prior = prior_mask_dice(trained_on_patches["train_labels"], [s.label_volume for s in held_out], STRUCTURES)
    _assert_beats_the_prior("patch model, held-out 32x48x48 series", figures, prior, MIN_PATCH_DICE)


def test_entry_point_imports_the_vendored_dicomflow(tmp_path) -> None:
    """The repacked layout ``code/inference.py`` + ``code/lib/dicomflow``: the entry point uses the copy."""
    code = tmp_path / "code"
    (code / "lib").mkdir(parents=True)
    (code / "inference.py").write_bytes((REPO / "inference_container" / "inference.py").read_bytes())
    import shutil

    shutil.copytree(REPO / "dicomflow", code / "lib" / "dicomflow",
                    ignore=shutil.ignore_patterns("__pycache__", "local", "cli"))
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import inference, dicomflow, dicomflow.inference.service; "
             "print(dicomflow.__file__); print(callable(inference.model_fn))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", probe, str(code)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, check=False, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    where, has_fn = r.stdout.split()
    assert Path(where).is_relative_to(code / "lib" / "dicomflow") and has_fn == "True"


def test_sdk_local_realtime_mode_predicts_and_stores_sr_and_seg(local_cloud, trained, held_out, monkeypatch) -> None:
    monkeypatch.setenv("DICOMFLOW_SAGEMAKER_MODE", "host")
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.serializers import JSONSerializer

    from dicomflow.emulator.sagemaker_sdk.session import sagemaker_session

    sm = sagemaker_session()
    model = PyTorchModel(model_data=trained["model_uri"], role=ROLE, entry_point="inference.py",
                         source_dir=str(REPO / "inference_container"), dependencies=[str(REPO / "dicomflow")],
                         framework_version="2.5", py_version="py311", sagemaker_session=sm)
    predictor = model.deploy(initial_instance_count=1, instance_type="local",
                             serializer=JSONSerializer(), deserializer=JSONDeserializer())
    try:
        # the SDK repacked the artifact with the entry point and the library, as for a real endpoint
        bucket, key = aws.parse_s3_uri(model.repacked_model_data)
        body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = {m.name.removeprefix("./") for m in tar.getmembers()}
        assert {"dicomflow_model.json", "code/inference.py", "code/requirements.txt",
                "code/lib/dicomflow/inference/service.py"} <= names

        series = held_out[0]
        out = predictor.predict({"dicomweb": {"url": local_cloud.pacs.url},
                                 "studyInstanceUID": series.study_uid, "outputs": ["json", "sr", "seg"],
                                 "storeToPacs": True})
        assert out["series"]["seriesInstanceUID"] == series.series_uid
        assert out["findings"]["volumesMm3"]["total"] > 0
        client = dicomweb.connect()
        for kind, modality in (("seg", "SEG"), ("sr", "SR")):
            ref = out["outputs"][kind]
            assert ref["storedToPacs"] is True
            ds = dicomweb.retrieve_instance(client, series.study_uid, ref["SeriesInstanceUID"], ref["SOPInstanceUID"])
            assert ds.Modality == modality and ds.StudyInstanceUID == series.study_uid

        with pytest.raises(ClientError) as info:  # an expected failure comes back with our message
            predictor.predict({"studyInstanceUID": "1.2.3.4.5.404"})
        assert "StudyNotFound" in str(info.value) and "no instances in the PACS" in str(info.value)
    finally:
        predictor.delete_endpoint()



def test_the_model_card_states_the_metrics_the_artifact_records(trained) -> None:
    """model_card.md is written from measured facts: its Metrics table equals the artifact's metrics, and the
    per-structure table the test report's figures."""
    import re

    card = (trained["model_dir"] / "model_card.md").read_text()
    metadata = json.loads((trained["model_dir"] / "dicomflow_model.json").read_text())
    report = json.loads((trained["model_dir"] / "test_report.json").read_text())
    section = card.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| ([a-z_]+) \| ([^|]+) \|$", section, flags=re.M))
    table.pop("name")  # the header row
    assert set(table) == set(metadata["metrics"]), "every metric, and only those"
    for name, value in metadata["metrics"].items():
        shown = table[name].strip()
        assert float(shown) == pytest.approx(float(value), abs=6e-5), name
    for name, m in report["classes"].items():
        row = re.search(rf"^\| {name} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.n/a]+) \| ([0-9.n/a]+) \| ([0-9.]+) \|$",
                        card, flags=re.M)
        assert row, f"no row for {name}"
        assert float(row.group(1)) == pytest.approx(m["dice"], abs=6e-5)
        assert float(row.group(5)) == pytest.approx(m["mean_abs_volume_error_pct"], abs=6e-5)
    assert report["worst_volume"]["id"] in card and report["best_volume"]["id"] in card
    assert "flips are deliberately not used" in card
    reference = metadata["reference"]
    assert reference["items"] == metadata["metrics"]["train_items"]
    assert set(reference["volumesMm3"]) == {"anterior", "posterior", "total"}
