"""The local cloud's search page and GraphQL API as a service of ``dicomflow up``
(:mod:`dicomflow.emulator.search_api.server`, default port 8044)."""

from __future__ import annotations

from dicomflow.emulator.cloud.module_service import ModuleService


class SearchApiService(ModuleService):
    name = "search"
    module = "dicomflow.emulator.search_api"
    port_setting = "search_port"
