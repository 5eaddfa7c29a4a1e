"""The model artifact: ``model.pt`` (weights), ``model.ts`` (TorchScript) and ``dicomflow_model.json`` (task,
labels, network, preprocessing, metrics), as the training job writes it and the serving container loads it."""

from __future__ import annotations

import datetime as _dt
import json
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dicomflow.dicom.structures import Structure, parse_structures
from dicomflow.errors import DicomflowError
from dicomflow.modeling.contract import METADATA_FILE
from dicomflow.modeling.networks import build_network, check_task
from dicomflow.modeling.preprocess import Preprocess, build_transform, default_spec, validate_spec

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
TORCHSCRIPT_FILE = "model.ts"


class ArtifactError(DicomflowError):
    """A model artifact is missing, unreadable or of an unknown format."""


def default_preprocess(task: str, size: list[int] | None = None) -> dict[str, Any]:
    """Default preprocessing spec for a task."""
    return default_spec("2d" if check_task(task) == "classification2d" else "3d", size)


@dataclass
class LoadedModel:
    """A model ready for inference: the network in eval mode plus what it needs around it."""

    task: str
    labels: list[str]
    network: torch.nn.Module
    preprocess: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def transform(self) -> Preprocess:
        """The preprocessing callable built from the recorded spec."""
        return build_transform(self.preprocess)

    @property
    def structures(self) -> list[Structure]:
        """A segmentation model's structures (label value, name, codes); recorded ones, else from the labels."""
        if self.task != "segmentation3d":
            return []
        return parse_structures(self.metadata.get("structures") or self.labels, where="the model artifact")


def save_artifact(model_dir: str | Path, *, task: str, labels: list[str], network: torch.nn.Module,
                  network_spec: dict[str, Any], preprocess: dict[str, Any], metrics: dict[str, Any],
                  manifest_sha256: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt``, ``model.ts`` and ``dicomflow_model.json`` into ``model_dir``."""
    check_task(task)
    preprocess = validate_spec(preprocess)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    network = network.module if hasattr(network, "module") else network
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    torch.save(state, model_dir / WEIGHTS_FILE)
    cpu_net = build_network(network_spec)
    cpu_net.load_state_dict(state)
    cpu_net.eval()
    size = preprocess["image_size"] if preprocess["kind"] == "2d" else preprocess["spatial_size"]
    example = torch.zeros(1, 1, *size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(cpu_net, example)
    traced.save(str(model_dir / TORCHSCRIPT_FILE))
    metadata = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "labels": list(labels),
        "network": network_spec,
        "preprocess": preprocess,
        "metrics": metrics,
        "manifest_sha256": manifest_sha256,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if extra:
        metadata.update(extra)
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=float) + "\n")
    return model_dir


def _extract(tar_path: Path, target: Path) -> Path:
    with tarfile.open(tar_path) as tar:
        tar.extractall(target, filter="data")
    return target


def load_artifact(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an artifact directory (or a ``model.tar.gz``) into a :class:`LoadedModel` (network in eval)."""
    path = Path(model_dir)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tempfile.TemporaryDirectory(prefix="dicomflow-model-") as extracted:  # read into memory, then gone
            return load_artifact(_extract(path, Path(extracted)), device)
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{path} holds no {METADATA_FILE}: not a dicomflow model artifact")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_path} is not valid JSON: {exc}") from exc
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"model artifact format {metadata.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    task = check_task(metadata.get("task", ""))
    network = build_network(metadata["network"])
    weights = path / WEIGHTS_FILE
    if weights.is_file():
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    elif (path / TORCHSCRIPT_FILE).is_file():
        network = torch.jit.load(str(path / TORCHSCRIPT_FILE), map_location="cpu")
    else:
        raise ArtifactError(f"{path} holds neither {WEIGHTS_FILE} nor {TORCHSCRIPT_FILE}")
    network.to(device).eval()
    return LoadedModel(task=task, labels=list(metadata["labels"]), network=network,
                       preprocess=validate_spec(metadata["preprocess"]), metadata=metadata)
