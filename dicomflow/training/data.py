"""A training channel (:mod:`dicomflow.training.channel`) -> datasets.

Lines whose files are missing, unreadable or not images (e.g. a DICOM SR) are skipped
with a warning and counted in :class:`ManifestScan.skipped`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
    Transform,
)

from dicomflow.dicom import structures as structure_defs
from dicomflow.dicom import volume
from dicomflow.dicom.structures import Structure, StructureError, parse_structures
from dicomflow.errors import DicomflowError
from dicomflow.modeling.preprocess import Preprocess
from dicomflow.training.channel import CLASSES, MANIFEST

log = logging.getLogger("dicomflow.training")


class DatasetError(DicomflowError):
    """The training data cannot be used (no manifest, no usable image, bad split)."""


@dataclass
class Item:
    """One usable training example."""

    id: str
    patient: str
    images: list[str]
    labels: list[float] = field(default_factory=list)
    label: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "patient": self.patient, "images": self.images, "labels": self.labels,
                "label": self.label}


@dataclass
class ManifestScan:
    """What :func:`scan_manifest` found: usable items, classes, skip counts and the manifest hash."""

    items: list[Item]
    classes: list[str]
    skipped: Counter
    manifest_sha256: str
    structures: list[Structure] = field(default_factory=list)  # segmentation: what each label value is

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _skip(skipped: Counter, reason: str, line_no: int, detail: str) -> None:
    skipped[reason] += 1
    log.warning("skipped manifest line %d: %s", line_no, detail)


def _check_image(path: Path) -> str | None:
    """None if ``path`` is a readable DICOM image, else the skip reason."""
    if not path.is_file():
        return "missing"
    try:
        ds = volume.read(path, header_only=True)
    except volume.NotAnImageError:
        return "unreadable"
    if not volume.is_image(ds):
        return "not_image"
    return None


def scan_manifest(channel: str | Path, task: str) -> ManifestScan:
    """Read and check the manifest of a channel folder (headers only; pixels are decoded later)."""
    channel = Path(channel)
    manifest = channel / MANIFEST
    if not manifest.is_file():
        found = sorted(p.name for p in channel.iterdir())[:10] if channel.is_dir() else []
        raise DatasetError(
            f"no {MANIFEST} in the training channel (found: {found or 'nothing'}); "
            "create it with `dicomflow dataset export`")
    raw = manifest.read_bytes()
    classes_path = channel / CLASSES
    segmentation = task == "segmentation3d"
    entries = json.loads(classes_path.read_text()) if classes_path.is_file() else []
    try:
        structures = parse_structures(entries) if segmentation else []
    except StructureError as exc:
        raise DatasetError(str(exc)) from None
    classes: list[str] = structure_defs.names(structures) if segmentation else [str(c) for c in entries]
    items: list[Item] = []
    skipped: Counter = Counter()
    seen_labels: list[str] = []
    for line_no, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            images = [str(p) for p in entry["images"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            _skip(skipped, "malformed", line_no, "not a JSON object with an 'images' list")
            continue
        item_id = str(entry.get("id", f"line{line_no}"))
        if not images:
            _skip(skipped, "no_images", line_no, f"{item_id} lists no images")
            continue
        reasons = [(p, _check_image(channel / p)) for p in images]
        bad = [(p, r) for p, r in reasons if r]
        if task == "classification2d" and len(images) > 1:
            # several images of one study: keep the usable ones
            for p, r in bad:
                _skip(skipped, r, line_no, f"{item_id}: {Path(p).name} is {r.replace('_', ' ')}")
            images = [p for p, r in reasons if not r]
            if not images:
                continue
        elif bad:
            p, r = bad[0]
            _skip(skipped, r, line_no, f"{item_id}: {Path(p).name} is {r.replace('_', ' ')}")
            continue
        patient = str(entry.get("patient") or item_id)
        if segmentation:
            label = entry.get("label")
            if not label or not (channel / label).is_file():
                _skip(skipped, "missing_label", line_no, f"{item_id}: label volume {label!r} is missing")
                continue
            items.append(Item(item_id, patient, [str(channel / p) for p in images], label=str(channel / label)))
        else:
            names = [str(n) for n in entry.get("labels", [])]
            for n in names:
                if n not in seen_labels:
                    seen_labels.append(n)
            items.append(Item(item_id, patient, [str(channel / p) for p in images], labels=names))  # type: ignore[arg-type]
    if not classes:
        classes = seen_labels if not segmentation else ["foreground"]
    if not segmentation:
        unknown = sorted({n for it in items for n in it.labels} - set(classes))  # type: ignore[arg-type]
        if unknown:
            raise DatasetError(f"labels {unknown} are not in {CLASSES}; add them or fix the manifest")
        for it in items:
            names = set(it.labels)  # type: ignore[arg-type]
            it.labels = [1.0 if c in names else 0.0 for c in classes]
        if task == "classification2d":
            items = [Item(f"{it.id}#{k}" if len(it.images) > 1 else it.id, it.patient, [img], it.labels)
                     for it in items for k, img in enumerate(it.images)]
    if not items:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "manifest empty"
        raise DatasetError(f"no usable image in the training data ({counts}); check the export and the channel")
    if segmentation and not structures:
        structures = parse_structures(classes)
    return ManifestScan(items, classes, skipped, hashlib.sha256(raw).hexdigest(), structures)


def split_by_patient(items: list[Item], fractions: list[float], seed: int) -> list[list[Item]]:
    """Split into ``[train, *held_out]`` by patient (no patient on two sides), deterministic in ``seed``.

    Each non-zero fraction gets at least one patient while at least one stays for training.
    """
    patients = sorted({it.patient for it in items})
    random.Random(seed).shuffle(patients)
    n = len(patients)
    wanted = [f for f in fractions if f > 0]
    if n < len(wanted) + 1:
        raise DatasetError(
            f"{n} patient(s) cannot be split into train + {len(wanted)} held-out part(s); "
            "add data or set val_fraction/test_fraction to 0")
    parts: list[list[str]] = []
    start = 0
    for f in fractions:
        count = 0 if f <= 0 else max(1, round(f * n))
        count = min(count, n - start - 1 - sum(1 for g in fractions[len(parts) + 1:] if g > 0))
        parts.append(patients[start:start + count])
        start += count
    train = set(patients[start:])
    groups = [[it for it in items if it.patient in train]]
    for part in parts:
        members = set(part)
        groups.append([it for it in items if it.patient in members])
    return groups


class LoadItem(Transform):
    """MONAI transform: manifest item dict -> ``{"image": (1, *size), "target": ...}`` tensors."""

    def __init__(self, preprocess: Preprocess, task: str):
        self.preprocess = preprocess
        self.task = task

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        array, geom = volume.load_files(item["images"])
        if self.task == "classification3d" and array.ndim == 2:
            array = array[None]
        image = self.preprocess(array, geom.spacing)
        out: dict[str, Any] = {"image": image, "id": item["id"]}
        if self.task == "segmentation3d":
            label = volume.load_label_volume(item["label"], geom)
            out["target"] = self.preprocess.label(label, geom.spacing)
        else:
            out["target"] = torch.tensor(item["labels"], dtype=torch.float32)
        return out


def random_patches(size: tuple[int, ...], count: int = 1) -> list[Transform]:
    """``count`` training patches of ``size`` from a resampled volume: padded up to ``size`` where smaller,
    then cropped around foreground and background voxels equally often (MONAI ``RandCropByPosNegLabeld``)."""
    keys = ["image", "target"]
    return [SpatialPadd(keys, spatial_size=size),
            RandCropByPosNegLabeld(keys, label_key="target", spatial_size=size, pos=1, neg=1, num_samples=count)]


#: What ``augment=light`` does to a 2D training image (after preprocessing, so on the network's grid): the
#: patient a little rotated, larger or smaller and off centre, the exposure a little different, some noise.
#: Never flipped: left and right are anatomy (the heart is on the left).
LIGHT_2D = {"rotate_degrees": 10, "scale": 0.1, "translate": 0.08, "intensity_scale": 0.1, "intensity_shift": 0.1,
            "noise_std": 0.05}


def light_augmentation(size: tuple[int, ...]) -> list[Transform]:
    """The ``augment=light`` transforms of :data:`LIGHT_2D` for 2D images of ``size`` pixels."""
    if len(size) != 2:
        raise DatasetError("augment=light is defined for 2D images (classification2d)")
    a = LIGHT_2D
    return [RandAffined("image", prob=0.8, rotate_range=math.radians(a["rotate_degrees"]),
                        scale_range=(a["scale"], a["scale"]),
                        translate_range=tuple(a["translate"] * s for s in size), padding_mode="border"),
            RandScaleIntensityd("image", factors=a["intensity_scale"], prob=0.8),
            RandShiftIntensityd("image", offsets=a["intensity_shift"], prob=0.8),
            RandGaussianNoised("image", std=a["noise_std"], prob=0.5)]


def make_dataset(items: list[Item], preprocess: Preprocess, task: str, cache: str, cache_dir: Path | None,
                 num_workers: int = 0, patches: int = 0, seed: int = 0, augment: bool = False) -> Dataset:
    """A MONAI dataset over ``items``; ``cache`` none | memory (CacheDataset) | disk (PersistentDataset).

    ``patches`` > 0: each item is that many random patches (:func:`random_patches`, seeded with
    ``seed``) of the cached volume, a list for ``monai.data.list_data_collate``. ``augment``: the
    :func:`light_augmentation` of a 2D image, applied after the cache (a new draw each epoch).
    """
    data = [it.as_dict() for it in items]
    transform: Transform = LoadItem(preprocess, task)
    if patches:
        transform = Compose([transform, *random_patches(preprocess.size, patches)]).set_random_state(seed=seed)
    elif augment:
        transform = Compose([transform, *light_augmentation(tuple(preprocess.size))]).set_random_state(seed=seed)
    if cache == "memory":
        return CacheDataset(data, transform, cache_rate=1.0, num_workers=max(num_workers, 1), progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise DatasetError("cache=disk needs a cache directory")
        key = hashlib.sha256(json.dumps([task, preprocess.spec], sort_keys=True).encode()).hexdigest()[:16]
        cache_dir = cache_dir / key  # a different preprocessing never reuses stale entries
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    return Dataset(data, transform)
