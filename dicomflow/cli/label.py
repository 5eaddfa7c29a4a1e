"""``dicomflow label ...``: Ground Truth labeling. ``manifest`` builds the input manifest from a QIDO query.

Other subcommands (``start``, ``status``) attach to the :data:`label` group from their own modules
(``label.add_command(...)``).
"""

from __future__ import annotations

import sys
import time

import click

from dicomflow import dicomweb, manifest
from dicomflow.cli.common import console, json_option, pacs_for, print_json, settings_from
from dicomflow.orthanc_ids import OrthancLookupError, OrthancRest


@click.group("label")
def label() -> None:
    """Label DICOM images and series with a Ground Truth custom workflow (locally or on AWS)."""


@label.command("manifest")
@click.option("--query", "queries", multiple=True, metavar="KEYWORD=VALUE",
              help="QIDO filter, repeatable (e.g. --query Modality=CR --query StudyDate=20200101-). "
                   "None: everything on the PACS.")
@click.option("--per", type=click.Choice(manifest.PER_LEVELS), default="instance", show_default=True,
              help="One task per instance (images) or per series (volumes).")
@click.option("--to", "target", required=True, metavar="s3://BUCKET/KEY | -",
              help="Where to write the JSON Lines manifest ('-' prints it).")
@click.option("--source-format", type=click.Choice(manifest.SOURCE_FORMATS), default="orthanc-id",
              show_default=True, help="Orthanc IDs, or UID JSON objects (any DICOMweb PACS).")
@click.option("--via", type=click.Choice(["orthanc", "qido"]), default=None,
              help="How to search: Orthanc's /tools/find (fast; default for orthanc-id) or QIDO-RS "
                   "(any DICOMweb PACS; default for uids).")
@json_option
@click.pass_context
def manifest_cmd(ctx: click.Context, queries: tuple[str, ...], per: str, target: str, source_format: str,
                 via: str | None, as_json: bool) -> None:
    """Build Ground Truth's input manifest ({"source": ...} per line) from a PACS query.

    The whole manifest is built first and written with one PUT: it appears complete or not at all.
    """
    filters = manifest.parse_query_filters(queries)
    if target != "-":
        manifest.check_object_uri(target)  # a bad URI fails before the PACS is queried
    settings = settings_from(ctx)
    started = time.perf_counter()
    via = via or ("orthanc" if source_format == "orthanc-id" else "qido")
    if via == "orthanc" and source_format != "orthanc-id":
        raise click.UsageError("--via orthanc gives Orthanc IDs; use it with --source-format orthanc-id")
    conn = pacs_for(settings)
    if via == "orthanc":
        try:
            lines = manifest.orthanc_input_lines(OrthancRest(conn), filters, per)
        except OrthancLookupError as exc:
            raise manifest.ManifestError(str(exc)) from None
    else:
        lines = manifest.query_input_lines(dicomweb.connect(conn), filters, per, source_format)
    if not lines:
        what = " ".join(queries) or "(no filter)"
        raise manifest.ManifestError(f"no {per} on the PACS matches {what}; nothing written "
                                     "(check the query, or run 'dicomflow seed')")
    if target == "-":
        sys.stdout.buffer.write(manifest.dumps_jsonl(lines))
        return
    count = manifest.write_jsonl_s3(target, lines)
    seconds = round(time.perf_counter() - started, 3)
    if as_json:
        print_json({"to": target, "per": per, "via": via, "lines": count, "filters": filters, "seconds": seconds})
    else:
        console.print(f"wrote {count} {per} line(s) to {target} in {seconds:.2f}s", highlight=False)
