"""The emulated AWS really runs Lambdas and SageMaker endpoints (boto3 against the running moto server)."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import requests
from botocore.exceptions import ClientError
from waiting import wait_for

from dicomflow.emulator.moto.endpoints import register_image

pytestmark = pytest.mark.integration

SERVING_APP = Path(__file__).parent / "serving_app" / "app.py"
WAIT_S = 90.0  # upper bound for background work to show up (a bound, not a performance threshold)

HANDLERS = '''
import json, os, time
from urllib.parse import unquote_plus

import boto3


def ok(event, context):
    print("marker-" + str(event.get("marker")))
    return {"event": event, "function_name": context.function_name, "request_id": context.aws_request_id,
            "remaining": context.get_remaining_time_in_millis(), "foo": os.environ.get("FOO"),
            "region": os.environ.get("AWS_REGION")}


def boom(event, context):
    raise ValueError("boom: " + str(event.get("why")))


def hang(event, context):
    with open(event["pid_file"], "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)


def on_s3(event, context):
    s3 = boto3.client("s3")
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])
        s3.put_object(Bucket=bucket, Key="markers/" + key, Body=json.dumps(record["eventName"]).encode())


def write_marker(event, context):
    boto3.client("s3").put_object(Bucket=event["bucket"], Key=event["key"], Body=b"done")


print("init-ran")
INVOKES = 0


def count(event, context):
    global INVOKES
    INVOKES += 1
    if event.get("crash"):
        os._exit(3)
    return {"invokes": INVOKES, "pid": os.getpid(), "version": os.environ.get("VERSION")}
'''


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return wait_for(what, probe, timeout)


def _client(name: str) -> Any:
    return boto3.client(name, region_name=os.environ["AWS_REGION"])


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _object(s3: Any, uri_or_bucket: str, key: str | None = None) -> bytes | None:
    if key is None:
        uri_or_bucket, key = uri_or_bucket[5:].split("/", 1)
    try:
        return s3.get_object(Bucket=uri_or_bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


# ---- Lambda -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aws(local_cloud) -> dict[str, Any]:
    return {"lambda": _client("lambda"), "s3": _client("s3"), "logs": _client("logs"), "iam": _client("iam"),
            "sm": _client("sagemaker"), "rt": _client("sagemaker-runtime"), "sns": _client("sns"),
            "sqs": _client("sqs"), "home": local_cloud.settings.data_dir}


@pytest.fixture(scope="module")
def make_function(aws) -> Callable[..., str]:
    role = aws["iam"].create_role(
        RoleName=f"lambda-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]
    code = _zip({"handlers.py": HANDLERS})

    def make(handler: str, timeout: int = 30, env: dict[str, str] | None = None) -> str:
        name = f"fn-{handler.replace('.', '-')}-{uuid.uuid4().hex[:6]}"
        aws["lambda"].create_function(
            FunctionName=name, Runtime="python3.11", Role=role, Handler=handler, Code={"ZipFile": code},
            Timeout=timeout, Environment={"Variables": env or {}})
        return name

    return make


def _invoke(aws: Any, name: str, event: dict) -> tuple[dict, Any, str]:
    resp = aws["lambda"].invoke(FunctionName=name, Payload=json.dumps(event), LogType="Tail")
    tail = base64.b64decode(resp.get("LogResult", "")).decode()
    return resp, json.loads(resp["Payload"].read()), tail


def test_zip_lambda_runs_with_event_context_and_environment(aws, make_function):
    name = make_function("handlers.ok", env={"FOO": "bar"})
    resp, payload, tail = _invoke(aws, name, {"marker": "m1", "n": [1, 2]})
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    assert payload["event"] == {"marker": "m1", "n": [1, 2]}
    assert payload["function_name"] == name
    assert payload["foo"] == "bar" and payload["region"] == os.environ["AWS_REGION"]
    assert 0 < payload["remaining"] <= 30_000
    assert "marker-m1" in tail and f"START RequestId: {payload['request_id']}" in tail


def test_logs_land_in_cloudwatch(aws, make_function):
    name = make_function("handlers.ok")
    marker = uuid.uuid4().hex
    _invoke(aws, name, {"marker": marker})
    events = aws["logs"].filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]
    messages = [e["message"] for e in events]
    assert f"marker-{marker}" in messages
    assert any(m.startswith("REPORT RequestId:") for m in messages)


def test_raising_handler_returns_unhandled_function_error(aws, make_function):
    name = make_function("handlers.boom")
    resp, payload, tail = _invoke(aws, name, {"why": "bad input"})
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == "boom: bad input"
    assert any("in boom" in line for line in payload["stackTrace"])
    assert "[ERROR] ValueError: boom: bad input" in tail


@pytest.mark.parametrize(("handler", "error_type", "message"), [
    ("missing.handler", "Runtime.ImportModuleError", "Unable to import module 'missing'"),
    ("handlers.nothere", "Runtime.HandlerNotFound", "Handler 'nothere' missing on module 'handlers'"),
])
def test_zip_without_the_named_handler(aws, make_function, handler, error_type, message):
    resp, payload, _ = _invoke(aws, make_function(handler), {})
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == error_type
    assert payload["errorMessage"].startswith(message)


def test_hanging_handler_is_killed_at_its_timeout(aws, make_function, tmp_path):
    name = make_function("handlers.hang", timeout=1)
    pid_file = tmp_path / "pid"
    resp, payload, tail = _invoke(aws, name, {"pid_file": str(pid_file)})
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in payload["errorMessage"]
    assert "Task timed out after 1.00 seconds" in tail
    pid = int(pid_file.read_text())
    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def _report(tail: str) -> str:
    return next(line for line in tail.splitlines() if line.startswith("REPORT RequestId:"))


def test_environment_stays_warm_between_invokes(aws, make_function):
    name = make_function("handlers.count")
    tails = []
    for expected in (1, 2, 3):
        _, payload, tail = _invoke(aws, name, {})
        assert payload["invokes"] == expected  # module-level state survives, as in a warm Lambda
        tails.append(tail)
    assert "Init Duration:" in _report(tails[0]) and "init-ran" in tails[0]
    assert all("Init Duration:" not in _report(t) and "init-ran" not in t for t in tails[1:])
    streams = aws["logs"].describe_log_streams(logGroupName=f"/aws/lambda/{name}")["logStreams"]
    assert len(streams) == 1  # one stream per execution environment
    messages = [e["message"] for e in aws["logs"].filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]]
    assert sum(m.startswith("REPORT RequestId:") for m in messages) == 3


def test_a_new_version_starts_fresh_environments(aws, make_function):
    name = make_function("handlers.count", env={"VERSION": "1"})
    _invoke(aws, name, {})
    _, before, _ = _invoke(aws, name, {})
    assert before["invokes"] == 2
    aws["lambda"].update_function_configuration(FunctionName=name, Environment={"Variables": {"VERSION": "2"}})
    _, after, tail = _invoke(aws, name, {})
    assert after == {"invokes": 1, "pid": after["pid"], "version": "2"} and after["pid"] != before["pid"]
    assert "Init Duration:" in _report(tail)
    assert not psutil.pid_exists(before["pid"]) or psutil.Process(before["pid"]).status() == psutil.STATUS_ZOMBIE
    aws["lambda"].update_function_code(FunctionName=name, ZipFile=_zip({"handlers.py": HANDLERS + "\n# v3\n"}))
    _, code_update, _ = _invoke(aws, name, {})
    assert code_update["invokes"] == 1 and code_update["pid"] != after["pid"]


def test_a_crashed_environment_is_replaced(aws, make_function):
    name = make_function("handlers.count")
    _, first, _ = _invoke(aws, name, {})
    resp, crash, _ = _invoke(aws, name, {"crash": True})
    assert resp["FunctionError"] == "Unhandled" and crash["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in crash["errorMessage"]
    _, again, tail = _invoke(aws, name, {})
    assert again["invokes"] == 1 and again["pid"] != first["pid"] and "Init Duration:" in _report(tail)


def test_concurrent_invokes_get_their_own_environments(aws, make_function):
    name = make_function("handlers.count")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _invoke(aws, name, {})[1], range(12)))
    pids = {r["pid"] for r in results}
    assert 1 <= len(pids) <= 10  # the default cap of environments per function
    # every environment counts its own invokes from 1 without gaps: no invoke was served twice
    for pid in pids:
        counts = sorted(r["invokes"] for r in results if r["pid"] == pid)
        assert counts == list(range(1, len(counts) + 1))
    aws["lambda"].put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    with ThreadPoolExecutor(4) as pool:
        capped = list(pool.map(lambda _: _invoke(aws, name, {})[1], range(6)))
    assert len({r["pid"] for r in capped}) == 1  # reserved concurrency 1: one environment, invokes queue
    assert sorted(r["invokes"] for r in capped)[-1] - sorted(r["invokes"] for r in capped)[0] == 5


def test_event_invocation_runs_in_background(aws, make_function):
    bucket = f"ev-{uuid.uuid4().hex[:8]}"
    aws["s3"].create_bucket(Bucket=bucket)
    name = make_function("handlers.write_marker")
    resp = aws["lambda"].invoke(FunctionName=name, InvocationType="Event",
                                Payload=json.dumps({"bucket": bucket, "key": "done"}))
    assert resp["StatusCode"] == 202
    assert _wait_for("the Event invocation's marker", lambda: _object(aws["s3"], bucket, "done")) == b"done"


def test_s3_object_created_notification_runs_the_lambda(aws, make_function):
    bucket = f"notify-{uuid.uuid4().hex[:8]}"
    aws["s3"].create_bucket(Bucket=bucket)
    name = make_function("handlers.on_s3")
    arn = aws["lambda"].get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    aws["s3"].put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "LambdaFunctionConfigurations": [{"LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"],
                                          "Filter": {"Key": {"FilterRules": [{"Name": "prefix",
                                                                              "Value": "incoming/"}]}}}]})
    aws["s3"].put_object(Bucket=bucket, Key="incoming/a b.txt", Body=b"x")
    marker = _wait_for("the notification marker",
                       lambda: _object(aws["s3"], bucket, "markers/incoming/a b.txt"))
    assert json.loads(marker) == "ObjectCreated:Put"


# ---- SageMaker endpoints --------------------------------------------------------------------------

class Notifications:
    """Messages of the Success / Error topics, read through one SQS subscription, keyed by inferenceId."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self.sqs, self.queue_url, self.seen = sqs, queue_url, {}

    def poll(self) -> None:
        resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for msg in resp.get("Messages", []):
            envelope = json.loads(msg["Body"])
            body = json.loads(envelope["Message"])
            self.seen[body["inferenceId"]] = (envelope["TopicArn"], body)
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])

    def wait(self, inference_id: str) -> tuple[str, dict]:
        def probe():
            self.poll()
            return self.seen.get(inference_id)

        return _wait_for(f"the notification of {inference_id}", probe)


@pytest.fixture(scope="module")
def endpoints(aws) -> dict[str, Any]:
    """Endpoints served by tests/integration/serving_app/app.py through the images.json seam."""
    register_image(aws["home"], "dicomflow-test-echo", ["python", str(SERVING_APP)])
    s3, sm, sns, sqs = aws["s3"], aws["sm"], aws["sns"], aws["sqs"]
    bucket = f"sm-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"model-v1:"
        info = tarfile.TarInfo("prefix.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket=bucket, Key="model/model.tar.gz", Body=buf.getvalue())
    success = sns.create_topic(Name=f"ok-{bucket}")["TopicArn"]
    error = sns.create_topic(Name=f"err-{bucket}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"q-{bucket}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for topic in (success, error):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    role = "arn:aws:iam::123456789012:role/sagemaker"
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dicomflow-test-echo:latest"

    def endpoint(name: str, image: str = image, delay: str = "0", concurrency: int = 2,
                 asynchronous: bool = True) -> str:
        name = f"{name}-{uuid.uuid4().hex[:6]}"
        sm.create_model(ModelName=name, ExecutionRoleArn=role, PrimaryContainer={
            "Image": image, "ModelDataUrl": f"s3://{bucket}/model/model.tar.gz",
            "Environment": {"SERVING_DELAY": delay}})
        extra = {}
        if asynchronous:
            extra["AsyncInferenceConfig"] = {
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": concurrency},
                "OutputConfig": {"S3OutputPath": f"s3://{bucket}/out/{name}",
                                 "S3FailurePath": f"s3://{bucket}/fail/{name}",
                                 "NotificationConfig": {"SuccessTopic": success, "ErrorTopic": error}}}
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large",
            "InitialInstanceCount": 1}], **extra)
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        return name

    return {"bucket": bucket, "success": success, "error": error, "make": endpoint,
            "notes": Notifications(sqs, queue), "echo": endpoint("echo", delay="0.2", concurrency=2),
            "faulty": endpoint("faulty")}


def _input(aws: Any, endpoints: dict, body: bytes) -> str:
    key = f"in/{uuid.uuid4().hex}"
    aws["s3"].put_object(Bucket=endpoints["bucket"], Key=key, Body=body)
    return f"s3://{endpoints['bucket']}/{key}"


def _async(aws: Any, endpoint: str, location: str, **kw: Any) -> dict:
    return aws["rt"].invoke_endpoint_async(EndpointName=endpoint, InputLocation=location,
                                           ContentType="text/plain", **kw)


def test_async_invocation_lands_output_and_success_message(aws, endpoints):
    location = _input(aws, endpoints, b"hello")
    resp = _async(aws, endpoints["echo"], location)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert resp["OutputLocation"].startswith(f"s3://{endpoints['bucket']}/out/{endpoints['echo']}/")
    assert resp["OutputLocation"].endswith(".out")
    assert resp["FailureLocation"].endswith("-error.out")
    topic, message = endpoints["notes"].wait(resp["InferenceId"])
    assert topic == endpoints["success"]
    assert message["invocationStatus"] == "Completed"
    assert message["eventName"] == "InferenceResult"
    assert message["requestParameters"] == {"contentType": "text/plain", "endpointName": endpoints["echo"],
                                            "inputLocation": location}
    assert message["responseParameters"]["outputLocation"] == resp["OutputLocation"]
    assert _object(aws["s3"], resp["OutputLocation"]) == b"model-v1:HELLO"


def test_failing_async_invocation_lands_in_failure_path_and_error_topic(aws, endpoints):
    resp = _async(aws, endpoints["faulty"], _input(aws, endpoints, b"FAIL please"))
    topic, message = endpoints["notes"].wait(resp["InferenceId"])
    assert topic == endpoints["error"]
    assert message["invocationStatus"] == "Failed"
    assert "(500)" in message["failureReason"]
    assert message["responseParameters"]["failureLocation"] == resp["FailureLocation"]
    assert _object(aws["s3"], resp["FailureLocation"]) == b"model failed on purpose"
    assert _object(aws["s3"], resp["OutputLocation"]) is None


def test_missing_input_object_fails(aws, endpoints):
    missing = f"s3://{endpoints['bucket']}/in/does-not-exist"
    resp = _async(aws, endpoints["faulty"], missing)
    topic, message = endpoints["notes"].wait(resp["InferenceId"])
    assert topic == endpoints["error"]
    assert missing in message["failureReason"]
    failure = json.loads(_object(aws["s3"], resp["FailureLocation"]))
    assert failure["status"] == 400 and "does-not-exist" in failure["message"]


def test_invocation_timeout_fails(aws, endpoints):
    resp = _async(aws, endpoints["faulty"], _input(aws, endpoints, b"HANG"), InvocationTimeoutSeconds=1)
    topic, message = endpoints["notes"].wait(resp["InferenceId"])
    assert topic == endpoints["error"]
    assert "InvocationTimeoutSeconds" in message["failureReason"]
    assert _object(aws["s3"], resp["FailureLocation"]) is not None


def test_crash_mid_request_fails_and_the_next_request_gets_a_new_process(aws, endpoints):
    name = endpoints["faulty"]
    resp = _async(aws, name, _input(aws, endpoints, b"CRASH"))
    topic, message = endpoints["notes"].wait(resp["InferenceId"])
    assert topic == endpoints["error"]
    assert "closed the connection" in message["failureReason"]
    failure = json.loads(_object(aws["s3"], resp["FailureLocation"]))  # the JSON error shape, not text/plain
    assert failure["error"] == "ServerError" and failure["status"] == 502 and "closed" in failure["message"]
    assert message["responseParameters"]["contentType"] == "application/json"
    again = _async(aws, name, _input(aws, endpoints, b"after"))
    topic, message = endpoints["notes"].wait(again["InferenceId"])
    assert message["invocationStatus"] == "Completed"
    assert _object(aws["s3"], again["OutputLocation"]) == b"model-v1:AFTER"


@pytest.mark.slow
def test_twenty_concurrent_async_invocations_respect_max_concurrency(aws, endpoints):
    name = endpoints["echo"]
    bodies = [f"item-{i}".encode() for i in range(20)]
    locations = [_input(aws, endpoints, b) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda loc: _async(aws, name, loc), locations))
    assert len({r["InferenceId"] for r in responses}) == 20
    for body, resp in zip(bodies, responses, strict=True):
        topic, message = endpoints["notes"].wait(resp["InferenceId"])
        assert topic == endpoints["success"], message
        assert _object(aws["s3"], resp["OutputLocation"]) == b"model-v1:" + body.upper()
    instances = json.loads((aws["home"] / "endpoints" / name / "instances.json").read_text())
    assert len(instances) == 1  # InitialInstanceCount, no scaling registered
    stats = requests.get(f"{instances[0]['url']}/stats", timeout=10).json()
    assert stats["max_in_flight"] == 2


def test_realtime_invoke_endpoint_round_trip(aws, endpoints):
    name = endpoints["make"]("realtime", asynchronous=False)
    resp = aws["rt"].invoke_endpoint(EndpointName=name, Body=b"ping me", ContentType="text/plain",
                                     Accept="text/plain")
    assert resp["Body"].read() == b"model-v1:PING ME"
    assert resp["ContentType"] == "text/plain"
    binary = bytes(range(256)) * 64
    resp = aws["rt"].invoke_endpoint(EndpointName=name, Body=binary, ContentType="application/octet-stream",
                                     Accept="application/octet-stream")
    assert resp["Body"].read() == b"model-v1:" + binary.upper()
    with pytest.raises(ClientError) as err:
        aws["rt"].invoke_endpoint(EndpointName=name, Body=b"BAD", ContentType="text/plain")
    assert err.value.response["Error"]["Code"] == "ModelError"
    assert "(400)" in err.value.response["Error"]["Message"]


def test_endpoint_without_serving_process_gives_a_clear_error(aws, endpoints):
    name = endpoints["make"]("unmapped", image="123456789012.dkr.ecr.us-east-1.amazonaws.com/not-mapped:1")
    with pytest.raises(ClientError) as err:
        aws["rt"].invoke_endpoint(EndpointName=name, Body=b"x", ContentType="text/plain")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert f"endpoint {name} has no local serving process" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        _async(aws, name, _input(aws, endpoints, b"x"))
    assert "has no local serving process" in err.value.response["Error"]["Message"]


def test_unknown_endpoint_and_non_async_endpoint(aws, endpoints):
    with pytest.raises(ClientError) as err:
        aws["rt"].invoke_endpoint(EndpointName="no-such-endpoint", Body=b"x")
    assert "Endpoint no-such-endpoint of account" in err.value.response["Error"]["Message"]
    name = endpoints["make"]("sync-only", asynchronous=False)
    with pytest.raises(ClientError) as err:
        _async(aws, name, _input(aws, endpoints, b"x"))
    assert "AsyncInferenceConfig" in err.value.response["Error"]["Message"]


def test_deleting_an_endpoint_stops_its_serving_process(aws, endpoints):
    name = endpoints["make"]("short-lived", asynchronous=False)
    aws["rt"].invoke_endpoint(EndpointName=name, Body=b"x", ContentType="text/plain")
    registry = aws["home"] / "endpoints" / f"{name}.json"
    pid = json.loads(registry.read_text())["pid"]
    aws["sm"].delete_endpoint(EndpointName=name)
    assert not registry.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_up_again_keeps_the_emulator_and_its_state_once_lambdas_exist(aws, make_function, local_cloud):
    """Regression: the health check once used /moto-api/data.json, which fails once a Lambda exists and no
    Docker engine does, so a second ``up`` restarted the emulator and lost every bucket, stack and job."""
    name = make_function("handlers.ok")
    _invoke(aws, name, {"marker": "before-up"})
    bucket = f"keep-{uuid.uuid4().hex[:8]}"
    aws["s3"].create_bucket(Bucket=bucket)
    aws_service = next(s for s in local_cloud.cloud.services if s.name == "aws")
    pid = aws_service.process.pid()
    local_cloud.cloud.up()
    assert aws_service.process.pid() == pid
    assert bucket in {b["Name"] for b in aws["s3"].list_buckets()["Buckets"]}
    assert aws["lambda"].get_function(FunctionName=name)["Configuration"]["FunctionName"] == name


def test_update_endpoint_serves_the_new_model(aws, endpoints):
    sm, s3, bucket = aws["sm"], aws["s3"], endpoints["bucket"]
    name = endpoints["make"]("upd", asynchronous=False)
    rt = aws["rt"]
    assert rt.invoke_endpoint(EndpointName=name, Body=b"a", ContentType="text/plain")["Body"].read() == b"model-v1:A"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("prefix.txt")
        info.size = len(b"model-v2:")
        tar.addfile(info, io.BytesIO(b"model-v2:"))
    s3.put_object(Bucket=bucket, Key="model/v2/model.tar.gz", Body=buf.getvalue())
    role = "arn:aws:iam::123456789012:role/sagemaker"
    sm.create_model(ModelName=f"{name}-v2", ExecutionRoleArn=role, PrimaryContainer={
        "Image": "dicomflow-test-echo", "ModelDataUrl": f"s3://{bucket}/model/v2/model.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=f"{name}-v2", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"{name}-v2", "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1}])
    sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-v2")
    desc = sm.describe_endpoint(EndpointName=name)
    assert desc["EndpointConfigName"] == f"{name}-v2" and desc["EndpointStatus"] == "InService"
    assert rt.invoke_endpoint(EndpointName=name, Body=b"b", ContentType="text/plain")["Body"].read() == b"model-v2:B"
    with pytest.raises(ClientError, match="Could not find endpoint config"):
        sm.update_endpoint(EndpointName=name, EndpointConfigName="nope")
    with pytest.raises(ClientError, match="Could not find endpoint 'arn"):
        sm.update_endpoint(EndpointName="no-such-endpoint", EndpointConfigName=f"{name}-v2")


# ---- autoscaling of async endpoints ---------------------------------------------------------------

def _instances(aws: Any, name: str) -> list[dict]:
    try:
        return json.loads((aws["home"] / "endpoints" / name / "instances.json").read_text())
    except FileNotFoundError:
        return []


def _variant(aws: Any, name: str) -> dict:
    return aws["sm"].describe_endpoint(EndpointName=name)["ProductionVariants"][0]


def _watch_pids(aws: Any, name: str, responses: list[dict], endpoints: dict) -> set[int]:
    """Wait for every response to succeed; the pids of every instance seen serving meanwhile."""
    pids: set[int] = set()
    pending = {r["InferenceId"] for r in responses}
    while pending:
        pids |= {i["pid"] for i in _instances(aws, name)}
        for inference_id in list(pending):
            seen = endpoints["notes"].seen.get(inference_id)
            if seen is None:
                endpoints["notes"].poll()
                seen = endpoints["notes"].seen.get(inference_id)
            if seen is not None:
                assert seen[1]["invocationStatus"] == "Completed", seen
                pending.discard(inference_id)
        time.sleep(0.05)
    return pids


def _metric_max(name: str, metric: str) -> float | None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    points = _client("cloudwatch").get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName=metric, Dimensions=[{"Name": "EndpointName", "Value": name}],
        StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1), Period=600,
        Statistics=["Maximum"])["Datapoints"]
    return max((p["Maximum"] for p in points), default=None)


def test_an_endpoint_at_minimum_zero_scales_from_zero_serves_all_and_returns_to_zero(aws, endpoints):
    from dicomflow.inference.scaling import ScalingPlan, register_async_scaling, scaling_status

    name = endpoints["make"]("zero", delay="0.1", concurrency=2)
    registered = register_async_scaling(name, ScalingPlan(0, 2, backlog_per_instance=20, scale_in_cooldown=2,
                                                          scale_out_cooldown=1))
    assert registered["resourceId"] == f"endpoint/{name}/variant/AllTraffic" and registered["alarm"]
    responses = [_async(aws, name, _input(aws, endpoints, f"r{i}".encode())) for i in range(10)]
    pids = _watch_pids(aws, name, responses, endpoints)
    assert len(pids) == 1  # 10 requests fit one instance's target backlog of 20: one instance starts
    for i, resp in enumerate(responses):
        assert _object(aws["s3"], resp["OutputLocation"]) == f"model-v1:R{i}".encode()
    assert _metric_max(name, "HasBacklogWithoutCapacity") == 1.0  # what the scale-from-zero alarm watches
    assert _metric_max(name, "ApproximateBacklogSize") >= 1
    # idle for the scale-in cooldown: back to zero, the process gone
    _wait_for("the endpoint back at 0 instances", lambda: _variant(aws, name)["CurrentInstanceCount"] == 0,
              timeout=30)
    assert _variant(aws, name)["DesiredInstanceCount"] == 0 and not _instances(aws, name)
    pid = next(iter(pids))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    status = scaling_status(name)
    assert (status["instances"], status["minInstances"], status["maxInstances"]) == (0, 0, 2)
    from click.testing import CliRunner

    from dicomflow.cli.endpoints import endpoints as endpoints_cli

    listed = CliRunner().invoke(endpoints_cli, ["ls", "--json"])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["endpoint"] == name)
    assert (row["instances"], row["desiredInstances"]) == (0, 0)
    assert 0 <= row["backlog"] <= 10  # the largest backlog of the latest minute, from CloudWatch
    table = CliRunner().invoke(endpoints_cli, ["ls"])
    assert name in table.output and "0..2" in table.output


def test_a_growing_backlog_starts_a_second_instance_and_never_more_than_the_maximum(aws, endpoints):
    from dicomflow.inference.scaling import ScalingPlan, register_async_scaling

    name = endpoints["make"]("grow", delay="0.8", concurrency=1)
    register_async_scaling(name, ScalingPlan(1, 2, backlog_per_instance=2, scale_in_cooldown=60,
                                             scale_out_cooldown=0))
    responses = [_async(aws, name, _input(aws, endpoints, f"g{i}".encode())) for i in range(10)]
    pids = _watch_pids(aws, name, responses, endpoints)
    assert len(pids) == 2
    stats = [requests.get(f"{i['url']}/stats", timeout=10).json() for i in _instances(aws, name)]
    assert len(stats) == 2 and all(s["count"] >= 1 for s in stats)  # both served
    assert _variant(aws, name)["CurrentInstanceCount"] == 2


def test_scaling_in_waits_for_the_running_request(aws, endpoints):
    from dicomflow.inference.scaling import ScalingPlan, register_async_scaling

    name = endpoints["make"]("drain", delay="2", concurrency=1)
    register_async_scaling(name, ScalingPlan(1, 1, scale_in_cooldown=0, scale_out_cooldown=0))
    resp = _async(aws, name, _input(aws, endpoints, b"slow"))
    _wait_for("one instance serving", lambda: _instances(aws, name))
    time.sleep(0.3)  # the request is running now
    _client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=0, MaxCapacity=0)
    _wait_for("the instance draining", lambda: _variant(aws, name)["DesiredInstanceCount"] == 0)
    topic, message = endpoints["notes"].wait(resp["InferenceId"])
    assert message["invocationStatus"] == "Completed"  # it finished on the draining instance
    assert _object(aws["s3"], resp["OutputLocation"]) == b"model-v1:SLOW"
    _wait_for("the drained instance stopped", lambda: not _instances(aws, name))


# ---- batch transform --------------------------------------------------------------------------

def _transform(aws: Any, endpoints: dict, objects: dict[str, bytes], **kw: Any) -> tuple[dict, str]:
    """Run a transform job with the echo model over ``objects`` (key -> body); (its description, output prefix)."""
    name = endpoints["make"]("tj", asynchronous=False)  # its Model is what the job runs
    base = f"tj/{name}"
    for key, body in objects.items():
        aws["s3"].put_object(Bucket=endpoints["bucket"], Key=f"{base}/in/{key}", Body=body)
    args = {"TransformJobName": name, "ModelName": name, "MaxConcurrentTransforms": 2,
            "TransformInput": {"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{endpoints['bucket']}/{base}/in/"}},
                "ContentType": "text/plain", "SplitType": kw.pop("split", "None")},
            "TransformOutput": {"S3OutputPath": f"s3://{endpoints['bucket']}/{base}/out/", "Accept": "text/plain",
                                "AssembleWith": kw.pop("assemble", "None")},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}, **kw}
    aws["sm"].create_transform_job(**args)
    desc = _wait_for("the transform job to end", lambda: (
        lambda d: d if d["TransformJobStatus"] in ("Completed", "Failed", "Stopped") else None)(
        aws["sm"].describe_transform_job(TransformJobName=name)))
    return desc, f"{base}/out/"


def test_transform_job_splits_lines_batches_by_payload_and_fails_only_the_bad_object(aws, endpoints):
    lines = b"".join(f"line {i}\n".encode() for i in range(6))
    desc, out = _transform(aws, endpoints, {"a.txt": lines, "b.txt": b"BAD record", "c/d.txt": b"single"},
                           split="Line", assemble="Line", BatchStrategy="MultiRecord", MaxPayloadInMB=1)
    assert desc["TransformJobStatus"] == "Failed"
    assert "1 input object(s) failed: b.txt: the model answered 400" in desc["FailureReason"]
    s3, bucket = aws["s3"], endpoints["bucket"]
    # MultiRecord: the six lines went as one request, the answer is assembled by lines in input order
    assert _object(s3, bucket, out + "a.txt.out") == b"model-v1:" + lines.upper()
    assert _object(s3, bucket, out + "c/d.txt.out") == b"model-v1:SINGLE\n"
    assert _object(s3, bucket, out + "b.txt.out") is None  # as on SageMaker: no output for a failed object
    with pytest.raises(ClientError, match="must be unique"):
        aws["sm"].create_transform_job(TransformJobName=desc["TransformJobName"], ModelName=desc["ModelName"],
                                       TransformInput=desc["TransformInput"], TransformOutput=desc["TransformOutput"],
                                       TransformResources=desc["TransformResources"])


def test_transform_job_single_record_and_a_record_over_the_payload_limit(aws, endpoints):
    desc, out = _transform(aws, endpoints, {"x.txt": b"one\ntwo\n", "big.txt": b"y" * (1024 * 1024 + 1)},
                           split="Line", assemble="Line", BatchStrategy="SingleRecord", MaxPayloadInMB=1)
    assert desc["TransformJobStatus"] == "Failed" and "big.txt: a record of 1048577 bytes exceeds MaxPayloadInMB" \
        in desc["FailureReason"]
    assert _object(aws["s3"], endpoints["bucket"], out + "x.txt.out") == b"model-v1:ONE\nmodel-v1:TWO\n"
