"""The emulated Lambda's Init phase: within its limit, retried past it, and a timeout counted from the invoke."""

from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace
from typing import Any

import pytest

from dicomflow.emulator.moto import lambda_host

INIT_LIMIT_S = 0.5  # stands in for Lambda's 10 s so that the test is short


def _function(init_sleep_s: float, timeout_s: int) -> Any:
    code = ("import time\n"
            f"time.sleep({init_sleep_s})\n"
            "print('init-ran')\n"
            "def handler(event, context):\n"
            "    return {'echo': event['marker']}\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", code)
    name = f"init-{init_sleep_s}-{timeout_s}"
    return SimpleNamespace(
        package_type="Zip", code_bytes=buf.getvalue(), handler="app.handler", timeout=timeout_s,
        memory_size=128, run_time="python3.11", environment_vars={}, version="$LATEST", region="us-east-1",
        function_name=name, function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        logs_group_name=f"/aws/lambda/{name}", reserved_concurrency=None, logs_backend=None)


@pytest.fixture(autouse=True)
def _short_init_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path))
    monkeypatch.setattr(lambda_host, "INIT_TIMEOUT_S", INIT_LIMIT_S)
    yield
    lambda_host._pools.close()
    lambda_host._pools = lambda_host._Pools()


def test_an_init_within_its_limit_is_reported_apart_from_the_invoke() -> None:
    inv = lambda_host.execute(_function(init_sleep_s=0.0, timeout_s=5), {"marker": 1})
    assert inv.error is None and json.loads(inv.payload) == {"echo": 1}
    assert inv.init_ms is not None and inv.init_ms < INIT_LIMIT_S * 1000
    assert "Init Duration:" in inv.logs and "Status: timeout" not in inv.logs


def test_an_init_past_its_limit_is_retried_within_the_function_timeout() -> None:
    inv = lambda_host.execute(_function(init_sleep_s=1.0, timeout_s=5), {"marker": 2})
    assert inv.error is None, inv.payload
    assert json.loads(inv.payload) == {"echo": 2}
    assert "INIT_REPORT Init Duration: 500.00 ms\tPhase: init\tStatus: timeout" in inv.logs
    assert inv.logs.count("init-ran") == 1  # the first Init was killed before it finished
    assert inv.init_ms is None and inv.duration_ms >= 1000  # the retried Init is part of the invoke


def test_an_init_past_the_function_timeout_too_ends_in_a_task_timeout() -> None:
    inv = lambda_host.execute(_function(init_sleep_s=3.0, timeout_s=1), {"marker": 3})
    assert inv.error == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in json.loads(inv.payload)["errorMessage"]
