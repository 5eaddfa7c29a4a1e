"""The local cloud's OHIF viewer and its read-only DICOMweb gateway as a service of ``dicomflow up``
(:mod:`dicomflow.emulator.viewer.gateway`, default port 8045)."""

from __future__ import annotations

import urllib.error
import urllib.request

from dicomflow.emulator.cloud.moto import module_command
from dicomflow.emulator.cloud.service import Service


class ViewerService(Service):
    name = "viewer"

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.viewer_port}"

    def ports(self) -> list[int]:
        return [self.settings.viewer_port]

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        return module_command(self.settings, "dicomflow.emulator.viewer", self.settings.viewer_port)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:  # noqa: S310 - our own http URL
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False
