"""The Ground Truth ``CreateLabelingJob`` request, generated from the stack's outputs.

The same request drives real Ground Truth (:func:`submit_to_ground_truth`, e.g. from
``dicomflow label start --target aws --workteam ARN``) and is what the local portal mirrors.
The worker template, the viewer bundle (``labeling_ui/dist``) and the label-category config (which
must carry ``"document-version": "2018-11-28"``) live under the stack's ``LabelingConfigUri``;
:func:`upload_labeling_config` puts them there. :func:`check_request` checks a request against
CreateLabelingJob's API model (botocore's service definition) and Ground Truth's own rules before
anything is sent.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError, ParamValidationError
from botocore.validate import ParamValidator

from dicomflow import aws
from dicomflow.infra.errors import InfraError
from dicomflow.infra.template import REPO_ROOT
from dicomflow.labels import CHEXPERT_CLASSES, label_category_config

UI_TEMPLATE = REPO_ROOT / "labeling_ui" / "template.liquid.html"
VIEWER_DIST = REPO_ROOT / "labeling_ui" / "dist"
UI_TEMPLATE_NAME = "worker-template.liquid.html"
VIEWER_PREFIX = "viewer/"
CATEGORIES_NAME = "label-categories.json"
#: Stand-in used when no workteam is given (e.g. the example file); submitting it is refused.
PLACEHOLDER_WORKTEAM = "arn:aws:sagemaker:{region}:{account}:workteam/private-crowd/REPLACE-WITH-YOUR-WORKTEAM"
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_LABEL_ATTRIBUTE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,126}$")
_WORKTEAM = re.compile(r"^arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:workteam/.+$")
REQUIRED_OUTPUTS = ("PreLabelFunctionArn", "PostLabelFunctionArn", "GroundTruthRoleArn", "LabelingOutputUri",
                    "LabelingConfigUri")


def _require(outputs: Mapping[str, str], keys: Iterable[str]) -> None:
    missing = [k for k in keys if not outputs.get(k)]
    if missing:
        raise InfraError(f"stack outputs lack {', '.join(missing)}; deploy the stack ('dicomflow infra deploy') "
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
        raise InfraError(f"labeling job name {job_name!r} must be 1-63 letters, digits and hyphens, "
                         "starting with a letter or digit")
    attribute = label_attribute_name or job_name
    if not _LABEL_ATTRIBUTE.match(attribute) or attribute.endswith(("-ref", "-metadata")):
        raise InfraError(f"label attribute name {attribute!r} must be letters, digits and hyphens and not end "
                         "in -ref or -metadata")
    try:
        aws.parse_s3_uri(manifest_uri)
    except ValueError as exc:
        raise InfraError(f"input manifest: {exc}") from exc
    if not 1 <= workers_per_object <= 9:
        raise InfraError(f"workers per object is {workers_per_object}; Ground Truth allows 1 to 9")
    if not 30 <= task_time_limit_seconds <= 28800:
        raise InfraError(f"task time limit {task_time_limit_seconds} s is outside Ground Truth's 30-28800 s")
    default_ui, default_categories = labeling_config_uris(outputs)
    if workteam_arn is None:
        arn = outputs["GroundTruthRoleArn"].split(":")
        workteam_arn = PLACEHOLDER_WORKTEAM.format(region=aws.region(), account=arn[4])
    elif not _WORKTEAM.match(workteam_arn):
        raise InfraError(f"workteam {workteam_arn!r} is not a workteam ARN "
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


def viewer_base_from_gateway(gateway_url: str) -> str:
    """Where workers' browsers load the viewer bundle: ``/ui/`` on the gateway's origin (the local portal
    serves ``/wado`` and ``/ui/`` side by side; a gateway on AWS serves the uploaded bundle the same way)."""
    parts = urlsplit(gateway_url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InfraError(f"GatewayUrl {gateway_url!r} is not an http(s) URL; pass --viewer-base-url URL/ "
                         "(where workers' browsers load viewer.js)")
    return f"{parts.scheme}://{parts.netloc}/ui/"


def worker_template_for(source: str, viewer_base_url: str | None) -> str:
    """The template as uploaded for real Ground Truth: with ``viewer_base_url`` fixed at the top (GT renders
    the template with ``task.input`` only; the local portal passes ``viewer_base_url`` itself)."""
    if not viewer_base_url:
        return source
    if not viewer_base_url.startswith(("https://", "http://")) or not viewer_base_url.endswith("/"):
        raise InfraError(f"viewer base URL {viewer_base_url!r} must be an http(s) URL ending in '/'")
    # the local portal's own viewer_base_url (a render variable) still wins over the uploaded default
    return ("{% assign viewer_base_url = viewer_base_url | default: " + json.dumps(viewer_base_url) + " %}\n"
            + source)


@dataclass
class UploadedConfig:
    """What :func:`upload_labeling_config` put under ``LabelingConfigUri``."""

    template_uri: str
    categories_uri: str
    viewer_uri: str | None = None
    viewer_files: int = 0
    viewer_base_url: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"template": self.template_uri, "categories": self.categories_uri, "viewer": self.viewer_uri,
                "viewerFiles": self.viewer_files, "viewerBaseUrl": self.viewer_base_url}


def upload_labeling_config(outputs: Mapping[str, str], labels: Iterable[str] = CHEXPERT_CLASSES,
                           template_path: str | Path = UI_TEMPLATE, *, viewer_dir: str | Path | None = None,
                           viewer_base_url: str | None = None) -> UploadedConfig:
    """Upload the worker template, the viewer bundle and the label-category config under ``LabelingConfigUri``.

    ``viewer_base_url`` (where browsers load ``viewer.js``) is written into the uploaded template; by
    default (when the bundle is uploaded) it is ``/ui/`` on the stack's ``GatewayUrl`` origin.
    ``viewer_dir`` is the built bundle to upload (:data:`VIEWER_DIST`); None skips it.
    """
    ui_uri, categories_uri = labeling_config_uris(outputs)
    template_path = Path(template_path)
    if not template_path.is_file():
        raise InfraError(f"worker template {template_path} not found; pass the path of template.liquid.html")
    categories = label_category_config(labels)
    s3 = aws.client("s3")
    uploaded = UploadedConfig(ui_uri, categories_uri)
    if viewer_dir is not None:
        viewer_dir = Path(viewer_dir)
        files = sorted(p for p in viewer_dir.rglob("*") if p.is_file()) if viewer_dir.is_dir() else []
        if not (viewer_dir / "viewer.js").is_file():
            raise InfraError(f"the viewer bundle is not built ({viewer_dir}/viewer.js missing); run 'make setup' "
                             "(or: cd labeling_ui && npm install --no-save && npm run build)")
        base = outputs["LabelingConfigUri"].rstrip("/") + "/" + VIEWER_PREFIX
        bucket, prefix = aws.parse_s3_uri(base)
        for f in files:
            ctype = "text/javascript" if f.suffix in (".js", ".mjs") else (
                "application/wasm" if f.suffix == ".wasm" else mimetypes.guess_type(f.name)[0]
                or "application/octet-stream")
            s3.put_object(Bucket=bucket, Key=prefix + f.relative_to(viewer_dir).as_posix(), Body=f.read_bytes(),
                          ContentType=ctype, ServerSideEncryption="AES256")
        uploaded.viewer_uri, uploaded.viewer_files = base, len(files)
        if viewer_base_url is None and outputs.get("GatewayUrl"):
            viewer_base_url = viewer_base_from_gateway(outputs["GatewayUrl"])
    uploaded.viewer_base_url = viewer_base_url
    bucket, key = aws.parse_s3_uri(ui_uri)
    s3.put_object(Bucket=bucket, Key=key, Body=worker_template_for(template_path.read_text(), viewer_base_url)
                  .encode(), ContentType="text/html", ServerSideEncryption="AES256")
    bucket, key = aws.parse_s3_uri(categories_uri)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(categories).encode(),
                  ContentType="application/json", ServerSideEncryption="AES256")
    return uploaded


def with_workteam(request: Mapping[str, Any], workteam_arn: str) -> dict[str, Any]:
    """A copy of ``request`` sent to ``workteam_arn``."""
    if not _WORKTEAM.match(workteam_arn or ""):
        raise InfraError(f"workteam {workteam_arn!r} is not a workteam ARN "
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
        raise InfraError(f"the labeling job request does not match CreateLabelingJob: {detail}")
    htc = request["HumanTaskConfig"]
    if "REPLACE-WITH-YOUR-WORKTEAM" in htc["WorkteamArn"] or not _WORKTEAM.match(htc["WorkteamArn"]):
        raise InfraError("the request has no workteam; pass --workteam "
                         "arn:aws:sagemaker:REGION:ACCOUNT:workteam/private-crowd/NAME")
    if not _NAME.match(request["LabelingJobName"]):
        raise InfraError(f"LabelingJobName {request['LabelingJobName']!r} must be 1-63 letters, digits, hyphens")
    attribute = request["LabelAttributeName"]
    if not _LABEL_ATTRIBUTE.match(attribute) or attribute.endswith(("-ref", "-metadata")):
        raise InfraError(f"LabelAttributeName {attribute!r} must be letters, digits and hyphens and not end in "
                         "-ref or -metadata")
    for field_name, arn in (("PreHumanTaskLambdaArn", htc.get("PreHumanTaskLambdaArn", "")),
                            ("AnnotationConsolidationLambdaArn",
                             htc.get("AnnotationConsolidationConfig", {}).get("AnnotationConsolidationLambdaArn", ""))):
        if not re.match(r"^arn:aws[a-z\-]*:lambda:[a-z0-9\-]+:[0-9]{12}:function:.+$", arn or ""):
            raise InfraError(f"{field_name} {arn!r} is not a Lambda function ARN; a custom workflow needs both "
                             "Lambdas (deploy the stack)")
    if not 1 <= htc["NumberOfHumanWorkersPerDataObject"] <= 9:
        raise InfraError("NumberOfHumanWorkersPerDataObject must be 1 to 9 for a private workteam")
    if not 30 <= htc["TaskTimeLimitInSeconds"] <= 28800:
        raise InfraError("TaskTimeLimitInSeconds must be 30 to 28800")
    for field_name, uri in (("ManifestS3Uri", request["InputConfig"]["DataSource"].get("S3DataSource", {})
                             .get("ManifestS3Uri", "")),
                            ("S3OutputPath", request["OutputConfig"]["S3OutputPath"]),
                            ("UiTemplateS3Uri", htc["UiConfig"].get("UiTemplateS3Uri", "")),
                            ("LabelCategoryConfigS3Uri", request.get("LabelCategoryConfigS3Uri", "s3://x/y"))):
        try:
            aws.parse_s3_uri(uri)
        except ValueError:
            raise InfraError(f"{field_name} {uri!r} must be an s3:// URI") from None


def submit_to_ground_truth(request: Mapping[str, Any]) -> str:
    """Check the request (:func:`check_request`), then ``sagemaker.create_labeling_job(**request)``; returns
    the job ARN."""
    check_request(request)
    sm = aws.client("sagemaker")
    try:
        return sm.create_labeling_job(**request)["LabelingJobArn"]
    except ParamValidationError as exc:
        raise InfraError(f"the labeling job request does not match CreateLabelingJob: {exc}") from exc
    except ClientError as exc:
        from dicomflow.infra.emulator import is_emulator

        error = exc.response.get("Error", {})
        message = str(error.get("Message") or exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if is_emulator() and (status in (500, 501) or "not been implemented" in message):
            raise InfraError("the emulated AWS has no Ground Truth (CreateLabelingJob is not implemented there); "
                             "run the same request locally: dicomflow label start --job FILE") from exc
        raise InfraError(f"Ground Truth refused the labeling job: {message}") from exc
