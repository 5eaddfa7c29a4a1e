"""Image embeddings from a trained classifier: DenseNet121's globally pooled features, L2-normalised.

The vector is what the classifier's last layer sees (1024 values for DenseNet121, 2D or 3D): the
features are ReLU'd, average-pooled over the image and flattened, as in MONAI's ``class_layers``
before ``out``. Inference preprocessing is deterministic, so the same image and weights give the same
vector. A vector is only comparable with vectors of the same weights: :func:`weights_version` names
them when no registry version does.
"""

from __future__ import annotations

import hashlib

import torch

from dicomflow.errors import DicomflowError

EMBEDDING_TASKS = ("classification2d", "classification3d")


class EmbeddingError(DicomflowError):
    """The network cannot give an embedding (not a DenseNet121-style classifier)."""


def _parts(network: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.nn.Module], torch.nn.Module]:
    features = getattr(network, "features", None)
    head = getattr(network, "class_layers", None)
    if not isinstance(features, torch.nn.Module) or not isinstance(head, torch.nn.Sequential):
        raise EmbeddingError("embeddings come from a DenseNet121 classifier (features + class_layers); "
                             f"this network is a {type(network).__name__}")
    layers = dict(head.named_children())
    if "out" not in layers:
        raise EmbeddingError("the classifier head has no 'out' layer to stop before")
    return features, [m for name, m in layers.items() if name != "out"], layers["out"]


def pooled_features(network: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.nn.Module]:
    """For a batch ``x``: the pooled features ``(N, F)`` in front of the classifier, and that last layer
    (``out(features)`` are the logits ``network(x)`` gives)."""
    features, pool, out = _parts(network)
    f = features(x)
    for layer in pool:
        f = layer(f)
    return f, out


def embed_and_classify(network: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch ``x``: (the logits ``network(x)`` gives, the L2-normalised pooled features ``(N, F)``),
    from one pass through the feature extractor."""
    f, out = pooled_features(network, x)
    return out(f), torch.nn.functional.normalize(f.float(), dim=1)


def embed(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The L2-normalised pooled features ``(N, F)`` of a batch ``x``."""
    return embed_and_classify(network, x)[1]


def weights_version(network: torch.nn.Module) -> str:
    """``weights-<12 hex>``: a fingerprint of the parameters (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return f"weights-{digest.hexdigest()[:12]}"
