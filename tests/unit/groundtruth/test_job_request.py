"""The Ground Truth CreateLabelingJob request built from stack outputs (and the example file that shows it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.stub import Stubber

from dicomflow.groundtruth import job_request, submit
from dicomflow.groundtruth.job_request import JobRequestError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "infrastructure" / "labeling-job.example.json"
ACCOUNT = "123456789012"
OUTPUTS = {
    "PreLabelFunctionArn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:dicomflow-pre-label",
    "PostLabelFunctionArn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:dicomflow-post-label",
    "GroundTruthRoleArn": f"arn:aws:iam::{ACCOUNT}:role/dicomflow-GroundTruthRole-EXAMPLE",
    "LabelingConfigUri": "s3://dicomflow-databucket-example/labeling/config/",
    "LabelingOutputUri": "s3://dicomflow-databucket-example/labeling/output/",
}
EXAMPLE_ARGS = {"job_name": "chest-xray-2026-11", "manifest_uri":
                "s3://dicomflow-databucket-example/labeling/input/chest-xray-2026-11.manifest",
                "workteam_arn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:workteam/private-crowd/radiologists"}


def test_request_has_every_field_ground_truth_needs() -> None:
    req = job_request.labeling_job_request(OUTPUTS, **EXAMPLE_ARGS, workers_per_object=3)
    htc = req["HumanTaskConfig"]
    assert htc["PreHumanTaskLambdaArn"] == OUTPUTS["PreLabelFunctionArn"]
    assert htc["AnnotationConsolidationConfig"]["AnnotationConsolidationLambdaArn"] == OUTPUTS["PostLabelFunctionArn"]
    assert htc["UiConfig"]["UiTemplateS3Uri"].startswith(OUTPUTS["LabelingConfigUri"])
    assert htc["NumberOfHumanWorkersPerDataObject"] == 3 and htc["TaskTimeLimitInSeconds"] == 600
    assert htc["WorkteamArn"] == EXAMPLE_ARGS["workteam_arn"]
    assert req["LabelAttributeName"] == "chest-xray-2026-11"
    assert req["LabelCategoryConfigS3Uri"] == OUTPUTS["LabelingConfigUri"] + job_request.CATEGORIES_NAME
    assert req["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"] == EXAMPLE_ARGS["manifest_uri"]
    assert req["OutputConfig"]["S3OutputPath"] == OUTPUTS["LabelingOutputUri"]
    assert req["RoleArn"] == OUTPUTS["GroundTruthRoleArn"]


def test_request_is_accepted_by_the_sagemaker_api_shape() -> None:
    import boto3

    req = job_request.labeling_job_request(OUTPUTS, **EXAMPLE_ARGS)
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:  # validates the request against botocore's CreateLabelingJob model
        stub.add_response("create_labeling_job", {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:1:labeling-job/x"},
                          req)
        sm.create_labeling_job(**req)


def test_example_file_matches_the_generator() -> None:
    expected = job_request.labeling_job_request(OUTPUTS, **EXAMPLE_ARGS, workers_per_object=3)
    assert json.loads(EXAMPLE.read_text()) == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"job_name": "bad name"}, "letters, digits and hyphens"),
    ({"label_attribute_name": "x-metadata"}, "not end in -ref or -metadata"),
    ({"manifest_uri": "/tmp/manifest"}, "S3 URI"),
    ({"workteam_arn": "radiologists"}, "not a workteam ARN"),
    ({"workers_per_object": 10}, "1 to 9"),
])
def test_bad_arguments_get_one_clear_line(kwargs: dict, message: str) -> None:
    with pytest.raises(JobRequestError, match=message):
        job_request.labeling_job_request(OUTPUTS, **{**EXAMPLE_ARGS, **kwargs})


def test_missing_outputs_and_placeholder_workteam() -> None:
    with pytest.raises(JobRequestError, match="PreLabelFunctionArn"):
        job_request.labeling_job_request({}, **EXAMPLE_ARGS)
    req = job_request.labeling_job_request(OUTPUTS, **{**EXAMPLE_ARGS, "workteam_arn": None})
    assert "REPLACE-WITH-YOUR-WORKTEAM" in req["HumanTaskConfig"]["WorkteamArn"]
    with pytest.raises(JobRequestError, match="--workteam"):
        submit.submit_to_ground_truth(req)
