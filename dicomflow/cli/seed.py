"""``dicomflow seed``: load sample studies into the PACS (thin wrapper over :mod:`dicomflow.demo.seed`)."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dicomflow.cli.common import console, json_option, pacs_for, print_json, settings_from
from dicomflow.demo import seed as seeding
from dicomflow.dicom import dicomweb


@click.command("seed")
@click.option("--chest", default=24, show_default=True, type=click.IntRange(min=0),
              help="Synthetic chest radiographs (one study each) with known CheXpert labels.")
@click.option("--hippocampus", default=6, show_default=True, type=click.IntRange(min=0),
              help="Synthetic hippocampus MR series (one study each) with label volumes.")
@click.option("--seed", "seed_value", default=0, show_default=True, type=click.IntRange(min=0),
              help="Random seed: the same seed gives the same studies and UIDs.")
@click.option("--chest-size", default=256, show_default=True, type=click.IntRange(min=32, max=4096),
              help="Chest image width and height in pixels.")
@click.option("--no-real", is_flag=True, help="Skip the real pydicom-data images (RG1_UNCR, MR2_UNCR, 693_UNCR).")
@json_option
@click.pass_context
def seed(ctx: click.Context, chest: int, hippocampus: int, seed_value: int, chest_size: int, no_real: bool,
         as_json: bool) -> None:
    """Load sample studies into the PACS by STOW-RS.

    The seeded truth (chest findings, hippocampus label volumes) goes to a sidecar under
    <data-dir>/seed/ for scoring demos; nothing else reads it. Bring label volumes into training with
    `dicomflow label import`. Each chest study also gets a free-text radiology report in
    <data-dir>/reports/<StudyInstanceUID>.json (with its AccessionNumber), what `dicomflow search`
    analyses. Seeding again stores nothing twice: studies already present are reported as such.
    """
    settings = settings_from(ctx)
    client = dicomweb.connect(pacs_for(settings))
    studies = seeding.plan(chest=chest, hippocampus=hippocampus, seed=seed_value, real=not no_real,
                           chest_size=chest_size)
    total = sum(len(st.datasets) for st in studies)
    with Progress(TextColumn("[bold]seeding[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=as_json, disable=as_json or not total) as bar:
        task = bar.add_task("seed", total=total)
        result = seeding.seed(client, settings.data_dir, studies, progress=lambda n: bar.advance(task, n))
    if as_json:
        print_json(result.as_dict())
        return
    for kind in ("real", "chest", "hippocampus"):
        stored, present = result.stored.get(kind, 0), result.already_present.get(kind, 0)
        if stored or present:
            console.print(f"{kind:12} {stored} stored, {present} already present", highlight=False)
    console.print(f"{result.instances_stored} instance(s) stored; seeded truth in {result.sidecar}", highlight=False)
    if result.reports:
        console.print(f"{result.reports} report(s) in {seeding.reports_dir(settings.data_dir)}", highlight=False)
