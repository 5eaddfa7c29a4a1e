"""Your own DICOM in and out of the real Orthanc: `dicomflow pacs import / ls / export`, and DIMSE C-ECHO /
C-STORE from DCMTK's echoscu / storescu (the way a modality sends)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet

from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.emulator.cloud.orthanc import AE_TITLE

pytestmark = pytest.mark.integration


def _series(seed: int, slices: int = 4) -> list[pydicom.Dataset]:
    return synthetic.hippocampus_series(1, seed=seed, shape=(8, 16, 16))[0].datasets[:slices]


def _write(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, dicomweb.ensure_file_meta(ds), enforce_file_format=True)
    return path


def _cli(local_cloud, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomflow.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **local_cloud.env})


def _instances(client, study_uid: str) -> int:
    return len(dicomweb.search_instances(client, study_uid))


def test_import_a_folder_of_dicom_non_dicom_a_broken_file_a_zip_and_a_dicomdir(local_cloud, tmp_path):
    client = dicomweb.connect(local_cloud.pacs)
    plain, zipped, indexed = _series(9101), _series(9102), _series(9103)
    folder = tmp_path / "incoming"
    for i, ds in enumerate(plain):
        _write(ds, folder / "plain" / f"IM{i:04d}")  # no extension, as on many CDs
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 300)
    broken = folder / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00garbage")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, ds in enumerate(zipped):
            member = io.BytesIO()
            pydicom.dcmwrite(member, dicomweb.ensure_file_meta(ds), enforce_file_format=True)
            zf.writestr(f"study/{i}.dcm", member.getvalue())
        zf.writestr("README.txt", "an archive")
    (folder / "archive.zip").write_bytes(buf.getvalue())
    media = tmp_path / "cd"
    file_set = FileSet()
    for ds in indexed:
        file_set.add(dicomweb.ensure_file_meta(ds))
    file_set.write(media)

    proc = _cli(local_cloud, "pacs", "import", str(folder), str(media / "DICOMDIR"), "--json")
    assert proc.returncode == 1, proc.stderr  # the broken file is a failure, reported, and the rest went in
    report = json.loads(proc.stdout)
    assert report["stored"] == len(plain) + len(zipped) + len(indexed)
    assert report["skippedNotDicom"] == 3  # notes.txt, scan.jpg, the zip's README.txt
    assert report["dicomdirs"] == 1
    assert [f["file"] for f in report["failed"]] == [str(broken)]
    assert "not readable as DICOM" in report["failed"][0]["reason"]
    assert "Traceback" not in proc.stderr and "1 file(s) could not be imported" in proc.stderr
    for series in (plain, zipped, indexed):
        assert _instances(client, series[0].StudyInstanceUID) == len(series)

    again = _cli(local_cloud, "pacs", "import", str(folder / "plain"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["stored"] == len(plain)  # idempotent: nothing stored twice
    assert _instances(client, plain[0].StudyInstanceUID) == len(plain)


def test_ls_and_export_a_study(local_cloud, tmp_path):
    series = _series(9104, slices=3)
    folder = tmp_path / "in"
    for i, ds in enumerate(series):
        _write(ds, folder / f"{i}.dcm")
    assert _cli(local_cloud, "pacs", "import", str(folder)).returncode == 0
    study_uid = series[0].StudyInstanceUID

    studies = json.loads(_cli(local_cloud, "pacs", "ls", "--json").stdout)
    mine = [s for s in studies if s["studyInstanceUID"] == study_uid]
    assert len(mine) == 1 and mine[0]["series"] == 1 and mine[0]["instances"] == 3
    assert mine[0]["patientID"] == series[0].PatientID and mine[0]["modalities"] == "MR"
    listed = json.loads(_cli(local_cloud, "pacs", "ls", "--study", study_uid, "--json").stdout)
    assert [s["seriesInstanceUID"] for s in listed] == [series[0].SeriesInstanceUID]
    assert listed[0]["instances"] == 3

    out = tmp_path / "out"
    proc = _cli(local_cloud, "pacs", "export", "--study", study_uid, "--to", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    files = sorted(Path(f) for f in json.loads(proc.stdout)["files"])
    assert len(files) == 3
    exported = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    for ds in series:
        assert exported[ds.SOPInstanceUID].pixel_array.tobytes() == ds.pixel_array.tobytes()
    assert (out / study_uid).stat().st_mode & 0o777 == 0o700

    missing = _cli(local_cloud, "pacs", "ls", "--study", "1.2.3.999999")
    assert missing.returncode == 1 and "no study 1.2.3.999999" in missing.stderr
    bad = _cli(local_cloud, "pacs", "export", "--study", "not-a-uid", "--to", str(out))
    assert bad.returncode == 1 and "is not a DICOM UID" in bad.stderr


def _dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is missing: `make setup` installs Debian's dcmtk"
    return path


def test_a_modality_sends_by_dimse_and_the_study_is_found_by_qido(local_cloud, tmp_path):
    settings = local_cloud.settings
    port = str(settings.orthanc_dicom_port)
    echo = subprocess.run([_dcmtk("echoscu"), "-aet", settings.modality_aet, "-aec", AE_TITLE, "127.0.0.1",
                           port], capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    stranger = subprocess.run([_dcmtk("echoscu"), "-aet", "STRANGER", "-aec", AE_TITLE, "127.0.0.1", port],
                              capture_output=True, text=True, timeout=60)
    assert stranger.returncode != 0  # an unknown calling AE title is refused

    series = _series(9105, slices=5)
    for i, ds in enumerate(series):
        _write(ds, tmp_path / "send" / f"{i}.dcm")
    sent = subprocess.run([_dcmtk("storescu"), "-aet", settings.modality_aet, "-aec", AE_TITLE, "127.0.0.1",
                           port, "+sd", str(tmp_path / "send")], capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    client = dicomweb.connect(local_cloud.pacs)
    assert _instances(client, series[0].StudyInstanceUID) == len(series)
    found = dicomweb.search_studies(client, StudyInstanceUID=series[0].StudyInstanceUID)
    assert len(found) == 1
