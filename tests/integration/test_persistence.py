"""The emulated AWS keeps its state across `down`/`up`, across `kill -9`, and refuses a corrupt snapshot
cleanly (a private emulator: these tests restart it). Covered: S3 (bodies, metadata), IAM, Lambda, Secrets
Manager, DynamoDB, SNS/SQS with a queued message, CloudFormation, Cognito, a SageMaker async endpoint."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from click.testing import CliRunner

from dicomflow.cli.cloud import down as down_command
from dicomflow.config import Settings
from dicomflow.emulator.cloud.cloud import LocalCloud, default_services
from dicomflow.emulator.cloud.moto import DUMMY_CREDENTIALS
from dicomflow.emulator.cloud.service import free_port
from dicomflow.emulator.moto import persistence
from dicomflow.emulator.moto.endpoints import register_image

pytestmark = pytest.mark.integration

SERVING_APP = Path(__file__).parent / "serving_app" / "app.py"
COUNTER = "N = 0\n\ndef count(event, context):\n    global N\n    N += 1\n    return N\n"
BIG = os.urandom(3 * 1024 * 1024)  # beyond moto's in-memory buffer: the body lives in a temporary file


class Emulator:
    """Only the emulated-AWS service of a local cloud in ``home``, and clients pointed at it."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings.load(data_dir=home, aws_port=free_port(), orthanc_http_port=free_port(),
                                      orthanc_dicom_port=free_port())
        self.cloud = LocalCloud(self.settings, [s for s in default_services(self.settings) if s.name == "aws"])
        self.service = self.cloud.services[0]

    def up(self) -> None:
        self.cloud.up()

    def down(self) -> None:
        self.cloud.down()

    def client(self, name: str) -> Any:
        return boto3.client(name, endpoint_url=self.settings.aws_endpoint_url, region_name="us-east-1",
                            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def emulator(tmp_path) -> Any:
    em = Emulator(tmp_path / "home")
    em.up()
    try:
        yield em
    finally:
        em.down()


def _zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("handler.py", text)
    return buf.getvalue()


def _model_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("prefix.txt")
        info.size = len(b"model-v1:")
        tar.addfile(info, io.BytesIO(b"model-v1:"))
    return buf.getvalue()


def _create_everything(em: Emulator) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    s3, iam, lam, secrets, ddb = (em.client(n) for n in ("s3", "iam", "lambda", "secretsmanager", "dynamodb"))
    sns, sqs, cfn, sm = (em.client(n) for n in ("sns", "sqs", "cloudformation", "sagemaker"))
    bucket = f"keep-{tag}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"hello", Metadata={"origin": "test"})
    s3.put_object(Bucket=bucket, Key="big.bin", Body=BIG)
    role = iam.create_role(RoleName=f"r-{tag}", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    lam.create_function(FunctionName=f"count-{tag}", Runtime="python3.11", Role=role, Handler="handler.count",
                        Code={"ZipFile": _zip(COUNTER)}, Timeout=30)
    assert json.loads(lam.invoke(FunctionName=f"count-{tag}")["Payload"].read()) == 1
    secrets.create_secret(Name=f"s-{tag}", SecretString=json.dumps({"username": "u", "password": "p"}))
    ddb.create_table(TableName=f"t-{tag}", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=f"t-{tag}", Item={"id": {"S": "study-1"}, "dice": {"N": "0.93"}})
    topic = sns.create_topic(Name=f"topic-{tag}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"q-{tag}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    sns.publish(TopicArn=topic, Message="queued before the restart")
    cfn.create_stack(StackName=f"stack-{tag}", TemplateBody=json.dumps({
        "Resources": {"Data": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": f"stack-{tag}"}}},
        "Outputs": {"DataBucket": {"Value": {"Ref": "Data"}}}}))
    pool = em.client("cognito-idp").create_user_pool(PoolName=f"pool-{tag}")["UserPool"]["Id"]
    em.client("cognito-idp").admin_create_user(UserPoolId=pool, Username="radiologist")
    register_image(em.settings.data_dir, "dicomflow-test-echo", ["python", str(SERVING_APP)])
    s3.put_object(Bucket=bucket, Key="model/model.tar.gz", Body=_model_tar())
    sm.create_model(ModelName=f"m-{tag}", ExecutionRoleArn=role, PrimaryContainer={
        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/dicomflow-test-echo:latest",
        "ModelDataUrl": f"s3://{bucket}/model/model.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=f"m-{tag}", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"m-{tag}", "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1}], AsyncInferenceConfig={"OutputConfig": {
            "S3OutputPath": f"s3://{bucket}/async-out/", "S3FailurePath": f"s3://{bucket}/async-fail/"}})
    sm.create_endpoint(EndpointName=f"e-{tag}", EndpointConfigName=f"m-{tag}")
    made = {"tag": tag, "bucket": bucket, "queue": queue, "pool": pool}
    assert _invoke_async(em, made, b"before") == b"model-v1:BEFORE"
    return made


def _invoke_async(em: Emulator, made: dict[str, Any], body: bytes) -> bytes:
    """One InvokeEndpointAsync round trip: input in S3, the output object read back when it lands."""
    s3, bucket = em.client("s3"), made["bucket"]
    key = f"async-in/{uuid.uuid4().hex}"
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    out = em.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=f"e-{made['tag']}", InputLocation=f"s3://{bucket}/{key}", ContentType="text/plain")
    out_bucket, out_key = out["OutputLocation"][5:].split("/", 1)
    deadline = time.monotonic() + 90  # a bound for the serving process to start and answer, not a threshold
    while time.monotonic() < deadline:
        try:
            return s3.get_object(Bucket=out_bucket, Key=out_key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.2)
    raise AssertionError(f"no async output at {out['OutputLocation']}")


def _assert_everything_is_there(em: Emulator, made: dict[str, Any]) -> None:
    tag, bucket = made["tag"], made["bucket"]
    s3 = em.client("s3")
    small = s3.get_object(Bucket=bucket, Key="small.txt")
    assert small["Body"].read() == b"hello" and small["Metadata"] == {"origin": "test"}
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == BIG
    assert em.client("iam").get_role(RoleName=f"r-{tag}")["Role"]["RoleName"] == f"r-{tag}"
    lam = em.client("lambda")
    # the function and its code are back; its environment starts cold again, so module state is fresh
    assert json.loads(lam.invoke(FunctionName=f"count-{tag}")["Payload"].read()) == 1
    secret = em.client("secretsmanager").get_secret_value(SecretId=f"s-{tag}")["SecretString"]
    assert json.loads(secret) == {"username": "u", "password": "p"}
    item = em.client("dynamodb").get_item(TableName=f"t-{tag}", Key={"id": {"S": "study-1"}})["Item"]
    assert item["dice"] == {"N": "0.93"}
    messages = em.client("sqs").receive_message(QueueUrl=made["queue"], WaitTimeSeconds=1)["Messages"]
    assert json.loads(messages[0]["Body"])["Message"] == "queued before the restart"
    outputs = em.client("cloudformation").describe_stacks(StackName=f"stack-{tag}")["Stacks"][0]["Outputs"]
    assert outputs == [{"OutputKey": "DataBucket", "OutputValue": f"stack-{tag}"}]
    users = em.client("cognito-idp").list_users(UserPoolId=made["pool"])["Users"]
    assert [u["Username"] for u in users] == ["radiologist"]
    assert em.client("sagemaker").describe_endpoint(EndpointName=f"e-{tag}")["EndpointStatus"] == "InService"
    assert _invoke_async(em, made, b"after") == b"model-v1:AFTER"  # its serving process restarts lazily


def test_state_survives_down_and_up(emulator):
    made = _create_everything(emulator)
    emulator.down()
    emulator.up()
    _assert_everything_is_there(emulator, made)
    assert persistence.read_restore_report(emulator.settings.data_dir).status == "restored"


def test_state_survives_kill_9(emulator):
    made = _create_everything(emulator)
    time.sleep(3 * 1.0)  # the snapshot interval (DICOMFLOW_AWS_SNAPSHOT_SECONDS, 1 s) passes, with margin
    pid = emulator.service.process.pid()
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10) if psutil.pid_exists(pid) else None
    emulator.up()
    assert emulator.service.process.pid() != pid
    _assert_everything_is_there(emulator, made)


def test_a_corrupt_snapshot_is_kept_aside_and_the_emulator_starts_empty(emulator):
    bucket = f"lost-{uuid.uuid4().hex[:8]}"
    emulator.client("s3").create_bucket(Bucket=bucket)
    emulator.down()
    snapshot = emulator.settings.data_dir / "aws" / persistence.SNAPSHOT
    data = bytearray(snapshot.read_bytes())
    data[-10:] = b"corrupted!"
    snapshot.write_bytes(bytes(data))
    emulator.up()
    report = persistence.read_restore_report(emulator.settings.data_dir)
    assert report.status == "set-aside" and "checksum does not match" in report.message
    kept = list(snapshot.parent.glob(f"{persistence.SNAPSHOT}.bad-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data) and str(kept[0]) in report.message
    assert emulator.client("s3").list_buckets()["Buckets"] == []


def test_down_wipe_forgets_the_aws_state(emulator):
    emulator.client("s3").create_bucket(Bucket=f"gone-{uuid.uuid4().hex[:8]}")
    result = CliRunner().invoke(down_command, ["--wipe"], obj=None,
                                env={"DICOMFLOW_HOME": str(emulator.settings.data_dir)})
    assert result.exit_code == 0, result.output
    assert "saved AWS state forgotten" in result.output
    emulator.up()
    assert emulator.client("s3").list_buckets()["Buckets"] == []
