"""Dataset export: a Ground Truth output manifest -> a training channel in S3.

For every labeled line the DICOM objects are fetched from the PACS over DICOMweb (one instance for
an image, one multipart request for a series) and put under ``<to>/images/<study>/<series>/<sop>.dcm``.
A segmentation line names its DICOM SEG (``segmentation``: consolidated from annotators, or brought by
``dicomflow label import``); the SEG, checked to lie on the series' slices, is staged as the series'
label (``<to>/labels/<series>/<sop>.dcm``), and ``classes.json`` lists its structures with their codes.
``<to>/manifest.jsonl`` and ``<to>/classes.json`` follow the channel layout (:mod:`.channel`). Objects
already in S3 are not fetched again (``head_object``), so a re-run only stages what is missing.
Patient IDs are replaced by a one-way hash (``patient``) - the channel holds no PatientID in clear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import pydicom
from dicomweb_client.protocol import DICOMClient

from dicomflow import aws
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.seg import read_seg
from dicomflow.dicom.structures import Structure, StructureError, names
from dicomflow.dicom.volume import load_image
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import manifest
from dicomflow.modeling.contract import TASKS
from dicomflow.training.channel import CLASSES, MANIFEST

log = logging.getLogger("dicomflow.training.export")


class ExportError(DicomflowError):
    """The export cannot run or produced nothing usable."""


@dataclass
class ExportResult:
    """What an export did (counts, no PHI)."""

    lines: int = 0
    staged_objects: int = 0
    existing_objects: int = 0
    failed_lines: int = 0
    task: str = ""
    classes: list[str] = field(default_factory=list)
    manifest_uri: str = ""
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def patient_key(patient_id: str) -> str:
    """One-way key grouping a patient's images (for the split) without carrying the PatientID."""
    return hashlib.sha256(f"dicomflow-patient:{patient_id}".encode()).hexdigest()[:16]


def find_label_attribute(line: dict[str, Any]) -> str:
    """The label attribute of an output manifest line: the key ``k`` with a ``k-metadata`` sibling."""
    found = [k for k in line if f"{k}-metadata" in line and isinstance(line[k], dict)]
    if len(found) != 1:
        raise ExportError(
            f"cannot tell the label attribute of the manifest (candidates: {found or 'none'}); "
            "pass --label-attribute NAME")
    return found[0]


def _classes_of(lines: list[dict[str, Any]], attr: str) -> list[str]:
    classes: list[str] = []
    for line in lines:
        content = line.get(attr) or {}
        for name in list((content.get("classes") or {}).keys()) + list(content.get("labels") or []):
            if name not in classes:
                classes.append(name)
    return classes


class _Stager:
    def __init__(self, bucket: str, prefix: str, client_factory: Callable[[], DICOMClient], s3: Any):
        self.bucket, self.prefix = bucket, prefix
        self.client_factory = client_factory
        self.s3 = s3
        self._local = threading.local()
        self._lock = threading.Lock()
        self.staged = 0
        self.existing = 0

    @property
    def client(self) -> Any:
        if not hasattr(self._local, "client"):
            self._local.client = self.client_factory()
        return self._local.client

    def _uri(self, key: str) -> str:
        return aws.s3_uri(self.bucket, self.prefix + key)

    def _exists(self, key: str) -> bool:
        return aws.exists(self._uri(key), s3=self.s3)

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        aws.write(self._uri(key), body, content_type, s3=self.s3)
        with self._lock:
            self.staged += 1

    def _put_dataset(self, key: str, ds: pydicom.Dataset) -> None:
        self._put(key, dicomweb.dataset_bytes(ds), "application/dicom")

    def _skip(self, n: int = 1) -> None:
        with self._lock:
            self.existing += n

    def instance(self, study: str, series: str, sop: str) -> list[str]:
        key = f"images/{study}/{series}/{sop}.dcm"
        if self._exists(key):
            self._skip()
        else:
            self._put_dataset(key, dicomweb.retrieve_instance(self.client, study, series, sop))
        return [key]

    def series(self, study: str, series: str) -> list[str]:
        found = dicomweb.search_instances(self.client, study, series)
        sops = [dj.value(item, "SOPInstanceUID") for item in found]
        if not sops:
            raise ExportError(f"series {series} has no instances in the PACS")
        keys = {sop: f"images/{study}/{series}/{sop}.dcm" for sop in sops}
        missing = {sop for sop, key in keys.items() if not self._exists(key)}
        self._skip(len(keys) - len(missing))
        if missing:
            for ds in dicomweb.retrieve_series(self.client, study, series):
                sop = str(ds.SOPInstanceUID)
                if sop in missing:
                    self._put_dataset(keys.setdefault(sop, f"images/{study}/{series}/{sop}.dcm"), ds)
        return sorted(keys.values())

    def seg_label(self, study: str, series: str, seg_ref: dict[str, Any]) -> tuple[str, list[Structure]]:
        """The SEG of ``seg_ref`` staged as the series' label (checked to lie on its slices) and its structures."""
        seg = dicomweb.retrieve_instance(self.client, study, seg_ref["SeriesInstanceUID"], seg_ref["SOPInstanceUID"])
        _, geometry = load_image(dicomweb.retrieve_series(self.client, study, series))
        try:
            _, structures = read_seg(seg, list(geometry.sop_instance_uids))
        except StructureError as exc:
            raise ExportError(f"series {series}: {exc}") from None
        key = f"labels/{series}/{seg_ref['SOPInstanceUID']}.dcm"
        if self._exists(key):
            self._skip()
        else:
            self._put_dataset(key, seg)
        return key, structures


def export_dataset(manifest_uri: str, to_uri: str, *, client_factory: Callable[[], DICOMClient] | None = None,
                   label_attribute: str | None = None, task: str | None = None,
                   classes: list[str] | None = None, workers: int = 8,
                   on_progress: Callable[[int, int], None] | None = None, s3: Any = None) -> ExportResult:
    """Stage the objects of a Ground Truth output manifest into a training channel at ``to_uri``.

    ``client_factory`` makes one DICOMweb client per worker thread (default
    :func:`dicomflow.dicom.dicomweb.connect`); ``on_progress(done, total)`` is called after each line.
    """
    if task is not None and task not in TASKS:
        raise ExportError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if not to_uri.startswith("s3://"):
        raise ExportError(f"--to must be an S3 prefix like s3://bucket/train/, got {to_uri!r}")
    bucket, prefix = aws.parse_s3_uri(to_uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = s3 or aws.client("s3")
    lines = manifest.read_jsonl_s3(manifest_uri, s3=s3)
    if not lines:
        raise ExportError(f"{manifest_uri} holds no lines: nothing to export")
    attr = label_attribute or find_label_attribute(lines[0])
    labeled = [line for line in lines if isinstance(line.get(attr), dict) and line[attr].get("dicom")]
    if not labeled:
        raise ExportError(f"no line of {manifest_uri} has a '{attr}' label with its 'dicom' UIDs; "
                          "is this the labeling job's output.manifest (check --label-attribute)?")
    first = labeled[0][attr]
    if task is None:
        if first.get("segmentation"):
            task = "segmentation3d"
        elif first["dicom"].get("SOPInstanceUID"):
            task = "classification2d"
        else:
            task = "classification3d"
    if task == "segmentation3d" and not any(line[attr].get("segmentation") for line in labeled):
        raise ExportError("segmentation3d needs label volumes: the manifest's lines name no SEG; import your labels "
                          "with `dicomflow label import` (NIfTI or SEG) or label the series with a segmentation job")
    class_names = classes or ([] if task == "segmentation3d" else _classes_of(labeled, attr))
    stager = _Stager(bucket, prefix, client_factory or dicomweb.connect, s3)
    result = ExportResult(lines=len(labeled), task=task, classes=class_names)
    found_structures: list[list[Structure]] = []

    def one(index: int, line: dict[str, Any]) -> dict[str, Any]:
        content = line[attr]
        uids = content["dicom"]
        study, series = uids["StudyInstanceUID"], uids["SeriesInstanceUID"]
        item_id = uids.get("SOPInstanceUID") or series
        out: dict[str, Any] = {"id": item_id, "patient": patient_key(str(uids.get("PatientID", item_id)))}
        if task == "classification2d":
            if not uids.get("SOPInstanceUID"):
                raise ExportError(f"line {index + 1} labels a series; classification2d needs images")
            out["images"] = stager.instance(study, series, uids["SOPInstanceUID"])
        else:
            out["images"] = stager.series(study, series)
        if task == "segmentation3d":
            seg_ref = content.get("segmentation")
            if not isinstance(seg_ref, dict):
                raise ExportError(f"line {index + 1} names no SEG ('segmentation') for series {series}")
            out["label"], structures = stager.seg_label(study, series, seg_ref)
            found_structures.append(structures)
        else:
            out["labels"] = [n for n in content.get("labels", []) if n in class_names]
        return out

    out_lines: list[tuple[int, dict[str, Any]]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, i, line): i for i, line in enumerate(labeled)}
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            try:
                out_lines.append((index, future.result()))
            except DicomflowError as exc:
                result.failed_lines += 1
                result.failures.append(f"line {index + 1}: {exc}")
                log.warning("export: line %d skipped: %s", index + 1, exc)
            if on_progress:
                on_progress(done, len(labeled))
    if not out_lines:
        raise ExportError(f"no line could be exported ({result.failures[0] if result.failures else 'unknown'})")
    out_lines.sort()
    classes_doc: list[Any] = list(class_names)
    if task == "segmentation3d":
        definitions = {tuple(json.dumps(st.to_dict(), sort_keys=True) for st in each) for each in found_structures}
        if len(definitions) != 1:
            raise ExportError("the SEGs of the manifest define different structures; export one structure set at a "
                              "time (check the labels with `dicomflow label import`)")
        classes_doc = [st.to_dict() for st in found_structures[0]]
        result.classes = names(found_structures[0])
    body = "".join(json.dumps(line) + "\n" for _, line in out_lines).encode()
    aws.write(aws.s3_uri(bucket, prefix + MANIFEST), body, "application/jsonl", s3=s3)
    aws.write(aws.s3_uri(bucket, prefix + CLASSES), json.dumps(classes_doc).encode(), "application/json", s3=s3)
    result.staged_objects, result.existing_objects = stager.staged, stager.existing
    result.manifest_uri = aws.s3_uri(bucket, prefix + MANIFEST)
    return result
