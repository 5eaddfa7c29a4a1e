"""A service of the local cloud that is an HTTP server module of this checkout (the search API, the viewer):
how ``dicomflow up`` starts and checks it, and the ``main`` each such module runs."""

from __future__ import annotations

import argparse
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from dicomflow import webserver
from dicomflow.config import Settings
from dicomflow.emulator.cloud.moto import module_command
from dicomflow.emulator.cloud.service import Service


class ModuleService(Service):
    """``python -m MODULE --host --port`` on the port setting ``port_setting``, healthy when ``/healthz`` is 200."""

    module: str
    port_setting: str

    @property
    def port(self) -> int:
        return int(getattr(self.settings, self.port_setting))

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def ports(self) -> list[int]:
        return [self.port]

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        return module_command(self.settings, self.module, self.port)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:  # noqa: S310 - our own http URL
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False


def serve_main(description: str, app: Callable[[Settings], Any], max_body: int, argv: list[str] | None) -> None:
    """The ``main`` of a module service: ``--host``/``--port``, INFO logs, ``app(settings)`` served until SIGTERM."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    webserver.serve(app(Settings.load()), webserver.bind(args.host, args.port),
                    webserver.Limits.from_env(max_body=max_body))
