"""Checkpoints load tensors with weights_only=True (no code from a file) and refuse torn or foreign ones."""

from __future__ import annotations

import pickle

import pytest
import torch

from dicomflow.training import checkpoints
from dicomflow.training.checkpoints import CheckpointError


def _state(epoch: int) -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"task": "classification2d", "fingerprint": "f" * 8, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "best_metric": 0.5, "best_epoch": epoch,
            "history": [{"epoch": 1.0, "train_loss": float("nan")}]}


def test_round_trip_of_last_and_best(tmp_path) -> None:
    checkpoints.save(tmp_path, _state(3), best=True)
    last = checkpoints.load_last(tmp_path, "classification2d", "f" * 8)
    assert last["epoch"] == 3 and last["best_epoch"] == 3 and set(last["model"]) == {"weight", "bias"}
    assert checkpoints.load_best(tmp_path)["optimizer"]["state"]
    assert checkpoints.load_last(tmp_path / "none", "classification2d", "x") is None


class _Payload:
    def __reduce__(self):
        return (print, ("code ran from a checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys) -> None:
    checkpoints.save(tmp_path, _state(1))
    with open(tmp_path / "last.pt", "wb") as fh:
        pickle.dump({"model": _Payload(), "epoch": 1}, fh)
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoints.load_last(tmp_path, "classification2d", "f" * 8)
    assert "code ran" not in capsys.readouterr().out


def test_torn_and_foreign_checkpoints_are_refused(tmp_path) -> None:
    checkpoints.save(tmp_path, _state(1))
    (tmp_path / "last.json").write_text((tmp_path / "last.json").read_text().replace('"epoch": 1', '"epoch": 2'))
    with pytest.raises(CheckpointError, match="different epochs"):
        checkpoints.load_last(tmp_path, "classification2d", "f" * 8)
    checkpoints.save(tmp_path, _state(1))
    with pytest.raises(CheckpointError, match="another run"):
        checkpoints.load_last(tmp_path, "segmentation3d", "f" * 8)
    (tmp_path / "last.json").unlink()
    with pytest.raises(CheckpointError, match="delete both"):
        checkpoints.load_last(tmp_path, "classification2d", "f" * 8)
