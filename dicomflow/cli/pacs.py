"""``dicomflow pacs``: your own studies in and out of the PACS (import, ls, export)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from dicomflow.cli.common import console, json_option, out, pacs_for, print_json, settings_from, value_table
from dicomflow.dicom import dicomweb, importer
from dicomflow.dicom import json as dj
from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError
from dicomflow.paths import private_dir

_STUDY_FIELDS = ("PatientName", "StudyDescription", "NumberOfStudyRelatedSeries",
                 "NumberOfStudyRelatedInstances", "ModalitiesInStudy")
_SERIES_FIELDS = ("SeriesDescription", "NumberOfSeriesRelatedInstances", "Modality", "SeriesNumber")


@click.group()
def pacs() -> None:
    """Bring your own studies into the PACS, list what it holds, export a study to files.

    Modalities can also send by DIMSE C-STORE to the local Orthanc (AE title DICOMFLOW, port 4242, from
    127.0.0.1 with the calling AE title MODALITY; see the README's "Send from a modality").
    """


@pacs.command("import", short_help="Store DICOM files, folders, .zip archives and DICOMDIRs by STOW-RS.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--batch-mb", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Largest STOW-RS request, in MB.")
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, paths: tuple[str, ...], batch_mb: int, as_json: bool) -> None:
    """Store DICOM files, folders (recursively), .zip archives and DICOMDIR file sets by STOW-RS.

    Non-DICOM files are skipped and counted; a file that cannot be read or that the PACS refuses is
    reported and the others go on. Importing the same files again stores nothing twice. Exit status 1
    if any file failed.
    """
    client = dicomweb.connect(pacs_for(settings_from(ctx)))
    report = importer.ImportReport()
    sources = importer.find_sources(paths, report)
    total = sum(s.size for s in sources)
    with Progress(TextColumn("[bold]importing[/bold]"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                  console=console, transient=as_json, disable=as_json or not total) as bar:
        task = bar.add_task("import", total=total)
        importer.import_paths(client, paths, max_batch_bytes=batch_mb * 1024 * 1024, sources=sources,
                              report=report, progress=lambda n: bar.advance(task, n))
    if as_json:
        print_json(report.summary())
    else:
        console.print(f"{report.stored} instance(s) stored ({report.stored_bytes / 1e6:.1f} MB) in "
                      f"{len(report.studies)} study(ies); {report.skipped} non-DICOM file(s) skipped"
                      + (f"; {report.dicomdirs} DICOMDIR(s) read" if report.dicomdirs else ""))
        for name, reason in report.failed.items():
            # file names and reasons as plain text: a "[...]" in a name is not markup
            console.print(Text.assemble(("failed:", "red"), f" {name}: {reason}"), soft_wrap=True)
    if report.failed:
        raise DicomflowError(f"{len(report.failed)} file(s) could not be imported (listed above)")


@pacs.command("ls", short_help="List studies (or one study's series) with counts.")
@click.option("--study", "study_uid", help="List this study's series instead of all studies.")
@json_option
@click.pass_context
def ls_cmd(ctx: click.Context, study_uid: str | None, as_json: bool) -> None:
    """List the studies in the PACS (patient, date, modalities, series and instance counts), or one study's series."""
    client = dicomweb.connect(pacs_for(settings_from(ctx)))
    if study_uid is not None:
        _check_uid(study_uid)
        rows = [{"seriesInstanceUID": dj.text(s, "SeriesInstanceUID"), "modality": dj.text(s, "Modality"),
                 "seriesNumber": dj.value(s, "SeriesNumber"), "description": dj.text(s, "SeriesDescription"),
                 "instances": dj.value(s, "NumberOfSeriesRelatedInstances")}
                for s in dicomweb.search_series(client, study_uid, fields=list(_SERIES_FIELDS))]
        if not rows and not dicomweb.search_studies(client, StudyInstanceUID=study_uid):
            raise DicomflowError(f"no study {study_uid} in the PACS: `dicomflow pacs ls` lists them")
        columns = ("seriesInstanceUID", "modality", "seriesNumber", "description", "instances")
    else:
        rows = [{"patientID": dj.text(s, "PatientID"), "patientName": _person_name(s),
                 "studyDate": dj.text(s, "StudyDate"), "modalities": "/".join(dj.values(s, "ModalitiesInStudy")),
                 "description": dj.text(s, "StudyDescription"), "studyInstanceUID": dj.text(s, "StudyInstanceUID"),
                 "series": dj.value(s, "NumberOfStudyRelatedSeries"),
                 "instances": dj.value(s, "NumberOfStudyRelatedInstances")}
                for s in dicomweb.search_studies(client, fields=list(_STUDY_FIELDS))]
        rows.sort(key=lambda r: (r["patientID"], r["studyDate"], r["studyInstanceUID"]))
        columns = ("patientID", "patientName", "studyDate", "modalities", "description", "studyInstanceUID",
                   "series", "instances")
    if as_json:
        print_json(rows)
        return
    table = value_table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    out.print(table)


@pacs.command("export")
@click.option("--study", "study_uid", required=True, help="StudyInstanceUID to export.")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False),
              help="Folder to write <study>/<series>/<instance>.dcm under (created owner-only: it holds PHI).")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, study_uid: str, target: str, as_json: bool) -> None:
    """Write every instance of a study as DICOM Part 10 files."""
    import pydicom

    _check_uid(study_uid)
    client = dicomweb.connect(pacs_for(settings_from(ctx)))
    series = dicomweb.search_series(client, study_uid, fields=["NumberOfSeriesRelatedInstances"])
    if not series:
        raise DicomflowError(f"no study {study_uid} in the PACS: `dicomflow pacs ls` lists them")
    root = private_dir(Path(target) / study_uid)
    total = sum(int(dj.value(s, "NumberOfSeriesRelatedInstances") or 0) for s in series)
    written = []
    with Progress(TextColumn("[bold]exporting[/bold]"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=as_json, disable=as_json) as bar:
        task = bar.add_task("export", total=total)
        for s in series:
            series_uid = dj.text(s, "SeriesInstanceUID")
            folder = private_dir(root / series_uid)
            for ds in dicomweb.retrieve_series(client, study_uid, series_uid):
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                pydicom.dcmwrite(path, dicomweb.ensure_file_meta(ds), enforce_file_format=True)
                path.chmod(0o600)
                written.append(str(path))
                bar.advance(task)
    if as_json:
        print_json({"study": study_uid, "folder": str(root), "files": written})
    else:
        console.print(f"{len(written)} instance(s) of {len(series)} series written under {root}", soft_wrap=True)


def _person_name(item: dict) -> str:
    """A PN value of DICOM JSON (``{"Alphabetic": ...}``) as text."""
    name = dj.value(item, "PatientName")
    return str(name.get("Alphabetic", "")) if isinstance(name, dict) else ""


def _check_uid(value: str) -> None:
    if not is_uid(value):
        raise DicomflowError(f"{value!r} is not a DICOM UID (digits and dots, at most 64 characters)")
