"""Write tiny training channels from :mod:`dicomflow.demo.synthetic`, and run the entry point as SageMaker would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dicomflow.demo import synthetic
from dicomflow.dicom.volume import load_image, save_label_nifti

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "training_job" / "train.py"


def chest_channel(channel: Path, n: int, seed: int = 0, size: int = 64) -> list[str]:
    """n synthetic chest images as a classification channel; returns the classes."""
    channel.mkdir(parents=True, exist_ok=True)
    classes = list(synthetic.CHEST_CLASSES)
    lines = []
    for i, img in enumerate(synthetic.chest_radiographs(n, seed=seed, size=size)):
        rel = f"images/{i:04d}.dcm"
        (channel / "images").mkdir(exist_ok=True)
        img.dataset.save_as(channel / rel, enforce_file_format=True)
        lines.append({"id": f"img{i}", "patient": f"p{i}", "images": [rel],
                      "labels": [lab for lab in img.labels if lab in classes]})
    write_manifest(channel, lines, classes)
    return classes


def hippocampus_channel(channel: Path, n: int, seed: int = 0, shape=(16, 24, 20), classification=False,
                        more_shapes: tuple = ()) -> None:
    """n synthetic MR series with NIfTI labels (segmentation) or a label per series (classification3d).

    ``more_shapes``: n more series of each of these shapes (another seed for each shape).
    """
    channel.mkdir(parents=True, exist_ok=True)
    lines = []
    series = (ser for k, each in enumerate((shape, *more_shapes))
              for ser in synthetic.hippocampus_series(n, seed=seed + 1000 * k, shape=each))
    for i, ser in enumerate(series):
        folder = channel / "series" / f"{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        rels = []
        for k, ds in enumerate(ser.datasets):
            ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
            rels.append(f"series/{i:03d}/{k:03d}.dcm")
        line = {"id": f"vol{i}", "patient": f"p{i}", "images": rels}
        if classification:
            line["labels"] = ["large"] if int((ser.label_volume > 0).sum()) > 0 and i % 2 else []
        else:
            _, geom = load_image(ser.datasets)
            save_label_nifti(ser.label_volume, geom, channel / f"labels_{i:03d}.nii.gz")
            line["label"] = f"labels_{i:03d}.nii.gz"
        lines.append(line)
    write_manifest(channel, lines, ["large"] if classification else ["anterior", "posterior"])


def write_manifest(channel: Path, lines: list[dict], classes: list[str]) -> None:
    (channel / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (channel / "classes.json").write_text(json.dumps(classes))


def sm_layout(root: Path) -> dict[str, str]:
    """An /opt/ml-like layout under ``root`` and the SM_* environment that points at it."""
    for sub in ("model", "output/data", "checkpoints", "input/data/train"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_CHANNEL_TRAIN": str(root / "input" / "data" / "train"),
        "SM_CHECKPOINT_DIR": str(root / "checkpoints"),
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
    }


def run_entry(env_extra: dict[str, str], hps: dict[str, object], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run training_job/train.py as a subprocess with ``--name value`` hyperparameters."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(env_extra)
    env.setdefault("OMP_NUM_THREADS", "2")
    argv = [sys.executable, str(ENTRY)]
    for key, value in hps.items():
        argv += [f"--{key}", str(value)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def upload_channel(channel: Path, uri: str) -> str:
    """Upload every file of a channel folder under the S3 prefix ``uri``; returns ``uri`` with a trailing /."""
    from dicomflow import aws

    bucket, prefix = aws.parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    s3 = aws.client("s3")
    for path in sorted(p for p in channel.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, prefix + path.relative_to(channel).as_posix())
    return aws.s3_uri(bucket, prefix)


def missing_image_channel(channel: Path, uri: str) -> str:
    """A chest channel whose one manifest line names an image that is not there, uploaded to ``uri``: training
    on it fails with ``DatasetError: no usable image`` (missing=1)."""
    classes = chest_channel(channel, 2, size=32)
    write_manifest(channel, [{"id": "gone", "patient": "p", "images": ["images/missing.dcm"], "labels": []}],
                   classes)
    return upload_channel(channel, uri)
