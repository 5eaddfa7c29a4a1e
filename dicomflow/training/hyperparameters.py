"""Hyperparameters: parsed from argv (``--name value``, as SageMaker passes them) and ``SM_HPS``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from dicomflow.errors import DicomflowError
from dicomflow.modeling.contract import TASKS


class HyperparameterError(DicomflowError):
    """A hyperparameter is unknown or has a bad value."""


@dataclass
class Hyperparameters:
    """Every hyperparameter the training job understands, with its default."""

    task: str = "classification2d"
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (from lr down to 0 over the epochs, set at each epoch's start)
    image_size: int = 128  # classification2d: square side in pixels
    spatial_size: str = "32,48,40"  # 3D tasks: Z,Y,X voxels (with spacing: the patch size)
    spacing: str = ""  # segmentation3d: resample to Z,Y,X mm (e.g. "1" or "1.2,1,1") and train on patches
    patches_per_volume: int = 4  # with spacing: random patches of each volume per epoch (a batch has batch_size x this)
    val_fraction: float = 0.2
    val_every: int = 1  # validate every N epochs (and after the last); the best checkpoint is chosen among those
    test_fraction: float = 0.2  # segmentation3d: held-out test split for the report
    seed: int = 0
    num_workers: int = 0
    cache: str = "memory"  # none | memory | disk
    amp: bool = False  # mixed precision, GPU only
    channel: str = "train"
    checkpoint_dir: str = ""
    checkpoint_every: int = 1
    intensity: str = "percentile"  # percentile (intensity_lower..upper -> 0..1, clipped) | zscore (mean 0, std 1)
    intensity_lower: float = 0.5
    intensity_upper: float = 99.5
    augment: str = "none"  # none | light (classification2d: random affine, exposure and noise in training)

    @property
    def spatial_shape(self) -> list[int]:
        """``spatial_size`` as three ints."""
        size = _three("spatial_size", self.spatial_size, int, "32,48,40")
        if min(size) < 8:
            raise HyperparameterError(f"spatial_size must be three sizes >= 8 like 32,48,40, got {self.spatial_size!r}")
        return size

    @property
    def voxel_spacing(self) -> list[float] | None:
        """``spacing`` as three mm values, or None when the volume is resized to ``spatial_size``."""
        if not str(self.spacing).strip():
            return None
        spacing = _three("spacing", self.spacing, float, "1 or 1.2,1,1 (mm)")
        if min(spacing) <= 0:
            raise HyperparameterError(f"spacing must be sizes > 0 in mm like 1.2,1,1, got {self.spacing!r}")
        return spacing

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 1-based ``epoch``: ``lr``, or with ``cosine`` half a cosine from ``lr`` at epoch 1
        to ``lr / epochs`` at the last (a function of the epoch alone, so a resumed job continues the curve)."""
        if self.lr_schedule != "cosine" or self.epochs <= 1:
            return self.lr
        floor = self.lr / self.epochs
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / (self.epochs - 1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _three(name: str, text: str, kind: type, example: str) -> list:
    """``"a,b,c"`` (or ``"axbxc"``) as three values of ``kind``; one value is used for all three."""
    try:
        values = [kind(v) for v in str(text).replace("x", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise HyperparameterError(f"{name} must look like {example}, got {text!r}") from exc
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise HyperparameterError(f"{name} must look like {example}, got {text!r}")
    return values


def _coerce(name: str, kind: type, raw: Any) -> Any:
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':  # JSON-encoded string value
            text = json.loads(text)
        raw = text
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            value = str(raw).lower()
            if value not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return value in ("true", "1", "yes")
        if kind is int:
            as_float = float(raw)
            if as_float != int(as_float):
                raise ValueError(raw)
            return int(as_float)
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise HyperparameterError(f"hyperparameter {name} must be {kind.__name__}, got {raw!r}") from exc


def parse(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Hyperparameters:
    """Merge ``SM_HPS`` (JSON) and ``--name value`` argv pairs (argv wins), then validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if env.get("SM_HPS"):
        try:
            raw.update(json.loads(env["SM_HPS"]))
        except json.JSONDecodeError as exc:
            raise HyperparameterError(f"SM_HPS is not valid JSON: {exc}") from exc
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise HyperparameterError(f"unexpected argument {arg!r}: pass hyperparameters as --name value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise HyperparameterError(f"hyperparameter --{key} needs a value")
            value = args[i + 1]
            i += 1
        raw[key.replace("-", "_")] = value
        i += 1
    known = {f.name: f.type for f in fields(Hyperparameters)}
    types = {"str": str, "int": int, "float": float, "bool": bool}
    values: dict[str, Any] = {}
    # SageMaker adds its own sagemaker_* keys (program, submit dir, region...): ignore those.
    for key, value in raw.items():
        if key.startswith("sagemaker_"):
            continue
        if key not in known:
            raise HyperparameterError(f"unknown hyperparameter {key!r}: known are {', '.join(sorted(known))}")
        values[key] = _coerce(key, types[str(known[key])], value)
    hp = Hyperparameters(**values)
    validate(hp)
    return hp


def validate(hp: Hyperparameters) -> None:
    """Raise :class:`HyperparameterError` for values that cannot work."""
    if hp.task not in TASKS:
        raise HyperparameterError(f"task must be one of {', '.join(TASKS)}, got {hp.task!r}")
    if min(hp.epochs, hp.batch_size, hp.patches_per_volume, hp.val_every) < 1 or hp.num_workers < 0:
        raise HyperparameterError("epochs, batch_size, patches_per_volume and val_every must be >= 1 and "
                                  "num_workers >= 0")
    if not hp.lr > 0:
        raise HyperparameterError(f"lr must be > 0, got {hp.lr}")
    if hp.image_size < 16:
        raise HyperparameterError(f"image_size must be >= 16, got {hp.image_size}")
    if not 0 <= hp.val_fraction < 1 or not 0 <= hp.test_fraction < 1 or hp.val_fraction + hp.test_fraction >= 1:
        raise HyperparameterError("val_fraction and test_fraction must be in [0, 1) and sum to < 1")
    if hp.intensity not in ("percentile", "zscore"):
        raise HyperparameterError(f"intensity must be percentile or zscore, got {hp.intensity!r}")
    if hp.lr_schedule not in ("constant", "cosine"):
        raise HyperparameterError(f"lr_schedule must be constant or cosine, got {hp.lr_schedule!r}")
    if hp.cache not in ("none", "memory", "disk"):
        raise HyperparameterError(f"cache must be none, memory or disk, got {hp.cache!r}")
    if hp.augment not in ("none", "light"):
        raise HyperparameterError(f"augment must be none or light, got {hp.augment!r}")
    if hp.augment == "light" and hp.task != "classification2d":
        raise HyperparameterError("augment=light is for classification2d images; use none for 3D tasks")
    if hp.task == "segmentation3d" and any(v % 8 for v in hp.spatial_shape):
        raise HyperparameterError(
            f"spatial_size {hp.spatial_size!r}: the 3D UNet halves the size three times, so every size "
            "must be a multiple of 8 (e.g. 32,48,40)")
    if hp.voxel_spacing is not None and hp.task != "segmentation3d":
        raise HyperparameterError(
            f"spacing is for segmentation3d (patches and a sliding window); a {hp.task} model sees the whole "
            "image: leave spacing empty")
    if hp.task == "classification3d" and min(hp.spatial_shape) < 32:
        raise HyperparameterError(
            f"spatial_size {hp.spatial_size!r}: DenseNet121 downsamples 32x, so every size must be >= 32")
    if hp.task == "classification2d" and hp.image_size < 32:
        raise HyperparameterError(f"image_size must be >= 32 for DenseNet121, got {hp.image_size}")
