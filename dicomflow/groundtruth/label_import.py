"""Bring the labels you already have: label volumes (NIfTI) or DICOM SEGs of series in the PACS become a Ground
Truth output manifest of DICOM SEGs, which ``dataset export`` and training read like labels people drew.

Input: JSON Lines, one series a line::

    {"StudyInstanceUID": "..", "SeriesInstanceUID": "..", "label": "labels/0001.nii.gz"}
    {"StudyInstanceUID": "..", "SeriesInstanceUID": "..", "seg": {"SeriesInstanceUID": "..", "SOPInstanceUID": ".."}}

A NIfTI label (a relative path is relative to the input file) has voxel value ``i`` for the ``i``-th
structure of ``structures`` (names, or definitions with codes: :mod:`dicomflow.dicom.structures`). It
must lie on the series' own grid: shape and affine as ``dicomflow.dicom.volume.save_label_nifti``
writes them (within 0.1 mm); a label on another grid is refused, never resampled. It becomes a
DICOM SEG (segments MANUAL) stored into the series' study; re-importing the same file stores the same
SEG again (its UIDs derive from the series and the file's SHA-256), which the PACS keeps once. A
``seg`` line names a SEG already in the PACS, checked to reference the series.

Output: one manifest line per imported series, in the shape the consolidation Lambda gives::

    {"source": "<UID JSON>", "<attr>": {"dicom": {..UIDs}, "segmentation": {..SEG UIDs},
     "structures": [..names]}, "<attr>-metadata": {"type": "groundtruth/custom", "human-annotated": "yes",
     "job-name": "label-import", ...}}

A line that cannot be imported is reported with its reason and the others go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from dicomweb_client.protocol import DICOMClient

from dicomflow import safejson
from dicomflow.dicom import dicomweb
from dicomflow.dicom.errors import PacsError
from dicomflow.dicom.geometry import GeometryError
from dicomflow.dicom.seg import build_seg, read_seg
from dicomflow.dicom.structures import Structure, StructureError, names
from dicomflow.dicom.uid import derived_uid, is_uid
from dicomflow.dicom.volume import NotAnImageError, load_image, load_label_volume
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth.manifest import output_line

JOB_NAME = "label-import"
MAX_LINE_BYTES = 16_384


class LabelImportError(DicomflowError):
    """The import as a whole cannot run (unreadable input, no structures); per-line problems are reported."""


@dataclass
class ImportResult:
    """The manifest lines made, what was stored or reused, and each line that failed with its reason."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    reused: int = 0
    failures: list[str] = field(default_factory=list)


def read_requests(path: str | Path) -> list[dict[str, Any]]:
    """The JSON Lines input (blank lines ignored); a line that is not a JSON object is a clear error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabelImportError(f"cannot read {path}: {exc.strerror}") from None
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise LabelImportError(f"{path} line {number} is over {MAX_LINE_BYTES} characters")
        try:
            line = safejson.loads(raw, f"{path} line {number}")
        except ValueError as exc:
            raise LabelImportError(f"{path} line {number} is not JSON ({str(exc)[:100]})") from None
        if not isinstance(line, dict):
            raise LabelImportError(f"{path} line {number} is not a JSON object")
        line["_line"], line["_base"] = number, str(path.parent)
        out.append(line)
    if not out:
        raise LabelImportError(f"{path} holds no line; one line per series is needed")
    return out


def _uids(line: Mapping[str, Any]) -> tuple[str, str]:
    study, series = line.get("StudyInstanceUID"), line.get("SeriesInstanceUID")
    if not is_uid(study) or not is_uid(series):
        raise LabelImportError("StudyInstanceUID and SeriesInstanceUID must be DICOM UIDs")
    return study, series


def _import_nifti(client: DICOMClient, study: str, series: str, path: Path,
                  structures: list[Structure]) -> tuple[pydicom.Dataset, bool]:
    datasets = dicomweb.retrieve_series(client, study, series)
    try:
        _, geometry = load_image(datasets)
        label = load_label_volume(path, geometry)
    except (GeometryError, NotAnImageError) as exc:
        raise LabelImportError(str(exc)) from None
    if int(label.max()) > len(structures):
        raise LabelImportError(f"{path.name} has label value {int(label.max())} but {len(structures)} structure(s) "
                               "are defined; give every value a structure")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    ordered = [by_uid[uid] for uid in geometry.sop_instance_uids]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    seg = build_seg(ordered, label, structures, None, derived_uid(JOB_NAME, series, digest, "series"),
                    series_description="Imported labels", sop_uid=derived_uid(JOB_NAME, series, digest, "instance"))
    found = dicomweb.search_instances(client, study, seg.SeriesInstanceUID, SOPInstanceUID=seg.SOPInstanceUID,
                                      limit=1)
    if found:
        return seg, False
    dicomweb.store(client, [seg])
    return seg, True


def _check_seg(client: DICOMClient, study: str, series: str, ref: Any) -> tuple[pydicom.Dataset, list[Structure]]:
    if not isinstance(ref, Mapping) or not is_uid(ref.get("SeriesInstanceUID")) or not is_uid(
            ref.get("SOPInstanceUID")):
        raise LabelImportError("'seg' must name the SEG's SeriesInstanceUID and SOPInstanceUID")
    seg = dicomweb.retrieve_instance(client, study, ref["SeriesInstanceUID"], ref["SOPInstanceUID"])
    if str(seg.get("Modality", "")) != "SEG":
        raise LabelImportError(f"{ref['SOPInstanceUID']} is a {seg.get('Modality', '?')} object, not a SEG")
    images = dicomweb.retrieve_series(client, study, series)
    _, geometry = load_image(images)
    try:
        _, structures = read_seg(seg, list(geometry.sop_instance_uids))
    except StructureError as exc:
        raise LabelImportError(str(exc)) from None
    return seg, structures


def import_labels(requests: list[Mapping[str, Any]], client: DICOMClient, structures: list[Structure],
                  label_attribute: str = "labels",
                  on_progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import each requested series' labels (see the module docstring); never stops at a failed line."""
    result = ImportResult()
    for done, line in enumerate(requests, start=1):
        where = f"line {line.get('_line', done)}"
        try:
            study, series = _uids(line)
            if "seg" in line:
                seg, seg_structures = _check_seg(client, study, series, line["seg"])
                result.reused += 1
            elif isinstance(line.get("label"), str) and line["label"]:
                path = Path(line["label"])
                path = path if path.is_absolute() else Path(line.get("_base", ".")) / path
                if not path.is_file():
                    raise LabelImportError(f"label file {path} does not exist")
                if not structures:
                    raise LabelImportError("a NIfTI label needs structures: the name of each label value")
                seg, stored = _import_nifti(client, study, series, path, structures)
                seg_structures = structures
                result.stored += stored
                result.reused += not stored
            else:
                raise LabelImportError("each line needs a 'label' (NIfTI path) or a 'seg' (UIDs of a SEG)")
        except (LabelImportError, PacsError) as exc:
            result.failures.append(f"{where}: {exc}")
        else:
            content = {"dicom": {"StudyInstanceUID": study, "SeriesInstanceUID": series},
                       "segmentation": {"SeriesInstanceUID": str(seg.SeriesInstanceUID),
                                        "SOPInstanceUID": str(seg.SOPInstanceUID)},
                       "structures": names(seg_structures)}
            source = json.dumps({"StudyInstanceUID": study, "SeriesInstanceUID": series})
            result.lines.append(output_line({"source": source}, label_attribute, content, JOB_NAME))
        if on_progress:
            on_progress(done, len(requests))
    return result
