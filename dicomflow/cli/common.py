"""Shared CLI plumbing: settings from the context, JSON output, rich console."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console

from dicomflow.config import Settings

console = Console(stderr=True)
out = Console()


def settings_from(ctx: click.Context, **flags: Any) -> Settings:
    """Settings for this invocation: the group's --data-dir plus the command's own flags."""
    root = ctx.find_root()
    return Settings.load(data_dir=root.params.get("data_dir"), **flags)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
