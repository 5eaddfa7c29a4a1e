"""What `make setup` installs that tests need: a missing one fails the test with the step that installs it.

Never a skip: a fresh clone whose set-up did not run must not report green.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dicomflow.demo.annotators import CHROMIUM
from dicomflow.emulator.groundtruth import VIEWER_DIR
from dicomflow.emulator.viewer.ohif import DIST_DIR as OHIF_DIR

TOOLS = {
    "chromium": (lambda: Path(CHROMIUM).exists(),
                 f"Debian's chromium ({CHROMIUM}) is missing: run `make setup` (apt-get install chromium)"),
    "viewer": (lambda: (VIEWER_DIR / "viewer.js").exists(),
               f"the labeling viewer bundle is not built ({VIEWER_DIR}/viewer.js): run `make setup` "
               "(cd labeling_ui && npm install --no-save && npm run build)"),
    "ohif": (lambda: (OHIF_DIR / "index.html").exists(),
             f"the OHIF viewer is not installed ({OHIF_DIR}/index.html): run `make setup` (viewer/fetch-ohif.sh)"),
    "dciodvfy": (lambda: shutil.which("dciodvfy") is not None,
                 "dciodvfy is missing: run `make setup` (apt-get install dicom3tools)"),
}


def require(*names: str) -> None:
    """Fail the calling test, naming the set-up step, unless every tool in ``names`` is installed."""
    for name in names:
        present, message = TOOLS[name]
        if not present():
            pytest.fail(message, pytrace=False)
