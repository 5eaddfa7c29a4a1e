"""The Ground Truth ``CreateLabelingJob`` request: built from the stack's outputs, checked, and parsed.

:func:`labeling_job_request` builds the request that drives real Ground Truth (:mod:`.submit`) and the
local one (``dicomflow label start``); :func:`check_request` checks it against CreateLabelingJob's API
model (botocore's service definition) and Ground Truth's own rules before anything is sent;
:func:`parse_request` reads back the parts a local run needs from any such request. Everything
else in a request (workteam, tags, keywords) is accepted and ignored locally, so the very file given
to real Ground Truth works here unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.validate import ParamValidator

from dicomflow import aws
from dicomflow.errors import DicomflowError

UI_TEMPLATE_NAME = "worker-template.liquid.html"
CATEGORIES_NAME = "label-categories.json"
#: Stand-in used when no workteam is given (e.g. the example file); submitting it is refused.
PLACEHOLDER_WORKTEAM = "arn:aws:sagemaker:{region}:{account}:workteam/private-crowd/REPLACE-WITH-YOUR-WORKTEAM"
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_LABEL_ATTRIBUTE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,126}$")
_WORKTEAM = re.compile(r"^arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:workteam/.+$")
REQUIRED_OUTPUTS = ("PreLabelFunctionArn", "PostLabelFunctionArn", "GroundTruthRoleArn", "LabelingOutputUri",
                    "LabelingConfigUri")


class JobRequestError(DicomflowError):
    """The labeling job request is malformed or cannot be built; the message names the field and the fix."""


# ---- build and check ------------------------------------------------------------------------------
def _require(outputs: Mapping[str, str], keys: Iterable[str]) -> None:
    missing = [k for k in keys if not outputs.get(k)]
    if missing:
        raise JobRequestError(f"stack outputs lack {', '.join(missing)}; deploy the stack ('dicomflow infra deploy') "
                         "with the current template")


def labeling_config_uris(outputs: Mapping[str, str]) -> tuple[str, str]:
    """(worker template URI, label-category config URI) under the stack's ``LabelingConfigUri``."""
    _require(outputs, ["LabelingConfigUri"])
    base = outputs["LabelingConfigUri"].rstrip("/") + "/"
    return base + UI_TEMPLATE_NAME, base + CATEGORIES_NAME


def labeling_job_request(outputs: Mapping[str, str], job_name: str, manifest_uri: str,
                         workteam_arn: str | None = None, *, label_attribute_name: str | None = None,
                         ui_template_uri: str | None = None, label_category_config_uri: str | None = None,
                         workers_per_object: int = 1, task_time_limit_seconds: int = 600,
                         task_availability_seconds: int = 10 * 24 * 3600, max_concurrent_tasks: int = 100,
                         title: str = "Label chest radiographs",
                         description: str = "Mark each finding present on the image; draw a box around it "
                                            "where you can.",
                         keywords: Iterable[str] = ("medical imaging", "DICOM", "radiology")) -> dict[str, Any]:
    """The ``CreateLabelingJob`` request (keyword arguments of ``sagemaker.create_labeling_job``)."""
    _require(outputs, REQUIRED_OUTPUTS)
    if not _NAME.match(job_name or ""):
        raise JobRequestError(f"labeling job name {job_name!r} must be 1-63 letters, digits and hyphens, "
                         "starting with a letter or digit")
    attribute = label_attribute_name or job_name
    if not _LABEL_ATTRIBUTE.match(attribute) or attribute.endswith(("-ref", "-metadata")):
        raise JobRequestError(f"label attribute name {attribute!r} must be letters, digits and hyphens and not end "
                         "in -ref or -metadata")
    try:
        aws.parse_s3_uri(manifest_uri)
    except ValueError as exc:
        raise JobRequestError(f"input manifest: {exc}") from exc
    if not 1 <= workers_per_object <= 9:
        raise JobRequestError(f"workers per object is {workers_per_object}; Ground Truth allows 1 to 9")
    if not 30 <= task_time_limit_seconds <= 28800:
        raise JobRequestError(f"task time limit {task_time_limit_seconds} s is outside Ground Truth's 30-28800 s")
    default_ui, default_categories = labeling_config_uris(outputs)
    if workteam_arn is None:
        arn = outputs["GroundTruthRoleArn"].split(":")
        workteam_arn = PLACEHOLDER_WORKTEAM.format(region=aws.region(), account=arn[4])
    elif not _WORKTEAM.match(workteam_arn):
        raise JobRequestError(f"workteam {workteam_arn!r} is not a workteam ARN "
                         "(arn:aws:sagemaker:REGION:ACCOUNT:workteam/private-crowd/NAME)")
    return {
        "LabelingJobName": job_name,
        "LabelAttributeName": attribute,
        "InputConfig": {"DataSource": {"S3DataSource": {"ManifestS3Uri": manifest_uri}}},
        "OutputConfig": {"S3OutputPath": outputs["LabelingOutputUri"]},
        "RoleArn": outputs["GroundTruthRoleArn"],
        "LabelCategoryConfigS3Uri": label_category_config_uri or default_categories,
        "HumanTaskConfig": {
            "WorkteamArn": workteam_arn,
            "UiConfig": {"UiTemplateS3Uri": ui_template_uri or default_ui},
            "PreHumanTaskLambdaArn": outputs["PreLabelFunctionArn"],
            "TaskKeywords": list(keywords),
            "TaskTitle": title,
            "TaskDescription": description,
            "NumberOfHumanWorkersPerDataObject": workers_per_object,
            "TaskTimeLimitInSeconds": task_time_limit_seconds,
            "TaskAvailabilityLifetimeInSeconds": task_availability_seconds,
            "MaxConcurrentTaskCount": max_concurrent_tasks,
            "AnnotationConsolidationConfig": {
                "AnnotationConsolidationLambdaArn": outputs["PostLabelFunctionArn"]},
        },
        "Tags": [{"Key": "project", "Value": "dicomflow"}],
    }


def with_workteam(request: Mapping[str, Any], workteam_arn: str) -> dict[str, Any]:
    """A copy of ``request`` sent to ``workteam_arn``."""
    if not _WORKTEAM.match(workteam_arn or ""):
        raise JobRequestError(f"workteam {workteam_arn!r} is not a workteam ARN "
                         "(arn:aws:sagemaker:REGION:ACCOUNT:workteam/private-crowd/NAME)")
    out = json.loads(json.dumps(request))
    out.setdefault("HumanTaskConfig", {})["WorkteamArn"] = workteam_arn
    return out


def check_request(request: Mapping[str, Any]) -> None:
    """Check ``request`` against CreateLabelingJob's API model and Ground Truth's rules; one clear line if not.

    The API model is botocore's service definition (types, required members, lengths, patterns of the
    members it declares); the rules are what GT checks on top: a real workteam, the custom-workflow
    Lambdas, names, and worker count/time limits.
    """
    sm = aws.client("sagemaker")
    shape = sm.meta.service_model.operation_model("CreateLabelingJob").input_shape
    report = ParamValidator().validate(dict(request), shape)
    if report.has_errors():
        first = report.generate_report().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4] if line.strip()) or first[0]
        raise JobRequestError(f"the labeling job request does not match CreateLabelingJob: {detail}")
    htc = request["HumanTaskConfig"]
    if "REPLACE-WITH-YOUR-WORKTEAM" in htc["WorkteamArn"] or not _WORKTEAM.match(htc["WorkteamArn"]):
        raise JobRequestError("the request has no workteam; pass --workteam "
                         "arn:aws:sagemaker:REGION:ACCOUNT:workteam/private-crowd/NAME")
    if not _NAME.match(request["LabelingJobName"]):
        raise JobRequestError(f"LabelingJobName {request['LabelingJobName']!r} must be 1-63 letters, digits, hyphens")
    attribute = request["LabelAttributeName"]
    if not _LABEL_ATTRIBUTE.match(attribute) or attribute.endswith(("-ref", "-metadata")):
        raise JobRequestError(f"LabelAttributeName {attribute!r} must be letters, digits and hyphens and not end in "
                         "-ref or -metadata")
    for field_name, arn in (("PreHumanTaskLambdaArn", htc.get("PreHumanTaskLambdaArn", "")),
                            ("AnnotationConsolidationLambdaArn",
                             htc.get("AnnotationConsolidationConfig", {}).get("AnnotationConsolidationLambdaArn", ""))):
        if not re.match(r"^arn:aws[a-z\-]*:lambda:[a-z0-9\-]+:[0-9]{12}:function:.+$", arn or ""):
            raise JobRequestError(f"{field_name} {arn!r} is not a Lambda function ARN; a custom workflow needs both "
                             "Lambdas (deploy the stack)")
    if not 1 <= htc["NumberOfHumanWorkersPerDataObject"] <= 9:
        raise JobRequestError("NumberOfHumanWorkersPerDataObject must be 1 to 9 for a private workteam")
    if not 30 <= htc["TaskTimeLimitInSeconds"] <= 28800:
        raise JobRequestError("TaskTimeLimitInSeconds must be 30 to 28800")
    for field_name, uri in (("ManifestS3Uri", request["InputConfig"]["DataSource"].get("S3DataSource", {})
                             .get("ManifestS3Uri", "")),
                            ("S3OutputPath", request["OutputConfig"]["S3OutputPath"]),
                            ("UiTemplateS3Uri", htc["UiConfig"].get("UiTemplateS3Uri", "")),
                            ("LabelCategoryConfigS3Uri", request.get("LabelCategoryConfigS3Uri", "s3://x/y"))):
        try:
            aws.parse_s3_uri(uri)
        except ValueError:
            raise JobRequestError(f"{field_name} {uri!r} must be an s3:// URI") from None



# ---- parse (what a local run needs) ------------------------------------------------------------
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
