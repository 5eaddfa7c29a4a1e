"""Shared fixtures. ``local_cloud`` (session-scoped) starts Orthanc + emulated AWS on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch  # noqa: F401 - before anything loads usearch: with usearch loaded first, torch.jit.trace never returns

from dicomflow.config import Settings
from dicomflow.credentials import PacsConnection, pacs_connection
from dicomflow.emulator.cloud.cloud import LocalCloud
from dicomflow.emulator.cloud.moto import client_environment
from dicomflow.emulator.cloud.service import free_port


@dataclass
class CloudHandle:
    settings: Settings
    cloud: LocalCloud
    env: dict[str, str]

    @property
    def pacs(self) -> PacsConnection:
        return pacs_connection()


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudHandle]:
    """The whole local cloud, once per test session, with the process env pointed at it."""
    data_dir = tmp_path_factory.mktemp("dicomflow-home")
    settings = Settings.load(
        data_dir=data_dir,
        orthanc_http_port=free_port(),
        orthanc_dicom_port=free_port(),
        aws_port=free_port(),
        search_port=free_port(),
        viewer_port=free_port(),
    )
    cloud = LocalCloud(settings)
    env = {**client_environment(settings), "DICOMFLOW_HOME": str(data_dir)}
    saved = {k: os.environ.get(k) for k in env}
    for k in ("DICOMFLOW_PACS_URL", "DICOMFLOW_PACS_USERNAME", "DICOMFLOW_PACS_PASSWORD",
              "DICOMFLOW_PACS_SECRET_ARN", "AWS_PROFILE"):
        saved.setdefault(k, os.environ.pop(k, None))
    os.environ.update(env)
    cloud.up()
    try:
        yield CloudHandle(settings, cloud, env)
    finally:
        cloud.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def study_with_seg(local_cloud: CloudHandle):
    """One small synthetic hippocampus MR study in the local PACS with its label volume stored as a DICOM SEG
    (what ``dicomflow label import`` stores): the viewer's tests open it."""
    from dicomflow.demo import seed as seeding
    from dicomflow.dicom import dicomweb

    [study] = seeding.plan(chest=0, hippocampus=1, seed=11, real=False, hippocampus_shape=(24, 40, 40))
    client = dicomweb.connect(local_cloud.pacs)
    seeding.seed(client, local_cloud.settings.data_dir, [study])
    seeding.store_label_segs(client, [study])
    return study
