"""The models of a multi-model endpoint, by name, within a memory budget (SageMaker's multi-model contract).

SageMaker (or the local cloud) downloads the artifact a request's ``TargetModel`` names, extracts it and
asks the container to load it (``POST /models``); when the container answers 507 it unloads the least
recently used model (``DELETE /models/{name}``) and tries again. :class:`ModelStore` is the container's
side: each model is its own :class:`~dicomflow.inference.service.InferenceService`, with its own task,
preprocessing and outputs. A model's size is the bytes of its network's parameters and buffers, measured
after loading; a load that would pass the budget is undone and refused. Loads and unloads are serialised;
a request holds its model object, so an unload never breaks a request that is running.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomflow.inference.errors import BadRequest, InsufficientMemory, ModelAlreadyLoaded, ModelNotFound

MAX_NAME = 1024


@dataclass
class Loaded:
    name: str
    url: str
    service: Any
    nbytes: int


def model_bytes(service: Any) -> int:
    """Bytes of the parameters and buffers of a loaded service's network."""
    network = service.network
    tensors = list(network.parameters()) + list(network.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def display_name(name: str) -> str:
    """``hippocampus-v3.tar.gz`` -> ``hippocampus-v3``: what results call the model."""
    base = name.rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


class ModelStore:
    """Loaded models by name; ``budget`` bytes at most (0: no budget)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._models: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def used(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def load(self, name: str, url: str) -> Loaded:
        from dicomflow.inference.service import InferenceService

        if not name or len(name) > MAX_NAME:
            raise BadRequest(f"model_name must be 1-{MAX_NAME} characters")
        if not Path(url).is_dir():
            raise BadRequest(f"url {url!r} is not a directory holding an extracted model.tar.gz")
        with self._lock:
            if name in self._models:
                raise ModelAlreadyLoaded(f"model {name} is already loaded")
            service = InferenceService.from_model_dir(url, name=display_name(name))
            size = model_bytes(service)
            if self.budget and self.used() + size > self.budget:
                raise InsufficientMemory(
                    f"loading {name} ({size / 1e6:.1f} MB) would use {(self.used() + size) / 1e6:.1f} MB of the "
                    f"{self.budget / 1e6:.1f} MB budget; unload a model first")
            loaded = self._models[name] = Loaded(name, url, service, size)
            return loaded

    def get(self, name: str) -> Loaded:
        found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model {name} is not loaded; load it with POST /models")
        return found

    def unload(self, name: str) -> None:
        with self._lock:
            if self._models.pop(name, None) is None:
                raise ModelNotFound(f"model {name} is not loaded")

    def listing(self) -> list[dict[str, str]]:
        return [{"modelName": m.name, "modelUrl": m.url} for m in list(self._models.values())]
