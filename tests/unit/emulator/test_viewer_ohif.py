"""The generated OHIF configuration, run by Node as the page runs it: one read-only data source on this origin."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from dicomflow.emulator.viewer import ohif


def _run_config(origin: str) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: run `make setup` (it builds the pages with Node.js)", pytrace=False)
    script = ("const window = {location: {origin: process.argv[1]}};\n" + ohif.app_config() +
              "\nprocess.stdout.write(JSON.stringify(window.config));")
    done = subprocess.run([node, "-e", script, origin], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_the_data_source_reads_this_origin_and_never_writes() -> None:
    config = _run_config("http://127.0.0.1:8045")
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    c = source["configuration"]
    assert c["qidoRoot"] == c["wadoRoot"] == "http://127.0.0.1:8045/dicom-web"
    assert c["supportsReject"] is False and c["dicomUploadEnabled"] is False
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert "dangerouslyUseDynamicConfig" not in config and "customizationUrlPrefixes" not in config


def test_a_study_link_opens_the_viewer_route() -> None:
    assert ohif.study_path("1.2.3") == "/viewer?StudyInstanceUIDs=1.2.3"
    assert ohif.study_path(None) == "/"
