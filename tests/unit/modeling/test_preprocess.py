"""dicomflow.modeling.preprocess: one spec, validated, shared by training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Resize, ScaleIntensityRange, ScaleIntensityRangePercentiles

from dicomflow.modeling.preprocess import PercentileScale, PreprocessSpecError, build_transform, default_spec


def test_2d_transform_resizes_and_scales_to_unit_range() -> None:
    pre = build_transform(default_spec("2d", [32, 24]))
    image = np.random.default_rng(0).normal(1000, 200, size=(100, 80)).astype(np.float32)
    out = pre(image)
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor
    assert out.shape == (1, 32, 24) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, pre(image))  # deterministic: the same for training and inference


def test_3d_transform_label_and_invert() -> None:
    pre = build_transform(default_spec("3d", [8, 16, 16]))
    image = np.arange(12 * 20 * 18, dtype=np.float32).reshape(12, 20, 18)
    label = np.zeros((12, 20, 18), np.uint8)
    label[2:6, 5:15, 4:10] = 1
    label[7:11, 5:15, 4:10] = 2
    assert pre(image).shape == (1, 8, 16, 16)
    small = pre.label(label)
    assert small.dtype == torch.long and set(small.unique().tolist()) == {0, 1, 2}
    back = pre.invert(small.float(), (12, 20, 18), labels=True)
    assert back.shape == (1, 12, 20, 18)
    agreement = (back[0].numpy().astype(np.uint8) == label).mean()
    assert agreement > 0.9


@pytest.mark.parametrize("spec, message", [
    ({"kind": "4d"}, "kind"),
    ({"kind": "2d", "image_size": [0, 5]}, "image_size"),
    ({"kind": "3d", "spatial_size": [8, 8]}, "spatial_size"),
    ({"kind": "2d", "image_size": 64, "intensity": {"mode": "percentile", "lower": 90, "upper": 10}}, "lower"),
    ({"kind": "2d", "image_size": 64, "intensity": {"mode": "gamma"}}, "intensity mode"),
])
def test_bad_specs_are_rejected(spec, message) -> None:
    with pytest.raises(PreprocessSpecError, match=message):
        build_transform(spec)


def test_wrong_dimensionality_is_a_clear_error() -> None:
    with pytest.raises(PreprocessSpecError, match="needs a 3D image"):
        build_transform(default_spec("3d"))(np.zeros((10, 10), np.float32))


def test_range_and_zscore_modes() -> None:
    img = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    ct = build_transform({"kind": "2d", "image_size": 64, "intensity": {"mode": "range", "a_min": -100, "a_max": 100}})
    out = ct(img)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    z = build_transform({"kind": "2d", "image_size": 64, "intensity": {"mode": "zscore"}})(img)
    assert abs(float(z.mean())) < 1e-3


@pytest.mark.parametrize("shape", [(200, 96, 80), (7, 33, 29), (16, 24, 16)])
def test_label_map_is_the_argmax_of_the_inverted_output(shape) -> None:
    pre = build_transform(default_spec("3d", [16, 24, 16]))
    torch.manual_seed(0)
    out = torch.randn(3, 16, 24, 16)
    expected = pre.invert(out, shape).argmax(dim=0).numpy()
    got = pre.label_map(out, shape, slab=5)
    assert got.dtype == np.uint8 and got.shape == shape
    # the same interpolation in another order: at most a float-rounding tie may flip
    assert np.mean(got == expected) > 0.99999


@pytest.mark.parametrize("shape", [(200, 96, 80), (7, 33, 29), (30, 64, 48)])
def test_label_map_of_a_sparse_output_skips_nothing_that_is_found(shape) -> None:
    pre = build_transform(default_spec("3d", [16, 24, 16]))
    torch.manual_seed(1)
    out = torch.randn(3, 16, 24, 16)
    out[0] += 6.0  # background wins almost everywhere ...
    out[1, 7:9, 10:13, 5:8] += 9.0  # ... but here
    out[2, 9, 14, 9] += 9.0  # and in one small-grid voxel
    expected = pre.invert(out, shape).argmax(dim=0).numpy()
    got = pre.label_map(out, shape, slab=3)
    assert 0 < int((expected > 0).sum()) < expected.size // 20
    np.testing.assert_array_equal(got, expected)
    nothing = pre.label_map(torch.stack([out[0], out[0] - 1, out[0] - 2]), shape)
    assert not nothing.any()


@pytest.mark.parametrize("lower,upper", [(0.5, 99.5), (0.0, 100.0), (10.0, 60.0)])
def test_percentile_scale_matches_monai(lower: float, upper: float) -> None:
    rng = np.random.default_rng(3)
    t = torch.as_tensor(rng.gamma(2.0, 300.0, size=(1, 12, 20, 16)).astype(np.float32))
    monai = ScaleIntensityRangePercentiles(lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True, relative=False)
    ours = PercentileScale(lower, upper)(t)
    assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0
    np.testing.assert_allclose(np.asarray(ours), np.asarray(monai(t)), atol=1e-5)  # percentiles differ by ulps
    lo, hi = np.percentile(t.numpy(), [lower, upper])
    scale = ScaleIntensityRange(a_min=float(lo), a_max=float(hi), b_min=0.0, b_max=1.0, clip=True)
    assert torch.equal(ours, scale(t).as_tensor())  # the same arithmetic: the same values
    flat = torch.full((1, 4, 4, 4), 7.0)
    assert torch.equal(PercentileScale(lower, upper)(flat), torch.zeros_like(flat))


@pytest.mark.parametrize("kind, size, shape, mode", [
    ("2d", [64, 64], (1, 256, 256), "area"), ("2d", [32, 24], (1, 100, 80), "area"),
    ("3d", [8, 16, 16], (1, 12, 20, 18), "trilinear"), ("3d", [16, 16, 16], (1, 9, 31, 17), "trilinear"),
])
def test_resizing_is_monais_resize_exactly(kind: str, size: list[int], shape: tuple[int, ...], mode: str) -> None:
    """The fixed-size grid is computed with torch directly; it must be MONAI's Resize value for value (models
    trained before were trained on MONAI's), images and labels."""
    pre = build_transform(default_spec(kind, size))
    t = torch.as_tensor(np.random.default_rng(8).gamma(2.0, 300.0, size=shape).astype(np.float32))
    ours = pre._to_grid(t, None, label=False)
    theirs = Resize(tuple(size), mode=mode, anti_aliasing=False)(t)
    assert torch.equal(ours, torch.as_tensor(theirs).as_subclass(torch.Tensor))
    label = torch.as_tensor(np.random.default_rng(9).integers(0, 3, size=shape).astype(np.float32))
    assert torch.equal(pre._to_grid(label, None, label=True),
                       torch.as_tensor(Resize(tuple(size), mode="nearest")(label)).as_subclass(torch.Tensor))


def _spacing_spec(patch=(8, 8, 8), spacing=(1.0, 1.0, 1.0), **extra) -> dict:
    return {**default_spec("3d", list(patch)), "spacing": spacing, **extra}


def test_spacing_spec_resamples_to_the_voxel_spacing() -> None:
    pre = build_transform(_spacing_spec(spacing=(2.0, 1.0, 1.0)))
    assert pre.spec["overlap"] == 0.25 and pre.spacing == (2.0, 1.0, 1.0)
    image = np.random.default_rng(1).random((10, 20, 30)).astype(np.float32)
    assert pre.grid(image.shape, (3.0, 0.5, 1.0)) == (15, 10, 30)  # the same extent in 2 x 1 x 1 mm voxels
    x = pre(image, (3.0, 0.5, 1.0))
    assert x.shape == (1, 15, 10, 30) and float(x.min()) >= 0 and float(x.max()) <= 1
    label = np.zeros((10, 20, 30), dtype=np.uint8)
    label[4:6, 8:12, 10:20] = 2
    y = pre.label(label, (3.0, 0.5, 1.0))
    assert y.shape == (1, 15, 10, 30) and set(torch.unique(y).tolist()) == {0, 2}
    with pytest.raises(PreprocessSpecError, match="needs a 3D image and its voxel spacing"):
        pre(image)
    assert build_transform(_spacing_spec(spacing=1.5)).spacing == (1.5, 1.5, 1.5)


@pytest.mark.parametrize(("spec", "message"), [
    ({**default_spec("2d", [32, 32]), "spacing": [1, 1, 1]}, "spacing"),
    (_spacing_spec(spacing=(1, 0, 1)), "3 positive numbers"),
    (_spacing_spec(spacing=(1, 1)), "3 positive numbers"),
    (_spacing_spec(overlap=1.0), "overlap"),
])
def test_bad_spacing_specs_are_rejected(spec, message) -> None:
    with pytest.raises(PreprocessSpecError, match=message):
        build_transform(spec)


def test_sliding_window_covers_the_whole_resampled_volume() -> None:
    """A voxel-wise network gives the same output through the sliding window as on the whole volume."""
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, kernel_size=1).eval()
    pre = build_transform(_spacing_spec(patch=(8, 8, 8)))
    x = pre(np.random.default_rng(2).random((6, 21, 17)).astype(np.float32), (1.0, 1.0, 1.0))[None]
    with torch.inference_mode():
        out = pre.run_network(network, x)  # smaller than a patch along Z, several patches in-plane
        torch.testing.assert_close(out, network(x))
    assert out.shape == (1, 3, 6, 21, 17) and type(out) is torch.Tensor
    labels = pre.label_map(out[0], (12, 21, 17))  # back on a grid twice as fine along Z
    assert labels.shape == (12, 21, 17)
    fixed = build_transform(default_spec("3d", [8, 8, 8]))
    assert fixed.run_network(network, x) is not None and fixed.grid((6, 21, 17)) == (8, 8, 8)
