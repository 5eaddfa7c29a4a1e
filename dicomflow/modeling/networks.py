"""Task -> network: which MONAI network each task trains and serves, and the oneDNN path for serving 3D ones.

Tasks:

* ``classification2d`` - MONAI DenseNet121 (2D), one logit per label (multi-label, sigmoid).
* ``classification3d`` - MONAI DenseNet121 with ``spatial_dims=3``, one logit per label.
* ``segmentation3d`` - MONAI UNet (3D); output channel 0 is background and channel ``i`` is
  ``labels[i - 1]`` (the label volume's value ``i``).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks import nets

from dicomflow.errors import DicomflowError
from dicomflow.modeling.contract import TASKS

_NETWORKS = {"DenseNet121": nets.DenseNet121, "UNet": nets.UNet}


class NetworkError(DicomflowError):
    """A network spec names no known network."""


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


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    """Instantiate a network from ``{"name": ..., "kwargs": {...}}`` (known MONAI networks only)."""
    name = spec.get("name")
    if name not in _NETWORKS:
        raise NetworkError(f"unknown network {name!r}: known are {', '.join(_NETWORKS)}")
    kwargs = dict(spec.get("kwargs", {}))
    for key in ("channels", "strides"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return _NETWORKS[name](**kwargs)


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
    of oneDNN, which it uses from batch 2 on. On one core, stock against oneDNN: the 64^3
    segmentation UNet 250 against 62 ms, at 32x48x40 34 against 15 ms, DenseNet121-3D at 32x48x40 78
    against 45 ms; outputs agree to ~1e-5 (the same kernels a batch of two gets). Under autograd, or
    on other devices and dtypes, the stock convolution runs.
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
