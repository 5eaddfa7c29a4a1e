"""Model versions in the SageMaker Model Registry: one Model Package Group per model, one package per version.

:func:`register` records a trained ``model.tar.gz`` as the next version of a group, read from the artifact
itself (task, labels, metrics, the SHA-256 of the training manifest), with its metrics as a JSON report in
S3 (``ModelMetrics.ModelQuality.Statistics``) and the serving image in ``InferenceSpecification``; it
starts ``PendingManualApproval``. :func:`set_status` approves or rejects a version; :func:`latest_approved`
is what a deployment may serve (the newest ``Approved`` version), and refuses when there is none. The
same boto3 calls run against SageMaker and the local cloud.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.errors import DicomflowError
from dicomflow.modeling.contract import METADATA_FILE, numeric_metrics, read_metadata

PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_METADATA_VALUE_LIMIT = 256  # CustomerMetadataProperties values


class RegistryError(DicomflowError):
    """A registry call failed or found nothing usable; the message says what to do."""


@dataclass
class ModelVersion:
    group: str
    version: int
    arn: str
    status: str
    created: str
    model_data: str
    image: str
    properties: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_group(task: str) -> str:
    return f"dicomflow-{task.replace('2d', '-2d').replace('3d', '-3d')}"


def check_group(group: str) -> str:
    if not GROUP_NAME.match(group or ""):
        raise RegistryError(f"model package group {group!r}: use 1-63 letters, digits and hyphens, starting "
                            "with a letter or digit")
    return group


def _error(exc: ClientError, what: str) -> RegistryError:
    err = exc.response.get("Error", {})
    return RegistryError(f"{what} failed: {err.get('Code')}: {err.get('Message')}")


def register(group: str, model_data: str, image: str, *, training_job: str | None = None,
             description: str | None = None) -> ModelVersion:
    """Register ``model_data`` as the next version of ``group`` (created when missing), pending approval."""
    check_group(group)
    try:
        meta = read_metadata(aws.read(model_data))
    except (tarfile.TarError, OSError, ValueError, aws.S3Error) as exc:
        raise RegistryError(f"{model_data} is not a readable model.tar.gz ({exc})") from None
    if not meta.get("task"):
        raise RegistryError(f"{model_data} holds no {METADATA_FILE}: register a model the training job wrote")
    metrics = numeric_metrics(meta)
    report = f"{model_data.rsplit('/', 1)[0]}/model_quality.json"
    aws.write(report, json.dumps({"task": meta["task"], "metrics": metrics, "labels": meta.get("labels"),
                                  "manifestSha256": meta.get("manifest_sha256")}, indent=2).encode(),
              "application/json")
    properties = {"task": meta["task"], "manifestSha256": str(meta.get("manifest_sha256") or ""),
                  "trainingJob": training_job or "", "created": str(meta.get("created") or "")}
    properties.update({f"metric.{k}": f"{v:.6g}" for k, v in sorted(metrics.items())})
    properties = {k: v[:_METADATA_VALUE_LIMIT] for k, v in properties.items() if v}
    sm = aws.client("sagemaker")
    try:
        try:
            sm.describe_model_package_group(ModelPackageGroupName=group)
        except ClientError:
            sm.create_model_package_group(ModelPackageGroupName=group,
                                          ModelPackageGroupDescription=f"dicomflow {meta['task']} models")
        arn = sm.create_model_package(
            ModelPackageGroupName=group, ModelApprovalStatus=PENDING,
            ModelPackageDescription=(description or f"{meta['task']} trained by {training_job or 'dicomflow'}")[:1024],
            InferenceSpecification={"Containers": [{"Image": image, "ModelDataUrl": model_data}],
                                    "SupportedContentTypes": ["application/json"],
                                    "SupportedResponseMIMETypes": ["application/json"]},
            ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": report}}},
            CustomerMetadataProperties=properties)["ModelPackageArn"]
    except ClientError as exc:
        raise _error(exc, f"registering {model_data} in {group}") from None
    return describe(arn)


def describe(arn: str) -> ModelVersion:
    try:
        d = aws.client("sagemaker").describe_model_package(ModelPackageName=arn)
    except ClientError as exc:
        raise _error(exc, f"reading model package {arn}") from None
    container = ((d.get("InferenceSpecification") or {}).get("Containers") or [{}])[0]
    return ModelVersion(group=d.get("ModelPackageGroupName") or "", version=int(d.get("ModelPackageVersion") or 0),
                        arn=d["ModelPackageArn"], status=d.get("ModelApprovalStatus") or "",
                        created=str(d.get("CreationTime") or ""), model_data=container.get("ModelDataUrl") or "",
                        image=container.get("Image") or "", properties=dict(d.get("CustomerMetadataProperties") or {}),
                        note=d.get("ApprovalDescription"))


def groups() -> list[str]:
    sm = aws.client("sagemaker")
    return [g["ModelPackageGroupName"] for page in sm.get_paginator("list_model_package_groups").paginate()
            for g in page["ModelPackageGroupSummaryList"]]


def versions(group: str) -> list[ModelVersion]:
    """Every version of ``group``, newest first."""
    check_group(group)
    sm = aws.client("sagemaker")
    try:
        pages = sm.get_paginator("list_model_packages").paginate(
            ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending")
        arns = [p["ModelPackageArn"] for page in pages for p in page["ModelPackageSummaryList"]]
    except ClientError as exc:
        raise _error(exc, f"listing the versions of {group}") from None
    return sorted((describe(a) for a in arns), key=lambda v: -v.version)


def version(group: str, number: int) -> ModelVersion:
    found = next((v for v in versions(group) if v.version == number), None)
    if found is None:
        raise RegistryError(f"{group} has no version {number}; `dicomflow models ls --group {group}` lists them")
    return found


def set_status(group: str, number: int, status: str, note: str | None = None) -> ModelVersion:
    """Approve or reject one version (its metadata kept)."""
    if status not in (APPROVED, REJECTED, PENDING):
        raise RegistryError(f"status {status!r}: use {APPROVED}, {REJECTED} or {PENDING}")
    current = version(group, number)
    args: dict[str, Any] = {"ModelPackageArn": current.arn, "ModelApprovalStatus": status}
    if note:
        args["ApprovalDescription"] = note[:1024]
    if current.properties:
        args["CustomerMetadataProperties"] = current.properties
    try:
        aws.client("sagemaker").update_model_package(**args)
    except ClientError as exc:
        raise _error(exc, f"setting {group} version {number} to {status}") from None
    return describe(current.arn)


def latest_approved(group: str) -> ModelVersion:
    """The newest Approved version of ``group``; :class:`RegistryError` when none is."""
    approved = [v for v in versions(group) if v.status == APPROVED]
    if not approved:
        raise RegistryError(f"{group} has no approved version: review one with `dicomflow models ls --group "
                            f"{group}` and approve it with `dicomflow models approve {group} VERSION`")
    return approved[0]
