"""The local cloud's search page and GraphQL API as a service of ``dicomflow up``
(:mod:`dicomflow.emulator.search_api.server`, default port 8044)."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from dicomflow.emulator.cloud.moto import client_environment
from dicomflow.emulator.cloud.service import Service


class SearchApiService(Service):
    name = "search"

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.search_port}"

    def ports(self) -> list[int]:
        return [self.settings.search_port]

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        env = dict(os.environ)
        env.update(client_environment(self.settings))
        env["DICOMFLOW_HOME"] = str(self.settings.data_dir)
        argv = [sys.executable, "-m", "dicomflow.emulator.search_api", "--host", self.settings.host,
                "--port", str(self.settings.search_port)]
        return argv, env

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:  # noqa: S310 - our own http URL
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False
