"""``model_card.md``: the model described for a clinician and for whoever retrains it, from what the
training job measured (nothing in it is typed by hand).

Sections: what the model does and does not do, the data (counts, spacing, field of view, intensities,
where the labels came from), the metrics (validation, and for segmentation the test split per
structure with the best and worst volume), the compute and time, the preprocessing, the augmentation
used or deliberately not used, and the known failure modes. The *Metrics* table lists every number of
the artifact's ``metrics`` as ``| name | value |`` so a reader (or a test) can check them against
``dicomflow_model.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODEL_CARD_FILE = "model_card.md"

_PURPOSE = {
    "segmentation3d": "segments {labels} in 3D MR series and reports each structure's volume in mm³ (DICOM SEG "
                      "and a TID 1500 SR).",
    "classification2d": "gives the probability of each of {labels} on a 2D radiograph (multi-label; a TID 1500 "
                        "SR with one probability and present/absent per finding).",
    "classification3d": "gives the probability of each of {labels} for a 3D volume (multi-label).",
}


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _range_table(ranges: Mapping[str, Mapping[str, float]], unit: str = "") -> list[str]:
    rows = ["| statistic | min | max |", "|---|---|---|"]
    rows += [f"| {k.replace('_', ' ')}{unit} | {v['min']:.4g} | {v['max']:.4g} |" for k, v in sorted(ranges.items())]
    return rows


def render(metadata: Mapping[str, Any], report: Mapping[str, Any] | None, facts: Mapping[str, Any]) -> str:
    """The model card's Markdown. ``metadata`` is the artifact's, ``report`` the segmentation test report
    (or None), ``facts``: ``label_sources`` (kind -> count), ``device``, ``seconds``, ``augmentation``."""
    task, labels = metadata["task"], list(metadata["labels"])
    metrics, hp = dict(metadata.get("metrics", {})), dict(metadata.get("hyperparameters", {}))
    reference = metadata.get("reference") or {}
    out = [f"# Model card: {task} ({', '.join(labels)})", "",
           f"Created {metadata.get('created', '?')} by the dicomflow training job; training manifest SHA-256 "
           f"`{metadata.get('manifest_sha256', '?')}`.", "",
           "## What it does", "", "This model " + _PURPOSE[task].format(labels=", ".join(labels)), "",
           "## What it does not do", "",
           "- It is not a medical device and has not been validated clinically: its figures are measured on "
           "the data below only.",
           "- It does not know when an input is unlike its training data unless the check below says so: "
           "read the out-of-distribution warning in each result.",
           "- It does not see prior studies, clinical history, or any series other than the one chosen.", ""]
    out += ["## Training data", "",
            f"- Items: {metrics.get('train_items', '?')} for training, {metrics.get('val_items', '?')} for "
            f"validation" + (f", {report.get('count', 0)} for the test split" if report else "") +
            f"; {metrics.get('skipped_items', 0)} manifest items skipped.",
            "- Labels came from: " + (", ".join(f"{n} {k}" for k, n in sorted(facts.get("label_sources", {}).items()))
                                      or "the manifest's class lists") + ".", ""]
    if reference.get("profile"):
        out += [f"Inputs seen in training ({reference['items']} training items; intensities are stored values "
                "after the rescale, before normalisation):", ""]
        out += _range_table(reference["profile"])
        out.append("")
    if reference.get("volumesMm3"):
        out += ["True structure volumes in training (mm³):", ""]
        out += _range_table(reference["volumesMm3"])
        out.append("")
    out += ["## Metrics", "", "Every number of the artifact's `metrics` (validation is the split used to choose "
            "the epoch; test, for segmentation, is a split never used in training or selection):", "",
            "| name | value |", "|---|---|"]
    out += [f"| {k} | {_number(v)} |" for k, v in sorted(metrics.items())]
    out.append("")
    if report:
        out += [f"Per structure on the {report.get('split', 'test')} split ({report.get('count', 0)} volumes, on each "
                "volume's original voxel grid):", "",
                "| structure | Dice | Jaccard | sensitivity | specificity | mean abs volume error % |",
                "|---|---|---|---|---|---|"]
        for name, m in report.get("classes", {}).items():
            out.append(f"| {name} | {_number(m['dice'])} | {_number(m['jaccard'])} | {_number(m['sensitivity'])} | "
                       f"{_number(m['specificity'])} | {_number(m.get('mean_abs_volume_error_pct'))} |")
        out.append("")
        for which in ("best_volume", "worst_volume"):
            if which in report:
                vid = report[which]["id"]
                err = next((v.get("total_volume_error_pct") for v in report["volumes"] if v["id"] == vid), None)
                out.append(f"- {which.replace('_', ' ').capitalize()}: `{vid}`, mean Dice "
                           f"{_number(report[which]['mean_dice'])}, total volume error {_number(err)} %.")
        out.append("")
    out += ["## Training compute", "",
            f"- {facts.get('device', '?')}, {hp.get('epochs', '?')} epochs in {facts.get('seconds', 0):.0f} s "
            f"(best epoch {metrics.get('best_epoch', '?')}); batch size {hp.get('batch_size', '?')}, learning "
            f"rate {hp.get('lr', '?')}, seed {hp.get('seed', '?')}.", "",
            "## Preprocessing", "", "```json", _json(metadata.get("preprocess", {})), "```", "",
            "## Augmentation", "", f"- {facts.get('augmentation', 'none')}", "",
            "## Known failure modes", "",
            "- Inputs far from the training ranges above (another scanner's intensity scale, another spacing "
            "or field of view): each result carries `quality.outOfDistribution` and the reasons; the SR says "
            "so too. A predicted volume far outside the training volumes is flagged the same way.",
            "- Small training sets give wide error bars: the test split above has "
            f"{report.get('count', 0) if report else 'no'} volumes.",
            "- Trained on the data named by the manifest only; synthetic demo data says nothing about "
            "clinical performance.", ""]
    return "\n".join(out)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, default=str)


def write(model_dir: Path, metadata: Mapping[str, Any], report: Mapping[str, Any] | None,
          facts: Mapping[str, Any]) -> Path:
    """Write ``model_card.md`` into ``model_dir``; returns its path."""
    path = Path(model_dir) / MODEL_CARD_FILE
    path.write_text(render(metadata, report, facts) + "\n", encoding="utf-8")
    return path


def label_sources(label_files: Sequence[str | None]) -> dict[str, int]:
    """How many labels are DICOM SEGs, NIfTI volumes, or class lists (no label file)."""
    counts: dict[str, int] = {}
    for path in label_files:
        kind = ("DICOM SEG" if str(path).lower().endswith(".dcm") else "NIfTI label volume") if path else \
            "class list from the labeling job"
        counts[kind] = counts.get(kind, 0) + 1
    return counts
