"""The local cloud's search page and GraphQL API as a service of ``dicomflow up``
(:mod:`dicomflow.emulator.search_api.server`, default port 8044)."""

from __future__ import annotations

import urllib.error
import urllib.request

from dicomflow.emulator.cloud.moto import module_command
from dicomflow.emulator.cloud.service import Service


class SearchApiService(Service):
    name = "search"

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.search_port}"

    def ports(self) -> list[int]:
        return [self.settings.search_port]

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        return module_command(self.settings, "dicomflow.emulator.search_api", self.settings.search_port)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:  # noqa: S310 - our own http URL
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False
