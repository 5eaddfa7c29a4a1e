"""One process of the local cloud: :class:`Service` (prerequisites, config files, command line, health
check), and the port and executable checks every service uses.

A service plugs in by subclassing :class:`Service` and being listed in
:func:`dicomflow.emulator.cloud.cloud.default_services`.
"""

from __future__ import annotations

import errno
import shutil
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from dicomflow.config import Settings
from dicomflow.emulator.cloud.process import ManagedProcess, wait_until
from dicomflow.errors import DicomflowError


class ServiceError(DicomflowError):
    """A service cannot start; the message is one line saying what is wrong and how to fix it."""


@dataclass
class ServiceStatus:
    name: str
    url: str
    running: bool
    healthy: bool
    pid: int | None

    def as_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "running": self.running, "healthy": self.healthy,
                "pid": self.pid}


class Service(ABC):
    """One process of the local cloud."""

    name: str = "service"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = ManagedProcess(self.name, settings.run_dir, settings.log_dir)

    @property
    @abstractmethod
    def url(self) -> str:
        """Where users reach the service."""

    @abstractmethod
    def ports(self) -> list[int]:
        """TCP ports the service listens on (checked free before start)."""

    def check_prerequisites(self) -> None:
        """Raise :class:`ServiceError` if something the service needs is not installed."""

    def prepare(self) -> None:
        """Write config files / secrets before start (idempotent)."""

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str] | None]:
        """argv and environment (None = inherit) of the process."""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the service answers as expected."""

    def status(self) -> ServiceStatus:
        pid = self.process.pid()
        return ServiceStatus(self.name, self.url, pid is not None, pid is not None and self.healthy(), pid)

    def start(self) -> None:
        self.check_prerequisites()
        for port in self.ports():
            ensure_port_free(port, self.name)
        self.prepare()
        argv, env = self.command()
        self.process.start(argv, env=env, cwd=self.settings.data_dir)
        ok = wait_until(self.healthy, self.settings.start_timeout, interval=0.1, abort=self.process.exited)
        if not ok:
            died = self.process.exited()
            tail = self.process.log_tail(1)
            self.process.stop()
            what = "exited during start-up" if died else f"was not healthy within {self.settings.start_timeout:.0f}s"
            raise ServiceError(f"{self.name} {what} (last log line: {tail.strip() or '-'}); "
                               f"see {self.process.log_path}")


def ensure_port_free(port: int, who: str) -> None:
    """Raise ServiceError if ``port`` is taken on any interface (Orthanc binds them all)."""
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 - probe only, closed at once
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServiceError(
                        f"port {port} for {who} is already in use; stop what uses it or choose another port "
                        f"(see 'dicomflow up --help')"
                    ) from None
                raise


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1 (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_executable(path_or_name: str, package: str) -> str:
    found = shutil.which(path_or_name) or (path_or_name if Path(path_or_name).exists() else None)
    if not found:
        raise ServiceError(f"{path_or_name} not found; install the Debian package '{package}' "
                           f"(apt-get install {package}, or run 'make setup')")
    return found
