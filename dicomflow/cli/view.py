"""``dicomflow view``: a study in the local cloud's OHIF viewer."""

from __future__ import annotations

import getpass

import click

from dicomflow.cli.common import console, json_option, pacs_for, print_json, settings_from
from dicomflow.dicom import dicomweb
from dicomflow.dicom.uid import is_uid
from dicomflow.emulator.cloud.viewer import ViewerService
from dicomflow.emulator.viewer.access import TICKET_TTL_S, sign_in_link


@click.command()
@click.option("--study", "study_uid", metavar="UID", help="The StudyInstanceUID to open [the study list].")
@click.option("--user", default=None, help="Who signs in (recorded in the viewer's log) [your login name].")
@click.option("--minutes", type=click.IntRange(1, 8 * 60), default=TICKET_TTL_S // 60, show_default=True,
              help="How long the link may be used (once).")
@click.option("--open", "open_browser", is_flag=True, help="Open the link in your browser too.")
@json_option
@click.pass_context
def view(ctx: click.Context, study_uid: str | None, user: str | None, minutes: int, open_browser: bool,
         as_json: bool) -> None:
    """Print a sign-in link that opens a study in the OHIF viewer of the local cloud.

    The link works once, within --minutes; it signs you in (an HttpOnly session cookie, 8 hours) and opens the
    study with its SEG overlays, SRs and reports. The viewer reads the PACS read-only, with the gateway's own
    credentials: the browser never sees them. On AWS, open studies in your site's OHIF (see the README).
    """
    settings = settings_from(ctx)
    if study_uid is not None and not is_uid(study_uid):
        raise click.BadParameter(f"{study_uid!r} is not a DICOM UID (digits and dots, at most 64 characters)",
                                 param_hint="--study")
    service = ViewerService(settings)
    if not service.healthy():
        raise click.ClickException(f"the viewer is not running at {service.url}: run 'dicomflow up' (on AWS, open "
                                   "studies in your site's OHIF: README, the viewer on AWS)")
    if study_uid is not None and not dicomweb.search_studies(dicomweb.connect(pacs_for(settings)),
                                                             StudyInstanceUID=study_uid):
        raise click.ClickException(f"study {study_uid} is not in the PACS ('dicomflow pacs ls' lists its studies)")
    link = sign_in_link(settings, user or getpass.getuser(), study_uid, minutes * 60)
    if as_json:
        print_json({"url": link, "study": study_uid, "validMinutes": minutes, "singleUse": True})
    else:
        click.echo(link)  # plain: a link is never folded or marked up
        console.print(f"valid once, for {minutes} minutes; it signs you in for 8 hours", highlight=False)
    if open_browser:
        click.launch(link)
