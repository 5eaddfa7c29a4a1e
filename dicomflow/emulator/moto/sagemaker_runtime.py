"""SageMaker Runtime for the emulated AWS: ``InvokeEndpoint`` / ``InvokeEndpointAsync`` really run.

moto 5.2.5 answers both with canned data. :func:`install` replaces the two handlers of
``SageMakerRuntimeResponse`` (and ``DeleteEndpoint``, to stop what was started) inside the moto server:

* the endpoint -> EndpointConfig -> Model chain is read from moto's SageMaker state and handed to
  :func:`dicomflow.emulator.moto.endpoints.resolve_serving` (the seam that finds or starts the serving process);
* ``InvokeEndpoint`` POSTs the body to ``<serving>/invocations`` (ContentType, Accept, CustomAttributes
  forwarded; 60 s limit like AWS) and returns its answer; a non-2xx answer is ``ModelError`` (424); on a
  multi-model endpoint (``Mode: MultiModel``) ``TargetModel`` is loaded and invoked by
  :mod:`dicomflow.emulator.moto.multi_model`;
* ``InvokeEndpointAsync`` needs ``AsyncInferenceConfig``; it returns ``OutputLocation``
  ``<S3OutputPath>/<uuid>.out`` and ``FailureLocation`` ``<S3FailurePath>/<uuid>-error.out`` at once and
  queues the work on the endpoint's fleet (:mod:`dicomflow.emulator.moto.async_fleet`): each instance runs
  ``MaxConcurrentInvocationsPerInstance`` workers, and the instance count follows the endpoint's
  Application Auto Scaling registration (:mod:`dicomflow.emulator.moto.autoscaling`), 0 included
  (requests wait, none is dropped). A worker reads the input
  object from S3, POSTs it (``InvocationTimeoutSeconds``, default 900), writes the response to the
  output key, or the error (model answer, missing input, connection refused, crash mid-request,
  timeout, expired ``RequestTTLSeconds``) to the failure key, and publishes the SageMaker notification
  (``InferenceResult``) to ``SuccessTopic`` / ``ErrorTopic``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from dicomflow.emulator.moto import autoscaling, endpoints, multi_model
from dicomflow.emulator.moto.endpoints import EndpointUnavailable, ServingSpec
from dicomflow.paths import data_dir

log = logging.getLogger("dicomflow.sagemaker")

REALTIME_TIMEOUT_S = 60.0
DEFAULT_ASYNC_CONCURRENCY = 4
DEFAULT_INVOCATION_TIMEOUT_S = 900
DEFAULT_REQUEST_TTL_S = 21600


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _validation(message: str) -> Exception:
    from moto.core.exceptions import JsonRESTError

    return JsonRESTError("ValidationError", message)


def _model_error(message: str, status: int, original: str, endpoint: str, region: str, account: str) -> Exception:
    from moto.core.exceptions import JsonRESTError

    err = JsonRESTError("ModelError", message)
    err.code = 424
    err.description = json.dumps({
        "__type": "ModelError", "message": message, "OriginalStatusCode": status, "OriginalMessage": original,
        "LogStreamArn": f"arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{endpoint}",
    })
    return err


# ---- moto state ---------------------------------------------------------------------------------

@dataclass
class EndpointView:
    name: str
    account_id: str
    region: str
    spec: ServingSpec | None
    async_config: dict[str, Any] | None
    instance_count: int
    variant: str = "AllTraffic"


def _s3_backend(account_id: str) -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[account_id]["aws"]


def _fetcher(account_id: str):
    def fetch(uri: str) -> bytes:
        bucket, key = _split_s3(uri)
        obj = _s3_backend(account_id).get_object(bucket, key)
        if obj is None:
            raise FileNotFoundError(f"no such object {uri}")
        return obj.value

    return fetch


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def model_spec(account_id: str, region: str, model_name: str | None) -> ServingSpec | None:
    """What serving the named Model takes (image, model data, environment), or None without a container."""
    from moto.sagemaker.models import sagemaker_backends

    model = sagemaker_backends[account_id][region]._models.get(model_name)
    container = None
    if model is not None:
        container = model.primary_container or (model.containers[0] if model.containers else None)
    if not container:
        return None
    data_url = container.get("ModelDataUrl") or (
        (container.get("ModelDataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
    environment = dict(container.get("Environment") or {})
    if container.get("Mode") == "MultiModel":  # the process starts empty; models load by TargetModel
        return ServingSpec(image=container.get("Image", ""), fetch=_fetcher(account_id), models_prefix=data_url,
                           environment={**environment, "SAGEMAKER_MULTI_MODEL": "true"})
    return ServingSpec(image=container.get("Image", ""), model_data_url=data_url, environment=environment,
                       fetch=_fetcher(account_id))


def endpoint_view(account_id: str, region: str, name: str) -> EndpointView:
    """The endpoint's serving spec and async config from moto's SageMaker state (ValidationError if none)."""
    from moto.sagemaker.models import sagemaker_backends

    backend = sagemaker_backends[account_id][region]
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        raise _validation(f"Endpoint {name} of account {account_id} not found.")
    config = backend.endpoint_configs.get(endpoint.endpoint_config_name)
    spec = None
    count = 1
    variant_name = "AllTraffic"
    if config is not None and config.production_variants:
        variant = config.production_variants[0]
        count = int(variant.get("InitialInstanceCount") or 1)
        variant_name = variant.get("VariantName") or variant_name
        spec = model_spec(account_id, region, variant.get("ModelName"))
    async_config = config.async_inference_config if config is not None else None
    return EndpointView(name, account_id, region, spec, async_config or None, count, variant_name)


# ---- InvokeEndpoint -----------------------------------------------------------------------------

def _forward_headers(headers: Any) -> dict[str, str]:
    out = {}
    for name in ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes"):
        value = headers.get(name)
        if value:
            out[name] = value
    return out


def invoke_endpoint(self: Any) -> tuple[int, dict[str, str], bytes]:
    """Replacement of ``SageMakerRuntimeResponse.invoke_endpoint``."""
    name = self.path.split("/")[2]
    view = endpoint_view(self.current_account, self.region, name)
    try:
        url = endpoints.resolve_serving(name, view.spec)
    except EndpointUnavailable as exc:
        raise _validation(str(exc)) from None
    body = self.raw_body if isinstance(self.raw_body, bytes) else (self.raw_body or "").encode("utf-8")
    target = self.headers.get("X-Amzn-SageMaker-Target-Model")
    prefix = view.spec.models_prefix if view.spec else None
    try:
        if prefix:
            if not target:
                raise _validation(f"Endpoint {name} is a multi-model endpoint: pass TargetModel, the path of an "
                                  f"artifact under {prefix}")
            resp = multi_model.invoke(name, url, prefix, target, view.spec.fetch, body,
                                      _forward_headers(self.headers), REALTIME_TIMEOUT_S)
        else:
            resp = requests.post(f"{url}/invocations", data=body, headers=_forward_headers(self.headers),
                                 timeout=(5, REALTIME_TIMEOUT_S))
    except multi_model.TargetError as exc:
        if exc.status == 400:
            raise _validation(str(exc)) from None
        raise _model_error(str(exc), exc.status, str(exc), name, self.region, self.current_account) from None
    except requests.Timeout:
        raise _model_error(f"Model of endpoint {name} did not respond within {REALTIME_TIMEOUT_S:.0f} seconds.",
                           408, "timeout", name, self.region, self.current_account) from None
    except requests.RequestException as exc:
        raise _model_error(f"Model container of endpoint {name} failed to answer: {type(exc).__name__}.",
                           502, str(exc), name, self.region, self.current_account) from None
    if not 200 <= resp.status_code < 300:
        kind = "client" if resp.status_code < 500 else "server"
        text = resp.text[:1024]
        raise _model_error(
            f'Received {kind} error ({resp.status_code}) from primary with message "{text}". See '
            f"the endpoint log {data_dir() / 'logs' / ('endpoint-' + name + '.log')} for more "
            "information.", resp.status_code, text, name, self.region, self.current_account)
    headers = {"Content-Type": resp.headers.get("Content-Type", "application/octet-stream"),
               "x-Amzn-Invoked-Production-Variant": "AllTraffic"}
    if resp.headers.get("X-Amzn-SageMaker-Custom-Attributes"):
        headers["X-Amzn-SageMaker-Custom-Attributes"] = resp.headers["X-Amzn-SageMaker-Custom-Attributes"]
    return 200, headers, resp.content


# ---- InvokeEndpointAsync ------------------------------------------------------------------------

@dataclass
class AsyncJob:
    view: EndpointView
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str | None
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    invocation_timeout: float
    request_ttl: float
    received: str
    received_monotonic: float


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def invoke_endpoint_async(self: Any) -> tuple[int, dict[str, str], str]:
    """Replacement of ``SageMakerRuntimeResponse.invoke_endpoint_async``."""
    name = self.path.split("/")[2]
    h = self.headers
    view = endpoint_view(self.current_account, self.region, name)
    if not view.async_config:
        raise _validation(f"Endpoint {name} is not an asynchronous inference endpoint: its EndpointConfig has "
                          "no AsyncInferenceConfig; use InvokeEndpoint or recreate it with AsyncInferenceConfig.")
    if view.spec and view.spec.models_prefix:
        raise _validation(f"Endpoint {name} is a multi-model endpoint; asynchronous inference does not support "
                          "multi-model endpoints: deploy one async endpoint per model, or call InvokeEndpoint")
    input_location = h.get("X-Amzn-SageMaker-InputLocation") or ""
    try:
        _split_s3(input_location)
    except ValueError:
        raise _validation(f"InputLocation must be an S3 URI like s3://bucket/key, got {input_location!r}.") from None
    output_config = view.async_config.get("OutputConfig") or {}
    output_path = output_config.get("S3OutputPath")
    if not output_path:
        raise _validation(f"Endpoint {name}: AsyncInferenceConfig.OutputConfig.S3OutputPath is not set.")
    failure_path = output_config.get("S3FailurePath")
    extension = (h.get("X-Amzn-SageMaker-S3OutputPathExtension") or "").strip("/")
    if extension:
        output_path = _join(output_path, extension)
        failure_path = _join(failure_path, extension) if failure_path else None
    try:
        endpoints.can_resolve(name, view.spec)
    except EndpointUnavailable as exc:
        raise _validation(str(exc)) from None
    token = str(uuid.uuid4())
    job = AsyncJob(
        view=view, inference_id=h.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4()),
        input_location=input_location,
        output_location=_join(output_path, h.get("X-Amzn-SageMaker-Filename") or f"{token}.out"),
        failure_location=_join(failure_path, f"{token}-error.out") if failure_path else None,
        content_type=h.get("X-Amzn-SageMaker-Content-Type"), accept=h.get("X-Amzn-SageMaker-Accept"),
        custom_attributes=h.get("X-Amzn-SageMaker-Custom-Attributes"),
        invocation_timeout=float(h.get("X-Amzn-SageMaker-InvocationTimeoutSeconds")
                                 or DEFAULT_INVOCATION_TIMEOUT_S),
        request_ttl=float(h.get("X-Amzn-SageMaker-RequestTTLSeconds") or DEFAULT_REQUEST_TTL_S),
        received=_now_iso(), received_monotonic=time.monotonic())
    try:
        autoscaling.fleet(view, _per_instance(view), _run_job, _fail_with).submit(job)
    except EndpointUnavailable as exc:
        raise _validation(str(exc)) from None
    headers = {"status": "202", "X-Amzn-SageMaker-OutputLocation": job.output_location}
    if job.failure_location:
        headers["X-Amzn-SageMaker-FailureLocation"] = job.failure_location
    return 202, headers, json.dumps({"InferenceId": job.inference_id})


def _per_instance(view: EndpointView) -> int:
    client = (view.async_config or {}).get("ClientConfig") or {}
    return max(1, int(client.get("MaxConcurrentInvocationsPerInstance") or DEFAULT_ASYNC_CONCURRENCY))


class _Failure(Exception):
    """Why an async request failed; without the model's own answer, the body is the JSON error shape of
    every other failure: ``{"error": "ClientError"|"ServerError"|"InternalFailure", "message", "status"}``."""

    def __init__(self, reason: str, status: int, body: bytes | None = None,
                 content_type: str = "application/json") -> None:
        super().__init__(reason)
        self.reason = reason
        if body is None:
            kind = reason.split(":", 1)[0] if ":" in reason else "ServerError"
            body = json.dumps({"error": kind, "message": reason, "status": status}).encode("utf-8")
        self.body = body
        self.content_type = content_type


def _fail_with(job: AsyncJob, reason: str) -> None:
    _fail(job, _Failure(reason, 503))


def _run_job(job: AsyncJob, url: str) -> None:
    """Run one request on the instance at ``url``; always ends in an output or a failure object."""
    try:
        try:
            content_type = _execute(job, url)
        except _Failure as failure:
            _fail(job, failure)
        else:
            _notify(job, success=True, response_content_type=content_type)
    except Exception:  # a worker must never die silently
        log.exception("async invocation %s of %s could not complete", job.inference_id, job.view.name)
        try:
            _fail(job, _Failure("InternalFailure: the emulator failed while processing the request", 500))
        except Exception:
            log.exception("could not record the failure of %s", job.inference_id)


def _execute(job: AsyncJob, url: str) -> str:
    """Run one async request; returns the response content type or raises :class:`_Failure`."""
    if time.monotonic() - job.received_monotonic > job.request_ttl:
        raise _Failure(f"ClientError: Request {job.inference_id} expired after {job.request_ttl:.0f} seconds "
                       "(RequestTTLSeconds) in the queue.", 408)
    try:
        body = _fetcher(job.view.account_id)(job.input_location)
    except Exception as exc:
        raise _Failure(f"ClientError: Failed to download input data from {job.input_location}: "
                       f"{type(exc).__name__}: {exc}", 400) from None
    headers = {}
    if job.content_type:
        headers["Content-Type"] = job.content_type
    if job.accept:
        headers["Accept"] = job.accept
    if job.custom_attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = job.custom_attributes
    try:
        resp = requests.post(f"{url}/invocations", data=body, headers=headers,
                             timeout=(5, job.invocation_timeout))
    except requests.Timeout:
        raise _Failure(f"ClientError: Model did not respond within {job.invocation_timeout:.0f} seconds "
                       "(InvocationTimeoutSeconds).", 504) from None
    except requests.RequestException as exc:
        raise _Failure(f"ServerError: the model container closed the connection or could not be reached "
                       f"({type(exc).__name__}); see the endpoint log "
                       f"{data_dir() / 'logs' / ('endpoint-' + job.view.name + '.log')}", 502) from None
    content_type = resp.headers.get("Content-Type", "application/octet-stream")
    if not 200 <= resp.status_code < 300:
        kind = "client" if resp.status_code < 500 else "server"
        raise _Failure(f"ClientError: Received {kind} error ({resp.status_code}) from model. See the endpoint "
                       "log for more information.", resp.status_code, resp.content, content_type)
    bucket, key = _split_s3(job.output_location)
    try:
        _put(job.view.account_id, bucket, key, resp.content, content_type)
    except Exception as exc:
        raise _Failure(f"ClientError: Could not write the response to {job.output_location}: "
                       f"{type(exc).__name__}: {exc}", 400) from None
    return content_type


def _put(account_id: str, bucket: str, key: str, data: bytes, content_type: str) -> None:
    s3 = _s3_backend(account_id)
    s3.put_object(bucket, key, data)
    obj = s3.get_object(bucket, key)
    if obj is not None:
        obj.set_metadata({"Content-Type": content_type}, replace=False)


def _fail(job: AsyncJob, failure: _Failure) -> None:
    log.warning("async invocation %s of %s failed: %s", job.inference_id, job.view.name, failure.reason)
    if job.failure_location:
        bucket, key = _split_s3(job.failure_location)
        try:
            _put(job.view.account_id, bucket, key, failure.body, failure.content_type)
        except Exception:
            log.exception("could not write the failure object %s", job.failure_location)
    _notify(job, success=False, failure=failure)


def notification(job: AsyncJob, success: bool, response_content_type: str | None = None,
                 failure: _Failure | None = None) -> dict[str, Any]:
    """The message SageMaker asynchronous inference publishes to the Success / Error topic."""
    request: dict[str, Any] = {"contentType": job.content_type or "application/octet-stream",
                               "endpointName": job.view.name, "inputLocation": job.input_location}
    if job.accept:
        request["accept"] = job.accept
    if job.custom_attributes:
        request["customAttributes"] = job.custom_attributes
    message: dict[str, Any] = {
        "awsRegion": job.view.region,
        "eventTime": _now_iso(),
        "receivedTime": job.received,
        "invocationStatus": "Completed" if success else "Failed",
        "requestParameters": request,
    }
    if success:
        message["responseParameters"] = {"contentType": response_content_type,
                                         "outputLocation": job.output_location}
    else:
        assert failure is not None
        message["failureReason"] = failure.reason
        params: dict[str, Any] = {"contentType": failure.content_type}
        if job.failure_location:
            params["failureLocation"] = job.failure_location
        message["responseParameters"] = params
    message.update({"inferenceId": job.inference_id, "eventVersion": "1.0", "eventSource": "aws:sagemaker",
                    "eventName": "InferenceResult"})
    return message


def _notify(job: AsyncJob, success: bool, response_content_type: str | None = None,
            failure: _Failure | None = None) -> None:
    config = (job.view.async_config or {}).get("OutputConfig", {}).get("NotificationConfig") or {}
    topic = config.get("SuccessTopic" if success else "ErrorTopic")
    if not topic:
        return
    from moto.sns.models import sns_backends

    message = notification(job, success, response_content_type, failure)
    try:
        region = topic.split(":")[3]
        sns_backends[job.view.account_id][region].publish(json.dumps(message), arn=topic)
    except Exception:
        log.exception("could not publish the notification of %s to %s", job.inference_id, topic)


def stop_all() -> None:
    """Stop the async endpoints' instances (the emulator is shutting down); queued requests are dropped."""
    autoscaling.stop_all()


# ---- install ------------------------------------------------------------------------------------

def _delete_endpoint(original):
    def delete_endpoint(self: Any, endpoint_name: str) -> None:
        original(self, endpoint_name)
        endpoints.stop_serving(endpoint_name)
        multi_model.forget(endpoint_name)
        autoscaling.close(self.account_id, self.region_name, endpoint_name)

    return delete_endpoint


def _update_endpoint(self: Any, endpoint_name: str, endpoint_config_name: str) -> Any:
    """UpdateEndpoint (moto has none): point the endpoint at the new config and stop its serving process,
    so the next invocation starts one from the new Model. Requests already running finish on the old one."""
    from moto.core.utils import utcnow

    self.describe_endpoint(endpoint_name)  # moto's own "Could not find endpoint" ValidationError
    config = self.describe_endpoint_config(endpoint_config_name)  # ... and "Could not find endpoint configuration"
    endpoint = self.endpoints[endpoint_name]
    endpoint.endpoint_config_name = endpoint_config_name
    endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
    endpoint.data_capture_config = config["DataCaptureConfig"]
    endpoint.last_modified_time = utcnow()
    endpoints.stop_serving(endpoint_name)
    multi_model.forget(endpoint_name)
    view = endpoint_view(self.account_id, self.region_name, endpoint_name)
    autoscaling.replace(self.account_id, self.region_name, endpoint_name, view, _per_instance(view))
    return endpoint


def _update_endpoint_response(self: Any) -> Any:
    from moto.core.responses import ActionResult

    endpoint = self.sagemaker_backend.update_endpoint(self._get_param("EndpointName"),
                                                      self._get_param("EndpointConfigName"))
    return ActionResult({"EndpointArn": endpoint.arn})


def install() -> None:
    """Patch moto's SageMaker Runtime handlers (call once, before serving)."""
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse
    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

    SageMakerRuntimeResponse.use_raw_body = True  # binary payloads (images, DICOM) must not be utf-8 decoded
    SageMakerRuntimeResponse.invoke_endpoint = invoke_endpoint  # type: ignore[method-assign]
    SageMakerRuntimeResponse.invoke_endpoint_async = invoke_endpoint_async  # type: ignore[method-assign]
    SageMakerModelBackend.delete_endpoint = _delete_endpoint(  # type: ignore[method-assign]
        SageMakerModelBackend.delete_endpoint)
    SageMakerModelBackend.update_endpoint = _update_endpoint  # type: ignore[attr-defined]
    SageMakerResponse.update_endpoint = _update_endpoint_response  # type: ignore[attr-defined]
