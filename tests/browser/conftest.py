"""Headless Chromium (Debian's, never a downloaded one) and a local labeling job for browser tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from setup_tools import require

from dicomflow import aws
from dicomflow.demo.annotators import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    require("chromium", "viewer")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        user_dir = tmp_path_factory.mktemp("chromium-profile")
        ctx = p.chromium.launch_persistent_context(str(user_dir), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True, viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(user_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def bucket(local_cloud) -> str:
    name = "dicomflow-labeling-ui-tests"
    s3 = aws.client("s3")
    if name not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=name)
    return name
