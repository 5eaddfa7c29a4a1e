"""``dicomflow up | down | status | env``: the local cloud."""

from __future__ import annotations

import shlex

import click

from dicomflow.cli.common import console, json_option, out, print_json, settings_from, value_table
from dicomflow.emulator.cloud.cloud import LocalCloud
from dicomflow.emulator.cloud.moto import client_environment, write_sdk_config
from dicomflow.emulator.moto import persistence
from dicomflow.paths import private_dir


@click.command()
@click.option("--orthanc-http-port", type=int, help="Orthanc HTTP/DICOMweb port [8042].")
@click.option("--orthanc-dicom-port", type=int, help="Orthanc DICOM port [4242].")
@click.option("--aws-port", type=int, help="Emulated AWS port [4566].")
@click.option("--search-port", type=int, help="Search page and GraphQL API port [8044].")
@click.option("--viewer-port", type=int, help="OHIF viewer port [8045].")
@click.option("--timeout", "start_timeout", type=float, help="Seconds to wait for each service [30].")
@json_option
@click.pass_context
def up(ctx: click.Context, as_json: bool, **flags) -> None:
    """Start the local cloud (Orthanc PACS, emulated AWS, the search page and API, the OHIF viewer) in the background.

    Returns when every service is healthy; running it twice is harmless. The AWS state saved by the
    last run (buckets, stacks, functions, models, endpoints ...) is restored.
    """
    settings = settings_from(ctx, **flags)
    with console.status("starting the local cloud…"):
        statuses = LocalCloud(settings).up()
    restored = persistence.read_restore_report(settings.data_dir)
    _show(statuses, as_json, settings, restored)
    if restored is not None and not as_json:
        style = "yellow" if restored.status == "set-aside" else "dim"
        console.print(f"[{style}]{restored.message}[/{style}]", soft_wrap=True, highlight=False)


@click.command()
@click.option("--wipe", is_flag=True, help="Also forget the saved AWS state (the PACS data is kept).")
@click.pass_context
def down(ctx: click.Context, wipe: bool) -> None:
    """Stop what 'up' started (by PID, waiting for exit). Data is kept, AWS state included, unless --wipe."""
    settings = settings_from(ctx)
    stopped = LocalCloud(settings).down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if wipe:
        forgot = persistence.wipe(settings.data_dir)
        console.print("saved AWS state forgotten" if forgot else "there was no saved AWS state")


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show each service, its URL and health. Exit status 3 if any is down."""
    settings = settings_from(ctx)
    statuses = LocalCloud(settings).status()
    _show(statuses, as_json, settings)
    if not all(s.healthy for s in statuses):
        ctx.exit(3)


@click.command()
@click.pass_context
def env(ctx: click.Context) -> None:
    """Print shell exports for your own boto3 / AWS CLI / SageMaker SDK sessions.

    Use as:  eval "$(dicomflow env)"
    """
    settings = settings_from(ctx)
    private_dir(settings.data_dir)
    write_sdk_config(settings)  # SAGEMAKER_ADMIN_CONFIG_OVERRIDE must name a file that exists, even before 'up'
    exports = client_environment(settings)
    exports["DICOMFLOW_HOME"] = str(settings.data_dir)
    exports["DICOMFLOW_PACS_URL"] = settings.dicomweb_url
    for k, v in exports.items():  # plain lines, shell-quoted: never folded or marked up (eval reads them)
        click.echo(f"export {k}={shlex.quote(v)}")


def _show(statuses, as_json: bool, settings, restored: persistence.RestoreReport | None = None) -> None:
    if as_json:
        shown = {"data_dir": str(settings.data_dir), "services": [s.as_dict() for s in statuses]}
        if restored is not None:
            shown["awsState"] = {"status": restored.status, "message": restored.message}
        print_json(shown)
        return
    table = value_table("service", "url", "state", "pid", title=f"local cloud ({settings.data_dir})")
    for s in statuses:
        state = "[green]healthy" if s.healthy else ("[yellow]running, not healthy" if s.running else "[red]stopped")
        table.add_row(s.name, s.url, state, str(s.pid or "-"))
    out.print(table)
