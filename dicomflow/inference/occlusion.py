"""Occlusion sensitivity (MONAI) for classifiers: a PNG heat map of the top class on the central slice."""

from __future__ import annotations

import io

import numpy as np
import torch
from monai.visualize import OcclusionSensitivity
from PIL import Image

MASK_SIZE_2D = 16


class _CentralSlice(torch.nn.Module):
    """A 3D classifier seen as a 2D one: the 2D input replaces the volume's central slice."""

    def __init__(self, network: torch.nn.Module, volume: torch.Tensor) -> None:
        super().__init__()
        self.network, self.volume, self.z = network, volume, volume.shape[2] // 2

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        vol = self.volume.expand(slices.shape[0], -1, -1, -1, -1).clone()
        vol[:, :, self.z] = slices
        return self.network(vol)


def occlusion_map(network: torch.nn.Module, x: torch.Tensor, class_index: int, activation: str = "sigmoid"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(image slice, sensitivity map) for ``class_index``; ``x`` is the network input ``(1, 1, *size)``.

    For a 3D input the central slice is analysed: patches of that slice are occluded inside the
    volume. Higher map values mean the region mattered more (probability lost when it is hidden).
    """
    activate = torch.sigmoid if activation == "sigmoid" else (lambda t: torch.softmax(t, dim=1))
    if x.ndim == 5:
        model: torch.nn.Module = _CentralSlice(network, x)
        x2d = x[:, :, x.shape[2] // 2]
    else:
        model, x2d = network, x
    h, w = x2d.shape[2:]
    occ = OcclusionSensitivity(model, mask_size=(min(MASK_SIZE_2D, h), min(MASK_SIZE_2D, w)), n_batch=8,
                               verbose=False, mode="mean_img", overlap=0.5, activate=activate)
    with torch.inference_mode():
        baseline = float(activate(model(x2d))[0, class_index])
        occ_map, _ = occ(x2d)
    m = occ_map[0, class_index].detach().cpu().numpy()  # MONAI 1.6: (B, classes, H, W)
    return x2d[0, 0].detach().cpu().numpy(), baseline - m


def render_png(image: np.ndarray, sensitivity: np.ndarray) -> bytes:
    """Grey image with the positive sensitivity in red on top, as PNG bytes."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    sens = np.clip(np.asarray(sensitivity, dtype=np.float32), 0, None)
    if sens.shape != grey.shape:  # a bounding box may crop; pad to the image
        padded = np.zeros_like(grey)
        padded[: sens.shape[0], : sens.shape[1]] = sens[: grey.shape[0], : grey.shape[1]]
        sens = padded
    peak = float(sens.max())
    heat = sens / peak if peak > 0 else sens
    rgb = np.stack([grey * (1 - heat) + heat, grey * (1 - heat), grey * (1 - heat)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
