"""The training job through the SageMaker SDK: ``PyTorch(...).fit`` in local mode (host processes, no Docker).

Channels are tiny synthetic datasets uploaded to the emulated S3; the SDK stages ``training_job/`` plus the
``dicomflow/`` package (``dependencies``) as ``sourcedir.tar.gz`` exactly as for SageMaker, the job runs
``train.py`` from the extracted copy, and the SDK uploads ``model.tar.gz``, which must load with
:func:`dicomflow.modeling.artifact.load_artifact`.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from training_channels import chest_channel, hippocampus_channel, missing_image_channel, upload_channel

from dicomflow import aws
from dicomflow.emulator.sagemaker_sdk.session import LocalTrainingJobError
from dicomflow.modeling.artifact import load_artifact
from dicomflow.training.launch import TrainError, train_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def host_mode(local_cloud):
    """Host-mode local SageMaker (forced, so a machine with a Docker engine runs the same path)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DICOMFLOW_SAGEMAKER_MODE", "host")
    mp.setenv("OMP_NUM_THREADS", "2")
    from dicomflow.emulator.sagemaker_sdk import sagemaker_session

    yield sagemaker_session()
    mp.undo()


@pytest.fixture(scope="module")
def channels(host_mode, tmp_path_factory) -> dict[str, str]:
    """task -> s3:// channel prefix with manifest.jsonl, classes.json and the DICOM files."""
    root = tmp_path_factory.mktemp("channels")
    bucket = host_mode.default_bucket()
    chest_channel(root / "chest", 16, seed=1, size=32)
    hippocampus_channel(root / "seg", 6, seed=0, shape=(16, 24, 24))
    return {
        "classification2d": upload_channel(root / "chest", f"s3://{bucket}/tests/train-chest/"),
        "segmentation3d": upload_channel(root / "seg", f"s3://{bucket}/tests/train-seg/"),
    }


HPS = {
    "classification2d": {"epochs": "2", "image_size": "32", "batch_size": "4", "val_fraction": "0.25"},
    "segmentation3d": {"epochs": "2", "spatial_size": "16,24,24", "batch_size": "2", "val_fraction": "0.2",
                       "test_fraction": "0.2"},
}


def _s3_bytes(uri: str) -> bytes:
    bucket, key = aws.parse_s3_uri(uri)
    return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def _artifact(uri: str, tmp_path: Path):
    path = tmp_path / "model.tar.gz"
    path.write_bytes(_s3_bytes(uri))
    return load_artifact(path)


def _source_members(job_name: str) -> set[str]:
    """Members of the sourcedir.tar.gz the SDK staged for the job (what SageMaker would download)."""
    s3 = aws.client("s3")
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("sagemaker-"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=job_name).get("Contents", [])]
    key = next(k for k in keys if k.endswith("sourcedir.tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        return {m.name.removeprefix("./") for m in tar.getmembers()}


def _shipped_from(log: str) -> str:
    found = re.findall(r"dicomflow \S+ from (\S+)", log)
    assert found, log[-3000:]
    return found[0]


def test_estimator_fit_trains_and_the_artifact_loads(channels, host_mode, capsys, tmp_path) -> None:
    """The SDK's path is the same for every task (classification3d trains in test_training_job)."""
    task = "classification2d"
    result = train_job(task, channels[task], hps=HPS[task], session=host_mode)
    log = capsys.readouterr().err
    assert result["status"] == "Completed", log[-3000:]
    assert result["model_artifact"].startswith("s3://") and result["model_artifact"].endswith("model.tar.gz")
    model = _artifact(result["model_artifact"], tmp_path)
    assert model.task == task
    expected_labels = json.loads(_s3_bytes(channels[task] + "classes.json"))
    assert model.labels == expected_labels
    assert result["metrics"]["epoch"] == float(HPS[task]["epochs"])
    assert len(re.findall(r"\bepoch=\d+;", log)) == int(HPS[task]["epochs"])  # progress, one line per epoch
    # dicomflow ships with the code (estimator dependencies) and the job imports that copy, not the installed one
    members = _source_members(result["job_name"])
    assert {"train.py", "requirements.txt", "dicomflow/__init__.py", "dicomflow/training/loop.py"} <= members
    shipped = _shipped_from(log)
    assert shipped.endswith("/code/dicomflow") and not shipped.startswith(str(Path.cwd()))


def test_cli_trains_segmentation3d_with_progress_and_json(channels, host_mode, tmp_path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "dicomflow.cli", "train", "--task", "segmentation3d",
            "--data", channels["segmentation3d"], "--json"]
    for key, value in HPS["segmentation3d"].items():
        argv += ["--hp", f"{key}={value}"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # stdout is the JSON alone; the job log went to stderr
    assert result["status"] == "Completed" and result["task"] == "segmentation3d"
    assert re.findall(r"\bepoch=(\d+);", proc.stderr) == ["1", "2"]
    assert "test_mean_dice=" in proc.stderr
    model = _artifact(result["model_artifact"], tmp_path)
    assert model.task == "segmentation3d" and model.labels == ["anterior", "posterior"]
    assert model.metadata["metrics"]["test_mean_dice"] == pytest.approx(result["metrics"]["test_mean_dice"])
    # the curves are in the output data beside model.tar.gz, and the CLI says where
    curves = result["curves"]
    assert curves["archive"] == result["model_artifact"].rsplit("/", 1)[0] + "/output.tar.gz"
    assert curves["files"] == ["data/curves/loss.png", "data/curves/val_mean_dice.png"]  # local mode packs output/
    # ... and registered as the next version of its group, pending approval, with the artifact's own figures
    from dicomflow.modeling import registry

    reg = result["registered"]
    assert reg["group"] == "dicomflow-segmentation-3d" and reg["status"] == registry.PENDING
    version = registry.version(reg["group"], reg["version"])
    assert version.model_data == result["model_artifact"] and version.properties["task"] == "segmentation3d"
    assert float(version.properties["metric.test_mean_dice"]) == pytest.approx(
        model.metadata["metrics"]["test_mean_dice"], rel=1e-5)
    assert version.properties["manifestSha256"] == model.metadata["manifest_sha256"]


def test_no_usable_image_fails_with_the_reason(host_mode, tmp_path) -> None:
    uri = missing_image_channel(tmp_path / "empty", f"s3://{host_mode.default_bucket()}/tests/train-empty/")
    with pytest.raises(LocalTrainingJobError) as info:
        train_job("classification2d", uri, hps={"epochs": "1", "image_size": "32"}, session=host_mode)
    assert info.value.reason.startswith("DatasetError: no usable image") and "missing=1" in info.value.reason


def test_a_channel_without_manifest_is_refused_before_any_job(host_mode) -> None:
    with pytest.raises(TrainError, match="export the dataset first"):
        train_job("classification2d", f"s3://{host_mode.default_bucket()}/tests/nothing-here/", session=host_mode)
