"""SageMaker endpoints for the inference container: deploy (Model, EndpointConfig, Endpoint) and invoke.

Only boto3 through :func:`dicomflow.aws.client`: with ``AWS_ENDPOINT_URL`` set the calls go to the
emulator (which maps the image to a host command), without it to real AWS.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.config import env_name
from dicomflow.errors import DicomflowError

DEFAULT_IMAGE = "dicomflow-inference:latest"
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"
DEFAULT_ROLE_NAME = "dicomflow-sagemaker-execution"
OUTPUT_S3_ENV = "DICOMFLOW_OUTPUT_S3_URI"
#: Seconds a request keeps retrying an unavailable PACS (see dicomflow.inference.service).
PACS_RETRY_ENV = "DICOMFLOW_PACS_RETRY_SECONDS"
#: The content type of a request that is one DICOM image rather than a study JSON.
DICOM = "application/dicom"
#: The largest body InvokeEndpoint takes (6 MB); an async endpoint reads up to 1 GB from S3.
REALTIME_MAX_BYTES = 6 * 2**20


class EndpointError(DicomflowError):
    """Deploying or invoking an endpoint failed; the message says how to fix it."""


def _aws_error(exc: ClientError, what: str) -> EndpointError:
    err = exc.response.get("Error", {})
    return EndpointError(f"{what} failed: {err.get('Code', 'Error')}: {err.get('Message', exc)}")


def _execution_role(role: str | None) -> str:
    """The role ARN to run the model under; locally a role is created when none is named."""
    if role:
        if role.startswith("arn:"):
            return role
        try:
            return aws.client("iam").get_role(RoleName=role)["Role"]["Arn"]
        except ClientError as exc:
            raise EndpointError(f"IAM role {role!r} not found; pass its ARN with --role") from exc
    iam = aws.client("iam")
    try:
        return iam.get_role(RoleName=DEFAULT_ROLE_NAME)["Role"]["Arn"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchEntity", "NoSuchEntityException"):
            raise _aws_error(exc, "looking up the execution role") from exc
    if not aws.is_emulated():
        raise EndpointError(f"no execution role: pass --role ARN (a SageMaker execution role), or create "
                            f"IAM role {DEFAULT_ROLE_NAME}")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                      "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
    return iam.create_role(RoleName=DEFAULT_ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]



@dataclass
class Deployment:
    endpoint: str
    model_name: str
    config_name: str
    asynchronous: bool
    output_path: str | None = None
    failure_path: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None
    status: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


def deploy(endpoint: str, model_data: str, *, asynchronous: bool = True, image: str = DEFAULT_IMAGE,
           instance_type: str = DEFAULT_INSTANCE_TYPE, max_concurrency: int = 4, role: str | None = None,
           output_s3_uri: str | None = None, environment: dict[str, str] | None = None,
           wait: bool = True, timeout_s: float = 1800, progress: Callable[[str], None] | None = None,
           multi_model: bool = False) -> Deployment:
    """Create (or update) Model + EndpointConfig + Endpoint; async endpoints get S3 paths and SNS topics.

    ``multi_model``: ``model_data`` is an S3 prefix of ``model.tar.gz`` files and the endpoint serves each by
    ``TargetModel`` (real-time only: SageMaker's asynchronous inference has no multi-model endpoints)."""
    if not endpoint or len(endpoint) > 63 or not all(c.isalnum() or c == "-" for c in endpoint):
        raise EndpointError(f"endpoint name {endpoint!r} must be 1-63 letters, digits and hyphens")
    try:
        bucket, key = aws.parse_s3_uri(model_data)
    except ValueError as exc:
        raise EndpointError(f"--model: {exc}") from None
    if max_concurrency < 1:
        raise EndpointError("--max-concurrency must be at least 1")
    sm = aws.client("sagemaker")
    if multi_model:
        if asynchronous:
            raise EndpointError("a multi-model endpoint is real-time: SageMaker's asynchronous inference does not "
                                "support multi-model endpoints; add --realtime, or deploy one async endpoint per model")
        listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        if not listed.get("KeyCount"):
            raise EndpointError(f"no model artifact under {model_data}; upload model.tar.gz files there first")
        model_data = f"s3://{bucket}/{key.rstrip('/')}/"
    elif not aws.exists(model_data):
        raise EndpointError(f"model artifact {model_data} not found; train a model first or check the URI")
    suffix = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
    model_name = f"{endpoint}-{suffix}"[:63]
    config_name = f"{endpoint}-cfg-{suffix}"[:63]
    base = (output_s3_uri or f"s3://{bucket}/async-inference/{endpoint}").rstrip("/")
    # Async work may wait out a PACS restart; a real-time caller is waiting, so it gets a shorter budget.
    env = {OUTPUT_S3_ENV: f"{base}/artifacts", PACS_RETRY_ENV: "15" if asynchronous else "4", **(environment or {})}
    dep = Deployment(endpoint, model_name, config_name, asynchronous)
    say = progress or (lambda _m: None)
    try:
        say(f"creating model {model_name}")
        container = {"Image": image, "ModelDataUrl": model_data, "Environment": env}
        if multi_model:
            container["Mode"] = "MultiModel"
        sm.create_model(ModelName=model_name, ExecutionRoleArn=_execution_role(role), PrimaryContainer=container)
        config: dict[str, Any] = {
            "EndpointConfigName": config_name,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": model_name,
                                    "InstanceType": instance_type, "InitialInstanceCount": 1}],
        }
        if asynchronous:
            sns = aws.client("sns")
            dep.success_topic = sns.create_topic(Name=f"{endpoint}-success")["TopicArn"]
            dep.error_topic = sns.create_topic(Name=f"{endpoint}-error")["TopicArn"]
            dep.output_path, dep.failure_path = f"{base}/output", f"{base}/failure"
            config["AsyncInferenceConfig"] = {
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": max_concurrency},
                "OutputConfig": {"S3OutputPath": dep.output_path, "S3FailurePath": dep.failure_path,
                                 "NotificationConfig": {"SuccessTopic": dep.success_topic,
                                                        "ErrorTopic": dep.error_topic}},
            }
        say(f"creating endpoint config {config_name}")
        sm.create_endpoint_config(**config)
        exists = True
        try:
            sm.describe_endpoint(EndpointName=endpoint)
        except ClientError:
            exists = False
        if exists:
            say(f"updating endpoint {endpoint}")
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
        else:
            say(f"creating endpoint {endpoint}")
            sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
        dep.status = wait_in_service(endpoint, timeout_s) if wait else "Creating"
    except ClientError as exc:
        raise _aws_error(exc, f"deploying endpoint {endpoint}") from exc
    return dep


def delete(endpoint: str) -> dict[str, Any]:
    """Delete an endpoint with its endpoint config and models (what :func:`deploy` created for it); returns the
    names deleted. An endpoint that does not exist is an :class:`EndpointError`."""
    sm = aws.client("sagemaker")
    try:
        config_name = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except ClientError as exc:
        raise _aws_error(exc, f"finding endpoint {endpoint}") from exc
    models: list[str] = []
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        models = [v["ModelName"] for v in config.get("ProductionVariants", [])]
    except ClientError:
        config_name = ""  # already gone: delete what is left
    try:
        sm.delete_endpoint(EndpointName=endpoint)
        if config_name:
            sm.delete_endpoint_config(EndpointConfigName=config_name)
    except ClientError as exc:
        raise _aws_error(exc, f"deleting endpoint {endpoint}") from exc
    deleted = []
    for model in models:
        try:
            sm.delete_model(ModelName=model)
            deleted.append(model)
        except ClientError:
            pass  # already gone: the endpoint itself is deleted
    return {"endpoint": endpoint, "endpointConfig": config_name or None, "models": deleted}


#: The registered model an endpoint serves, in its Model's environment (the SR and SEG name it).
MODEL_NAME_ENV, MODEL_VERSION_ENV, MODEL_PACKAGE_ENV = (
    env_name("model_name"), env_name("model_version"), env_name("model_package_arn"))


def deploy_from_group(endpoint: str, group: str, *, image: str | None = None, environment: dict[str, str] | None = None,
                      **kwargs: Any) -> tuple[Deployment, Any]:
    """Deploy the newest *Approved* version of a Model Package Group (refused when none is); the container
    learns the group and version it serves. Returns (deployment, the version)."""
    from dicomflow.modeling import registry

    version = registry.latest_approved(group)
    env = {**(environment or {}), MODEL_NAME_ENV: version.group, MODEL_VERSION_ENV: str(version.version),
           MODEL_PACKAGE_ENV: version.arn}
    dep = deploy(endpoint, version.model_data, image=image or version.image, environment=env, **kwargs)
    return dep, version


def wait_in_service(endpoint: str, timeout_s: float = 1800) -> str:
    """Poll until the endpoint is InService; raise on Failed or timeout."""
    sm = aws.client("sagemaker")
    deadline = time.monotonic() + timeout_s
    while True:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        status = desc["EndpointStatus"]
        if status == "InService":
            return status
        if status == "Failed":
            raise EndpointError(f"endpoint {endpoint} failed: {desc.get('FailureReason', 'no reason given')}")
        if time.monotonic() > deadline:
            raise EndpointError(f"endpoint {endpoint} is still {status} after {timeout_s:.0f}s")
        time.sleep(5 if not aws.is_emulated() else 0.2)


def async_config(endpoint: str) -> dict | None:
    """The endpoint's AsyncInferenceConfig, or None for a real-time endpoint."""
    sm = aws.client("sagemaker")
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        cfg = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    except ClientError as exc:
        raise EndpointError(f"endpoint {endpoint} not found; deploy it with 'dicomflow deploy --endpoint "
                            f"{endpoint} --model s3://...'") from exc
    return cfg.get("AsyncInferenceConfig")


@dataclass
class AsyncInvocation:
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str | None
    invoked_at: float = 0.0  # epoch seconds just before InvokeEndpointAsync (for the queue time)


def _payload(body: dict | bytes) -> tuple[bytes, str]:
    """(bytes, content type): a study JSON, or one DICOM image's bytes."""
    if isinstance(body, bytes):
        return body, DICOM
    return json.dumps(body).encode(), "application/json"


def invoke_async(endpoint: str, body: dict | bytes, config: dict | None = None, *,
                 input_location: str | None = None) -> AsyncInvocation:
    """Write the study JSON (or DICOM image bytes) next to the endpoint's outputs and call InvokeEndpointAsync;
    with ``input_location`` (an S3 object already holding the DICOM image) nothing is written."""
    config = config if config is not None else async_config(endpoint)
    if not config:
        raise EndpointError(f"endpoint {endpoint} is real-time, not async; call it without --async or redeploy "
                            "with --async")
    data, content_type = _payload(body)
    if input_location is None:
        out = config["OutputConfig"]["S3OutputPath"].rstrip("/")
        bucket, prefix = aws.parse_s3_uri(out)
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else prefix
        suffix = ".json" if content_type != DICOM else ".dcm"
        input_location = aws.s3_uri(bucket, f"{base}/input/{uuid.uuid4().hex}{suffix}".lstrip("/"))
        aws.write(input_location, data, content_type)
    runtime = aws.client("sagemaker-runtime")
    invoked_at = time.time()
    try:
        resp = runtime.invoke_endpoint_async(
            EndpointName=endpoint, InputLocation=input_location, ContentType=content_type,
            Accept="application/json")
    except ClientError as exc:
        raise _aws_error(exc, f"invoking endpoint {endpoint}") from exc
    return AsyncInvocation(resp["InferenceId"], input_location, resp["OutputLocation"],
                           resp.get("FailureLocation"), invoked_at)


def with_queue_time(inv: AsyncInvocation, result: dict) -> dict:
    """``result`` (a successful response) with ``timingMs.queue``: invocation to start of processing."""
    from dicomflow.inference.timing import queue_ms

    started = result.get("startedAt")
    if inv.invoked_at and isinstance(started, str) and isinstance(result.get("timingMs"), dict):
        try:
            result["timingMs"] = {"queue": queue_ms(inv.invoked_at, started), **result["timingMs"]}
        except ValueError:
            pass  # a response from another container version: no queue time
    return result


def wait_result(inv: AsyncInvocation, timeout_s: float = 900, interval: float = 0.5) -> tuple[bool, bytes]:
    """Poll OutputLocation / FailureLocation: ``(True, response)`` or ``(False, failure body)``."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = aws.read_bytes(inv.output_location)
        if data is not None:
            return True, data
        if inv.failure_location:
            data = aws.read_bytes(inv.failure_location)
            if data is not None:
                return False, data
        if time.monotonic() > deadline:
            raise EndpointError(f"no result for inference {inv.inference_id} after {timeout_s:.0f}s; it may still "
                                f"land in {inv.output_location}")
        time.sleep(interval)


def invoke_realtime(endpoint: str, body: dict | bytes, target_model: str | None = None) -> dict:
    """InvokeEndpoint with the study JSON or one DICOM image's bytes (``target_model``: the artifact a
    multi-model endpoint serves it with); the container's error message on failure."""
    rt = aws.client("sagemaker-runtime")
    extra = {"TargetModel": target_model} if target_model else {}
    data, content_type = _payload(body)
    if len(data) > REALTIME_MAX_BYTES:
        raise EndpointError(f"{len(data)} bytes is more than a real-time endpoint accepts ({REALTIME_MAX_BYTES}); "
                            "use an async endpoint")
    try:
        resp = rt.invoke_endpoint(EndpointName=endpoint, Body=data, ContentType=content_type,
                                  Accept="application/json", **extra)
    except ClientError as exc:
        original = exc.response.get("OriginalMessage") or exc.response.get("Error", {}).get("Message")
        raise EndpointError(f"endpoint {endpoint} answered an error: {original}") from exc
    return json.loads(resp["Body"].read())


def analyse_image(endpoint: str, data: bytes, *, input_location: str | None = None, timeout_s: float = 300) -> dict:
    """One DICOM image (its bytes; ``input_location`` if it already lies in S3) through ``endpoint``, real-time
    or async: the response (findings, embedding); EndpointError names what failed."""
    config = async_config(endpoint)
    if config is None:
        return invoke_realtime(endpoint, data)
    inv = invoke_async(endpoint, data, config, input_location=input_location)
    ok, answer = wait_result(inv, timeout_s=timeout_s)
    if not ok:
        raise EndpointError(f"inference {inv.inference_id} failed: {failure_message(answer)}")
    try:
        return json.loads(answer)
    except ValueError:
        raise EndpointError(f"inference {inv.inference_id} answered something other than JSON") from None


def failure_message(data: bytes) -> str:
    """The message of an async failure object (its ``message``, else its text)."""
    try:
        detail = json.loads(data)
    except ValueError:
        return data.decode(errors="replace")
    message = detail.get("message") if isinstance(detail, dict) else None
    return message or data.decode(errors="replace")




def analyse_all(endpoint: str, bodies: Mapping[str, dict], timeout_s: float = 900
                ) -> Iterator[tuple[str, dict | EndpointError]]:
    """Each study JSON through ``endpoint``: ``(key, response or EndpointError)`` as results come. An async
    endpoint gets every invocation first (its instances work through the queue), then each is awaited."""
    config = async_config(endpoint)
    if config is None:
        for key, body in bodies.items():
            try:
                yield key, invoke_realtime(endpoint, body)
            except EndpointError as exc:
                yield key, exc
        return
    pending: list[tuple[str, AsyncInvocation | EndpointError]] = []
    for key, body in bodies.items():
        try:
            pending.append((key, invoke_async(endpoint, body, config)))
        except EndpointError as exc:
            pending.append((key, exc))
    deadline = time.monotonic() + timeout_s
    for key, inv in pending:
        if isinstance(inv, EndpointError):
            yield key, inv
            continue
        try:
            ok, data = wait_result(inv, timeout_s=max(1.0, deadline - time.monotonic()))
            yield key, (with_queue_time(inv, json.loads(data)) if ok else EndpointError(
                f"inference {inv.inference_id} failed: {failure_message(data)}"))
        except (EndpointError, ValueError) as exc:
            yield key, EndpointError(str(exc))
