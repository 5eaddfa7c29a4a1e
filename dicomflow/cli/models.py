"""``dicomflow models ls|approve|reject``: model versions in the SageMaker Model Registry."""

from __future__ import annotations

import click

from dicomflow.cli.common import console, json_option, out, print_json, value_table
from dicomflow.modeling import registry


@click.group()
def models() -> None:
    """Registered model versions (Model Package Groups): list, approve, reject."""


def _metrics(v: registry.ModelVersion) -> str:
    return ", ".join(f"{k.removeprefix('metric.')} {val}" for k, val in sorted(v.properties.items())
                     if k.startswith("metric.") and ("best" in k or "test" in k or "auroc" in k or "dice" in k))


@models.command("ls")
@click.option("--group", help="One Model Package Group [all of them].")
@json_option
def ls(group: str | None, as_json: bool) -> None:
    """List versions, newest first: status, task, key metrics, artifact."""
    rows = [v for g in ([group] if group else registry.groups()) for v in registry.versions(g)]
    if as_json:
        print_json([v.as_dict() for v in rows])
        return
    table = value_table("group", "version", "status", "task", "metrics", "model data")
    for v in rows:
        table.add_row(v.group, str(v.version), v.status, v.properties.get("task", "-"), _metrics(v) or "-",
                      v.model_data)
    out.print(table)


def _set(group: str, version: int, status: str, note: str | None, as_json: bool) -> None:
    v = registry.set_status(group, version, status, note)
    if as_json:
        print_json(v.as_dict())
    else:
        console.print(f"{v.group} version {v.version}: {v.status}", highlight=False)


@models.command("approve")
@click.argument("group")
@click.argument("version", type=click.IntRange(1))
@click.option("--note", help="Why (ApprovalDescription).")
@json_option
def approve(group: str, version: int, note: str | None, as_json: bool) -> None:
    """Approve a version for deployment.

    `dicomflow deploy --model-package-group GROUP` serves the newest approved version."""
    _set(group, version, registry.APPROVED, note, as_json)


@models.command("reject")
@click.argument("group")
@click.argument("version", type=click.IntRange(1))
@click.option("--note", help="Why (ApprovalDescription).")
@json_option
def reject(group: str, version: int, note: str | None, as_json: bool) -> None:
    """Reject a version: it is never deployed from the group."""
    _set(group, version, registry.REJECTED, note, as_json)
