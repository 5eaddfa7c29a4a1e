"""Shared CLI plumbing: settings from the context, JSON output, rich console."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dicomflow.config import ConfigError, Settings, read_secret_file
from dicomflow.credentials import PacsConnection, local_orthanc_secret_path, pacs_connection


def make_console(**kwargs: Any) -> Console:
    """A console that prints values as they are: no emoji codes (``:secret:`` in an ARN stays text), no
    highlighting; callers fold long values (``soft_wrap``/``overflow="fold"``) rather than cut them."""
    return Console(emoji=False, highlight=False, **kwargs)


console = make_console(stderr=True)
out = make_console()


def value_table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells fold onto more lines instead of ending in "…": ARNs, URIs and UIDs stay whole."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


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
