"""The local cloud: a list of services that ``dicomflow up`` starts, ``status`` checks and ``down`` stops.

``up`` is all-or-nothing: if one service fails to come up, everything this call started is stopped
again. The data dir holds PHI (DICOM, S3 objects) and secrets, so it is owner-only.
"""

from __future__ import annotations

from dicomflow.config import Settings, read_state, write_state
from dicomflow.emulator.cloud.moto import MotoService
from dicomflow.emulator.cloud.orthanc import OrthancService
from dicomflow.emulator.cloud.search_api import SearchApiService
from dicomflow.emulator.cloud.service import Service, ServiceError, ServiceStatus
from dicomflow.emulator.cloud.viewer import ViewerService
from dicomflow.paths import private_dir


def default_services(settings: Settings) -> list[Service]:
    """The services of the local cloud, in start order."""
    return [OrthancService(settings), MotoService(settings), SearchApiService(settings), ViewerService(settings)]


class LocalCloud:
    """Start, check and stop the local cloud as one unit."""

    def __init__(self, settings: Settings, services: list[Service] | None = None) -> None:
        self.settings = settings
        self.services = services if services is not None else default_services(settings)

    def _ensure_data_dir(self) -> None:
        try:
            for d in (self.settings.data_dir, self.settings.run_dir, self.settings.log_dir):
                private_dir(d)  # the data dir holds PHI (DICOM, S3 objects) and secrets: 0700
            probe = self.settings.data_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ServiceError(
                f"data dir {self.settings.data_dir} is not writable ({exc.strerror}); "
                "choose another with --data-dir or DICOMFLOW_HOME"
            ) from None

    def up(self) -> list[ServiceStatus]:
        """Start every service not already healthy; all-or-nothing."""
        self._ensure_data_dir()
        started: list[Service] = []
        try:
            for svc in self.services:
                svc.process.clean_stale()
                if svc.process.is_running():
                    if svc.healthy():
                        continue
                    svc.process.stop()
                svc.start()
                started.append(svc)
        except BaseException:
            for svc in reversed(started):
                svc.process.stop()
            raise
        state = read_state(self.settings.data_dir)
        state["settings"] = {k: v for k, v in self.settings.as_dict().items() if k != "data_dir"}
        state["services"] = {s.name: s.url for s in self.services}
        write_state(self.settings.data_dir, state)
        return self.status()

    def status(self) -> list[ServiceStatus]:
        for svc in self.services:
            svc.process.clean_stale()
        return [svc.status() for svc in self.services]

    def down(self) -> list[str]:
        """Stop what ``up`` started (by PID, waiting for exit); data is kept."""
        stopped = []
        for svc in reversed(self.services):
            if svc.process.stop():
                stopped.append(svc.name)
        return stopped
