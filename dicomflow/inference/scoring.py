"""Class probabilities of many images in batches, for active learning: the plain forward pass and, for
``mc-dropout``, Monte-Carlo dropout samples; and a segmenter's uncertainty over whole series.

The images are preprocessed exactly as the serving container preprocesses one (the artifact's recorded
transform), and a batch gives the same probabilities as one image at a time. Monte-Carlo dropout drops
the pooled features in front of the classifier: the feature extractor runs once per image and only the
head runs per sample, with masks drawn from a generator seeded per call, so the same images and seed give
the same samples. The classifier was not trained with dropout there (DenseNet121's default); the samples
measure how much the head leans on few features, a cheaper and weaker sign than a model trained with
dropout would give, and the README says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
import torch

from dicomflow.dicom.volume import load_image
from dicomflow.inference import findings as F
from dicomflow.modeling.embedding import pooled_features

MC_DROPOUT_RATE = 0.5


@dataclass(frozen=True)
class BatchScores:
    """``probabilities`` ``(images, classes)``; ``samples`` ``(draws, images, classes)`` when asked."""

    probabilities: np.ndarray
    samples: np.ndarray | None = None


def image_input(service: object, ds: pydicom.Dataset) -> torch.Tensor:
    """One image's model input ``(C, H, W)`` as the serving container makes it (the middle frame of a multi-frame
    image), from ``service`` (an :class:`~dicomflow.inference.service.InferenceService`)."""
    return service.model_input(*load_image([ds]))[1][0]  # type: ignore[attr-defined]


def score_batch(network: torch.nn.Module, inputs: Sequence[torch.Tensor], *, activation: str = "sigmoid",
                mc_samples: int = 0, dropout: float = MC_DROPOUT_RATE, seeds: Sequence[int] = ()) -> BatchScores:
    """Probabilities of one batch of preprocessed inputs (each ``(C, H, W)``), and ``mc_samples`` dropout
    samples of them when ``mc_samples`` > 0: image ``i``'s masks come from a generator seeded with
    ``seeds[i]`` (default ``i``), so an image's samples do not depend on the batch it is in."""
    if not inputs:
        return BatchScores(np.zeros((0, 0)))
    x = torch.stack(list(inputs))
    with torch.inference_mode():
        features, head = pooled_features(network, x)
        probs = _probabilities(head(features), activation)
        samples = None
        if mc_samples > 0:
            keep = 1.0 - dropout
            masks = torch.stack([
                torch.rand((mc_samples, features.shape[1]), generator=torch.Generator().manual_seed(
                    int(seeds[i]) if i < len(seeds) else i)) < keep
                for i in range(features.shape[0])], dim=1).to(features.dtype) / keep  # (draws, images, features)
            dropped = (features.unsqueeze(0) * masks).reshape(-1, features.shape[1])
            samples = _probabilities(head(dropped), activation).reshape(mc_samples, features.shape[0], -1)
    return BatchScores(probs, samples)


def image_seed(sop_uid: str, seed: int = 0) -> int:
    """A stable per-image seed for its dropout masks (the same image and seed: the same samples)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sop_uid}".encode()).digest()[:8], "big") & (2**63 - 1)


def _probabilities(logits: torch.Tensor, activation: str) -> np.ndarray:
    return np.stack([F.probabilities(row, activation) for row in logits.detach().cpu().numpy()])


@dataclass
class ScoredImages:
    """What :func:`score_images` measured: the probabilities of each image it could read (by SOP Instance UID,
    in the order given) and the reason for each it could not."""

    keys: list[str]
    probabilities: np.ndarray
    samples: np.ndarray | None
    failed: dict[str, str]
    scores: None = None  # the strategies score these probabilities (groundtruth.active.uncertainty)


#: voxels a segmenter is at least this sure of as background are left out of a series' score
REGION_CONFIDENCE = 0.9


def region_uncertainty(probabilities: np.ndarray) -> dict[str, float]:
    """A segmenter's softmax ``probabilities`` ``(classes, *voxels)`` (class 0 the background) as the two scores
    of one series: the mean entropy (in bits, normalised by ``log2(classes)``) and the mean
    ``1 - (top - second)`` over its *region*, the voxels the model labels as a structure or gives the
    background less than :data:`REGION_CONFIDENCE` (so that the head's certain background does not dilute the
    structures' boundaries); 0 and 0 when there is none."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if p.shape[0] < 2:
        raise ValueError(f"a segmenter's probabilities need 2 or more classes, not {p.shape[0]}")
    region = (p.argmax(axis=0) > 0) | (p[0] < REGION_CONFIDENCE)
    if not region.any():
        return {"entropy": 0.0, "margin": 0.0, "regionVoxels": 0}
    q = np.clip(p[:, region], 1e-12, 1.0)
    top = np.sort(q, axis=0)[::-1]
    entropy = -(q * np.log2(q)).sum(axis=0) / np.log2(p.shape[0])
    return {"entropy": float(entropy.mean()), "margin": float((1.0 - (top[0] - top[1])).mean()),
            "regionVoxels": int(region.sum())}


@dataclass(frozen=True)
class ScoredSeries:
    """What :func:`score_series` measured: per series it could read (by Series Instance UID, in the order given)
    each structure's mean probability over the voxels the model gives it (``probabilities`` ``(series,
    structures)``), the ``entropy`` and ``margin`` scores of :func:`region_uncertainty`, and the reason for each
    series it could not read."""

    keys: list[str]
    probabilities: np.ndarray
    scores: dict[str, list[float]]
    failed: dict[str, str]
    samples: None = None


def series_probabilities(service: object, datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """A segmenter's softmax ``(classes, *grid)`` for one series, on its model grid, preprocessed and run as the
    serving container runs it (sliding window included)."""
    _, x = service.model_input(*load_image(list(datasets)))  # type: ignore[attr-defined]
    with torch.inference_mode():
        out = service.transform.run_network(service.network, x)  # type: ignore[attr-defined]
    return torch.softmax(out[0].float(), dim=0).cpu().numpy()


def score_series(client: object, service: object, series: Sequence[tuple[str, str]], *,
                 progress: Callable[[int], None] | None = None) -> ScoredSeries:
    """``series`` (study, series UIDs) retrieved over DICOMweb from ``client`` and scored by the segmenter of
    ``service``, one at a time; one that cannot be retrieved or read is listed in ``failed`` and the others go on."""
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom.errors import PacsError
    from dicomflow.dicom.geometry import GeometryError
    from dicomflow.dicom.volume import NotAnImageError

    keys: list[str] = []
    means: list[list[float]] = []
    scores: dict[str, list[float]] = {"entropy": [], "margin": []}
    failed: dict[str, str] = {}
    for done, (study, uid) in enumerate(series, start=1):
        try:
            p = series_probabilities(service, dicomweb.retrieve_series(client, study, uid))  # type: ignore[arg-type]
        except (PacsError, GeometryError, NotAnImageError, ValueError) as exc:
            failed[uid] = str(exc)[:300]
        else:
            winner = p.argmax(axis=0)
            means.append([float(p[k][winner == k].mean()) if (winner == k).any() else 0.0
                          for k in range(1, len(p))])
            for name, value in region_uncertainty(p).items():
                if name in scores:
                    scores[name].append(value)
            keys.append(uid)
        if progress:
            progress(done)
    structures = len(service.labels)  # type: ignore[attr-defined]
    return ScoredSeries(keys, np.asarray(means, dtype=np.float64).reshape(len(keys), structures), scores, failed)


def score_pool(client: object, service: object, pool: Sequence[object], *, batch_size: int = 16,
               mc_samples: int = 0, seed: int = 0,
               progress: Callable[[int], None] | None = None) -> ScoredImages | ScoredSeries:
    """The objects of ``pool`` (each with ``study_uid``, ``series_uid`` and ``key``: its SOP Instance UID, or a
    series' Series Instance UID) scored by ``service``'s model: images by a classifier (:func:`score_images`),
    series by a segmenter (:func:`score_series`)."""
    if service.task == "segmentation3d":  # type: ignore[attr-defined]
        return score_series(client, service, [(c.study_uid, c.series_uid) for c in pool],  # type: ignore[attr-defined]
                            progress=progress)
    return score_images(client, service, [(c.study_uid, c.series_uid, c.key) for c in pool],  # type: ignore[attr-defined]
                        batch_size=batch_size, mc_samples=mc_samples, seed=seed, progress=progress)


def score_images(client: object, service: object, images: Sequence[tuple[str, str, str]], *, batch_size: int = 16,
                 mc_samples: int = 0, seed: int = 0, progress: Callable[[int], None] | None = None) -> ScoredImages:
    """``images`` (study, series, SOP Instance UIDs) retrieved over DICOMweb from ``client`` and scored by the
    classifier of ``service`` (an :class:`~dicomflow.inference.service.InferenceService`) ``batch_size`` at a
    time; an image that cannot be retrieved or decoded is listed in ``failed`` and the others go on.
    ``progress(n)`` is called after each image with how many were done."""
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom.errors import PacsError
    from dicomflow.dicom.geometry import GeometryError
    from dicomflow.dicom.volume import NotAnImageError

    keys: list[str] = []
    probs: list[np.ndarray] = []
    draws: list[np.ndarray] = []
    failed: dict[str, str] = {}
    batch: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        scores = score_batch(service.network, [x for _, x in batch], activation=service.activation,  # type: ignore[attr-defined]
                             mc_samples=mc_samples, seeds=[image_seed(k, seed) for k, _ in batch])
        keys.extend(k for k, _ in batch)
        probs.append(scores.probabilities)
        if scores.samples is not None:
            draws.append(scores.samples)
        batch.clear()

    for done, (study, series, sop) in enumerate(images, start=1):
        try:
            ds = dicomweb.retrieve_instance(client, study, series, sop)  # type: ignore[arg-type]
            batch.append((sop, image_input(service, ds)))
        except (PacsError, GeometryError, NotAnImageError, ValueError) as exc:
            failed[sop] = str(exc)[:300]
        if len(batch) >= batch_size:
            flush()
        if progress:
            progress(done)
    flush()
    classes = len(service.labels)  # type: ignore[attr-defined]
    return ScoredImages(keys, np.concatenate(probs) if probs else np.zeros((0, classes)),
                        np.concatenate(draws, axis=1) if draws else None, failed)


def load_classifier(model: str, tasks: Sequence[str] = ("classification2d",)) -> tuple[object, dict[str, str]]:
    """The :class:`~dicomflow.inference.service.InferenceService` of ``model`` and what to call it: a local
    artifact directory or ``model.tar.gz``, an ``s3://`` ``model.tar.gz``, or a Model Registry package group
    (its newest approved version). Refuses a model whose task is not one of ``tasks``."""
    import tempfile
    from pathlib import Path

    from dicomflow import aws
    from dicomflow.inference.errors import BadRequest
    from dicomflow.inference.service import InferenceService
    from dicomflow.modeling import registry

    source, version = model, None
    if not model.startswith("s3://") and not Path(model).exists():
        if "/" in model or model.endswith((".tar.gz", ".tgz")):
            raise BadRequest(f"{model}: no such file or directory (give an artifact directory, a model.tar.gz, "
                             "an s3:// model.tar.gz or a model package group)")
        approved = registry.latest_approved(registry.check_group(model))
        source, version = approved.model_data, str(approved.version)
    name = Path(model).name if version is None else model
    if source.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="dicomflow-score-") as tmp:  # the weights are read into memory
            local = Path(tmp) / "model.tar.gz"
            local.write_bytes(aws.read(source))
            service = InferenceService.from_model_dir(local, name=name)
    else:
        service = InferenceService.from_model_dir(source, name=name)
    if service.task not in tasks:
        raise BadRequest(f"{model} is a {service.task} model; active learning scores images with a "
                         "classification2d model" + (" and series with a segmentation3d one"
                                                     if "segmentation3d" in tasks else ""))
    return service, {"name": service.name, "version": version or service.embedding_model["version"],
                     "source": model}
