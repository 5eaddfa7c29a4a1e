"""The DIMSE sender names its missing tool and storescu's own reason."""

from __future__ import annotations

import pytest

from dicomflow.demo import synthetic
from dicomflow.dicom import dimse
from dicomflow.emulator.cloud.service import free_port


def test_a_missing_storescu_names_the_set_up_step(monkeypatch) -> None:
    monkeypatch.setattr(dimse.shutil, "which", lambda _: None)
    with pytest.raises(dimse.DimseError, match="install Debian's dcmtk"):
        dimse.storescu()


def test_nobody_listening_is_a_clear_failure_and_leaves_no_files(tmp_path) -> None:
    series = synthetic.hippocampus_series(1, seed=5, shape=(8, 16, 16))[0].datasets[:2]
    with pytest.raises(dimse.DimseError, match=r"C-STORE to DICOMFLOW@127.0.0.1:\d+ as MODALITY failed"):
        dimse.send(series, "127.0.0.1", free_port(), "MODALITY", "DICOMFLOW", tmp_path, timeout_s=60)
    assert list(tmp_path.iterdir()) == []  # the PHI written for storescu is gone
