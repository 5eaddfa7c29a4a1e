"""Checkpoints: ``last.pt`` (resume point) and ``best.pt`` (best validation weights), written atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from dicomflow.errors import DicomflowError

log = logging.getLogger("dicomflow.training")
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(DicomflowError):
    """A checkpoint exists but cannot be used to resume."""


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save(directory: Path, state: dict[str, Any], *, best: bool = False) -> None:
    """Write the resume state to ``last.pt`` (and ``best.pt`` when ``best``)."""
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_save(state, directory / LAST)
    if best:
        _atomic_save(state, directory / BEST)


def load_last(directory: Path, task: str, fingerprint: str) -> dict[str, Any] | None:
    """The state in ``last.pt``, or None; refuses a checkpoint of another task or dataset/network."""
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from exc
    if state.get("task") != task or state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run (task {state.get('task')!r}, different classes or "
            "network); use a fresh checkpoint_dir or delete it")
    log.info("resuming from checkpoint after epoch %d", state["epoch"])
    return state


def load_best(directory: Path) -> dict[str, Any] | None:
    """The state in ``best.pt`` or None."""
    path = directory / BEST
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
