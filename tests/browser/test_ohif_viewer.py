"""The OHIF viewer in real headless Chromium through the local cloud's gateway: a study's sign-in link opens the
MR (the canvas is drawn), the SEG loads as an overlay (coloured pixels appear on a grey image, counted on the
canvas, not compared with a stored picture), the segmentation panel names both structures, and no answer the page
received holds the PACS password.

With ``DICOMFLOW_SCREENSHOT_DIR`` set, the screenshot the README shows is written there."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from setup_tools import require

from dicomflow.config import read_secret_file
from dicomflow.credentials import local_orthanc_secret_path
from dicomflow.demo.viewer_page import MIN_OVERLAY_PIXELS, look_at_study
from dicomflow.emulator.viewer.access import sign_in_link

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_a_study_link_shows_the_mr_with_its_segmentation_overlaid(local_cloud, study_with_seg, tmp_path) -> None:
    require("chromium", "ohif")
    settings = local_cloud.settings
    creds = read_secret_file(local_orthanc_secret_path(settings.data_dir))
    basic = base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()
    shots = Path(os.environ.get("DICOMFLOW_SCREENSHOT_DIR") or tmp_path)
    look = look_at_study(sign_in_link(settings, "viewer-test", study_with_seg.study_uid),
                         screenshot=shots / "viewer-seg.png", forbidden=[creds["password"], basic])
    assert look.signed_in_url.endswith(f"/viewer?StudyInstanceUIDs={study_with_seg.study_uid}")  # ticket gone
    assert look.lit_pixels >= 0.05 * look.canvas_pixels, look   # the MR is drawn
    assert look.grey_only_before_seg, look                       # no colour before the SEG loads ...
    assert look.overlay_pixels >= MIN_OVERLAY_PIXELS, look       # ... and its colours after
    assert look.overlay_s is not None and look.overlay_s > look.first_image_s
    assert look.segments == ["Hippocampus anterior", "Hippocampus posterior"], look
    assert look.responses > 20 and look.leaked_in == [], look
