"""Background processes tracked by PID file: start detached, detect stale PID files, stop by PID.

A PID file records the PID *and* the process start time, so a PID reused by an unrelated
process after a crash is recognised as stale and never signalled. On Linux the start time is the kernel's
own count of clock ticks since boot (``/proc/<pid>/stat``), exact and unmoved by the wall clock; psutil's
``create_time`` (boot time + ticks) shifts by a whole second when the kernel's integer boot time is
recomputed after clock adjustments, which made ``down`` take live services for stale ones. It is kept as
the fallback where there is no ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``), None without it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _same_process(proc: psutil.Process, rec: dict) -> bool:
    ticks = rec.get("start_ticks")
    if isinstance(ticks, int):
        current = start_ticks(proc.pid)
        if current is not None:
            return current == ticks
    return abs(proc.create_time() - rec.get("create_time", 0)) <= 1.0


@dataclass
class ManagedProcess:
    """One named background process with ``<run_dir>/<name>.pid`` and ``<log_dir>/<name>.log``."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_path(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    # ---- inspection ------------------------------------------------------------
    def _record(self) -> dict | None:
        try:
            return json.loads(self.pid_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": -1}

    def pid(self) -> int | None:
        """The PID if the recorded process is alive (and is the one we started), else None."""
        rec = self._record()
        if not rec or rec.get("pid", -1) <= 0:
            return None
        try:
            proc = psutil.Process(rec["pid"])
            if not _same_process(proc, rec):
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return rec["pid"]

    def is_running(self) -> bool:
        return self.pid() is not None

    def clean_stale(self) -> bool:
        """Remove a PID file whose process is gone; True if one was removed."""
        if self.pid_path.exists() and self.pid() is None:
            self.pid_path.unlink(missing_ok=True)
            return True
        return False

    # ---- control ---------------------------------------------------------------
    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv`` in its own session, output appended to the log; returns the PID."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                umask=0o077,  # what the local cloud writes (DICOM storage, S3 objects, logs) is the owner's only
            )
        create_time = psutil.Process(proc.pid).create_time()
        self.pid_path.write_text(json.dumps({"pid": proc.pid, "create_time": create_time,
                                             "start_ticks": start_ticks(proc.pid), "argv": list(argv)}))
        self._popen = proc  # keeps the child reapable while we wait for health
        return proc.pid

    def exited(self) -> bool:
        """True if the process we started in this interpreter has already exited."""
        popen = getattr(self, "_popen", None)
        return popen is not None and popen.poll() is not None

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, wait up to ``timeout`` for exit, then SIGKILL. True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        try:
            proc = psutil.Process(pid)
            os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else proc.terminate()
            try:
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL) if _is_group_leader(pid) else proc.kill()
                proc.wait(5)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
        popen = getattr(self, "_popen", None)
        if popen is not None:
            popen.poll()
        self.pid_path.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.1, abort=None) -> bool:
    """Poll ``predicate`` until true or ``timeout``; stop early when ``abort()`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if abort is not None and abort():
            return False
        time.sleep(interval)
    return predicate()
