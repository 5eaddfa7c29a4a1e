"""Your own DICOM into the PACS: files, folders (recursively), ``.zip`` archives and DICOMDIR file sets,
stored by STOW-RS in size-bounded batches.

Contract of :func:`import_paths`: every candidate file ends in exactly one of *stored* (the PACS holds it
now, also when it already did: importing twice is harmless), *skipped* (not a DICOM Part 10 file: no
``DICM`` preamble, or a DICOMDIR, which is an index, not an instance) or *failed* (a DICOM file that cannot
be read or lacks its identifying UIDs, an instance the PACS refused, a file a DICOMDIR lists that is not
there), each failure with its reason. One bad file or batch never stops the others.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from dicomweb_client.protocol import DICOMClient
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from dicomflow.dicom import dicomweb
from dicomflow.dicom.errors import PacsError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
_PREAMBLE = 132  # 128-byte preamble + "DICM"


@dataclass(frozen=True)
class Source:
    """One candidate file: where it came from (a path, or ``archive.zip!member``) and how to read it."""

    name: str
    read: Callable[[], bytes]
    size: int


@dataclass
class ImportReport:
    """What happened to every candidate file (``failed``: name -> reason)."""

    stored: int = 0
    stored_bytes: int = 0
    skipped: int = 0
    dicomdirs: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    studies: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, object]:
        return {"stored": self.stored, "storedBytes": self.stored_bytes, "skippedNotDicom": self.skipped,
                "dicomdirs": self.dicomdirs, "failed": [{"file": k, "reason": v} for k, v in self.failed.items()],
                "studies": sorted(self.studies)}


def _file_source(path: Path) -> Source:
    return Source(str(path), path.read_bytes, path.stat().st_size)


def _zip_sources(path: Path) -> Iterator[Source]:
    archive = zipfile.ZipFile(path)  # kept open by the closures; read lazily, batch by batch
    for info in archive.infolist():
        if not info.is_dir():
            yield Source(f"{path}!{info.filename}", lambda i=info: archive.read(i), info.file_size)


def _dicomdir_members(path: Path, report: ImportReport) -> Iterator[Path]:
    """The files a DICOMDIR lists (missing ones become failures)."""
    try:
        file_set = FileSet(pydicom.dcmread(path))
    except Exception as exc:  # pydicom raises many types for a damaged DICOMDIR
        report.failed[str(path)] = f"unreadable DICOMDIR: {exc}"
        return
    for instance in file_set:
        member = Path(instance.path)
        if member.is_file():
            yield member
        else:
            report.failed[str(member)] = f"listed in {path} but missing"


def find_sources(paths: Iterable[str | Path], report: ImportReport) -> list[Source]:
    """Every candidate file under ``paths`` (folders recursively, zips by member, DICOMDIR members), each once."""
    seen: set[Path] = set()
    sources: list[Source] = []

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved in seen:
            return
        seen.add(resolved)
        if path.name.upper() == "DICOMDIR":
            report.dicomdirs += 1
            for member in _dicomdir_members(path, report):
                add(member)
        elif zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
            sources.extend(_zip_sources(path))
        else:
            sources.append(_file_source(path))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for p in sorted(files, key=lambda p: p.name.upper() != "DICOMDIR"):  # a DICOMDIR's members first
                add(p)
        elif path.is_file():
            add(path)
        else:
            report.failed[str(path)] = "no such file or folder"
    return sources


@dataclass(frozen=True)
class _Parsed:
    name: str
    size: int
    study: str
    sop: str
    dataset: pydicom.Dataset


def _parse(source: Source, data: bytes, report: ImportReport) -> _Parsed | None:
    """The dataset, or None with the file counted as skipped or failed."""
    if len(data) < _PREAMBLE or data[128:132] != b"DICM":
        report.skipped += 1
        return None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        sop_class, sop, study = ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID
    except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError, OSError) as exc:
        report.failed[source.name] = f"not readable as DICOM: {exc}"
        return None
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        report.dicomdirs += 1  # an index inside an archive or named otherwise: not stored
        return None
    return _Parsed(source.name, len(data), str(study), str(sop), ds)


def import_paths(client: DICOMClient, paths: Iterable[str | Path], *,
                 max_batch_bytes: int = dicomweb.STORE_BATCH_BYTES,
                 progress: Callable[[int], None] | None = None,
                 sources: list[Source] | None = None, report: ImportReport | None = None) -> ImportReport:
    """Store every DICOM file under ``paths``; ``progress(n_bytes)`` after each file is read and sent.
    Pass ``sources`` and ``report`` from :func:`find_sources` to size a progress bar first."""
    report = report if report is not None else ImportReport()
    sources = sources if sources is not None else find_sources(paths, report)
    batch: list[_Parsed] = []
    size = 0
    for source in sources:
        try:
            data = source.read()
        except (OSError, zipfile.BadZipFile) as exc:
            report.failed[source.name] = f"cannot read: {exc}"
            data = None
        parsed = _parse(source, data, report) if data is not None else None
        if parsed is not None:
            if batch and size + parsed.size > max_batch_bytes:
                _send(client, batch, report, progress)
                batch, size = [], 0
            batch.append(parsed)
            size += parsed.size
        elif progress is not None:
            progress(source.size)
    if batch:
        _send(client, batch, report, progress)
    return report


def _send(client: DICOMClient, batch: list[_Parsed], report: ImportReport,
          progress: Callable[[int], None] | None) -> None:
    try:
        refused = dicomweb.store_batch(client, [dicomweb.ensure_file_meta(p.dataset) for p in batch])
    except PacsError as exc:
        refused = {p.sop: str(exc) for p in batch}
    for p in batch:
        if p.sop in refused:
            report.failed[p.name] = f"the PACS refused it: {refused[p.sop]}"
        else:
            report.stored += 1
            report.stored_bytes += p.size
            report.studies.add(p.study)
        if progress is not None:
            progress(p.size)
