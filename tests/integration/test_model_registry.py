"""The Model Registry on the local cloud: versions registered from artifacts, approval, deploy from a group."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from model_helpers import model_tarball, untrained_artifact

from dicomflow import aws
from dicomflow.cli.models import models
from dicomflow.demo import synthetic
from dicomflow.inference import endpoint as ep
from dicomflow.modeling import registry


@pytest.fixture(scope="module")
def artifacts(local_cloud, tmp_path_factory) -> list[str]:
    """Two model.tar.gz in S3 (two "training runs" of the chest model)."""
    bucket = f"registry-{uuid.uuid4().hex[:8]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    uris = []
    for run in (1, 2):
        model_dir = untrained_artifact(tmp_path_factory.mktemp(f"run{run}"), "classification2d",
                                       list(synthetic.CHEST_CLASSES), [32, 32])
        uri = f"s3://{bucket}/run{run}/output/model.tar.gz"
        aws.write(uri, model_tarball(model_dir))
        uris.append(uri)
    return uris


def test_versions_are_registered_pending_and_only_an_approved_one_deploys(artifacts) -> None:
    group = f"chest-{uuid.uuid4().hex[:6]}"
    first = registry.register(group, artifacts[0], "dicomflow-inference:latest", training_job="job-1")
    second = registry.register(group, artifacts[1], "dicomflow-inference:latest", training_job="job-2")
    assert (first.version, second.version) == (1, 2)
    assert first.status == second.status == registry.PENDING
    assert first.properties["task"] == "classification2d" and first.properties["trainingJob"] == "job-1"
    assert first.properties["manifestSha256"] == "0" * 64  # from the artifact's own metadata
    report = json.loads(aws.read(artifacts[0].rsplit("/", 1)[0] + "/model_quality.json"))
    assert report["task"] == "classification2d" and report["labels"] == list(synthetic.CHEST_CLASSES)
    name = f"reg-{uuid.uuid4().hex[:6]}"
    with pytest.raises(registry.RegistryError, match="has no approved version"):
        ep.deploy_from_group(name, group, asynchronous=False, wait=False)

    result = CliRunner().invoke(models, ["approve", group, "1", "--note", "reviewed", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == registry.APPROVED
    assert registry.version(group, 1).properties == first.properties  # approval keeps the metadata
    dep, served = ep.deploy_from_group(name, group, asynchronous=False, wait=False)
    assert served.version == 1 and _model_data(dep) == artifacts[0]

    registry.set_status(group, 2, registry.APPROVED)
    dep, served = ep.deploy_from_group(name, group, asynchronous=False, wait=False)
    assert served.version == 2 and _model_data(dep) == artifacts[1]
    env = aws.client("sagemaker").describe_model(ModelName=dep.model_name)["PrimaryContainer"]["Environment"]
    assert (env[ep.MODEL_NAME_ENV], env[ep.MODEL_VERSION_ENV], env[ep.MODEL_PACKAGE_ENV]) == (group, "2", served.arn)

    CliRunner().invoke(models, ["reject", group, "2"])
    dep, served = ep.deploy_from_group(name, group, asynchronous=False, wait=False)
    assert served.version == 1  # a rejected version is never served
    listed = json.loads(CliRunner().invoke(models, ["ls", "--group", group, "--json"]).stdout)
    assert [(v["version"], v["status"]) for v in listed] == [(2, registry.REJECTED), (1, registry.APPROVED)]
    aws.client("sagemaker").delete_endpoint(EndpointName=name)


def test_a_bad_group_name_and_a_missing_version_are_clear(artifacts) -> None:
    with pytest.raises(registry.RegistryError, match="use 1-63 letters"):
        registry.register("bad name!", artifacts[0], "img")
    group = f"one-{uuid.uuid4().hex[:6]}"
    registry.register(group, artifacts[0], "img")
    result = CliRunner().invoke(models, ["approve", group, "7"])
    assert isinstance(result.exception, registry.RegistryError) and "has no version 7" in str(result.exception)


def _model_data(dep: ep.Deployment) -> str:
    return aws.client("sagemaker").describe_model(ModelName=dep.model_name)["PrimaryContainer"]["ModelDataUrl"]


def test_the_pre_label_lambda_finds_the_real_time_endpoint_of_the_approved_version(artifacts) -> None:
    """``DICOMFLOW_PRELABEL_MODEL_GROUP``: the endpoint asked is the InService real-time one whose model is the
    newest approved version; an async endpoint of it, or a real-time one of an older version, is not."""
    from dicomflow.groundtruth.suggestions import serving_endpoint

    group = f"prelabel-{uuid.uuid4().hex[:6]}"
    name, why = serving_endpoint(group)
    assert name is None and group in why  # no such group yet: looked up again next time, not cached
    registry.register(group, artifacts[0], "dicomflow-inference:latest")
    registry.set_status(group, 1, registry.APPROVED)
    older, _ = ep.deploy_from_group(f"{group}-v1", group, asynchronous=False)
    registry.register(group, artifacts[1], "dicomflow-inference:latest")
    registry.set_status(group, 2, registry.APPROVED)
    ep.deploy_from_group(f"{group}-async", group, asynchronous=True)
    broken, _ = ep.deploy_from_group(f"{group}-broken", group, asynchronous=False)
    aws.client("sagemaker").delete_model(ModelName=broken.model_name)  # an endpoint whose model is gone
    name, why = serving_endpoint(group)
    assert name is None and "approved version 2" in why and "--realtime" in why, why
    current, _ = ep.deploy_from_group(f"{group}-rt", group, asynchronous=False)
    assert serving_endpoint(group) == (current.endpoint, "")
    for endpoint in (older.endpoint, f"{group}-async", broken.endpoint, current.endpoint):
        ep.delete(endpoint)
    with pytest.raises(ep.EndpointError, match="Could not find endpoint"):
        ep.delete(current.endpoint)
