"""``dicomflow endpoints ls|delete``: the SageMaker endpoints with their instances, scaling bounds and backlog."""

from __future__ import annotations

import click

from dicomflow.cli.common import json_option, out, print_json, value_table
from dicomflow.inference import endpoint as ep
from dicomflow.inference.scaling import list_endpoints


@click.group()
def endpoints() -> None:
    """SageMaker endpoints: instances, autoscaling bounds, backlog; delete one."""


@endpoints.command("ls")
@json_option
def ls(as_json: bool) -> None:
    """List endpoints with their instances, scaling bounds and backlog, newest first."""
    rows = list_endpoints()
    if as_json:
        print_json(rows)
        return
    table = value_table("endpoint", "status", "instances (now / desired)", "scaling", "backlog (max, last minute)")
    for row in rows:
        bounds = f"{row['minInstances']}..{row['maxInstances']}" if "maxInstances" in row else "fixed"
        backlog = "-" if row.get("backlog") is None else f"{row['backlog']:g}"
        table.add_row(row["endpoint"], row.get("status") or "-",
                      f"{row.get('instances', '-')} / {row.get('desiredInstances', '-')}", bounds, backlog)
    out.print(table)


@endpoints.command("delete")
@click.argument("name")
@json_option
def delete(name: str, as_json: bool) -> None:
    """Delete endpoint NAME with its endpoint config and models (the model artifacts in S3 stay)."""
    done = ep.delete(name)
    if as_json:
        print_json(done)
        return
    out.print(f"deleted endpoint {done['endpoint']}", soft_wrap=True, highlight=False)
    if done["endpointConfig"]:
        out.print(f"deleted endpoint config {done['endpointConfig']}", soft_wrap=True, highlight=False)
    for model in done["models"]:
        out.print(f"deleted model {model}", soft_wrap=True, highlight=False)
