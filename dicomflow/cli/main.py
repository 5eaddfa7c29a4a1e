"""``dicomflow``: the command line entry point."""

from __future__ import annotations

import sys

import click

from dicomflow import __version__
from dicomflow.cli import cloud, dataset, demo, deploy, infra, label, seed, train
from dicomflow.cli.common import console
from dicomflow.errors import DicomflowError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="DICOMFLOW_HOME",
              help="Where the local cloud keeps its data [~/.dicomflow; env DICOMFLOW_HOME].")
@click.version_option(__version__, prog_name="dicomflow")
def cli(data_dir: str | None) -> None:
    """dicomflow: Orthanc PACS -> DICOM labeling -> SageMaker training -> async inference.

    Runs locally (real Orthanc, AWS emulated by moto) or against real AWS: with
    AWS_ENDPOINT_URL unset, every AWS call goes to your configured account.
    """


for command in (cloud.up, cloud.down, cloud.status, cloud.env, seed.seed, label.label, dataset.dataset,
                train.train, deploy.deploy, deploy.infer, infra.infra, demo.demo):
    cli.add_command(command)


def main() -> None:
    """Run the CLI; expected failures print one line, no traceback."""
    try:
        rc = cli.main(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        console.print("aborted")
        sys.exit(130)
    except DicomflowError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
