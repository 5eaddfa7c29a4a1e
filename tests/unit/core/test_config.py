from __future__ import annotations

import pytest

from dicomflow.config import ConfigError, Settings, write_secret_file, write_state


def test_precedence_flags_env_state_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("DICOMFLOW_AWS_PORT", raising=False)
    monkeypatch.delenv("DICOMFLOW_ORTHANC_HTTP_PORT", raising=False)
    assert Settings.load(data_dir=tmp_path).orthanc_http_port == 8042
    write_state(tmp_path, {"settings": {"orthanc_http_port": 9000, "aws_port": 9001}})
    assert Settings.load(data_dir=tmp_path).orthanc_http_port == 9000
    monkeypatch.setenv("DICOMFLOW_ORTHANC_HTTP_PORT", "9100")
    s = Settings.load(data_dir=tmp_path)
    assert (s.orthanc_http_port, s.aws_port) == (9100, 9001)
    assert Settings.load(data_dir=tmp_path, orthanc_http_port=9200).orthanc_http_port == 9200
    assert s.dicomweb_url == "http://127.0.0.1:9100/dicom-web"


def test_data_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path))
    assert Settings.load().data_dir == tmp_path


def test_bad_env_value_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DICOMFLOW_AWS_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="DICOMFLOW_AWS_PORT"):
        Settings.load(data_dir=tmp_path)


def test_unknown_flag_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load(data_dir=tmp_path, bogus=1)


def test_secret_file_is_0600(tmp_path):
    p = tmp_path / "s" / "x.json"
    write_secret_file(p, {"a": 1})
    assert p.stat().st_mode & 0o777 == 0o600
    assert p.parent.stat().st_mode & 0o777 == 0o700
