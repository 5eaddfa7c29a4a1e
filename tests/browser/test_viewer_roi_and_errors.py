"""The viewer in real headless Chromium: a freehand ROI arrives in image pixel coordinates, and a DICOM that
fails to load (the gateway answers 404) shows the error state instead of a blank canvas."""

from __future__ import annotations

import pytest
import requests
from labeling_setup import deploy_lambdas, drag_outline, job_request, new_key, store_objects

from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import instance_id, rest_root

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
TAG = "ui-roi-job"


@pytest.fixture(scope="module")
def job(local_cloud, bucket):
    from dicomflow.emulator.groundtruth import run_job

    objs = store_objects(local_cloud.pacs, n_slices=8, seed=808)
    gone = synthetic.chest_radiographs(1, seed=808, size=64)[0].dataset
    dicomweb.store(dicomweb.connect(local_cloud.pacs), [gone])
    gone_id = instance_id(gone.PatientID, gone.StudyInstanceUID, gone.SeriesInstanceUID, gone.SOPInstanceUID)
    arns = deploy_lambdas(TAG, local_cloud.settings.dicomweb_url, new_key())
    request = job_request(TAG, bucket, [objs["cr"], {"source": gone_id}], arns, workers=1)
    running = run_job(request, data_dir=local_cloud.settings.data_dir, workers=2)
    running.objs = {**objs, "gone_id": gone_id}
    yield running
    running.stop()


def _wait(page, what: str = "ready") -> None:
    page.wait_for_function(
        f"() => window.dicomflowViewer && (window.dicomflowViewer.{what} || window.dicomflowViewer.error)",
        timeout=60_000)


def test_freehand_roi_is_in_image_pixel_coordinates(job, browser) -> None:
    page = browser.new_page()
    page.goto(job.signin_url("worker-1"))
    _wait(page, "imagesLoaded")
    assert not page.evaluate("window.dicomflowViewer.error")
    cr = job.objs["cr_dataset"]
    rows, cols = int(cr.Rows), int(cr.Columns)

    page.get_by_role("button", name="Freehand ROI").click()
    page.locator(".df-roi-label").select_option("Edema")
    box = page.locator("[data-testid=viewport]").bounding_box()
    cx, cy, half = drag_outline(page, 0.15)
    page.wait_for_function("window.dicomflowViewer.getAnswer().rois.length > 0")
    roi = page.evaluate("window.dicomflowViewer.getAnswer()")["rois"][0]
    assert roi["type"] == "freehand" and roi["label"] == "Edema" and roi["sopInstanceUID"] == cr.SOPInstanceUID
    xs, ys = [p[0] for p in roi["points"]], [p[1] for p in roi["points"]]
    assert len(roi["points"]) >= 4 and all(0 <= x < cols for x in xs) and all(0 <= y < rows for y in ys)

    # independent of Cornerstone: the stack viewport fits the whole image, centred, into the canvas
    scale = min(box["width"] / cols, box["height"] / rows)
    left = box["x"] + (box["width"] - cols * scale) / 2
    top = box["y"] + (box["height"] - rows * scale) / 2
    want = ((cx - half - left) / scale, (cy - half - top) / scale,
            (cx + half - left) / scale, (cy + half - top) / scale)
    tol = 0.02 * max(rows, cols)
    got = (min(xs), min(ys), max(xs), max(ys))
    assert all(abs(g - w) < tol for g, w in zip(got, want, strict=True)), (got, want)
    assert (got[2] - got[0]) > 0.2 * cols  # image pixels, not canvas pixels (~0.4 px per image pixel here)
    page.close()


def test_a_dicom_that_fails_to_load_shows_the_error_state(job, browser, local_cloud) -> None:
    assignment = job.job.next_assignment("worker-2")  # pre-labels the object: its signed URL is cached
    assert assignment is not None and assignment.index == 1
    r = requests.delete(f"{rest_root(local_cloud.pacs)}/instances/{job.objs['gone_id']}", auth=local_cloud.pacs.auth,
                        timeout=30)
    assert r.status_code == 200  # now the gateway's answer for this object is 404

    page = browser.new_page()
    wado = []
    page.on("response", lambda resp: wado.append(resp.status) if "/wado?" in resp.url else None)
    page.goto(job.signin_url("worker-2"))
    page.wait_for_function("() => window.dicomflowViewer && window.dicomflowViewer.error", timeout=60_000)
    error = page.evaluate("window.dicomflowViewer.error")
    assert "failed to load image" in error and "404" in error, error
    assert 404 in wado
    status = page.locator(".df-status")
    assert status.is_visible() and status.get_attribute("data-kind") == "error"
    assert "404" in status.inner_text()
    assert page.locator("#dicomflow-submit").get_attribute("disabled") is not None
    page.close()
