"""A segmentation model really trained here, served two ways against the local cloud.

* async endpoint through the emulator (``dicomflow.inference.endpoint``): the predicted total
  hippocampus volume of a held-out synthetic series is within :data:`VOLUME_TOLERANCE` of its
  ground-truth mask volume;
* SageMaker SDK local real-time mode: ``PyTorchModel(entry_point="inference.py",
  source_dir="inference_container", dependencies=["dicomflow"]).deploy(instance_type="local")``, then
  ``predictor.predict(study_json)`` returns the findings and stores SR + SEG in the study.

Training is training_job/train.py run as a subprocess, as the training tests do (12 volumes of
16x24x24, 12 epochs: well under a minute on 2 cores).

A second model is trained on random patches at a fixed voxel spacing (``spacing``): served in
process, it resamples a series larger than anything it saw whole to that spacing, runs a sliding
window of patches over it and measures the volume on the series' own grid.
"""

from __future__ import annotations

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
from botocore.exceptions import ClientError
from model_helpers import model_tarball
from training_channels import hippocampus_channel, run_entry, sm_layout

from dicomflow import aws
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.emulator.moto.endpoints import register_image
from dicomflow.inference import endpoint as ep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "dicomflow-inference-trained:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SHAPE = (16, 24, 24)
#: |predicted - true| / true for the total hippocampus volume of a held-out series. The model is
#: tiny and trained for seconds (test Dice ~0.6-0.8); an untrained one is off by far more (it
#: predicts either nothing or most of the volume).
VOLUME_TOLERANCE = 0.30


def _true_volume_mm3(series: synthetic.SyntheticSeries) -> float:
    return float((series.label_volume > 0).sum()) * float(np.prod(series.spacing))


@pytest.fixture(scope="module")
def trained(local_cloud, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A segmentation3d artifact trained on synthetic series, in S3 as model.tar.gz."""
    root = tmp_path_factory.mktemp("trained-seg")
    env = sm_layout(root)
    hippocampus_channel(root / "input/data/train", 12, seed=0, shape=SHAPE)
    r = run_entry(env, {"task": "segmentation3d", "epochs": 12, "spatial_size": ",".join(map(str, SHAPE)),
                        "batch_size": 2, "lr": 0.01, "val_fraction": 0.2, "test_fraction": 0.0, "seed": 0})
    assert r.returncode == 0, r.stderr[-3000:]
    s3 = aws.client("s3")
    bucket = f"trained-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="models/seg/model.tar.gz", Body=model_tarball(root / "model"))
    return {"model_dir": root / "model", "model_uri": f"s3://{bucket}/models/seg/model.tar.gz", "root": root}


@pytest.fixture(scope="module")
def held_out(local_cloud) -> list[synthetic.SyntheticSeries]:
    """Series the model never saw (another seed), stored in Orthanc."""
    series = synthetic.hippocampus_series(2, seed=4242, shape=SHAPE)
    dicomweb.store(dicomweb.connect(), [ds for s in series for ds in s.datasets])
    return series


def test_async_endpoint_predicts_the_hippocampus_volume_within_tolerance(local_cloud, trained, held_out) -> None:
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
            predicted = out["findings"]["volumesMm3"]["total"]
            true = _true_volume_mm3(series)
            parts = out["findings"]["volumesMm3"]
            assert predicted == pytest.approx(parts["anterior"] + parts["posterior"], rel=1e-6)
            figures.append((true, predicted, abs(predicted - true) / true))
            # the queue time is the invocation to the start of processing: inside the request's wall time
            assert 0 < out["timingMs"]["queue"] < (time.time() - inv.invoked_at) * 1000
        print("\nheld-out hippocampus volume (true mm3, predicted mm3, relative error):",
              [(round(t), round(p), round(e, 3)) for t, p, e in figures])
        for true, predicted, err in figures:
            assert err <= VOLUME_TOLERANCE, f"predicted {predicted:.0f} mm3 vs true {true:.0f} mm3 ({err:.1%})"
    finally:
        aws.client("sagemaker").delete_endpoint(EndpointName=name)


@pytest.fixture(scope="module")
def trained_on_patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A segmentation3d artifact trained on 16^3 patches resampled to 1.5 mm voxels, z-score intensities."""
    root = tmp_path_factory.mktemp("trained-patches")
    env = sm_layout(root)
    hippocampus_channel(root / "input/data/train", 8, seed=0, shape=SHAPE, more_shapes=((24, 40, 40),))
    r = run_entry(env, {"task": "segmentation3d", "epochs": 12, "spatial_size": "16,16,16", "spacing": "1.5",
                        "intensity": "zscore", "val_every": 3, "batch_size": 2, "lr": 0.01, "val_fraction": 0.2,
                        "test_fraction": 0.0, "seed": 0})
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "model"


def test_patch_model_segments_a_larger_series_at_its_spacing(local_cloud, trained_on_patches) -> None:
    from dicomflow.inference.request import parse_request
    from dicomflow.inference.service import InferenceService

    service = InferenceService.from_model_dir(trained_on_patches)
    assert service.transform.spacing == (1.5, 1.5, 1.5) and service.transform.size == (16, 16, 16)
    assert service.transform.spec["intensity"] == {"mode": "zscore"}
    series = synthetic.hippocampus_series(1, seed=4343, shape=(32, 48, 48))[0]  # bigger than any training series
    dicomweb.store(dicomweb.connect(), series.datasets)
    out = service.run(parse_request({"dicomweb": {"url": local_cloud.pacs.url}, "studyInstanceUID": series.study_uid,
                                     "outputs": ["json", "seg"], "storeToPacs": False}))
    assert out["volume"]["shape"] == [32, 48, 48]
    predicted, true = out["findings"]["volumesMm3"]["total"], _true_volume_mm3(series)
    print(f"\npatch model, held-out 32x48x48 series: predicted {predicted:.0f} mm3, true {true:.0f} mm3")
    assert abs(predicted - true) / true <= VOLUME_TOLERANCE


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

