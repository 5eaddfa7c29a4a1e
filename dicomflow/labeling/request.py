"""The ``CreateLabelingJob`` request the local Ground Truth runs: parsed and checked up front.

Only what the local run needs is read; everything else in the request (workteam, tags, keywords)
is accepted and ignored, so the very file given to real Ground Truth works here unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomflow import aws
from dicomflow.errors import DicomflowError

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class JobRequestError(DicomflowError):
    """The labeling job request is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class JobRequest:
    """The fields of a CreateLabelingJob request that the local Ground Truth uses."""

    name: str
    label_attribute: str
    manifest_uri: str
    output_path: str
    role_arn: str
    label_category_config_uri: str | None
    ui_template_uri: str
    pre_lambda_arn: str
    consolidation_lambda_arn: str
    workers_per_object: int
    task_time_limit: int
    title: str
    raw: Mapping[str, Any]

    @property
    def output_prefix(self) -> str:
        """``s3://bucket/prefix/<job>`` (GT writes everything of the job under it)."""
        return self.output_path.rstrip("/") + "/" + self.name

    def job_arn(self, region: str, account: str) -> str:
        return f"arn:aws:sagemaker:{region}:{account}:labeling-job/{self.name.lower()}"


def _get(doc: Mapping[str, Any], path: str, required: bool = True) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            if required:
                raise JobRequestError(f"labeling job request lacks {path}; see "
                                      "infrastructure/labeling-job.example.json")
            return None
        cur = cur[part]
    return cur


def _s3(doc: Mapping[str, Any], path: str, required: bool = True) -> str | None:
    value = _get(doc, path, required)
    if value is None:
        return None
    try:
        aws.parse_s3_uri(value if isinstance(value, str) else "")
    except ValueError:
        raise JobRequestError(f"{path} must be an s3:// URI, got {value!r}") from None
    return value


def _int(doc: Mapping[str, Any], path: str, lo: int, hi: int, default: int) -> int:
    value = _get(doc, path, required=False)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise JobRequestError(f"{path} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def parse_request(doc: Any) -> JobRequest:
    """Check a CreateLabelingJob request (dict) and return the parts the local run needs."""
    if not isinstance(doc, Mapping):
        raise JobRequestError("a labeling job request must be a JSON object (CreateLabelingJob's request)")
    name = _get(doc, "LabelingJobName")
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobRequestError(f"LabelingJobName {name!r} must be 1-63 letters, digits and hyphens")
    attribute = _get(doc, "LabelAttributeName")
    if not isinstance(attribute, str) or not attribute or attribute.endswith(("-ref", "-metadata")):
        raise JobRequestError("LabelAttributeName must be a name that does not end in -ref or -metadata")
    pre = _get(doc, "HumanTaskConfig.PreHumanTaskLambdaArn")
    post = _get(doc, "HumanTaskConfig.AnnotationConsolidationConfig.AnnotationConsolidationLambdaArn")
    for field_name, arn in (("PreHumanTaskLambdaArn", pre), ("AnnotationConsolidationLambdaArn", post)):
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            raise JobRequestError(f"{field_name} must be a Lambda function ARN, got {arn!r}")
    return JobRequest(
        name=name,
        label_attribute=attribute,
        manifest_uri=_s3(doc, "InputConfig.DataSource.S3DataSource.ManifestS3Uri"),
        output_path=_s3(doc, "OutputConfig.S3OutputPath"),
        role_arn=str(_get(doc, "RoleArn", required=False) or ""),
        label_category_config_uri=_s3(doc, "LabelCategoryConfigS3Uri", required=False),
        ui_template_uri=_s3(doc, "HumanTaskConfig.UiConfig.UiTemplateS3Uri"),
        pre_lambda_arn=pre,
        consolidation_lambda_arn=post,
        workers_per_object=_int(doc, "HumanTaskConfig.NumberOfHumanWorkersPerDataObject", 1, 9, 1),
        task_time_limit=_int(doc, "HumanTaskConfig.TaskTimeLimitInSeconds", 30, 28800, 600),
        title=str(_get(doc, "HumanTaskConfig.TaskTitle", required=False) or name),
        raw=doc,
    )


def load_request(path: str | Path) -> JobRequest:
    """Read and check a CreateLabelingJob request JSON file."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise JobRequestError(f"labeling job request {p} does not exist") from None
    except ValueError as exc:
        raise JobRequestError(f"labeling job request {p} is not JSON ({exc})") from None
    return parse_request(doc)
