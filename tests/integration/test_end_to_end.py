"""The whole loop at small size on the session local cloud, asserting every hand-off:
stack -> seed -> labeling job (3 annotators in headless Chromium) -> output manifest with majority labels ->
dataset export -> estimator.fit (both tasks) -> model.tar.gz in S3 -> async endpoints -> outputs in
S3OutputPath -> SR + SEG in the held-out study in Orthanc, predicted volume present."""

from __future__ import annotations

import pytest
from setup_tools import require

from dicomflow import aws
from dicomflow.demo import loop
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.groundtruth import manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]


def _keys(uri: str) -> list[str]:
    bucket, prefix = aws.parse_s3_uri(uri)
    return [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_whole_loop_small(local_cloud) -> None:
    require("chromium", "viewer")
    ctx = loop.DemoContext(settings=local_cloud.settings, pacs=local_cloud.pacs,
                           config=loop.DemoConfig.preset("small", seed=3, stack="dicomflow-e2e"))
    hooks = loop.Hooks()

    outputs = loop.deploy_stack(ctx, hooks)
    assert outputs["PreLabelFunctionArn"] and outputs["PacsSecretArn"]

    loop.seed_studies(ctx, hooks)
    client = dicomweb.connect(ctx.pacs)
    assert len(ctx.chest_train) == 16 and len(ctx.hippo_holdout) == 2
    assert dicomweb.search_studies(client, StudyInstanceUID=ctx.hippo_holdout[0].study_uid)

    # labeling: every training image labelled by 3 workers; the output line holds the majority of the votes
    lab = loop.run_labeling(ctx, hooks)
    lines = manifest.read_jsonl_s3(lab["outputManifest"])
    assert len(lines) == 16 and lab["consolidated"] == 16
    assert lab["majorityEqualsVotes"] == 16, lab
    held_out = {s.entry["SOPInstanceUID"] for s in ctx.chest_holdout}
    for line in lines:
        content = line["findings"]
        assert content["workerCount"] == 3
        assert line["findings-metadata"]["human-annotated"] == "yes"
        assert content["dicom"]["SOPInstanceUID"] not in held_out
    assert 0 < lab["meanAgreement"] <= 1

    channels = loop.export_datasets(ctx, hooks)
    assert _keys(channels["classification2d"] + "manifest.jsonl")
    assert any(k.endswith(".nii.gz") for k in _keys(channels["segmentation3d"] + "labels/"))

    trained = loop.train_models(ctx, hooks)
    for task in ("classification2d", "segmentation3d"):
        uri = trained[task]["model_artifact"]
        assert uri.endswith("model.tar.gz") and _keys(uri) == [aws.parse_s3_uri(uri)[1]]

    deployed = loop.deploy_endpoints(ctx, hooks)
    inf = loop.run_inference(ctx, hooks)
    for task, dep in deployed.items():
        assert _keys(dep["output_path"]), f"no async output for {task} in {dep['output_path']}"
    seg = [s for s in inf["studies"] if s["task"] == "segmentation3d"]
    assert len(seg) == 2
    for s in seg:
        assert s["predictedVolumesMm3"]["total"] >= 0 and s["trueVolumesMm3"]["total"] > 0
        modalities = {dj.value(x, "Modality") for x in dicomweb.search_series(client, s["StudyInstanceUID"])}
        assert {"MR", "SR", "SEG"} <= modalities
        assert s["outputs"]["seg"]["stored"] and s["outputs"]["sr"]["stored"]
    chest = [s for s in inf["studies"] if s["task"] == "classification2d"]
    assert len(chest) == 4 and all(s["outputs"]["sr"]["stored"] for s in chest)
