"""SageMaker PyTorch serving handlers: ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

The functions every dicomflow entry point serves with: ``inference_container/inference.py`` (the
inference image and ``PyTorchModel(entry_point="inference.py")``) and ``training_job/train.py`` (so
that ``estimator.deploy()`` after ``fit`` serves the trained model with no separate entry point). All
work is in :mod:`dicomflow.inference`; expected failures carry their HTTP status, which the serving
image sees through the inference toolkit's error type when it is installed.
"""

from __future__ import annotations

import json
from typing import Any

from dicomflow.inference.errors import InferenceError, NotAcceptable, error_body
from dicomflow.inference.request import StudyRequest, parse_request
from dicomflow.inference.service import InferenceService

JSON = "application/json"


def _toolkit_error(exc: InferenceError) -> Exception:
    """In the SageMaker serving image, an error the toolkit answers with our status code."""
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError
    except ImportError:
        return exc
    return GenericInferenceToolkitError(exc.status, json.dumps(error_body(exc)))


def model_fn(model_dir: str) -> InferenceService:
    """Load the artifact in ``model_dir`` once per process."""
    return InferenceService.from_model_dir(model_dir)


def input_fn(request_body: bytes | str, request_content_type: str | None = JSON) -> StudyRequest:
    """Validate the study JSON (application/json), or read the DICOM image sent as the body (application/dicom)."""
    try:
        return parse_request(request_body, request_content_type)
    except InferenceError as exc:
        raise _toolkit_error(exc) from exc


def predict_fn(input_data: StudyRequest | dict, model: InferenceService) -> dict:
    """Retrieve the series, run the model, build and store SR/SEG; the response dict."""
    try:
        request = input_data if isinstance(input_data, StudyRequest) else parse_request(input_data)
        return model.run(request)
    except InferenceError as exc:
        raise _toolkit_error(exc) from exc


def output_fn(prediction: Any, accept: str | None = JSON) -> tuple[str, str]:
    """The response as JSON (the only type offered)."""
    if accept and accept not in ("*/*", JSON) and not accept.startswith(JSON):
        raise _toolkit_error(NotAcceptable(f"cannot answer as {accept!r}; ask for {JSON}"))
    return json.dumps(prediction), JSON
