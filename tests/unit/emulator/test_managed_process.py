"""A PID file names its process by the kernel's start ticks: a process is ours while they match, whatever the
wall clock (and psutil's create_time with it) did meanwhile, and a reused PID is stale."""

from __future__ import annotations

import json
import subprocess
import sys

from dicomflow.emulator.cloud.process import ManagedProcess, start_ticks


def test_the_start_ticks_decide_whether_a_process_is_ours(tmp_path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        managed = ManagedProcess("probe", tmp_path, tmp_path)
        ticks = start_ticks(child.pid)
        assert isinstance(ticks, int) and ticks > 0
        # create_time a second and a half off (the kernel's boot time was recomputed): still ours
        managed.pid_path.write_text(json.dumps({"pid": child.pid, "create_time": 1.5, "start_ticks": ticks}))
        assert managed.pid() == child.pid
        # other ticks: another process that got the PID, never ours
        managed.pid_path.write_text(json.dumps({"pid": child.pid, "create_time": 1.5, "start_ticks": ticks + 1}))
        assert managed.pid() is None and managed.clean_stale() and not managed.pid_path.exists()
    finally:
        child.kill()
        child.wait()
