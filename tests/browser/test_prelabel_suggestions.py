"""AI pre-labels in real headless Chromium: the model's suggestions are shown marked as the model's and never
ticked for the worker; the worker accepts them, rejects one, submits; the consolidation records which
suggestions were kept and which rejected."""

from __future__ import annotations

import pytest
from labeling_setup import deploy_lambdas, job_request, new_key, open_task, store_objects, submit_task
from model_helpers import realtime_endpoint

from dicomflow.groundtruth import manifest

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
TAG = "ui-suggest-job"
STRUCTURES = ["anterior", "posterior"]


@pytest.fixture(scope="module")
def job(local_cloud, bucket, tmp_path_factory):
    from dicomflow.emulator.groundtruth import run_job

    objs = store_objects(local_cloud.pacs, n_slices=8, seed=919)
    endpoint = realtime_endpoint("ui-suggest-model", bucket, tmp_path_factory.mktemp("suggest-model"),
                                 positive=("Cardiomegaly", "Support Devices"))
    arns = deploy_lambdas(TAG, local_cloud.settings.dicomweb_url, new_key(),
                          env_extra={"DICOMFLOW_PRELABEL_ENDPOINT": endpoint})
    request = job_request(TAG, bucket, [objs["cr"]], arns, workers=1)
    running = run_job(request, data_dir=local_cloud.settings.data_dir)
    running.objs = objs
    yield running
    running.stop()


@pytest.fixture(scope="module")
def outline_job(local_cloud, bucket, tmp_path_factory):
    from dicomflow.emulator.groundtruth import run_job

    objs = store_objects(local_cloud.pacs, n_slices=8, seed=929)
    endpoint = realtime_endpoint("ui-suggest-seg", bucket, tmp_path_factory.mktemp("suggest-seg"),
                                 task="segmentation3d", positive=("anterior",))
    tag = f"{TAG}-outlines"
    arns = deploy_lambdas(tag, local_cloud.settings.dicomweb_url, new_key(), labels=STRUCTURES,
                          env_extra={"DICOMFLOW_PRELABEL_ENDPOINT": endpoint})
    request = job_request(tag, bucket, [objs["series"]], arns, workers=1, labels=STRUCTURES)
    running = run_job(request, data_dir=local_cloud.settings.data_dir)
    running.objs = objs
    yield running
    running.stop()


def test_suggestions_are_shown_not_ticked_and_their_fate_is_recorded(job, browser) -> None:
    page = open_task(browser, job.signin_url("worker-1"))
    box = page.locator("[data-testid=suggestions]")
    assert "Model suggestion" in box.inner_text() and "not ticked for you" in box.inner_text()
    labels = page.locator("[data-testid=image-labels] input[type=checkbox]")
    assert not any(labels.nth(i).is_checked() for i in range(labels.count()))  # nothing pre-ticked
    suggested = page.evaluate("window.dicomflowViewer.getAnswer().suggestion.suggested")
    assert suggested == ["Cardiomegaly", "Support Devices"]  # the classes the model is made to find
    page.locator("[data-action=accept-suggestions]").click()
    ticked = [labels.nth(i).get_attribute("data-label") for i in range(labels.count()) if labels.nth(i).is_checked()]
    assert sorted(ticked) == sorted(suggested)
    page.locator("[data-testid=image-labels]").get_by_label(suggested[0]).uncheck()  # the worker disagrees
    submit_task(page, browser)

    job.job.wait_idle()
    (line,) = manifest.read_jsonl_s3(job.job.store.output_manifest_uri())
    s = line["findings"]["suggestions"]
    assert s["classes"][suggested[0]] == "rejected"
    assert all(s["classes"][name] == "kept" for name in suggested[1:])
    assert s["acceptance"] == pytest.approx((len(suggested) - 1) / len(suggested), abs=1e-4)
    assert s["model"]["name"]


def test_model_outlines_are_placed_for_editing_and_their_fate_is_recorded(outline_job, browser, local_cloud) -> None:
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom.seg import read_seg
    from dicomflow.dicom.volume import load_image

    page = open_task(browser, outline_job.signin_url("worker-1"), "imagesLoaded")
    assert "Model outlines" in page.locator("[data-testid=suggestions]").inner_text()
    series = outline_job.objs["series_datasets"]
    assert page.evaluate("window.dicomflowViewer.suggestedOutlines") == len(series)  # the model fills every slice
    page.get_by_role("button", name="Undo ROI").click()  # the worker deletes the last of them
    rois = page.evaluate("window.dicomflowViewer.getAnswer()")["rois"]
    assert len(rois) == len(series) - 1 and all(r["suggestion"] and r["edited"] is False for r in rois)
    submit_task(page, browser)

    outline_job.job.wait_idle()
    (line,) = manifest.read_jsonl_s3(outline_job.job.store.output_manifest_uri())
    content = line["findings"]
    s = content["suggestions"]
    assert (s["kind"], s["shown"], s["kept"], s["changed"], s["rejected"]) == ("outlines", len(series),
                                                                               len(series) - 1, 0, 1), s
    n = len(series)
    assert content["suggestionDice"]["anterior"] == pytest.approx(2 * (n - 1) / (2 * n - 1), abs=1e-3)
    ref = content["segmentation"]
    seg = dicomweb.retrieve_instance(dicomweb.connect(local_cloud.pacs), ref["StudyInstanceUID"],
                                     ref["SeriesInstanceUID"], ref["SOPInstanceUID"])
    label, _ = read_seg(seg, list(load_image(series)[1].sop_instance_uids))
    assert sum(bool((label[k] == 1).any()) for k in range(n)) == n - 1
