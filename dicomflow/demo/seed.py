"""Load sample studies into a PACS by STOW-RS and record their ground truth beside it.

Three kinds of study:

* ``real``: the images ``pydicom-data`` ships (PA chest CR ``RG1_UNCR``, shoulder MR ``MR2_UNCR``,
  head CT ``693_UNCR``), curated just enough to pass ``dciodvfy`` (see :func:`curate_real`); pixel
  data and UIDs are untouched;
* ``chest``: synthetic CR images with known CheXpert labels (:func:`dicomflow.demo.synthetic.chest_radiographs`);
* ``hippocampus``: synthetic MR series with an anterior/posterior label volume, written as NIfTI.

Each chest study also gets a free-text radiology report (``<data_dir>/reports/``, see :func:`write_reports`).

Seeding is idempotent: a study the PACS already holds completely (QIDO ``NumberOfStudyRelatedInstances``)
is skipped and reported as already present. The sidecar ``<data_dir>/seed/labels.json`` is merged by
UID, so seeding again (or with another ``--seed``) keeps earlier entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from dicomweb_client.protocol import DICOMClient
from pydicom.data import get_testdata_file

from dicomflow.demo import synthetic
from dicomflow.demo.reports import chest_report
from dicomflow.dicom import dicomweb, volume
from dicomflow.dicom import json as dj
from dicomflow.errors import DicomflowError
from dicomflow.paths import private_dir

__all__ = [
    "REAL_IMAGES",
    "SeedStudy",
    "SeedResult",
    "plan",
    "seed",
    "curate_real",
    "write_label_nifti",
    "sidecar_path",
    "reports_dir",
    "write_reports",
    "label_requests",
    "store_label_segs",
]

REAL_IMAGES = ("RG1_UNCR", "MR2_UNCR", "693_UNCR")
SIDECAR_DIR = "seed"
SIDECAR_FILE = "labels.json"
REPORTS_DIR = "reports"
PAIRED_BODY_PARTS = {"SHOULDER", "KNEE", "HIP", "BREAST", "HAND", "FOOT", "ELBOW", "WRIST", "ANKLE", "ARM", "LEG"}
#: Stop filling a STOW-RS request once it holds this many bytes of pixel data.
BATCH_BYTES = 16 * 1024 * 1024

Progress = Callable[[int], None]


class SeedError(DicomflowError):
    """Seeding cannot proceed; the message says why and how to fix it."""


@dataclass
class SeedStudy:
    """One study to load: its instances and what the sidecar records about it."""

    kind: str  # "real" | "chest" | "hippocampus"
    datasets: list[pydicom.Dataset]
    entry: dict[str, Any]
    label_volume: np.ndarray | None = None

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


@dataclass
class SeedResult:
    """What one seed run did (counts are studies unless named instances)."""

    stored: dict[str, int] = field(default_factory=dict)
    already_present: dict[str, int] = field(default_factory=dict)
    instances_stored: int = 0
    sidecar: str = ""
    reports: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "already_present": self.already_present,
                "instances_stored": self.instances_stored, "sidecar": self.sidecar, "reports": self.reports}


# ---- real images ----------------------------------------------------------------------------------
def curate_real(ds: pydicom.Dataset, name: str) -> pydicom.Dataset:
    """Fix what keeps a pydicom-data sample from passing ``dciodvfy``; pixels and UIDs stay as they are.

    * a zero ``PixelSpacing`` (``RG1_UNCR`` has ``0\\0``) is removed: the spacing is unknown;
    * a paired body part without ``Laterality`` gets it empty (type 2: unknown);
    * a de-identified patient (``PatientIdentityRemoved`` YES) gets a ``DeidentificationMethod``;
    * a cross-sectional image without ``FrameOfReferenceUID`` gets one derived from its series UID.
    """
    spacing = ds.get("PixelSpacing")
    if spacing is not None and any(float(v) == 0 for v in spacing):
        del ds.PixelSpacing
    part = str(ds.get("BodyPartExamined", "") or ds.get("StudyDescription", "")).upper()
    if "Laterality" not in ds and "ImageLaterality" not in ds and part in PAIRED_BODY_PARTS:
        ds.Laterality = ""
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and "DeidentificationMethod" not in ds:
        ds.DeidentificationMethod = "de-identified by the data source (pydicom-data sample)"
    if "ImagePositionPatient" in ds and "FrameOfReferenceUID" not in ds:
        ds.FrameOfReferenceUID = synthetic.synthetic_uid("real", name, ds.SeriesInstanceUID, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
    if ds.Modality == "CT" and "Laterality" not in ds and part in PAIRED_BODY_PARTS | {""}:
        ds.Laterality = ""
    return ds


def real_studies() -> list[SeedStudy]:
    """The pydicom-data sample images, curated (see :func:`curate_real`)."""
    out = []
    for name in REAL_IMAGES:
        path = get_testdata_file(f"{name}.dcm")
        if path is None:
            raise SeedError(f"{name}.dcm not found: install the 'pydicom-data' package (pip install pydicom-data)")
        ds = curate_real(pydicom.dcmread(path), name)
        entry = {"name": name, "StudyInstanceUID": ds.StudyInstanceUID,
                 "SeriesInstanceUID": ds.SeriesInstanceUID, "SOPInstanceUID": ds.SOPInstanceUID,
                 "PatientID": str(ds.get("PatientID", "")), "Modality": ds.Modality, "path": str(path)}
        out.append(SeedStudy("real", [ds], entry))
    return out


# ---- plan ------------------------------------------------------------------------------------------
def plan(chest: int = 24, hippocampus: int = 6, seed: int = 0, real: bool = True,
         chest_size: int = 256, hippocampus_shape: tuple[int, int, int] = (32, 48, 40)) -> list[SeedStudy]:
    """Every study a seed run would load, generated in memory (deterministic in ``seed``)."""
    if chest < 0 or hippocampus < 0:
        raise SeedError("--chest and --hippocampus must be >= 0")
    studies = real_studies() if real else []
    for img in synthetic.chest_radiographs(chest, seed=seed, size=chest_size):
        ds = img.dataset
        studies.append(SeedStudy("chest", [ds], {
            "StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
            "SOPInstanceUID": ds.SOPInstanceUID, "PatientID": img.patient_id, "labels": list(img.labels),
            "AccessionNumber": ds.AccessionNumber}))
    for ser in synthetic.hippocampus_series(hippocampus, seed=seed, shape=hippocampus_shape):
        studies.append(SeedStudy("hippocampus", ser.datasets, {
            "StudyInstanceUID": ser.study_uid, "SeriesInstanceUID": ser.series_uid,
            "PatientID": ser.patient_id, "instances": len(ser.datasets), "spacing": list(ser.spacing)},
            label_volume=ser.label_volume))
    return studies


# ---- NIfTI -----------------------------------------------------------------------------------------
def write_label_nifti(label_volume: np.ndarray, datasets: list[pydicom.Dataset], path: Path) -> Path:
    """Write a (z, y, x) label volume of ``datasets`` as NIfTI ((x, y, z) order, the series' RAS affine).

    The geometry comes from :func:`dicomflow.dicom.volume.load_image`, so training reads it back aligned.
    """
    _, geometry = volume.load_image(datasets)
    if tuple(geometry.shape or label_volume.shape) != tuple(label_volume.shape):
        raise SeedError(f"label volume {label_volume.shape} does not match its series {geometry.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    volume.save_label_nifti(label_volume, geometry, tmp)
    tmp.replace(path)
    return path


# ---- sidecar ---------------------------------------------------------------------------------------
def sidecar_path(data_dir: Path) -> Path:
    return Path(data_dir) / SIDECAR_DIR / SIDECAR_FILE


def _key(kind: str, entry: dict[str, Any]) -> str:
    return entry.get("SOPInstanceUID") if kind == "chest" else entry["SeriesInstanceUID"]


def _write_sidecar(path: Path, studies: list[SeedStudy]) -> None:
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        old = {}
    merged: dict[str, dict[str, dict]] = {k: {} for k in ("chest", "hippocampus", "real")}
    for kind in merged:
        for entry in old.get(kind, []):
            merged[kind][_key(kind, entry)] = entry
    for st in studies:
        merged[st.kind][_key(st.kind, st.entry)] = st.entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: list(v.values()) for k, v in merged.items()}, indent=2))
    os.replace(tmp, path)


# ---- seeding ---------------------------------------------------------------------------------------
def reports_dir(data_dir: Path) -> Path:
    """Where the seeded chest studies' reports are written (what a RIS would export), one JSON file each."""
    return Path(data_dir) / REPORTS_DIR


def write_reports(data_dir: Path, studies: list[SeedStudy]) -> int:
    """A free-text report per chest study (:func:`dicomflow.demo.reports.chest_report`), written to
    ``<data_dir>/reports/<StudyInstanceUID>.json`` as ``{StudyInstanceUID, AccessionNumber, StudyDate, text}`` (an
    owner-only folder: reports are patient data); the truth of what each says goes to the sidecar entry
    (``report_mentions``). Returns how many were written."""
    chest = [st for st in studies if st.kind == "chest"]
    if not chest:
        return 0
    folder = private_dir(reports_dir(data_dir))
    for st in chest:
        report = chest_report(st.entry["labels"], st.study_uid)
        st.entry["report_mentions"] = report.mentions
        record = {"StudyInstanceUID": st.study_uid, "AccessionNumber": st.entry.get("AccessionNumber", ""),
                  "StudyDate": str(st.datasets[0].StudyDate), "text": report.text}
        (folder / f"{st.study_uid}.json").write_text(json.dumps(record, indent=1))
    return len(chest)


def present_instances(client: DICOMClient, study_uid: str) -> int:
    """How many instances of a study the PACS holds (0 if none)."""
    found = dicomweb.search_studies(client, StudyInstanceUID=study_uid, fields=["NumberOfStudyRelatedInstances"])
    if not found:
        return 0
    return int(dj.value(found[0], "NumberOfStudyRelatedInstances", 0) or 0)


def seed(client: DICOMClient, data_dir: Path, studies: list[SeedStudy],
         progress: Progress | None = None) -> SeedResult:
    """Store ``studies`` the PACS does not hold yet, write label volumes and the sidecar.

    ``progress(n)`` is called with the number of instances just handled (stored or found present).
    """
    data_dir = Path(data_dir)
    result = SeedResult()
    label_dir = data_dir / SIDECAR_DIR / "hippocampus"
    result.reports = write_reports(data_dir, studies)
    for st in studies:  # ground truth first: cheap, and useful even if the PACS fails half-way
        if st.label_volume is not None:
            target = label_dir / f"{st.entry['SeriesInstanceUID']}.nii.gz"
            path = write_label_nifti(st.label_volume, st.datasets, target)
            st.entry["label_path"] = str(path)

    pending: list[SeedStudy] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        datasets = [ds for st in pending for ds in st.datasets]
        dicomweb.store(client, datasets)
        for st in pending:
            result.stored[st.kind] = result.stored.get(st.kind, 0) + 1
        result.instances_stored += len(datasets)
        if progress:
            progress(len(datasets))
        pending, pending_bytes = [], 0

    for st in studies:
        if present_instances(client, st.study_uid) >= len(st.datasets):
            result.already_present[st.kind] = result.already_present.get(st.kind, 0) + 1
            if progress:
                progress(len(st.datasets))
            continue
        pending.append(st)
        pending_bytes += sum(len(ds.PixelData) for ds in st.datasets if "PixelData" in ds)
        if pending_bytes >= BATCH_BYTES:
            flush()
    flush()
    path = sidecar_path(data_dir)
    _write_sidecar(path, studies)
    result.sidecar = str(path)
    return result


def label_requests(studies: list[SeedStudy]) -> list[dict[str, Any]]:
    """``dicomflow label import`` lines for the seeded hippocampus series (after :func:`seed` wrote their labels)."""
    return [{"StudyInstanceUID": s.entry["StudyInstanceUID"], "SeriesInstanceUID": s.entry["SeriesInstanceUID"],
             "label": s.entry["label_path"]} for s in studies if s.kind == "hippocampus"]


def store_label_segs(client: DICOMClient, studies: list[SeedStudy]) -> list[dict[str, Any]]:
    """Each seeded hippocampus series' label volume stored as a DICOM SEG in its study, as ``dicomflow label
    import`` stores anyone's labels; returns the import's output manifest lines. SeedError names failures."""
    from dicomflow.demo.synthetic import HIPPOCAMPUS_STRUCTURES
    from dicomflow.dicom.structures import parse_structures
    from dicomflow.groundtruth.label_import import import_labels

    result = import_labels(label_requests(studies), client, parse_structures(HIPPOCAMPUS_STRUCTURES),
                           label_attribute="hippocampus")
    if result.failures:
        raise SeedError(f"label import failed for {len(result.failures)} series: {result.failures[:2]}")
    return result.lines
