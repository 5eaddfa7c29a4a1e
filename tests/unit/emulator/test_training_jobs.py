"""The emulator's managed training jobs, in process: what it refuses at CreateTrainingJob, the checks before
a job runs, and a job that was running when the emulator stopped. The jobs really running are
``tests/integration/test_sagemaker_managed.py``."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from dicomflow.emulator.moto import training_jobs as tj


@pytest.mark.parametrize(("image", "repo"), [
    ("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311", "pytorch-training"),
    ("dicomflow-training", "dicomflow-training"),
    ("localhost:5000/team/dicomflow-training:latest@sha256:ab", "dicomflow-training"),
])
def test_repository_is_read_from_any_image_reference(image, repo) -> None:
    assert tj._repository(image) == repo


@pytest.mark.parametrize("rel", ["../escape", "a/../../b", "/abs", ""])
def test_a_key_suffix_that_would_leave_the_channel_is_refused(tmp_path, rel) -> None:
    with pytest.raises(tj.JobFailure, match="not a safe file name"):
        tj._safe_join(tmp_path, rel)


def test_a_key_suffix_inside_the_channel_is_joined(tmp_path) -> None:
    assert tj._safe_join(tmp_path, "images/0001.dcm") == tmp_path / "images" / "0001.dcm"


class _Job:
    def __init__(self, image: str, hps: dict | None = None, mode: str = "File") -> None:
        self.algorithm_specification = {"TrainingImage": image, "TrainingInputMode": mode}
        self.hyper_parameters = hps or {}
        self.input_data_config = [{"ChannelName": "train"}]


def test_the_dicomflow_image_defaults_to_the_project_entry_point() -> None:
    hps = tj._hyperparameters(_Job("dicomflow-training:latest"))
    assert json.loads(hps["sagemaker_program"]) == "train.py"
    assert Path(json.loads(hps["sagemaker_submit_directory"]).removeprefix("file://"), "train.py").is_file()


@pytest.mark.parametrize(("job", "needle"), [
    (_Job("my-algorithm:1", {"sagemaker_program": '"t.py"'}), "does not run in the local cloud"),
    (_Job("pytorch-training:2.5", {"sagemaker_program": '"t.py"'}, mode="Pipe"), "Pipe input mode"),
    (_Job("pytorch-training:2.5"), "sagemaker_program is missing"),
    (_Job(""), "TrainingImage is required"),
])
def test_what_cannot_run_fails_with_a_reason(job, needle) -> None:
    with pytest.raises(tj.JobFailure, match=needle):
        tj._check_runnable(job)


@pytest.fixture
def sagemaker(monkeypatch):
    """moto in process (not a local cloud the session may have started: its endpoint is unset here)."""
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "SAGEMAKER_ADMIN_CONFIG_OVERRIDE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        from moto.sagemaker.models import SageMakerModelBackend

        original = SageMakerModelBackend.create_training_job
        SageMakerModelBackend.create_training_job = tj._create_training_job(original)
        try:
            yield boto3.client("sagemaker", region_name="us-east-1")
        finally:
            SageMakerModelBackend.create_training_job = original


def _create(client, name: str, count: int = 1, output: str = "s3://b/out", regex: str = r"loss=([0-9.]+)"):
    return client.create_training_job(
        TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/r",
        AlgorithmSpecification={"TrainingImage": "pytorch-training:2.5", "TrainingInputMode": "File",
                                "MetricDefinitions": [{"Name": "loss", "Regex": regex}]},
        OutputDataConfig={"S3OutputPath": output},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": count, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60})


def test_a_recorded_job_is_in_progress_with_its_own_metric_definitions(sagemaker) -> None:
    _create(sagemaker, "job-a")
    desc = sagemaker.describe_training_job(TrainingJobName="job-a")
    assert desc["TrainingJobStatus"] == "InProgress" and desc["SecondaryStatus"] == "Starting"
    assert desc["AlgorithmSpecification"]["MetricDefinitions"] == [{"Name": "loss", "Regex": r"loss=([0-9.]+)"}]
    assert "ModelArtifacts" not in desc and not desc.get("FinalMetricDataList")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"count": 99}, "InstanceCount must be 1..8"),
    ({"output": "file:///tmp/out"}, "S3OutputPath must be an s3:// URI"),
    ({"regex": "loss=("}, "no valid Regex"),
])
def test_create_refuses_what_the_local_cloud_cannot_run(sagemaker, kwargs, needle) -> None:
    with pytest.raises(sagemaker.exceptions.ClientError, match=needle):
        _create(sagemaker, "job-b", **kwargs)


def test_a_job_name_is_used_once(sagemaker) -> None:
    _create(sagemaker, "job-c")
    with pytest.raises(sagemaker.exceptions.ClientError, match="already exists"):
        _create(sagemaker, "job-c")


def test_a_job_running_when_the_emulator_stopped_is_failed_with_the_reason(sagemaker) -> None:
    _create(sagemaker, "job-d")
    assert tj.fail_interrupted() == 1
    desc = sagemaker.describe_training_job(TrainingJobName="job-d")
    assert desc["TrainingJobStatus"] == "Failed" and desc["FailureReason"] == tj.INTERRUPTED
    assert tj.fail_interrupted() == 0


def test_downloads_link_read_only_channels_and_copy_checkpoints_each_host_writes(sagemaker, tmp_path) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ckpt-unit")
    s3.put_object(Bucket="ckpt-unit", Key="k", Body=b"state")
    shared = [tmp_path / "algo-1" / "data" / "k", tmp_path / "algo-2" / "data" / "k"]
    own = [tmp_path / "algo-1" / "checkpoints" / "k", tmp_path / "algo-2" / "checkpoints" / "k"]
    assert tj._download_to(s3, "ckpt-unit", "k", shared, shared=True, what="channel train") == 5
    assert tj._download_to(s3, "ckpt-unit", "k", own, shared=False, what="the checkpoints") == 5
    assert shared[0].stat().st_ino == shared[1].stat().st_ino
    own[1].write_bytes(b"host 2's own")
    assert own[0].read_bytes() == b"state"
    with pytest.raises(tj.JobFailure, match="cannot download s3://ckpt-unit/gone of channel train"):
        tj._download_to(s3, "ckpt-unit", "gone", [tmp_path / "x"], shared=True, what="channel train")


def test_a_job_never_gets_dicomflow_secrets(monkeypatch) -> None:
    monkeypatch.setenv("DICOMFLOW_PACS_PASSWORD", "pacs-secret")
    monkeypatch.setenv("DICOMFLOW_SIGNING_KEY", "signing-secret")
    monkeypatch.setenv("DICOMFLOW_PACS_URL", "http://127.0.0.1:8042/dicom-web")
    env = tj._job_environment()
    assert "DICOMFLOW_PACS_PASSWORD" not in env and "DICOMFLOW_SIGNING_KEY" not in env
    assert env["DICOMFLOW_PACS_URL"] == "http://127.0.0.1:8042/dicom-web" and env["PYTHONUNBUFFERED"] == "1"


class _RenamingS3:
    """Uploads by reading the file, but an atomic write renames each ``.tmp`` file just before it is read."""

    def __init__(self) -> None:
        self.uploaded: dict[str, bytes] = {}

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        if path.endswith(".tmp"):
            Path(path).replace(path[:-len(".tmp")])
        self.uploaded[key] = Path(path).read_bytes()


def test_checkpoint_sync_survives_a_file_renamed_while_it_runs(tmp_path) -> None:
    local = tmp_path / "checkpoints"
    local.mkdir()
    (local / "best.pt.tmp").write_bytes(b"weights")
    s3 = _RenamingS3()
    sync = tj._CheckpointSync(s3, "s3://bucket/ckpt", local)
    sync.sync()
    assert s3.uploaded == {}
    sync.sync()
    assert s3.uploaded == {"ckpt/best.pt": b"weights"}
