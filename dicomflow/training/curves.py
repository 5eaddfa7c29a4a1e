"""Training curves as PNG files people can look at, beside the TensorBoard events in the output data.

From the job's per-epoch history (the values it prints as metric lines and keeps in the artifact):

* ``curves/loss.png``: training and validation loss per epoch;
* ``curves/<metric>.png``: the validation metric per epoch (``val_mean_auroc`` for a classifier,
  ``val_mean_dice`` for a segmenter), the mean in bold and each class or structure beside it, the best
  epoch (the one the artifact keeps) marked.

Epochs without validation have no validation point; nothing is interpolated. Rendered with matplotlib's Agg
backend (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CURVES_DIR = "curves"
CLASS_PREFIX = "class/"


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for row in history:
        value = row.get(key)
        if value is not None and not math.isnan(float(value)):
            epochs.append(int(row["epoch"]))
            values.append(float(value))
    return epochs, values


def write(out_dir: Path, history: Sequence[Mapping[str, Any]], metric: str, best_epoch: int | None = None
          ) -> list[Path]:
    """Write the curves of ``history`` into ``out_dir/curves/``; the files written (none for no epoch)."""
    if not history:
        return []
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder = Path(out_dir) / CURVES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        epochs, values = _series(history, key)
        if epochs:
            ax.plot(epochs, values, marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, folder / "loss.png"))

    epochs, values = _series(history, metric)
    if epochs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        classes = sorted({k for row in history for k in row if k.startswith(CLASS_PREFIX)})
        for key in classes:
            ce, cv = _series(history, key)
            ax.plot(ce, cv, linewidth=1, alpha=0.7, label=key.removeprefix(CLASS_PREFIX))
        ax.plot(epochs, values, color="black", linewidth=2.5, marker="o", label="mean")
        if best_epoch in epochs:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch (validation)", ylim=(0, 1.02))
        ax.legend(fontsize="small", ncol=2 if len(classes) > 6 else 1)
        ax.grid(alpha=0.3)
        written.append(_save(fig, folder / f"{metric}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
