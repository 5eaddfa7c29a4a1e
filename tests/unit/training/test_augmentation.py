"""augment=light: random affine, exposure and noise on 2D training images; never a flip, never on 3D tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from dicomflow.training.data import light_augmentation
from dicomflow.training.hyperparameters import HyperparameterError, parse, validate


def _image() -> torch.Tensor:
    yy, xx = np.mgrid[0:64, 0:64] / 64
    heart_on_the_left = np.exp(-((yy - 0.6) ** 2 + (xx - 0.65) ** 2) / 0.01)  # patient's left = image right
    return torch.tensor((0.2 + heart_on_the_left)[None], dtype=torch.float32)


def _draws(seed: int, n: int) -> list[torch.Tensor]:
    chain = Compose(light_augmentation((64, 64))).set_random_state(seed=seed)
    return [chain({"image": _image().clone()})["image"] for _ in range(n)]


def test_light_augmentation_varies_the_image_but_keeps_its_side_and_shape() -> None:
    original = _image()
    draws = _draws(0, 8)
    assert all(d.shape == original.shape for d in draws)
    assert sum(not torch.allclose(d, original) for d in draws) >= 6  # most draws change something
    flipped = torch.flip(original, dims=[-1])
    for d in draws:  # each draw stays closer to the image than to its mirror: left stays left
        assert float(((d - original) ** 2).mean()) < float(((d - flipped) ** 2).mean())


def test_light_augmentation_is_reproducible_from_its_seed() -> None:
    first, again, other = _draws(3, 3), _draws(3, 3), _draws(4, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_light_augmentation_is_refused_for_3d_tasks() -> None:
    validate(parse(["--task", "classification2d", "--augment", "light"], {}))
    with pytest.raises(HyperparameterError, match="augment=light is for classification2d"):
        validate(parse(["--task", "segmentation3d", "--augment", "light"], {}))
    with pytest.raises(HyperparameterError, match="augment must be none or light"):
        validate(parse(["--task", "classification2d", "--augment", "heavy"], {}))
    with pytest.raises(Exception, match="2D images"):
        light_augmentation((16, 16, 16))
