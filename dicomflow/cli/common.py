"""Shared CLI plumbing: settings from the context, JSON output, rich console."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console

from dicomflow.config import ConfigError, Settings, read_secret_file
from dicomflow.credentials import PacsConnection, local_orthanc_secret_path, pacs_connection

console = Console(stderr=True)
out = Console()


def settings_from(ctx: click.Context, **flags: Any) -> Settings:
    """Settings for this invocation: the group's --data-dir plus the command's own flags."""
    root = ctx.find_root()
    return Settings.load(data_dir=root.params.get("data_dir"), **flags)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def pacs_for(settings: Settings) -> PacsConnection:
    """The PACS named by the environment / secret, else the local Orthanc of ``settings.data_dir``."""
    if os.environ.get("DICOMFLOW_PACS_URL") or os.environ.get("DICOMFLOW_PACS_SECRET_ARN"):
        return pacs_connection()
    secret = local_orthanc_secret_path(settings.data_dir)
    if not settings.state_path.exists() or not secret.exists():
        raise ConfigError(f"no local PACS in {settings.data_dir}: run 'dicomflow up' first "
                          "(or set DICOMFLOW_PACS_URL and credentials for another PACS)")
    creds = read_secret_file(secret)
    return PacsConnection(settings.dicomweb_url, creds["username"], creds["password"])
