"""Checkpoints: ``last`` (resume point) and ``best`` (best validation weights), each written atomically as two files.

``<name>.pt`` holds only tensors (the model and optimizer state dicts plus the epoch) and is read
with ``torch.load(weights_only=True)``, which cannot run code from a file; ``<name>.json`` holds the
rest (task, fingerprint, metrics, history). Both carry the epoch: files of different epochs (a
crash between the two writes) are refused with a clear error instead of being mixed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from dicomflow.errors import DicomflowError

log = logging.getLogger("dicomflow.training")
LAST = "last"
BEST = "best"
#: Keys of the state that are tensors (or nested dicts/lists of them): they go to the ``.pt`` file.
TENSOR_KEYS = ("model", "optimizer")


class CheckpointError(DicomflowError):
    """A checkpoint exists but cannot be used to resume."""


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_one(directory: Path, name: str, state: dict[str, Any]) -> None:
    tensors = {k: state[k] for k in TENSOR_KEYS if k in state}
    tensors["epoch"] = int(state["epoch"])
    rest = {k: v for k, v in state.items() if k not in TENSOR_KEYS}
    _atomic_write(directory / f"{name}.pt", lambda p: torch.save(tensors, p))
    _atomic_write(directory / f"{name}.json", lambda p: p.write_text(json.dumps(rest)))


def save(directory: Path, state: dict[str, Any], *, best: bool = False) -> None:
    """Write the resume state as ``last`` (and as ``best`` when ``best``); ``state`` needs ``epoch``."""
    directory.mkdir(parents=True, exist_ok=True)
    _save_one(directory, LAST, state)
    if best:
        _save_one(directory, BEST, state)


def _load_one(directory: Path, name: str) -> dict[str, Any] | None:
    pt, meta = directory / f"{name}.pt", directory / f"{name}.json"
    if not pt.is_file() and not meta.is_file():
        return None
    try:
        tensors = torch.load(pt, map_location="cpu", weights_only=True)
        rest = json.loads(meta.read_text())
    except Exception as exc:  # missing half, truncated, foreign or unsafe file
        raise CheckpointError(f"checkpoint {pt} / {meta.name} cannot be read ({str(exc)[:200]}); delete both to "
                              "start over") from exc
    if not isinstance(tensors, dict) or not isinstance(rest, dict) or tensors.get("epoch") != rest.get("epoch"):
        raise CheckpointError(f"checkpoint {pt} and {meta.name} are of different epochs (interrupted write); "
                              "delete both to start over")
    return {**rest, **tensors}


def load_last(directory: Path, task: str, fingerprint: str) -> dict[str, Any] | None:
    """The state in ``last``, or None; refuses a checkpoint of another task or dataset/network."""
    state = _load_one(directory, LAST)
    if state is None:
        return None
    if state.get("task") != task or state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {directory / LAST}.pt belongs to another run (task {state.get('task')!r}, different "
            "classes or network); use a fresh checkpoint_dir or delete it")
    log.info("resuming from checkpoint after epoch %d", state["epoch"])
    return state


def load_best(directory: Path) -> dict[str, Any] | None:
    """The state in ``best`` or None."""
    return _load_one(directory, BEST)
