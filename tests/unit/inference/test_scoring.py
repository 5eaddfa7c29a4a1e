"""Batched scoring for active learning gives the serving container's probabilities, and Monte-Carlo dropout
samples that depend on the image and the seed only."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from model_helpers import untrained_artifact

from dicomflow.demo import synthetic
from dicomflow.inference import scoring
from dicomflow.inference.errors import BadRequest
from dicomflow.inference.request import parse_request
from dicomflow.inference.service import InferenceService


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> tuple[InferenceService, list]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("scoring")
    model = untrained_artifact(root, "classification2d", list(synthetic.CHEST_CLASSES), [64, 64])
    images = [im.dataset for im in synthetic.chest_radiographs(5, seed=4, size=96)]
    return InferenceService.from_model_dir(model), images


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_batch_scores_as_the_serving_container_does_one_image(chest) -> None:
    svc, images = chest
    batch = scoring.score_batch(svc.network, [scoring.image_input(svc, ds) for ds in images])
    for ds, row in zip(images, batch.probabilities, strict=True):
        served = svc.run(parse_request(_bytes(ds), "application/dicom"))["findings"]["probabilities"]
        assert row == pytest.approx([served[c] for c in svc.labels], abs=2e-6)
    assert batch.samples is None


def test_dropout_samples_depend_on_the_image_and_seed_not_the_batch(chest) -> None:
    svc, images = chest
    inputs = [scoring.image_input(svc, ds) for ds in images]
    seeds = [scoring.image_seed(str(ds.SOPInstanceUID)) for ds in images]
    whole = scoring.score_batch(svc.network, inputs, mc_samples=6, seeds=seeds)
    alone = scoring.score_batch(svc.network, inputs[2:3], mc_samples=6, seeds=seeds[2:3])
    assert whole.samples.shape == (6, 5, len(svc.labels))
    assert np.allclose(whole.samples[:, 2], alone.samples[:, 0], atol=1e-6)
    assert not np.allclose(whole.samples[0], whole.samples[1])  # the draws differ
    other = scoring.score_batch(svc.network, inputs, mc_samples=6,
                                seeds=[scoring.image_seed(str(ds.SOPInstanceUID), 1) for ds in images])
    assert not np.allclose(whole.samples, other.samples)


def test_only_image_classifiers_are_loaded(tmp_path) -> None:
    seg = untrained_artifact(tmp_path, "segmentation3d", ["background", "anterior", "posterior"], [16, 16, 16])
    with pytest.raises(BadRequest, match="segmentation3d model"):
        scoring.load_classifier(str(seg))
    with pytest.raises(BadRequest, match="no such file"):
        scoring.load_classifier(str(tmp_path / "missing" / "model.tar.gz"))


def test_a_segmenters_series_score_looks_at_its_structures_not_the_certain_background() -> None:
    certain_bg = np.zeros((3, 10, 10))
    certain_bg[0] = 1.0
    sure = certain_bg.copy()
    sure[:, 4:6, 4:6] = np.array([0.02, 0.96, 0.02])[:, None, None]  # a small structure it is sure of
    unsure = certain_bg.copy()
    unsure[:, 4:6, 4:6] = np.array([0.3, 0.4, 0.3])[:, None, None]  # the same structure, doubted
    big_doubt = certain_bg.copy()
    big_doubt[:, 2:8, 2:8] = np.array([0.3, 0.4, 0.3])[:, None, None]  # more doubted voxels, same doubt
    s_sure, s_unsure, s_big = (scoring.region_uncertainty(p) for p in (sure, unsure, big_doubt))
    assert scoring.region_uncertainty(certain_bg) == {"entropy": 0.0, "margin": 0.0, "regionVoxels": 0}
    assert s_sure["regionVoxels"] == s_unsure["regionVoxels"] == 4 and s_big["regionVoxels"] == 36
    assert s_sure["entropy"] < 0.2 < s_unsure["entropy"] and s_sure["margin"] < 0.1
    assert s_unsure["margin"] == pytest.approx(0.9)
    assert s_big["entropy"] == pytest.approx(s_unsure["entropy"])  # a mean over the region, not diluted by size
    with pytest.raises(ValueError, match="2 or more classes"):
        scoring.region_uncertainty(np.ones((1, 4, 4)))
