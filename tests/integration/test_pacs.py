"""The real Orthanc PACS: auth, seeding by STOW-RS, QIDO search, byte-identical WADO-RS retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import requests
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from dicomflow.cli.seed import seed as seed_command
from dicomflow.credentials import PacsConnection
from dicomflow.demo import seed as seeding
from dicomflow.dicom import _multipart as multipart
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.errors import PacsError

pytestmark = pytest.mark.integration

SEED = 101  # this file's synthetic studies; other tests in the session may seed with other values
N_CHEST, N_HIPPO = 3, 2


def _my_studies(client, kind: str) -> list[dict]:
    prefix = {"chest": "SYNTH-CXR", "hippocampus": "SYNTH-HIPPO"}[kind]
    return dicomweb.search_studies(client, PatientID=f"{prefix}-{SEED}-*",
                                   fields=["NumberOfStudyRelatedInstances"])


@pytest.fixture(scope="module")
def client(local_cloud):
    return dicomweb.connect(local_cloud.pacs)


@pytest.fixture(scope="module")
def seeded(local_cloud) -> dict:
    """Run the real CLI command once (small), return its JSON report and the sidecar."""
    args = ["--chest", str(N_CHEST), "--hippocampus", str(N_HIPPO), "--seed", str(SEED), "--chest-size", "64",
            "--json"]
    result = CliRunner().invoke(seed_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    sidecar = json.loads(Path(report["sidecar"]).read_text())
    return {"report": report, "sidecar": sidecar, "args": args}


def test_orthanc_refuses_requests_without_credentials(local_cloud) -> None:
    url = local_cloud.pacs.url
    assert requests.get(f"{url}/studies", timeout=10).status_code == 401
    assert requests.get(f"{url}/studies", auth=("dicomflow", "wrong"), timeout=10).status_code == 401
    with pytest.raises(PacsError, match="no PACS credentials"):
        dicomweb.search_studies(dicomweb.connect(PacsConnection(url)))
    with pytest.raises(PacsError, match="wrong PACS credentials") as err:
        dicomweb.search_studies(dicomweb.connect(PacsConnection(url, "dicomflow", "not-the-password")))
    assert "not-the-password" not in str(err.value)


def test_seed_is_found_by_qido(client, seeded) -> None:
    report, sidecar = seeded["report"], seeded["sidecar"]
    assert report["stored"].get("chest", 0) + report["already_present"].get("chest", 0) == N_CHEST
    assert report["stored"].get("hippocampus", 0) + report["already_present"].get("hippocampus", 0) == N_HIPPO
    chest = _my_studies(client, "chest")
    hippo = _my_studies(client, "hippocampus")
    assert len(chest) == N_CHEST and len(hippo) == N_HIPPO
    assert {int(dj.value(s, "NumberOfStudyRelatedInstances")) for s in hippo} == {32}
    for name in seeding.REAL_IMAGES:
        entry = next(e for e in sidecar["real"] if e["name"] == name)
        assert dicomweb.search_instances(client, entry["StudyInstanceUID"], entry["SeriesInstanceUID"],
                                         SOPInstanceUID=entry["SOPInstanceUID"])
    mine = {dj.value(s, "StudyInstanceUID") for s in chest}
    labelled = [e for e in sidecar["chest"] if e["StudyInstanceUID"] in mine]
    assert len(labelled) == N_CHEST and all(e["labels"] for e in labelled)
    for entry in sidecar["hippocampus"]:
        assert Path(entry["label_path"]).is_file()


def test_wado_rs_returns_what_was_stored(client, seeded) -> None:
    studies = seeding.plan(chest=N_CHEST, hippocampus=N_HIPPO, seed=SEED, real=False, chest_size=64)
    for st in studies:
        first = st.datasets[0]
        got = dicomweb.retrieve_series(client, first.StudyInstanceUID, first.SeriesInstanceUID)
        assert len(got) == len(st.datasets)
        for mine, theirs in zip(st.datasets, got, strict=True):
            assert theirs.SOPInstanceUID == mine.SOPInstanceUID
            assert theirs.StudyInstanceUID == mine.StudyInstanceUID
            assert theirs.SeriesInstanceUID == mine.SeriesInstanceUID
            assert theirs.PixelData == mine.PixelData
            assert theirs.file_meta.TransferSyntaxUID == mine.file_meta.TransferSyntaxUID


def test_real_instance_is_byte_identical(local_cloud, client, seeded) -> None:
    """WADO-RS hands back the stored Part 10 file byte for byte (no transcoding, no rewritten header)."""
    original = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ids = (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
    session = dicomweb.make_session(local_cloud.pacs)
    orthanc = local_cloud.pacs.url.removesuffix("/dicom-web")
    found = session.post(f"{orthanc}/tools/lookup", data=ids[2], timeout=10).json()
    stored = session.get(f"{orthanc}/instances/{found[0]['ID']}/file", timeout=30).content
    answer = session.get(f"{local_cloud.pacs.url}/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}",
                         headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                         timeout=30)
    splitter = multipart.MultipartSplitter(answer.headers["Content-Type"])
    parts = splitter.feed(answer.content)
    splitter.close()
    assert parts == [stored] and stored[128:132] == b"DICM"
    got = dicomweb.retrieve_instance(client, *ids)
    assert got.PixelData == original.PixelData
    assert (got.Rows, got.Columns, got.PhotometricInterpretation) == (1955, 1841, "MONOCHROME1")


def test_missing_series_is_a_clear_error(client) -> None:
    with pytest.raises(PacsError, match="not found on the PACS"):
        dicomweb.retrieve_series(client, "1.2.3.4", "1.2.3.5")


def test_seeding_twice_does_not_duplicate(local_cloud, client, seeded) -> None:
    orthanc = local_cloud.pacs.url.removesuffix("/dicom-web")
    before = requests.get(f"{orthanc}/statistics", auth=local_cloud.pacs.auth, timeout=10).json()
    result = CliRunner().invoke(seed_command, seeded["args"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["instances_stored"] == 0
    assert report["already_present"] == {"real": 3, "chest": N_CHEST, "hippocampus": N_HIPPO}
    after = requests.get(f"{orthanc}/statistics", auth=local_cloud.pacs.auth, timeout=10).json()
    assert after["CountInstances"] == before["CountInstances"]
    assert len(_my_studies(client, "chest")) == N_CHEST
    # storing an instance again by STOW-RS is harmless too (Orthanc keeps one copy)
    dicomweb.store(client, seeding.plan(chest=1, hippocampus=0, seed=SEED, real=False, chest_size=64)[0].datasets)
    again = requests.get(f"{orthanc}/statistics", auth=local_cloud.pacs.auth, timeout=10).json()
    assert again["CountInstances"] == before["CountInstances"]


def test_seed_without_a_pacs_fails_with_one_clear_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("DICOMFLOW_PACS_URL", raising=False)
    result = CliRunner().invoke(seed_command, ["--chest", "1"])
    assert result.exit_code != 0
    assert "run 'dicomflow up' first" in str(result.exception)
