"""Shared set-up for the local Ground Truth tests: both labeling Lambdas deployed into the emulator,
data in Orthanc, input manifest / template / label config in S3, and a job request for them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file

from dicomflow import aws
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import instance_id, series_id
from dicomflow.groundtruth import signing
from dicomflow.groundtruth.labels import label_category_config
from dicomflow.infra import package

REPO = Path(__file__).resolve().parents[2]
LABELS = ["No Finding", "Cardiomegaly", "Edema", "Pneumothorax", "Support Devices"]


def deploy_lambdas(tag: str, pacs_url: str, key: str, ttl: int = 900, labels: list[str] = LABELS,
                   env_extra: dict[str, str] | None = None) -> dict[str, str]:
    """Create pre_label and post_label functions from the repo's handlers; returns their ARNs."""
    iam, lam = aws.client("iam"), aws.client("lambda")
    role = iam.create_role(RoleName=f"gt-{tag}-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    env = {"DICOMFLOW_GATEWAY_URL": "http://gateway.invalid/wado", "DICOMFLOW_SIGNING_KEY": key,
           "DICOMFLOW_URL_TTL_SECONDS": str(ttl), "DICOMFLOW_LABELS": json.dumps(labels),
           "DICOMFLOW_PACS_URL": pacs_url, **(env_extra or {})}
    arns = {}
    for name in ("pre_label", "post_label"):
        pkg = package.build(REPO / "lambdas" / name, deps="none")
        arns[name] = lam.create_function(
            FunctionName=f"{tag}-{name.replace('_', '-')}", Runtime="python3.11", Role=role,
            Handler="handler.lambda_handler", Code={"ZipFile": pkg.data}, Timeout=60,
            Environment={"Variables": env})["FunctionArn"]
    return arns


def chest_cr() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))


def store_objects(pacs, n_slices: int = 12, seed: int = 707) -> dict[str, Any]:
    """The real chest CR and one synthetic MR series in Orthanc; returns their manifest sources."""
    cr = chest_cr()
    series = synthetic.hippocampus_series(1, seed=seed, shape=(n_slices, 48, 40))[0].datasets
    dicomweb.store(dicomweb.connect(pacs), [cr, *series])
    first = series[0]
    return {
        "cr": {"source": instance_id(cr.PatientID, cr.StudyInstanceUID, cr.SeriesInstanceUID, cr.SOPInstanceUID)},
        "series": {"source": series_id(first.PatientID, first.StudyInstanceUID, first.SeriesInstanceUID)},
        "cr_dataset": cr,
        "series_datasets": series,
    }


def job_request(tag: str, bucket: str, lines: list[dict], arns: dict[str, str], workers: int = 1,
                template: Path = REPO / "labeling_ui" / "template.liquid.html",
                labels: list[str] = LABELS) -> dict[str, Any]:
    """Upload manifest, template and label config; return the CreateLabelingJob request."""
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket, Key=f"{tag}/input.manifest",
                  Body="".join(json.dumps(line) + "\n" for line in lines).encode())
    s3.put_object(Bucket=bucket, Key=f"{tag}/template.liquid.html", Body=template.read_bytes())
    s3.put_object(Bucket=bucket, Key=f"{tag}/categories.json", Body=json.dumps(label_category_config(labels)))
    return {
        "LabelingJobName": tag,
        "LabelAttributeName": "findings",
        "InputConfig": {"DataSource": {"S3DataSource": {"ManifestS3Uri": f"s3://{bucket}/{tag}/input.manifest"}}},
        "OutputConfig": {"S3OutputPath": f"s3://{bucket}/output/"},
        "RoleArn": "arn:aws:iam::123456789012:role/gt",
        "LabelCategoryConfigS3Uri": f"s3://{bucket}/{tag}/categories.json",
        "HumanTaskConfig": {
            "WorkteamArn": "arn:aws:sagemaker:us-east-1:123456789012:workteam/private-crowd/local",
            "UiConfig": {"UiTemplateS3Uri": f"s3://{bucket}/{tag}/template.liquid.html"},
            "PreHumanTaskLambdaArn": arns["pre_label"],
            "TaskTitle": "Label chest radiographs",
            "TaskDescription": "test",
            "NumberOfHumanWorkersPerDataObject": workers,
            "TaskTimeLimitInSeconds": 600,
            "AnnotationConsolidationConfig": {"AnnotationConsolidationLambdaArn": arns["post_label"]},
        },
    }


def new_key() -> str:
    return signing.generate_key()


def open_task(browser: Any, url: str, ready: str = "ready") -> Any:
    """A new page on the worker portal's sign-in ``url``, once the viewer is ``ready`` (or ``imagesLoaded``)."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function(f"() => window.dicomflowViewer && (window.dicomflowViewer.{ready} "
                           "|| window.dicomflowViewer.error)", timeout=60_000)
    error = page.evaluate("window.dicomflowViewer.error")
    assert not error, error
    return page


def drag_outline(page: Any, scale: float) -> tuple[float, float, float]:
    """A closed square drag with the current tool around the viewport's centre, ``scale`` of its size on each
    side; returns the centre and the half side in page pixels."""
    box = page.locator("[data-testid=viewport]").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    half = min(box["width"], box["height"]) * scale
    path = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half),
            (cx - half, cy - half + 2)]
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()
    return cx, cy, half


def submit_task(page: Any, browser: Any) -> None:
    """Submit the task, wait for the portal's answer, close the page and drop the worker's session cookie (the
    browser is the test session's)."""
    with page.expect_navigation():
        page.locator("#dicomflow-submit").click()
    page.wait_for_selector("body[data-done=true]")
    page.close()
    browser.clear_cookies()
