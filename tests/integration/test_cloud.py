"""`dicomflow up/down/status` against the real Orthanc and moto processes (own data dir and ports)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from dicomflow.config import Settings
from dicomflow.credentials import local_orthanc_secret_path
from dicomflow.emulator.cloud.cloud import LocalCloud
from dicomflow.emulator.cloud.service import ServiceError, free_port

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, **overrides) -> Settings:
    ports = {"orthanc_http_port": free_port(), "orthanc_dicom_port": free_port(), "aws_port": free_port(),
             "search_port": free_port(), "viewer_port": free_port()}
    ports.update(overrides)
    return Settings.load(data_dir=tmp_path / "home", **ports)


def _port_flags(s: Settings) -> list[str]:
    return ["--orthanc-http-port", str(s.orthanc_http_port), "--orthanc-dicom-port", str(s.orthanc_dicom_port),
            "--aws-port", str(s.aws_port), "--search-port", str(s.search_port), "--viewer-port", str(s.viewer_port)]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLOW_")}
    env["DICOMFLOW_HOME"] = str(settings.data_dir)
    return subprocess.run([sys.executable, "-m", "dicomflow.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _orthancs(data_dir: Path) -> set[int]:
    """Orthanc processes serving ``data_dir`` (other tests' Orthancs are not ours to count)."""
    return {p.pid for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "Orthanc" and str(data_dir) in " ".join(p.info["cmdline"] or [])}


def test_up_down_up_keeps_data_and_is_idempotent(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    up = _cli(s, "up", *_port_flags(s), "--json")
    assert up.returncode == 0, up.stderr
    try:
        report = json.loads(up.stdout)
        assert {x["name"] for x in report["services"]} == {"orthanc", "aws", "search", "viewer"}
        assert all(x["healthy"] for x in report["services"])
        pids = {x["name"]: x["pid"] for x in report["services"]}
        creds = json.loads(local_orthanc_secret_path(s.data_dir).read_text())
        auth = (creds["username"], creds["password"])
        raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        r = requests.post(f"{s.orthanc_url}/instances", data=raw, auth=auth, timeout=10)
        assert r.status_code == 200, r.text
        instance_id = r.json()["ID"]

        # second `up` (ports now come from the state file) changes nothing
        again = _cli(s, "up", "--json")
        assert again.returncode == 0, again.stderr
        assert {x["name"]: x["pid"] for x in json.loads(again.stdout)["services"]} == pids

        status = _cli(s, "status", "--json")
        assert status.returncode == 0 and all(x["healthy"] for x in json.loads(status.stdout)["services"])

        down = _cli(s, "down")
        assert down.returncode == 0, down.stderr
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                       for p in pids.values())
        assert _cli(s, "status").returncode == 3

        assert _cli(s, "up").returncode == 0
        r = requests.get(f"{s.orthanc_url}/instances/{instance_id}/file", auth=auth, timeout=10)
        assert r.status_code == 200 and r.content == raw
    finally:
        _cli(s, "down")


def test_secrets_are_private_and_never_printed(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    cloud = LocalCloud(s)
    out = _cli(s, "up", *_port_flags(s))
    try:
        assert out.returncode == 0, out.stderr
        secret = local_orthanc_secret_path(s.data_dir)
        password = json.loads(secret.read_text())["password"]
        assert secret.stat().st_mode & 0o777 == 0o600
        assert (s.data_dir / "orthanc" / "orthanc.json").stat().st_mode & 0o777 == 0o600
        assert password not in out.stdout + out.stderr
        for log in s.log_dir.glob("*.log"):
            assert password not in log.read_text(errors="replace")
        env_out = _cli(s, "env").stdout
        assert "AWS_ENDPOINT_URL=" in env_out and password not in env_out
    finally:
        cloud.down()


def _modes(root: Path) -> set[tuple[str, int]]:
    """(kind, permission bits) of every folder and file under ``root``."""
    out = {("dir", root.stat().st_mode & 0o777)}
    for path in root.rglob("*"):
        out.add(("dir" if path.is_dir() else "file", path.stat().st_mode & 0o777))
    return out


def test_phi_is_owner_only_and_wider_modes_are_fixed_on_up(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    flags = _port_flags(s)
    assert _cli(s, "up", *flags).returncode == 0
    try:
        creds = json.loads(local_orthanc_secret_path(s.data_dir).read_text())
        raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        r = requests.post(f"{s.orthanc_url}/instances", data=raw, auth=(creds["username"], creds["password"]),
                          timeout=10)
        assert r.status_code == 200
        storage = s.data_dir / "orthanc" / "storage"
        assert s.data_dir.stat().st_mode & 0o777 == 0o700
        assert _modes(storage) == {("dir", 0o700), ("file", 0o600)}
        assert _cli(s, "down").returncode == 0
        for path in [s.data_dir, *storage.rglob("*"), storage]:  # as an older version left them
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        assert _cli(s, "up").returncode == 0
        assert s.data_dir.stat().st_mode & 0o777 == 0o700
        assert _modes(storage) == {("dir", 0o700), ("file", 0o600)}
    finally:
        _cli(s, "down")


def test_busy_port_fails_with_one_clear_line_and_leaves_nothing_running(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", s.aws_port))
        blocker.listen()
        res = _cli(s, "up", *_port_flags(s))
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {s.aws_port}" in lines[0] and "already in use" in lines[0]
    assert "Traceback" not in res.stderr
    assert _orthancs(s.data_dir) == set()  # the Orthanc started before the failure was stopped again
    assert not list((s.data_dir / "run").glob("*.pid"))


def test_stale_pid_file_is_detected_and_cleaned(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    cloud = LocalCloud(s)
    s.run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (s.run_dir / "orthanc.pid").write_text(json.dumps({"pid": dead.pid, "create_time": 1.0}))
    assert [x.running for x in cloud.status()] == [False] * len(cloud.services)
    assert not (s.run_dir / "orthanc.pid").exists()
    try:
        assert all(x.healthy for x in cloud.up())
    finally:
        cloud.down()


def test_service_not_healthy_in_time_is_stopped_again(tmp_path: Path) -> None:
    s = _settings(tmp_path).with_(start_timeout=0.0)
    with pytest.raises(ServiceError, match="orthanc was not healthy within 0s"):
        LocalCloud(s).up()
    assert _orthancs(s.data_dir) == set()
    assert not list(s.run_dir.glob("*.pid"))


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = _cli(_settings(tmp_path).with_(data_dir=blocker / "home"), "up")
    assert res.returncode == 1 and "not writable" in res.stderr and "Traceback" not in res.stderr


def test_missing_orthanc_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomflow.emulator.cloud import orthanc

    monkeypatch.setattr(orthanc, "ORTHANC_BIN", str(tmp_path / "no-such-Orthanc"))
    with pytest.raises(ServiceError, match="apt-get install orthanc"):
        LocalCloud(_settings(tmp_path)).up()
    assert not list((tmp_path / "home" / "run").glob("*.pid"))


def test_orthanc_refuses_requests_without_or_with_wrong_credentials(local_cloud) -> None:
    base = local_cloud.settings.orthanc_url
    assert requests.get(f"{base}/system", timeout=5).status_code == 401
    assert requests.get(f"{base}/dicom-web/studies", timeout=5).status_code == 401
    assert requests.get(f"{base}/system", auth=("dicomflow", "wrong"), timeout=5).status_code == 401
    assert requests.get(f"{base}/system", auth=local_cloud.pacs.auth, timeout=5).status_code == 200


def test_orthanc_config_is_locked_down(local_cloud) -> None:
    cfg = json.loads((local_cloud.settings.data_dir / "orthanc" / "orthanc.json").read_text())
    assert cfg["RemoteAccessAllowed"] is False and cfg["AuthenticationEnabled"] is True
    assert cfg["DicomWeb"]["Host"] == f"127.0.0.1:{local_cloud.settings.orthanc_http_port}"
    assert cfg["HttpCompressionEnabled"] is False


def test_real_sample_round_trips_through_orthanc(local_cloud) -> None:
    raw = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    base, auth = local_cloud.settings.orthanc_url, local_cloud.pacs.auth
    r = requests.post(f"{base}/instances", data=raw, auth=auth, timeout=10)
    assert r.status_code == 200
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    got = requests.get(f"{base}/instances/{r.json()['ID']}/file", auth=auth, timeout=10).content
    assert got == raw and ds.SOPInstanceUID in got.decode("latin-1")
