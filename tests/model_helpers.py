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


def realtime_chest_endpoint(name: str, bucket: str, root: Path, seed: int = 3,
                            positive: tuple[str, ...] = ()) -> str:
    """A real-time endpoint on the local cloud serving an untrained chest classifier (64 px) whose classes in
    ``positive`` come out above 0.5 on any image (their output bias raised); returns its name."""
    import torch

    from dicomflow import aws
    from dicomflow.demo import synthetic
    from dicomflow.inference import endpoint as ep

    torch.manual_seed(seed)
    labels = list(synthetic.CHEST_CLASSES)
    spec = networks.network_spec("classification2d", labels)
    network = networks.build_network(spec)
    with torch.no_grad():
        for name_ in positive:
            network.class_layers.out.bias[labels.index(name_)] += 20.0
    model = artifact.save_artifact(root / "classification2d", task="classification2d", labels=labels,
                                   network=network, network_spec=spec,
                                   preprocess=artifact.default_preprocess("classification2d", [64, 64]),
                                   metrics={}, manifest_sha256="0" * 64)
    uri = f"s3://{bucket}/{name}/model.tar.gz"
    aws.write(uri, model_tarball(model))
    ep.deploy(name, uri, asynchronous=False)
    return name
