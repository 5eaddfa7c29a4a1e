"""``dicomflow``: the command line entry point."""

from __future__ import annotations

import logging
import sys

import click
from rich.text import Text

from dicomflow import __version__
from dicomflow.cli import (
    cloud,
    dataset,
    demo,
    deploy,
    endpoints,
    infra,
    label,
    models,
    pacs,
    route,
    search,
    seed,
    train,
    users,
    view,
)
from dicomflow.cli.common import console
from dicomflow.cli.failures import explain, quiet_third_party, record_unexpected

_debug = {"on": False}


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    _debug["on"] = value
    if value:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="DICOMFLOW_HOME",
              help="Where the local cloud keeps its data [~/.dicomflow; env DICOMFLOW_HOME].")
@click.option("--debug", is_flag=True, envvar="DICOMFLOW_DEBUG", is_eager=True, expose_value=False,
              callback=_set_debug, help="Show debug logs, and the traceback of an unexpected failure.")
@click.version_option(__version__, prog_name="dicomflow")
def cli(data_dir: str | None) -> None:
    """dicomflow: Orthanc PACS -> DICOM labeling -> SageMaker training -> async inference.

    Runs locally (real Orthanc, AWS emulated by moto) or against real AWS: with
    AWS_ENDPOINT_URL unset, every AWS call goes to your configured account.
    """


for command in (cloud.up, cloud.down, cloud.status, cloud.env, seed.seed, pacs.pacs, label.label, dataset.dataset,
                train.train, models.models, deploy.deploy, deploy.infer, endpoints.endpoints, route.route,
                search.search, users.users, view.view, infra.infra, demo.demo):
    cli.add_command(command)


def main() -> None:
    """Run the CLI: an expected failure prints one line saying what to do; an unexpected one prints one
    line and where its traceback is (``--debug`` prints the traceback too)."""
    quiet_third_party()
    try:
        rc = cli.main(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        _fail(exc)


def _fail(exc: Exception) -> None:
    message = explain(exc)
    if _debug["on"]:
        console.print_exception()
    if message is not None:
        _say(message)
        sys.exit(1)
    where = record_unexpected(exc)
    hint = f"the traceback is in {where}" if where else "the traceback could not be written"
    _say(f"unexpected {type(exc).__name__}: {exc} ({hint}; `dicomflow --debug ...` prints it; please report it)")
    sys.exit(70)  # EX_SOFTWARE: a bug, not a usage error (2) or an expected failure (1)


def _say(message: str) -> None:
    """``error: <message>`` on stderr, the message as plain text (brackets in it are not markup)."""
    console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
