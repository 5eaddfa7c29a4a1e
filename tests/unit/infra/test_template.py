"""The CloudFormation template: cfn-lint clean, security properties, parameter checks, intrinsic resolution."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicomflow.infra.errors import InfraError
from dicomflow.infra.template import DEFAULT_TEMPLATE, Resolver, load_template, parse_param_args, validate_parameters

REQUIRED = {"PacsDicomwebUrl": "https://pacs.example.org/dicom-web", "GatewayUrl": "https://gw.example.org/wado",
            "LambdaCodeBucket": "dicomflow-deploy-123456789012-us-east-1",
            "PreLabelCodeKey": "lambdas/pre_label/abc.zip", "PostLabelCodeKey": "lambdas/post_label/def.zip",
            "RouterCodeKey": "lambdas/router/012.zip", "SearchIngestCodeKey": "lambdas/search_ingest/345.zip",
            "SearchApiCodeKey": "lambdas/search_api/678.zip", "SearchApiSchemaKey": "api/schema/9ab.graphql"}


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template()


def _of_type(template: dict, rtype: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def test_cfn_lint_is_clean() -> None:
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    assert cfn_lint, "cfn-lint is not installed: pip install cfn-lint (it is in the dev extra)"
    result = subprocess.run([cfn_lint, str(DEFAULT_TEMPLATE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_bucket_is_encrypted_private_and_tls_only(template: dict) -> None:
    buckets = _of_type(template, "AWS::S3::Bucket")
    assert set(buckets) == {"DataBucket", "ArtifactsBucket", "AsyncBucket", "SearchIngestBucket"}
    policies = {v["Properties"]["Bucket"]["Ref"]: v["Properties"]["PolicyDocument"]
                for v in _of_type(template, "AWS::S3::BucketPolicy").values()}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert all(props["PublicAccessBlockConfiguration"].values())
        deny = [s for s in policies[name]["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_iam_is_least_privilege(template: dict) -> None:
    for name, role in _of_type(template, "AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        for policy in role["Properties"]["Policies"]:
            for stmt in policy["PolicyDocument"]["Statement"]:
                if "Fn::If" in stmt:  # a statement only some configurations get
                    stmt = stmt["Fn::If"][1]
                actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                assert all("*" not in a for a in actions), (name, stmt["Sid"])
                if stmt["Resource"] == "*":  # only actions that take no resource, and then narrowed
                    assert set(actions) <= {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData",
                                            "comprehendmedical:InferICD10CM", "sagemaker:ListModelPackages",
                                            "sagemaker:ListEndpoints"}, stmt["Sid"]


def test_no_credentials_in_the_template(template: dict) -> None:
    text = DEFAULT_TEMPLATE.read_text()
    assert not re.search(r"^\s*SecretString:", text, re.M)  # secrets are generated or set after deploy
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for spec in template["Parameters"].values():
        assert "password" not in json.dumps(spec).lower()
    for secret in _of_type(template, "AWS::SecretsManager::Secret").values():
        assert "GenerateSecretString" in secret["Properties"]


def test_lambdas_get_the_environment_their_handlers_read(template: dict) -> None:
    pre = template["Resources"]["PreLabelFunction"]["Properties"]
    post = template["Resources"]["PostLabelFunction"]["Properties"]
    assert pre["Runtime"] == post["Runtime"] == "python3.11"
    assert set(pre["Environment"]["Variables"]) == {
        "DICOMFLOW_PACS_URL", "DICOMFLOW_PACS_SECRET_ARN", "DICOMFLOW_SIGNING_SECRET_ARN", "DICOMFLOW_GATEWAY_URL",
        "DICOMFLOW_LABELS", "DICOMFLOW_URL_TTL_SECONDS", "DICOMFLOW_PRELABEL_ENDPOINT",
        "DICOMFLOW_PRELABEL_MODEL_GROUP", "DICOMFLOW_PRELABEL_TIMEOUT_SECONDS"}
    assert {"DICOMFLOW_VOTE_THRESHOLD", "DICOMFLOW_PACS_SECRET_ARN"} <= set(post["Environment"]["Variables"])
    assert pre["Code"] == {"S3Bucket": {"Ref": "LambdaCodeBucket"}, "S3Key": {"Ref": "PreLabelCodeKey"}}


def test_endpoint_is_async_and_conditional(template: dict) -> None:
    for name in ("InferenceModel", "InferenceEndpointConfig", "InferenceEndpoint"):
        assert template["Resources"][name]["Condition"] == "HasModel"
    cfg = template["Resources"]["InferenceEndpointConfig"]["Properties"]["AsyncInferenceConfig"]["OutputConfig"]
    assert {"S3OutputPath", "S3FailurePath", "NotificationConfig"} <= set(cfg)


def test_the_async_endpoint_autoscales_from_zero_as_aws_documents(template: dict) -> None:
    (target,) = _of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget").values()
    assert target["Condition"] == "HasModel"
    assert target["Properties"]["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert target["Properties"]["MinCapacity"] == {"Ref": "MinInstances"}
    assert template["Parameters"]["MinInstances"]["Default"] == 0
    policies = {v["Properties"]["PolicyType"]: v for v in
                _of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()}
    tracking = policies["TargetTrackingScaling"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    step = policies["StepScaling"]
    assert step["Condition"] == "ScalesFromZero"
    assert step["Properties"]["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    (alarm,) = _of_type(template, "AWS::CloudWatch::Alarm").values()
    assert alarm["Properties"]["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["Condition"] == "ScalesFromZero"
    step_id = next(k for k, v in template["Resources"].items() if v is step)
    assert alarm["Properties"]["AlarmActions"] == [{"Ref": step_id}]


def test_parameters_defaults_and_checks(template: dict) -> None:
    values = validate_parameters(template, REQUIRED)
    assert values["UrlTtlSeconds"] == "3600" and values["ModelDataUrl"] == ""
    cases = {
        "Bogus": ("1", "unknown template parameter"),
        "UrlTtlSeconds": ("5", "below the minimum 60"),
        "VoteThreshold": ("lots", "is not a number"),
        "PacsDicomwebUrl": ("https://user:pw@pacs/dicom-web", "without credentials"),
        "ModelDataUrl": ("http://x/model.tar.gz", "s3://bucket/key"),
        "InferenceInstanceType": ("m5.large", "ml.m5.xlarge"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(InfraError, match=re.escape(message)):
            validate_parameters(template, {**REQUIRED, key: value})
    with pytest.raises(InfraError, match="GatewayUrl is required"):
        validate_parameters(template, {k: v for k, v in REQUIRED.items() if k != "GatewayUrl"})


def test_param_args() -> None:
    assert parse_param_args(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(InfraError, match="KEY=VALUE"):
        parse_param_args(["novalue"])


def test_resolver_evaluates_intrinsics_and_conditions(template: dict) -> None:
    params = validate_parameters(template, REQUIRED)
    resolver = Resolver(template, params, {"AsyncBucket": "stack-async-1", "DataBucket": "stack-data-1"},
                        {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
                         "AWS::StackName": "s"},
                        lambda logical, physical, att: f"arn:aws:s3:::{physical}")
    assert resolver.condition("HasModel") is False
    assert resolver.condition("HasAlertEmail") is False
    assert resolver.resolve(template["Outputs"]["AsyncOutputUri"]["Value"]) == "s3://stack-async-1/async/output/"
    policy = resolver.resolve(template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"])
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::stack-data-1", "arn:aws:s3:::stack-data-1/*"]
    assert resolver.resolve({"Fn::Sub": ["${A}-${AWS::Region}", {"A": "x"}]}) == "x-eu-west-1"
    assert resolver.resolve({"Fn::If": ["HasModel", "y", {"Ref": "AWS::NoValue"}]}) is not None
    assert resolver.resolve([{"Fn::If": ["HasModel", "y", {"Ref": "AWS::NoValue"}]}]) == []
