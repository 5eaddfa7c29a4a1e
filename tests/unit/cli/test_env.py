"""``dicomflow env``: the exports a user's own SDK session needs, with a SageMaker defaults file that exists
(even before ``dicomflow up``) and that the SDK itself reads as telemetry off and a default bucket."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path


def test_env_exports_an_sdk_config_the_sdk_reads_as_telemetry_off(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "DICOMFLOW_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "dicomflow.cli", "env"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    exports = {k: shlex.split(v)[0] for k, v in re.findall(r"^export (\w+)=(.*)$", out, flags=re.M)}
    assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    config = Path(exports["SAGEMAKER_ADMIN_CONFIG_OVERRIDE"])
    assert config.is_file() and config.is_relative_to(home)
    assert home.stat().st_mode & 0o777 == 0o700
    probe = ("from sagemaker.config import load_sagemaker_config; c = load_sagemaker_config()['SageMaker']"
             "['PythonSDK']['Modules']; print(c['TelemetryOptOut'], c['Session']['DefaultS3Bucket'])")
    sdk = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, **exports, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    assert sdk.stdout.strip().splitlines()[-1].split() == ["True", "sagemaker-us-east-1-123456789012"]


def test_env_lines_survive_a_long_and_odd_data_dir(tmp_path: Path) -> None:
    """Each export is one line whatever the terminal width, and a path with spaces is quoted for eval."""
    home = tmp_path / ("a long folder name with spaces " * 4).strip()
    env = {**os.environ, "DICOMFLOW_HOME": str(home), "COLUMNS": "40"}
    out = subprocess.run([sys.executable, "-m", "dicomflow.cli", "env"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    shell = subprocess.run(["bash", "-c", 'eval "$(cat)"; printf %s "$DICOMFLOW_HOME"'], input=out, text=True,
                           capture_output=True, timeout=30, check=True)
    assert shell.stdout == str(home)
