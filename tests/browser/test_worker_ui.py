"""A worker labels in real headless Chromium: sign in, the real chest CR renders, a series scrolls, a box is
drawn, labels ticked, submitted; the answers land in GT's S3 layout and the output manifest."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from labeling_setup import LABELS, deploy_lambdas, job_request, new_key, store_objects
from PIL import Image

from dicomflow import aws
from dicomflow.groundtruth import manifest

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
TAG = "ui-job"


@pytest.fixture(scope="module")
def job(local_cloud, bucket, tmp_path_factory):
    from dicomflow.emulator.groundtruth import run_job

    objs = store_objects(local_cloud.pacs)
    arns = deploy_lambdas(TAG, local_cloud.settings.dicomweb_url, new_key())
    request = job_request(TAG, bucket, [objs["cr"], objs["series"]], arns, workers=1)
    running = run_job(request, data_dir=local_cloud.settings.data_dir)
    running.objs = objs
    yield running
    running.stop()


def _wait_viewer(page, what: str = "ready", timeout: float = 60_000) -> None:
    page.wait_for_function(
        f"() => window.dicomflowViewer && (window.dicomflowViewer.{what} || window.dicomflowViewer.error)",
        timeout=timeout)
    err = page.evaluate("window.dicomflowViewer.error")
    assert not err, err


def _viewport_pixels(page) -> np.ndarray:
    png = page.locator("[data-testid=viewport]").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


def test_worker_labels_chest_cr_and_series(job, browser, tmp_path):
    page = browser.new_page()
    page.on("console", lambda m: print("console:", m.type, m.text))
    page.goto(job.signin_url("worker-1"))
    assert "token=" not in page.url  # the token left the address bar
    _wait_viewer(page, "imagesLoaded")

    # the real 7 MB chest CR is on screen, not a black canvas
    pixels = _viewport_pixels(page)
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "cr.png")
    assert pixels.std() > 10 and pixels.mean() > 20, (pixels.mean(), pixels.std())
    assert page.locator("#dicomflow-submit").get_attribute("disabled") is not None

    # draw a box with the ROI tool
    page.get_by_role("button", name="Box ROI").click()
    page.locator(".df-roi-label").select_option("Cardiomegaly")
    box = page.locator("[data-testid=viewport]").bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.45
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 60, y0 + 40, steps=8)
    page.mouse.move(x0 + 120, y0 + 80, steps=8)
    page.mouse.up()
    page.get_by_label("Cardiomegaly").first.check()
    page.get_by_label("Support Devices").first.check()
    assert page.locator("#dicomflow-submit").get_attribute("disabled") is None
    answer = page.evaluate("window.dicomflowViewer.getAnswer()")
    assert answer["labels"] == ["Cardiomegaly", "Support Devices"]
    assert len(answer["rois"]) == 1
    roi = answer["rois"][0]
    cr = job.objs["cr_dataset"]
    assert roi["label"] == "Cardiomegaly" and roi["sopInstanceUID"] == cr.SOPInstanceUID
    assert 0 <= roi["x"] < cr.Columns and 0 <= roi["y"] < cr.Rows and roi["width"] > 20 and roi["height"] > 20
    page.screenshot(path=str(tmp_path / "cr-task.png"))
    with page.expect_navigation():
        page.locator("#dicomflow-submit").click()

    # next task: the series; wheel and arrow keys change the slice counter
    _wait_viewer(page, "imagesLoaded")
    n = len(job.objs["series_datasets"])
    counter = page.locator("[data-testid=slice-counter]")
    assert counter.inner_text() == f"Slice 1 / {n}"
    vp = page.locator("[data-testid=viewport]")
    vp.hover()
    page.mouse.wheel(0, 120)
    page.wait_for_function("window.dicomflowViewer.sliceIndex > 0")
    vp.click()
    page.keyboard.press("ArrowDown")
    page.wait_for_function("window.dicomflowViewer.sliceIndex >= 2")
    idx = page.evaluate("window.dicomflowViewer.sliceIndex")
    assert counter.inner_text() == f"Slice {idx + 1} / {n}"
    pixels = _viewport_pixels(page)
    assert pixels.std() > 5
    page.locator("[data-testid=slice-labels]").get_by_label("Edema").check()
    page.locator("[data-testid=image-labels]").get_by_label("Edema").check()
    page.screenshot(path=str(tmp_path / "series-task.png"))
    with page.expect_navigation():
        page.locator("#dicomflow-submit").click()
    page.wait_for_selector("body[data-done=true]")
    page.close()

    job.job.wait_idle()
    st = job.job.status()
    assert st["status"] == "Completed" and st["consolidated"] == 2, st
    lines = manifest.read_jsonl_s3(job.job.store.output_manifest_uri())
    by_source = {line["source"]: line for line in lines}
    cr_line = by_source[job.objs["cr"]["source"]]["findings"]
    assert cr_line["labels"] == ["Cardiomegaly", "Support Devices"]
    assert cr_line["rois"] and cr_line["rois"][0]["label"] == "Cardiomegaly"
    series_line = by_source[job.objs["series"]["source"]]["findings"]
    assert series_line["labels"] == ["Edema"]
    sop = job.objs["series_datasets"]  # the slice on screen was labelled
    assert any("Edema" in v for v in series_line["sliceLabels"].values()), series_line
    assert set(LABELS) >= set(series_line["classes"]) and sop
    # GT's worker-response layout
    s3 = aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=job.job.store.bucket,
                                                  Prefix=job.job.store.key("annotations", "worker-response"))
            .get("Contents", [])]
    assert len(keys) == 2 and all("/iteration-1/" in k for k in keys)
    body = json.loads(s3.get_object(Bucket=job.job.store.bucket, Key=keys[0])["Body"].read())
    assert body["answers"][0]["workerId"] == "worker-1"
