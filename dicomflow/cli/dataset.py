"""``dicomflow dataset export``: a labeling job's output manifest -> a training channel in S3."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dicomflow.cli.common import console, json_option, pacs_for, print_json, settings_from
from dicomflow.dicom import dicomweb
from dicomflow.modeling.contract import TASKS
from dicomflow.training.export import export_dataset


@click.group("dataset")
def dataset() -> None:
    """Training datasets staged from the PACS."""


@dataset.command("export")
@click.option("--manifest", "manifest_uri", required=True, help="The labeling job's output.manifest (s3://...).")
@click.option("--to", "to_uri", required=True, help="Training channel prefix to write (s3://bucket/train/).")
@click.option("--label-attribute", default=None, help="Label attribute name [auto-detected].")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="Task the channel is for [images -> classification2d; series with a SEG -> segmentation3d, "
                   "else classification3d].")
@click.option("--classes", default=None, help="Comma-separated class list [from the manifest].")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 64), help="Parallel fetches.")
@json_option
@click.pass_context
def export(ctx: click.Context, manifest_uri: str, to_uri: str, label_attribute: str | None, task: str | None,
           classes: str | None, workers: int, as_json: bool) -> None:
    """Stage the labeled images/series into S3 with manifest.jsonl + classes.json (re-runs skip staged objects)."""
    settings = settings_from(ctx)
    conn = pacs_for(settings)
    with Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=as_json) as progress:
        bar = progress.add_task("export", total=None)
        result = export_dataset(
            manifest_uri, to_uri, client_factory=lambda: dicomweb.connect(conn), label_attribute=label_attribute,
            task=task, classes=[c.strip() for c in classes.split(",")] if classes else None,
            workers=workers, on_progress=lambda done, total: progress.update(bar, completed=done, total=total))
    if as_json:
        print_json(result.to_dict())
        return
    console.print(f"{result.lines - result.failed_lines}/{result.lines} lines exported for {result.task} "
                  f"({result.staged_objects} objects staged, {result.existing_objects} already there) -> "
                  f"{result.manifest_uri}", soft_wrap=True)
    for failure in result.failures[:10]:
        console.print(f"[yellow]skipped[/yellow] {failure}", highlight=False, soft_wrap=True)
