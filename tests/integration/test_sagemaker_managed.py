"""Managed SageMaker training jobs and ``estimator.deploy()`` against the emulated AWS, as the SDK's docs write them.

The seed notebook (``sm_scripts/notebook/notebook.py``) runs as a user's own process with nothing but
the environment of ``dicomflow env``: a plain ``sagemaker.Session()``, ``PyTorch(...,
instance_type="ml.m5.xlarge").fit``, ``deploy`` + ``predict`` of a study JSON, an asynchronous
``deploy`` + ``predict_async``. The job's mechanics (failure reasons, a job without a model, stop, the
run-time limit, checkpoints, two instances) use tiny entry points and poll ``DescribeTrainingJob``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from training_channels import chest_channel, missing_image_channel, upload_channel

from dicomflow import aws
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.modeling.artifact import load_artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).parent / "sm_scripts"
ROLE = "arn:aws:iam::123456789012:role/dicomflow-sagemaker"
TERMINAL = ("Completed", "Failed", "Stopped")


@pytest.fixture(scope="module")
def session(local_cloud):
    """What a user writes: ``sagemaker.Session()`` (the environment points it at the local cloud)."""
    import sagemaker

    return sagemaker.Session()


@pytest.fixture(scope="module")
def chest(session, tmp_path_factory) -> dict:
    """A chest channel in S3, and one more chest study in the PACS to predict on."""
    root = tmp_path_factory.mktemp("managed")
    chest_channel(root / "chest", 16, seed=3, size=32)
    data = upload_channel(root / "chest", f"s3://{session.default_bucket()}/tests/managed-chest/")
    study = synthetic.chest_radiographs(1, seed=77, size=64)[0].dataset
    dicomweb.store(dicomweb.connect(), [study])
    return {"data": data, "study": str(study.StudyInstanceUID)}


@pytest.fixture(scope="module", autouse=True)
def notebook_run(local_cloud, chest, tmp_path_factory):
    """The notebook, started first: the SDK sleeps between its polls (30 s per deploy), the other tests run
    meanwhile."""
    log = tmp_path_factory.mktemp("notebook") / "notebook.log"
    env = {**os.environ, **local_cloud.env, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "notebook" / "notebook.py"), chest["data"],
                                 chest["study"], str(REPO / "training_job"), str(REPO / "dicomflow")],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
    yield proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def notebook(notebook_run) -> dict:
    """What the notebook printed. Its process may linger: the SDK's ``get_result`` leaves a non-daemon thread
    waiting for a failure object for the whole WaiterConfig after a success (teardown stops it)."""
    proc, log = notebook_run
    pattern = re.compile(r"^.*?NOTEBOOK (\{.*\})$", flags=re.M)  # after the SDK's progress dots
    deadline = time.monotonic() + 900
    while not (found := pattern.search(log.read_text())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert found, f"exit status {proc.poll()}:\n{text[-5000:]}"
    return {**json.loads(found.group(1)), "log": text}


def _estimator(session, source: Path, entry: str = "train.py", **kwargs):
    from sagemaker.pytorch import PyTorch

    return PyTorch(entry_point=entry, source_dir=str(source), role=ROLE, framework_version="2.5", py_version="py311",
                   instance_type=kwargs.pop("instance_type", "ml.m5.large"),
                   instance_count=kwargs.pop("instance_count", 1), sagemaker_session=session, **kwargs)


def _wait(session, name: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        desc = session.sagemaker_client.describe_training_job(TrainingJobName=name)
        if desc["TrainingJobStatus"] in TERMINAL or time.monotonic() > deadline:
            return desc
        time.sleep(0.2)


def _start(estimator, inputs=None) -> str:
    estimator.fit(inputs, wait=False)
    return estimator.latest_training_job.name


def _s3_bytes(uri: str) -> bytes:
    bucket, key = aws.parse_s3_uri(uri)
    return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def _members(uri: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(_s3_bytes(uri))) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _log_lines(name: str) -> dict[str, list[str]]:
    logs = aws.client("logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                        logStreamNamePrefix=name + "/")["logStreams"]
    return {s["logStreamName"]: [e["message"] for e in logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=s["logStreamName"], startFromHead=True)["events"]]
        for s in streams}


def _text_channel(session, text: str) -> str:
    prefix = f"tests/managed-text/{uuid.uuid4().hex[:8]}/"
    aws.client("s3").put_object(Bucket=session.default_bucket(), Key=prefix + "data.txt", Body=text.encode())
    return f"s3://{session.default_bucket()}/{prefix}"


# ---- the job's mechanics ----------------------------------------------------------------------------

def test_a_failing_entry_point_ends_failed_with_its_reason(session) -> None:
    est = _estimator(session, SCRIPTS / "failing", hyperparameters={"mode": "file"})
    desc = _wait(session, _start(est))
    assert desc["TrainingJobStatus"] == "Failed" and desc["SecondaryStatus"] == "Failed"
    assert desc["FailureReason"] == "label column 'Finding' missing in manifest"
    assert "ModelArtifacts" not in desc
    from sagemaker.exceptions import UnexpectedStatusException

    with pytest.raises(UnexpectedStatusException, match="label column 'Finding' missing"):
        est.latest_training_job.wait(logs="None")


def test_a_job_that_writes_no_model_is_failed_not_completed(session, tmp_path) -> None:
    (tmp_path / "train.py").write_text("print('trained, but saved nothing')\n")
    desc = _wait(session, _start(_estimator(session, tmp_path)))
    assert desc["TrainingJobStatus"] == "Failed"
    assert "wrote nothing to /opt/ml/model" in desc["FailureReason"]


def test_stop_training_job_stops_and_keeps_what_the_job_saved(session, tmp_path) -> None:
    (tmp_path / "train.py").write_text(
        "import os, pathlib, time\n"
        "pathlib.Path(os.environ['SM_MODEL_DIR'], 'partial.txt').write_text('epoch 1')\n"
        "print('saved', flush=True)\n"
        "time.sleep(300)\n")
    name = _start(_estimator(session, tmp_path))
    deadline = time.monotonic() + 120
    while "saved" not in sum(_log_lines(name).values(), []) and time.monotonic() < deadline:
        time.sleep(0.2)
    session.sagemaker_client.stop_training_job(TrainingJobName=name)
    desc = _wait(session, name, timeout=120)
    assert desc["TrainingJobStatus"] == "Stopped" and desc["SecondaryStatus"] == "Stopped"
    assert _members(desc["ModelArtifacts"]["S3ModelArtifacts"]) == {"partial.txt": b"epoch 1"}
    with pytest.raises(session.sagemaker_client.exceptions.ClientError, match="only a job in progress"):
        session.sagemaker_client.stop_training_job(TrainingJobName=name)


def test_max_runtime_stops_the_job(session, tmp_path) -> None:
    (tmp_path / "train.py").write_text("import time\ntime.sleep(300)\n")
    t0 = time.monotonic()
    desc = _wait(session, _start(_estimator(session, tmp_path, max_run=3)), timeout=120)
    assert desc["TrainingJobStatus"] == "Stopped" and desc["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert time.monotonic() - t0 < 60 and "ModelArtifacts" not in desc


def test_checkpoints_sync_to_s3_and_come_back_for_the_next_job(session, tmp_path) -> None:
    (tmp_path / "train.py").write_text(
        "import os, pathlib\n"
        "ckpt = pathlib.Path(os.environ['SM_CHECKPOINT_DIR'])\n"
        "previous = (ckpt / 'state.txt').read_text() if (ckpt / 'state.txt').exists() else '0'\n"
        "(ckpt / 'state.txt').write_text(str(int(previous) + 1))\n"
        "pathlib.Path(os.environ['SM_MODEL_DIR'], 'seen.txt').write_text(previous)\n")
    uri = f"s3://{session.default_bucket()}/tests/checkpoints/{uuid.uuid4().hex[:8]}"
    seen = []
    for _ in range(2):
        desc = _wait(session, _start(_estimator(session, tmp_path, checkpoint_s3_uri=uri)))
        assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
        seen.append(_members(desc["ModelArtifacts"]["S3ModelArtifacts"])["seen.txt"])
    assert seen == [b"0", b"1"]
    assert _s3_bytes(uri + "/state.txt") == b"2"


def test_two_instances_train_together_and_write_one_artifact(session, local_cloud) -> None:
    est = _estimator(session, SCRIPTS / "distributed", instance_count=2)
    name = _start(est, {"train": _text_channel(session, "hello")})
    desc = _wait(session, name)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    members = _members(desc["ModelArtifacts"]["S3ModelArtifacts"])
    assert list(members) == ["algo-1.json"]
    record = json.loads(members["algo-1.json"])
    assert record["hosts"] == ["algo-1", "algo-2"] and record["sum"] == 2.0  # both ranks took part
    assert sorted(s.split("/")[1].rsplit("-", 1)[0] for s in _log_lines(name)) == ["algo-1", "algo-2"]
    bucket, key = aws.parse_s3_uri(desc["ModelArtifacts"]["S3ModelArtifacts"])
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=name + "/")["Contents"]]
    assert [k for k in keys if k.endswith("model.tar.gz")] == [key]
    assert not (local_cloud.settings.data_dir / "training-jobs" / name).exists()  # instance storage is gone


def test_images_and_modes_the_local_cloud_cannot_run_fail_with_the_reason(session) -> None:
    from sagemaker.estimator import Estimator

    est = Estimator(image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/my-algorithm:1", role=ROLE,
                    instance_count=1, instance_type="ml.m5.large", sagemaker_session=session)
    desc = _wait(session, _start(est))
    assert desc["TrainingJobStatus"] == "Failed"
    assert "my-algorithm:1 does not run in the local cloud" in desc["FailureReason"]
    est = _estimator(session, SCRIPTS / "basic", input_mode="Pipe", hyperparameters={"epochs": 1})
    desc = _wait(session, _start(est, {"train": _text_channel(session, "x")}))
    assert desc["TrainingJobStatus"] == "Failed" and "Pipe input mode" in desc["FailureReason"]


def test_cli_follows_a_managed_job_and_prints_its_final_metrics(chest) -> None:
    """``dicomflow train --instance-type ml.*`` against the local cloud: the job's log, then the human summary."""
    proc = subprocess.run([sys.executable, "-m", "dicomflow.cli", "train", "--task", "classification2d",
                           "--data", chest["data"], "--instance-type", "ml.m5.large", "--role", ROLE,
                           "--hp", "epochs=1", "--hp", "image_size=32", "--hp", "val_fraction=0.25"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert re.search(r"^epoch=1; ", proc.stderr, flags=re.M)  # the job's own line, from CloudWatch Logs
    assert re.search(r"training job dicomflow-classification-2d-\S+: Completed", proc.stderr)
    assert re.search(r"val_mean_auroc = \d\.\d{4}", proc.stderr)  # FinalMetricDataList
    assert re.search(r"model: s3://\S+/output/model\.tar\.gz", proc.stderr)


def test_cli_managed_job_failure_is_one_line_with_the_reason(session, tmp_path) -> None:
    """``dicomflow train --instance-type ml.*`` follows the managed job and ends with its FailureReason."""
    uri = missing_image_channel(tmp_path / "gone", f"s3://{session.default_bucket()}/tests/managed-gone/")
    proc = subprocess.run([sys.executable, "-m", "dicomflow.cli", "train", "--task", "classification2d", "--data", uri,
                           "--instance-type", "ml.m5.large", "--role", ROLE, "--hp", "epochs=1"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.search(r"Downloading - Downloading input data", proc.stderr)  # the job's progress, followed
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(r"training job dicomflow-classification-2d-\S+ failed: DatasetError: no usable image", last)


def test_the_local_mode_estimator_deploys_locally(local_cloud, chest, monkeypatch) -> None:
    """``instance_type="local"``: fit, then ``deploy(instance_type="local")`` serves with train.py's handlers."""
    monkeypatch.setenv("DICOMFLOW_SAGEMAKER_MODE", "host")
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    from dicomflow.emulator.sagemaker_sdk import sagemaker_session

    local = sagemaker_session()
    est = _estimator(local, REPO / "training_job", instance_type="local", dependencies=[str(REPO / "dicomflow")],
                     hyperparameters={"task": "classification2d", "epochs": 1, "image_size": 32,
                                      "val_fraction": 0.25})
    est.fit({"train": chest["data"]}, logs="None")
    predictor = est.deploy(initial_instance_count=1, instance_type="local", serializer=JSONSerializer(),
                           deserializer=JSONDeserializer())
    try:
        out = predictor.predict({"studyInstanceUID": chest["study"]})
    finally:
        predictor.delete_endpoint()
    assert set(out["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)


# ---- the seed notebook (last: it has been running meanwhile) -----------------------------------

def test_managed_fit_writes_a_loadable_artifact_with_metrics_and_logs(notebook, session, tmp_path) -> None:
    desc = session.sagemaker_client.describe_training_job(TrainingJobName=notebook["job"])
    assert desc["TrainingJobStatus"] == "Completed" and desc["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in desc["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == notebook["model_data"]
    path = tmp_path / "model.tar.gz"
    path.write_bytes(_s3_bytes(notebook["model_data"]))
    model = load_artifact(path)
    assert model.task == "classification2d" and model.labels == list(synthetic.CHEST_CLASSES)
    metrics = {m["MetricName"]: m["Value"] for m in desc["FinalMetricDataList"]}
    assert metrics["epoch"] == 2.0
    assert metrics["val_mean_auroc"] == pytest.approx(model.metadata["history"][-1]["val_mean_auroc"], abs=1e-5)
    # every scraped value is a CloudWatch datapoint, where the SDK's TrainingJobAnalytics reads them
    stats = aws.client("cloudwatch").get_metric_statistics(
        Namespace="/aws/sagemaker/TrainingJobs", MetricName="epoch", Period=3600,
        Dimensions=[{"Name": "TrainingJobName", "Value": notebook["job"]}],
        StartTime=desc["TrainingStartTime"] - timedelta(minutes=1),
        EndTime=desc["TrainingEndTime"] + timedelta(minutes=1),
        Statistics=["Minimum", "Maximum", "SampleCount"])["Datapoints"]
    assert [(d["Minimum"], d["Maximum"], d["SampleCount"]) for d in stats] == [(1.0, 2.0, 2.0)]
    from sagemaker.analytics import TrainingJobAnalytics

    frame = TrainingJobAnalytics(notebook["job"], metric_names=["val_mean_auroc"],
                                 sagemaker_session=session).dataframe()
    assert set(frame["metric_name"]) == {"val_mean_auroc"} and frame["value"].between(0, 1).all()
    # the job's own lines, in CloudWatch Logs where estimator.logs() reads them, and shown by fit()
    (stream, lines), = _log_lines(notebook["job"]).items()
    assert re.fullmatch(re.escape(notebook["job"]) + r"/algo-1-\d+", stream)
    assert len([x for x in lines if re.search(r"\bepoch=\d+;", x)]) == 2
    assert re.search(r"\bepoch=2;", notebook["log"])
    # /opt/ml/output/data (the job's TensorBoard events) as output.tar.gz next to the model
    output = _members(notebook["model_data"].replace("model.tar.gz", "output.tar.gz"))
    assert any(name.startswith("tensorboard/events.out.tfevents.") for name in output), sorted(output)


def test_deploy_on_an_ml_instance_answers_a_study_json(notebook, chest) -> None:
    out = notebook["realtime"]
    assert set(out["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)
    assert out["studyInstanceUID"] == chest["study"]
    assert out["outputs"]["sr"]["storedToPacs"] is True


def test_async_deploy_lands_the_answer_in_the_output_path(notebook, chest) -> None:
    assert notebook["async_output"].startswith(notebook["async_output_path"] + "/")
    assert json.loads(_s3_bytes(notebook["async_output"])) == notebook["async"]
    assert set(notebook["async"]["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)


def test_the_notebook_reaches_no_host_but_the_local_cloud(notebook) -> None:
    """No telemetry request, no STS call at the SDK's hard-coded AWS endpoint: nothing but loopback."""
    assert notebook["seen"]["remote"] == []
    assert notebook["seen"]["loopback"] > 10  # the hook saw the notebook's own calls to the local cloud
