"""The local cloud's OHIF viewer and its read-only DICOMweb gateway as a service of ``dicomflow up``
(:mod:`dicomflow.emulator.viewer.gateway`, default port 8045)."""

from __future__ import annotations

from dicomflow.emulator.cloud.module_service import ModuleService


class ViewerService(ModuleService):
    name = "viewer"
    module = "dicomflow.emulator.viewer"
    port_setting = "viewer_port"
