"""Task -> network, and the model artifact (``model.pt`` + ``model.ts`` + ``dicomflow_model.json``).

Tasks:

* ``classification2d`` - MONAI DenseNet121 (2D), one logit per label (multi-label, sigmoid).
* ``classification3d`` - MONAI DenseNet121 with ``spatial_dims=3``, one logit per label.
* ``segmentation3d`` - MONAI UNet (3D); output channel 0 is background and channel ``i`` is
  ``labels[i - 1]`` (the label volume's value ``i``).
"""

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
from monai.networks import nets

from dicomflow.errors import DicomflowError
from dicomflow.preprocess import Preprocess, build_transform, default_spec, validate_spec

FORMAT_VERSION = 1
TASKS = ("classification2d", "classification3d", "segmentation3d")
METADATA_FILE = "dicomflow_model.json"
WEIGHTS_FILE = "model.pt"
TORCHSCRIPT_FILE = "model.ts"
_NETWORKS = {"DenseNet121": nets.DenseNet121, "UNet": nets.UNet}


class ArtifactError(DicomflowError):
    """A model artifact is missing, unreadable or of an unknown format."""


def check_task(task: str) -> str:
    """Return ``task`` if known, else raise with the list of tasks."""
    if task not in TASKS:
        raise DicomflowError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return task


def network_spec(task: str, labels: list[str]) -> dict[str, Any]:
    """The network (name + kwargs) used for ``task`` with these labels."""
    check_task(task)
    if task == "classification2d":
        return {"name": "DenseNet121", "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": len(labels)}}
    if task == "classification3d":
        return {"name": "DenseNet121", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": len(labels)}}
    return {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": len(labels) + 1,
                                       "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}}


def default_preprocess(task: str, size: list[int] | None = None) -> dict[str, Any]:
    """Default preprocessing spec for a task."""
    return default_spec("2d" if check_task(task) == "classification2d" else "3d", size)


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    """Instantiate a network from ``{"name": ..., "kwargs": {...}}`` (known MONAI networks only)."""
    name = spec.get("name")
    if name not in _NETWORKS:
        raise ArtifactError(f"unknown network {name!r}: known are {', '.join(_NETWORKS)}")
    kwargs = dict(spec.get("kwargs", {}))
    for key in ("channels", "strides"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return _NETWORKS[name](**kwargs)


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


class OneDnnConv3d(torch.nn.Module):
    """A ``Conv3d`` that runs on oneDNN for float CPU input of any batch size (for inference)."""

    def __init__(self, conv: torch.nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return c(x)
        return torch.mkldnn_convolution(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups)


def use_onednn_conv3d(network: torch.nn.Module) -> torch.nn.Module:
    """Make ``network``'s 3D convolutions run on oneDNN (in place); returns ``network``.

    Eager PyTorch runs a 3D convolution of a single small volume (batch 1 and N*C*D*H < 20480,
    i.e. most layers of these networks when a request is served) on its slow im2col path instead
    of oneDNN, which it uses from batch 2 on. Measured on one core: the 64^3 segmentation UNet
    250 -> 62 ms, at 32x48x40 34 -> 15 ms, DenseNet121-3D at 32x48x40 78 -> 45 ms; outputs agree
    to ~1e-5 (the same kernels a batch of two gets). Under autograd, or on other devices and
    dtypes, the stock convolution runs.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")):
        return network
    for name, child in network.named_children():
        if (type(child) is torch.nn.Conv3d and child.padding_mode == "zeros"
                and not isinstance(child.padding, str)):
            setattr(network, name, OneDnnConv3d(child))
        else:
            use_onednn_conv3d(child)
    return network


def _extract(tar_path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="dicomflow-model-"))
    with tarfile.open(tar_path) as tar:
        tar.extractall(target, filter="data")
    return target


def load_artifact(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an artifact directory (or a ``model.tar.gz``) into a :class:`LoadedModel` (network in eval)."""
    path = Path(model_dir)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        path = _extract(path)
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
