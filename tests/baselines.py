"""Trivial baselines that every quality test computes beside the model, on the same split.

A model passes only if it beats what needs no learning from the image: for classification the class
prior (AUROC 0.5: one score for every image) and a ridge regression on 8x8 thumbnails; for
segmentation the no-image prior, the training labels' mean mask at the threshold that fits the
training volumes best.
"""

from __future__ import annotations

import numpy as np

from dicomflow.dicom.volume import load_files, load_label_volume
from dicomflow.training.metrics import auroc, overlap_metrics

THUMBNAIL = 8


def _thumbnail(path_list: list[str]) -> np.ndarray:
    image, _ = load_files(path_list)
    if image.ndim == 3:
        image = image[image.shape[0] // 2]
    h, w = (image.shape[0] // THUMBNAIL) * THUMBNAIL, (image.shape[1] // THUMBNAIL) * THUMBNAIL
    blocks = image[:h, :w].reshape(THUMBNAIL, h // THUMBNAIL, THUMBNAIL, w // THUMBNAIL).mean(axis=(1, 3)).ravel()
    return (blocks - blocks.mean()) / (blocks.std() + 1e-6)


def thumbnail_vectors(items: list) -> np.ndarray:
    """The standardised 8x8 thumbnails of training items, one row each: the no-learning image embedding."""
    return np.stack([_thumbnail(it.images) for it in items])


def neighbour_label_agreement(vectors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean over queries of the label Jaccard between each query and its ``k`` nearest others by cosine
    (labels are 0/1 rows); what a radiologist's "similar images" should share with the query."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    lab = labels.astype(bool)
    scores = []
    for q in range(len(unit)):
        nearest = np.argsort(-sims[q], kind="stable")[:k]
        inter = (lab[nearest] & lab[q]).sum(axis=1)
        union = (lab[nearest] | lab[q]).sum(axis=1)
        scores.append(float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0))))
    return float(np.mean(scores))


def thumbnail_ridge_auroc(train: list, held_out: list) -> float:
    """Mean AUROC on ``held_out`` of a ridge regression on 8x8 thumbnails fitted on ``train`` (training items
    with ``images`` and 0/1 ``labels``); the ridge strength is the best of four on ``held_out`` itself, so
    the baseline is, if anything, optimistic."""
    x_train = np.c_[np.stack([_thumbnail(it.images) for it in train]), np.ones(len(train))]
    x_held = np.c_[np.stack([_thumbnail(it.images) for it in held_out]), np.ones(len(held_out))]
    y_train = np.array([it.labels for it in train], dtype=np.float64)
    y_held = np.array([it.labels for it in held_out], dtype=np.float64)
    best = 0.0
    for strength in (0.1, 1.0, 10.0, 100.0):
        weights = np.linalg.solve(x_train.T @ x_train + strength * np.eye(x_train.shape[1]), x_train.T @ y_train)
        scores = x_held @ weights
        per_class = [auroc(scores[:, c], y_held[:, c]) for c in range(y_train.shape[1])]
        best = max(best, float(np.nanmean(per_class)))
    return best


def item_labels(items: list) -> list[np.ndarray]:
    """The label volumes of training items (``images`` + ``label``), each on its own image grid."""
    out = []
    for item in items:
        _, geometry = load_files(item.images)
        out.append(load_label_volume(item.label, geometry))
    return out


def mean_dice(pred: np.ndarray, truth: np.ndarray, structures: int) -> float:
    """Mean over structure values 1..``structures`` of the Dice of ``pred`` against ``truth``."""
    return float(np.mean([m["dice"] for m in overlap_metrics(pred, truth, structures).values()]))


def _centred(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``label`` cropped or zero-padded about its centre to ``shape`` (same voxel spacing assumed)."""
    out = np.zeros(shape, label.dtype)
    src, dst = [], []
    for have, want in zip(label.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = label[tuple(src)]
    return out


def prior_mask_dice(train_labels: list[np.ndarray], held_out_labels: list[np.ndarray], structures: int) -> float:
    """Mean Dice on ``held_out_labels`` of the no-image prior: per structure, the voxels labelled in more than
    a share ``t`` of the training volumes (centre-aligned where fields of view differ), ``t`` the share that
    fits the training volumes best. It predicts one mask for every image, so it scores what the
    location prior alone is worth."""
    def prior_on(shape: tuple[int, ...], threshold: float) -> np.ndarray:
        stack = np.stack([_centred(label, shape) for label in train_labels])
        prior = np.zeros(shape, np.uint8)
        for value in range(1, structures + 1):
            prior[(stack == value).mean(axis=0) > threshold] = value
        return prior

    def fit(threshold: float) -> float:
        return float(np.mean([mean_dice(prior_on(label.shape, threshold), label, structures)
                              for label in train_labels]))

    threshold = max((0.1, 0.2, 0.3, 0.4, 0.5), key=fit)
    return float(np.mean([mean_dice(prior_on(label.shape, threshold), label, structures)
                          for label in held_out_labels]))
