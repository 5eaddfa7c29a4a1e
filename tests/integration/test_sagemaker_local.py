"""SageMaker SDK v2 local mode (``instance_type="local"``) without Docker, through the emulated AWS.

The SDK's own PyTorch estimator stages code and data in the emulated S3, the compose stand-in runs
the entry point as host processes, and the SDK uploads ``model.tar.gz``; ``deploy`` serves the same
script's model_fn/predict_fn on a free loopback port.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.config import ConfigError

SCRIPTS = Path(__file__).parent / "sm_scripts"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture(scope="module")
def sm(local_cloud, monkeypatch_module):
    """A host-mode session (the probe says no Docker engine here; forced so a machine with one agrees)."""
    monkeypatch_module.setenv("DICOMFLOW_SAGEMAKER_MODE", "host")
    from dicomflow.emulator.sagemaker_sdk.session import sagemaker_session

    return sagemaker_session()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def train_uri(sm) -> str:
    bucket = sm.default_bucket()
    aws.client("s3").put_object(Bucket=bucket, Key="datasets/tiny/data.txt", Body=b"three images\n")
    return f"s3://{bucket}/datasets/tiny"


def _estimator(sm, source: str, **kwargs):
    from sagemaker.pytorch import PyTorch

    args = {"entry_point": "train.py", "source_dir": str(SCRIPTS / source), "role": ROLE,
            "framework_version": "2.5", "py_version": "py311", "instance_type": "local",
            "instance_count": 1, "sagemaker_session": sm}
    args.update(kwargs)
    return PyTorch(**args)


def _tar_members(uri: str) -> dict[str, bytes]:
    if uri.startswith("file://"):  # local_code: the SDK keeps the artifacts on disk
        body = Path(uri.removeprefix("file://")).read_bytes()
    else:
        bucket, key = aws.parse_s3_uri(uri)
        body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def trained(sm, train_uri):
    est = _estimator(sm, "basic", hyperparameters={"epochs": 1, "greeting": "hello"})
    est.fit({"train": train_uri})
    return est


@pytest.mark.integration
@pytest.mark.slow
def test_session_is_a_local_session_with_telemetry_off_and_a_created_bucket(sm) -> None:
    from sagemaker.local import LocalSession

    assert isinstance(sm, LocalSession)
    assert sm.sagemaker_config["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True
    bucket = sm.default_bucket()
    assert bucket == f"sagemaker-{aws.region()}-123456789012"
    aws.client("s3").head_bucket(Bucket=bucket)


@pytest.mark.integration
@pytest.mark.slow
def test_fit_uploads_model_tar_with_what_the_script_wrote(trained) -> None:
    members = _tar_members(trained.model_data)
    assert set(members) >= {"model.json", "env.json", "cwd.txt"}
    model = json.loads(members["model.json"])
    assert model == {"greeting": "hello", "epochs": 1, "data": "three images\n"}
    env = json.loads(members["env.json"])
    assert env["SM_HP_EPOCHS"] == "1" and env["SM_HP_GREETING"] == "hello"
    assert json.loads(env["SM_HPS"]) == {"epochs": 1, "greeting": "hello"}
    assert json.loads(env["SM_CHANNELS"]) == ["train"]
    assert json.loads(env["SM_HOSTS"]) == [env["SM_CURRENT_HOST"]]
    assert env["SM_CURRENT_HOST"].startswith("algo-1")
    assert env["SM_USER_ENTRY_POINT"] == "train.py"
    assert env["SM_MODULE_DIR"].startswith("s3://") and env["SM_MODULE_DIR"].endswith("sourcedir.tar.gz")
    assert env["TRAINING_JOB_NAME"] == trained.latest_training_job.name
    for key in ("SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_OUTPUT_DIR", "SM_INPUT_DIR", "SM_INPUT_CONFIG_DIR",
                "SM_CHANNEL_TRAIN", "SM_CHECKPOINT_DIR"):
        assert not env[key].startswith("/opt/ml"), key  # translated to the host dirs the SDK created
    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["hyperparameters"] == {"epochs": 1, "greeting": "hello"}
    assert training_env["channel_input_dirs"]["train"] == env["SM_CHANNEL_TRAIN"]
    assert members["cwd.txt"].decode().endswith("/code")  # cwd = the extracted source dir


@pytest.mark.integration
@pytest.mark.slow
def test_fit_output_tar_holds_the_output_data(trained) -> None:
    output = trained.model_data.replace("model.tar.gz", "output.tar.gz")
    members = _tar_members(output)
    assert json.loads(members["data/metrics.json"]) == {"loss": 0.5}


@pytest.mark.integration
@pytest.mark.slow
def test_failing_script_raises_with_the_failure_reason(sm, train_uri) -> None:
    from dicomflow.emulator.sagemaker_sdk.session import LocalTrainingJobError

    est = _estimator(sm, "failing")
    with pytest.raises(LocalTrainingJobError, match="no images in channel 'train'") as info:
        est.fit({"train": train_uri})
    assert info.value.reason.startswith("AlgorithmError: ExitCode 1")
    assert isinstance(info.value, RuntimeError)  # code written for the SDK's own error still catches it


@pytest.mark.integration
@pytest.mark.slow
def test_failure_file_written_by_the_script_is_the_reason(sm, train_uri) -> None:
    from dicomflow.emulator.sagemaker_sdk.session import LocalTrainingJobError

    est = _estimator(sm, "failing", hyperparameters={"mode": "file"})
    with pytest.raises(LocalTrainingJobError) as info:
        est.fit({"train": train_uri})
    assert info.value.reason == "label column 'Finding' missing in manifest"


@pytest.mark.integration
@pytest.mark.slow
def test_unsatisfied_requirements_fail_with_a_fix_it_message(sm, train_uri, tmp_path) -> None:
    from dicomflow.emulator.sagemaker_sdk.session import LocalTrainingJobError

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text((SCRIPTS / "basic" / "train.py").read_text())
    (src / "requirements.txt").write_text("numpy>=1.0\nsurely-not-installed-pkg==9.9\n")
    est = _estimator(sm, "basic", source_dir=str(src), hyperparameters={"epochs": 1})
    with pytest.raises(LocalTrainingJobError, match="surely-not-installed-pkg==9.9.*DICOMFLOW_INSTALL_REQUIREMENTS"):
        est.fit({"train": train_uri})


@pytest.mark.integration
@pytest.mark.slow
def test_deploy_and_predict_round_trip_json(trained) -> None:
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.local.local_session import LocalSagemakerClient
    from sagemaker.serializers import JSONSerializer

    predictor = trained.deploy(initial_instance_count=1, instance_type="local",
                               serializer=JSONSerializer(), deserializer=JSONDeserializer())
    serving = LocalSagemakerClient._endpoints[predictor.endpoint_name].container.container
    registry = Path(os.environ["DICOMFLOW_HOME"]) / "endpoints" / f"{predictor.endpoint_name}.json"
    try:
        record = json.loads(registry.read_text())
        assert record["pid"] == serving.process.pid and record["url"].startswith("http://127.0.0.1:")
        assert requests.get(record["url"] + "/ping", timeout=5).status_code == 200
        result = predictor.predict({"study": "1.2.3", "values": [1, 2]})
        assert result == {"greeting": "hello", "echo": {"study": "1.2.3", "values": [1, 2]}, "cwd_is_code": True}
        with pytest.raises(ClientError, match="ModelError") as info:
            predictor.sagemaker_session.sagemaker_runtime_client.invoke_endpoint(
                Body=b"{not json", EndpointName=predictor.endpoint_name, ContentType="application/json",
                Accept="application/json")
        assert "(400)" in str(info.value)
    finally:
        predictor.delete_endpoint()
    assert serving.process.returncode == 0  # the serving process exits 0 on SIGTERM
    assert not registry.exists()
    with pytest.raises(ClientError, match="not found"):
        predictor.predict({"after": "delete"})


@pytest.mark.integration
@pytest.mark.slow
def test_serving_process_that_dies_at_start_fails_deploy_at_once(sm, trained) -> None:
    from sagemaker.local.local_session import LocalSagemakerClient
    from sagemaker.pytorch import PyTorchModel

    from dicomflow.emulator.sagemaker_sdk.session import SageMakerLocalError

    model = PyTorchModel(model_data=trained.model_data, role=ROLE, entry_point="train.py",
                         source_dir=str(SCRIPTS / "failing"), framework_version="2.5", py_version="py311",
                         sagemaker_session=sm)
    with pytest.raises(SageMakerLocalError, match="serving process exited with code 1 before answering /ping"):
        model.deploy(initial_instance_count=1, instance_type="local", endpoint_name="dies-at-start")
    assert "dies-at-start" not in LocalSagemakerClient._endpoints


@pytest.mark.integration
@pytest.mark.slow
def test_local_code_runs_the_source_dir_in_place(local_cloud, monkeypatch_module, train_uri, tmp_path) -> None:
    from dicomflow.emulator.sagemaker_sdk.session import sagemaker_session

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text((SCRIPTS / "basic" / "train.py").read_text())
    sess = sagemaker_session()
    sess.config = {"local": {"local_code": True}}
    est = _estimator(sess, "basic", source_dir=str(src), hyperparameters={"epochs": 2})
    est.fit({"train": train_uri})
    assert est.model_data.startswith("file://")  # the SDK's local_code default output path
    members = _tar_members(est.model_data)
    assert members["cwd.txt"].decode() == str(src)
    assert json.loads(members["model.json"])["epochs"] == 2


@pytest.mark.integration
@pytest.mark.slow
def test_two_instances_rendezvous_on_loopback(sm, train_uri) -> None:
    est = _estimator(sm, "distributed", instance_count=2)
    est.fit({"train": train_uri})
    members = _tar_members(est.model_data)
    results = [json.loads(v) for k, v in members.items() if k.endswith(".json")]
    assert len(results) == 2
    hosts = results[0]["hosts"]
    assert len(hosts) == 2 and sorted(r["host"] for r in results) == sorted(hosts)
    assert [r["sum"] for r in results] == [2.0, 2.0]
    assert {r["master"] for r in results} == {"127.0.0.1"}



@pytest.mark.integration
@pytest.mark.slow
def test_one_failing_host_stops_the_others_and_gives_its_reason(sm, train_uri) -> None:
    from dicomflow.emulator.sagemaker_sdk.session import LocalTrainingJobError

    est = _estimator(sm, "one_host_fails", instance_count=2)
    with pytest.raises(LocalTrainingJobError, match="worker 2 lost its shard"):
        est.fit({"train": train_uri})  # returns long before host 1's 300 s sleep ends

# ---- no services needed ---------------------------------------------------------------------
def test_layout_maps_opt_ml_to_the_sdk_dirs_longest_volume_first(tmp_path) -> None:
    from dicomflow.emulator.sagemaker_sdk.toolkit import HostLayout

    layout = HostLayout.from_compose(tmp_path, "algo-1-x", [
        f"{tmp_path}/algo-1-x/input:/opt/ml/input", "/data/train:/opt/ml/input/data/train",
        f"{tmp_path}/model:/opt/ml/model:z"])
    assert layout.to_host("/opt/ml/input/data/train/a.dcm") == Path("/data/train/a.dcm")
    assert layout.to_host("/opt/ml/input/config") == tmp_path / "algo-1-x/input/config"
    assert layout.to_host("/opt/ml/model") == tmp_path / "model"
    assert layout.to_host("/opt/ml/checkpoints") == tmp_path / "algo-1-x/checkpoints"
    assert layout.translate("/opt/mlx") == "/opt/mlx" and layout.translate("s3://b/k") == "s3://b/k"


def test_hyperparameters_become_toolkit_style_arguments() -> None:
    from dicomflow.emulator.sagemaker_sdk.toolkit import decode_hyperparameters, to_cmd_args

    hps = decode_hyperparameters({"epochs": "1", "lr": "0.01", "name": '"x y"', "raw": "plain", "d": '{"a": 1}'})
    assert hps == {"epochs": 1, "lr": 0.01, "name": "x y", "raw": "plain", "d": {"a": 1}}
    assert to_cmd_args(hps) == ["-d", "a=1", "--epochs", "1", "--lr", "0.01", "--name", "x y", "--raw", "plain"]


def test_requirements_check_uses_installed_metadata(tmp_path) -> None:
    from dicomflow.emulator.sagemaker_sdk.toolkit import unsatisfied_requirements

    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnumpy>=1.0\nnumpy<1.0\nnot-a-real-dist-xyz\ngit+https://example.invalid/x.git\n"
                   "pywin32; sys_platform == 'win32'\n")
    missing = unsatisfied_requirements(req)
    assert [m.split(" ")[0] for m in missing] == ["numpy<1.0", "not-a-real-dist-xyz", "git+https://example.invalid/x.git"]


def test_bad_session_input_gives_a_fix_it_error(monkeypatch) -> None:
    from dicomflow.emulator.sagemaker_sdk.session import SageMakerLocalError, sagemaker_session

    with pytest.raises(SageMakerLocalError, match="not a valid S3 bucket name"):
        sagemaker_session(default_bucket="Bad_Bucket")
    monkeypatch.setenv("DICOMFLOW_SAGEMAKER_MODE", "podman")
    with pytest.raises(ConfigError, match="DICOMFLOW_SAGEMAKER_MODE='podman' must be one of auto, host, docker"):
        sagemaker_session()
    monkeypatch.setenv("DICOMFLOW_SAGEMAKER_MODE", "host")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(SageMakerLocalError, match="dicomflow up"):
        sagemaker_session()


def _fake_docker(folder, info_exit: int) -> None:
    folder.mkdir()
    docker = folder / "docker"
    docker.write_text(f"#!/bin/sh\n[ \"$1\" = info ] && exit {info_exit}\nexit 0\n")
    docker.chmod(0o755)


def test_probe_is_not_fooled_by_the_docker_client_binary(tmp_path, monkeypatch) -> None:
    """A docker client whose `docker info` fails (no engine, as here) means host mode; one that answers, Docker."""
    from dicomflow.emulator.sagemaker_sdk.session import docker_engine_available, use_host_mode

    def probe_with(path: str) -> bool:
        monkeypatch.setenv("PATH", path)
        docker_engine_available.cache_clear()  # the probe is cached per process; each PATH here is a new machine
        return docker_engine_available()

    monkeypatch.delenv("DICOMFLOW_SAGEMAKER_MODE", raising=False)
    try:
        _fake_docker(tmp_path / "client-only", 1)
        assert probe_with(f"{tmp_path / 'client-only'}:/usr/bin:/bin") is False and use_host_mode() is True
        _fake_docker(tmp_path / "with-engine", 0)
        assert probe_with(f"{tmp_path / 'with-engine'}:/usr/bin:/bin") is True and use_host_mode() is False
        assert probe_with("/nonexistent") is False
    finally:
        docker_engine_available.cache_clear()


def test_sdk_names_are_unchanged_outside_host_mode_calls() -> None:
    from sagemaker.local import image

    from dicomflow.emulator.sagemaker_sdk import session as sm_local

    sm_local._install_hooks()
    try:
        prefix = image._SageMakerContainer._get_compose_cmd_prefix()
    except ImportError:  # the SDK's own answer where no docker compose exists
        prefix = None
    assert prefix != sm_local.compose_command_prefix()
    with sm_local._host_call():
        assert image._SageMakerContainer._get_compose_cmd_prefix() == sm_local.compose_command_prefix()
