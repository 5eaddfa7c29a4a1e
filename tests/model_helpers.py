"""Test helpers for model artifacts and DICOM validation, shared by tests and bench scripts."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pydicom

from dicomflow.modeling import artifact, networks


def untrained_artifact(root: Path, task: str, labels: list[str], size: list[int] | None = None) -> Path:
    """An untrained artifact of ``task`` in ``root/task`` (what the training job writes, minus the training)."""
    spec = networks.network_spec(task, labels)
    return artifact.save_artifact(root / task, task=task, labels=labels, network=networks.build_network(spec),
                                  network_spec=spec, preprocess=artifact.default_preprocess(task, size),
                                  metrics={}, manifest_sha256="0" * 64)


def model_tarball(model_dir: Path) -> bytes:
    """``model_dir``'s files as a model.tar.gz body (the layout SageMaker uploads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(Path(model_dir).iterdir()):
            tar.add(f, arcname=f.name)
    return buf.getvalue()




def as_retrieved(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The datasets written and read back: their elements stay raw until read, as after a DICOMweb retrieval."""
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out


def dciodvfy_errors(ds: pydicom.Dataset, tmp: Path, name: str | None = None) -> list[str]:
    """The ``Error`` lines dciodvfy (Debian dicom3tools) reports for ``ds``, written to ``tmp/<name>.dcm``."""
    from setup_tools import require

    require("dciodvfy")
    path = tmp / f"{name or ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def realtime_endpoint(name: str, bucket: str, root: Path, *, task: str = "classification2d", seed: int = 3,
                      positive: tuple[str, ...] = ()) -> str:
    """A real-time endpoint on the local cloud serving an untrained model (the chest classifier at 64 px, or the
    hippocampus segmenter at 16x32x32) whose classes in ``positive`` win on any image: a classifier's come out
    above 0.5, a segmenter's first one fills every voxel (their output bias raised). Returns its name."""
    import torch

    from dicomflow import aws
    from dicomflow.demo import synthetic
    from dicomflow.inference import endpoint as ep

    torch.manual_seed(seed)
    labels = list(synthetic.CHEST_CLASSES) if task == "classification2d" else ["anterior", "posterior"]
    spec = networks.network_spec(task, labels)
    network = networks.build_network(spec)
    with torch.no_grad():
        if task == "classification2d":
            for cls in positive:
                network.class_layers.out.bias[labels.index(cls)] += 20.0
        elif positive:
            last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
            last.bias[1 + labels.index(positive[0])] += 50.0  # channel 0 is the background
    size = [64, 64] if task == "classification2d" else [16, 32, 32]
    model = artifact.save_artifact(root / task, task=task, labels=labels, network=network, network_spec=spec,
                                   preprocess=artifact.default_preprocess(task, size), metrics={},
                                   manifest_sha256="0" * 64)
    uri = f"s3://{bucket}/{name}/model.tar.gz"
    aws.write(uri, model_tarball(model))
    ep.deploy(name, uri, asynchronous=False)
    return name
