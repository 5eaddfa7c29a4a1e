"""Submit a labeling job to real Ground Truth: upload the worker template, the viewer bundle and the label
categories under the stack's ``LabelingConfigUri``, then ``CreateLabelingJob``.

The label-category config must carry ``"document-version": "2018-11-28"`` (:mod:`.labels`); the viewer
bundle is ``labeling_ui/dist``, loaded by workers' browsers from ``/ui/`` on the gateway's origin.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError, ParamValidationError

from dicomflow import aws
from dicomflow.groundtruth.job_request import (
    JobRequestError,
    check_request,
    labeling_config_uris,
    labeling_job_request,
    with_workteam,
)
from dicomflow.groundtruth.labels import CHEXPERT_CLASSES, label_category_config
from dicomflow.paths import REPO_ROOT

UI_TEMPLATE = REPO_ROOT / "labeling_ui" / "template.liquid.html"
VIEWER_DIST = REPO_ROOT / "labeling_ui" / "dist"
VIEWER_PREFIX = "viewer/"


def viewer_base_from_gateway(gateway_url: str) -> str:
    """Where workers' browsers load the viewer bundle: ``/ui/`` on the gateway's origin (the local portal
    serves ``/wado`` and ``/ui/`` side by side; a gateway on AWS serves the uploaded bundle the same way)."""
    parts = urlsplit(gateway_url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise JobRequestError(f"GatewayUrl {gateway_url!r} is not an http(s) URL; pass --viewer-base-url URL/ "
                         "(where workers' browsers load viewer.js)")
    return f"{parts.scheme}://{parts.netloc}/ui/"


def worker_template_for(source: str, viewer_base_url: str | None) -> str:
    """The template as uploaded for real Ground Truth: with ``viewer_base_url`` fixed at the top (GT renders
    the template with ``task.input`` only; the local portal passes ``viewer_base_url`` itself)."""
    if not viewer_base_url:
        return source
    if not viewer_base_url.startswith(("https://", "http://")) or not viewer_base_url.endswith("/"):
        raise JobRequestError(f"viewer base URL {viewer_base_url!r} must be an http(s) URL ending in '/'")
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
        raise JobRequestError(f"worker template {template_path} not found; pass the path of template.liquid.html")
    categories = label_category_config(labels)
    s3 = aws.client("s3")
    uploaded = UploadedConfig(ui_uri, categories_uri)
    if viewer_dir is not None:
        viewer_dir = Path(viewer_dir)
        files = sorted(p for p in viewer_dir.rglob("*") if p.is_file()) if viewer_dir.is_dir() else []
        if not (viewer_dir / "viewer.js").is_file():
            raise JobRequestError(f"the viewer bundle is not built ({viewer_dir}/viewer.js missing); run 'make setup' "
                             "(or: cd labeling_ui && npm install --no-save && npm run build)")
        base = outputs["LabelingConfigUri"].rstrip("/") + "/" + VIEWER_PREFIX
        bucket, prefix = aws.parse_s3_uri(base)
        for f in files:
            ctype = "text/javascript" if f.suffix in (".js", ".mjs") else (
                "application/wasm" if f.suffix == ".wasm" else mimetypes.guess_type(f.name)[0]
                or "application/octet-stream")
            aws.write(aws.s3_uri(bucket, prefix + f.relative_to(viewer_dir).as_posix()), f.read_bytes(), ctype,
                      s3=s3, ServerSideEncryption="AES256")
        uploaded.viewer_uri, uploaded.viewer_files = base, len(files)
        if viewer_base_url is None and outputs.get("GatewayUrl"):
            viewer_base_url = viewer_base_from_gateway(outputs["GatewayUrl"])
    uploaded.viewer_base_url = viewer_base_url
    aws.write(ui_uri, worker_template_for(template_path.read_text(), viewer_base_url).encode(), "text/html", s3=s3,
              ServerSideEncryption="AES256")
    aws.write(categories_uri, json.dumps(categories).encode(), "application/json", s3=s3,
              ServerSideEncryption="AES256")
    return uploaded


def submit_to_ground_truth(request: Mapping[str, Any]) -> str:
    """Check the request (:func:`check_request`), then ``sagemaker.create_labeling_job(**request)``; returns
    the job ARN."""
    check_request(request)
    sm = aws.client("sagemaker")
    try:
        return sm.create_labeling_job(**request)["LabelingJobArn"]
    except ParamValidationError as exc:
        raise JobRequestError(f"the labeling job request does not match CreateLabelingJob: {exc}") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        message = str(error.get("Message") or exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if aws.is_emulated() and (status in (500, 501) or "not been implemented" in message):
            raise JobRequestError("the emulated AWS has no Ground Truth (CreateLabelingJob is not implemented there); "
                             "run the same request locally: dicomflow label start --job FILE") from exc
        raise JobRequestError(f"Ground Truth refused the labeling job: {message}") from exc


@dataclass
class Submitted:
    """A submitted job: its ARN, the request as sent, what was uploaded, and notes for the user."""

    arn: str
    request: dict[str, Any]
    uploaded: UploadedConfig
    labels: list[str]
    notes: list[str] = field(default_factory=list)


def submit_job(outputs: Mapping[str, str], workteam: str, *, request: Mapping[str, Any] | None = None,
               job_name: str | None = None, manifest_uri: str | None = None, workers: int = 1,
               labels: Iterable[str] = CHEXPERT_CLASSES, template_path: str | Path = UI_TEMPLATE,
               viewer_base_url: str | None = None) -> Submitted:
    """Check ``request`` (or build one from ``job_name`` + ``manifest_uri``), upload the labeling config, submit.

    Nothing is uploaded unless the request passes :func:`check_request`.
    """
    if request is None:
        if not (job_name and manifest_uri):
            raise JobRequestError("give a request, or a job name and an input manifest URI")
        request = labeling_job_request(outputs, job_name, manifest_uri, workteam, workers_per_object=workers)
    sent = with_workteam(request, workteam)
    labels = list(labels)
    check_request(sent)
    up = upload_labeling_config(outputs, labels, template_path, viewer_dir=VIEWER_DIST,
                                viewer_base_url=viewer_base_url)
    notes = []
    for name, uri, want in (("UiTemplateS3Uri", sent["HumanTaskConfig"]["UiConfig"].get("UiTemplateS3Uri"),
                             up.template_uri),
                            ("LabelCategoryConfigS3Uri", sent.get("LabelCategoryConfigS3Uri"), up.categories_uri)):
        if uri != want:
            notes.append(f"the request's {name} is {uri}, not the uploaded {want}")
    return Submitted(submit_to_ground_truth(sent), sent, up, labels, notes)
