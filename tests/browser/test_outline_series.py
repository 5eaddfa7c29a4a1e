"""Segmentation labeling in real headless Chromium: a worker outlines a structure on two slices of an MR series,
interpolates the slices between, copies the last outline to the next slice, paints a second structure with the
brush on another slice and erases part of it, submits; the consolidation Lambda turns the outlines and the paint
into a DICOM SEG in the study whose mask covers exactly those slices and those pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from labeling_setup import deploy_lambdas, drag_outline, job_request, new_key, open_task, store_objects, submit_task

from dicomflow.dicom import dicomweb
from dicomflow.dicom.seg import read_seg
from dicomflow.dicom.volume import load_image
from dicomflow.groundtruth import manifest, masks

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
TAG = "ui-outline-job"
STRUCTURES = ["anterior", "posterior"]

@pytest.fixture(scope="module")
def job(local_cloud, bucket):
    from dicomflow.emulator.groundtruth import run_job

    objs = store_objects(local_cloud.pacs, n_slices=8, seed=909)
    arns = deploy_lambdas(TAG, local_cloud.settings.dicomweb_url, new_key(), labels=STRUCTURES)
    request = job_request(TAG, bucket, [objs["series"]], arns, workers=1, labels=STRUCTURES)
    running = run_job(request, data_dir=local_cloud.settings.data_dir)
    running.objs = objs
    yield running
    running.stop()

def test_outlines_on_two_slices_interpolated_become_a_seg_in_the_study(job, browser, local_cloud) -> None:
    page = open_task(browser, job.signin_url("worker-1"), "imagesLoaded")
    submit = page.locator("#dicomflow-submit")
    assert submit.get_attribute("disabled") is not None  # nothing ticked or outlined yet
    page.get_by_role("button", name="Freehand ROI").click()
    page.locator(".df-roi-label").select_option("anterior")
    page.evaluate("window.dicomflowViewer.setSlice(2)")
    page.wait_for_function("() => window.dicomflowViewer.sliceIndex === 2")
    drag_outline(page, 0.10)
    page.evaluate("window.dicomflowViewer.setSlice(5)")
    page.wait_for_function("() => window.dicomflowViewer.sliceIndex === 5")
    drag_outline(page, 0.20)
    page.wait_for_function("() => window.dicomflowViewer.getAnswer().rois.length === 2")
    page.get_by_role("button", name="Interpolate between slices").click()
    answer = page.evaluate("window.dicomflowViewer.getAnswer()")
    series = job.objs["series_datasets"]
    _, geometry = load_image(series)
    order = list(geometry.sop_instance_uids)
    slices = sorted(order.index(r["sopInstanceUID"]) for r in answer["rois"])
    assert slices == [2, 3, 4, 5] and {r["label"] for r in answer["rois"]} == {"anterior"}, answer["rois"]
    area = {order.index(r["sopInstanceUID"]): _area(r["points"]) for r in answer["rois"]}
    assert area[2] < area[3] < area[4] < area[5]  # the blend grows from the small outline to the large one
    assert submit.get_attribute("disabled") is None  # outlines alone make an answer
    page.evaluate("window.dicomflowViewer.setSlice(5)")
    page.get_by_role("button", name="Copy outline to next slice").click()
    page.wait_for_function("() => window.dicomflowViewer.sliceIndex === 6")
    copied = [r for r in page.evaluate("window.dicomflowViewer.getAnswer()")["rois"]
              if order.index(r["sopInstanceUID"]) == 6]
    assert len(copied) == 1 and _area(copied[0]["points"]) == pytest.approx(area[5], rel=0.01)
    painted = _paint_and_erase(page, order, (int(series[0].Rows), int(series[0].Columns)))
    submit_task(page, browser)

    job.job.wait_idle()
    st = job.job.status()
    assert st["status"] == "Completed" and st["consolidated"] == 1, st
    (line,) = manifest.read_jsonl_s3(job.job.store.output_manifest_uri())
    content = line["findings"]
    assert "segmentationError" not in content, content["segmentationError"]
    ref = content["segmentation"]
    client = dicomweb.connect(local_cloud.pacs)
    seg = dicomweb.retrieve_instance(client, ref["StudyInstanceUID"], ref["SeriesInstanceUID"], ref["SOPInstanceUID"])
    label, structures = read_seg(seg, order)
    assert [s.name for s in structures] == STRUCTURES
    assert [k for k in range(len(order)) if (label[k] == 1).any()] == [2, 3, 4, 5, 6]
    counts = [int((label[k] == 1).sum()) for k in (2, 3, 4, 5, 6)]
    assert counts[:4] == sorted(counts[:4]) and counts[0] > 0 and counts[4] == counts[3], counts
    assert [k for k in range(len(order)) if (label[k] == 2).any()] == [7]
    assert np.array_equal(label[7] == 2, painted)  # exactly the pixels left painted, through outlines and the SEG

def _paint_and_erase(page: Any, order: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Paint "posterior" with the brush across slice 7, erase its left end; returns the painted pixels the answer's
    brush outlines describe (checked to be fewer after erasing, and not none)."""
    page.wait_for_function("() => window.dicomflowViewer.brushReady === true || window.dicomflowViewer.error")
    assert page.evaluate("window.dicomflowViewer.error") is None, page.evaluate("window.dicomflowViewer.error")
    page.locator(".df-roi-label").select_option("posterior")
    page.evaluate("window.dicomflowViewer.setSlice(7)")
    page.wait_for_function("() => window.dicomflowViewer.sliceIndex === 7")
    page.locator(".df-brush-size").fill("2")
    page.locator(".df-brush-size").dispatch_event("change")
    box = page.locator("[data-testid=viewport]").bounding_box()
    cx, cy, half = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * 0.25
    page.get_by_role("button", name="Brush").click()
    _stroke(page, (cx - half, cy), (cx + half, cy))
    before = _painted(page, order, shape)
    page.get_by_role("button", name="Eraser").click()
    _stroke(page, (cx - half - 5, cy), (cx - half / 2, cy))
    after = _painted(page, order, shape)
    assert 0 < after.sum() < before.sum() and not (after & ~before).any(), (before.sum(), after.sum())
    return after

def _stroke(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=20)
    page.mouse.up()

def _painted(page: Any, order: list[str], shape: tuple[int, int]) -> np.ndarray:
    rois = page.evaluate("window.dicomflowViewer.getAnswer()")["rois"]
    brush = [r for r in rois if r.get("source") == "brush"]
    assert brush and {r["label"] for r in brush} == {"posterior"} and \
        {order.index(r["sopInstanceUID"]) for r in brush} == {7}, brush
    return masks.rasterise([r["points"] for r in brush], *shape)

def _area(points: list[list[float]]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True))) / 2
