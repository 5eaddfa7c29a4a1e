"""Send DICOM the way a modality does: C-STORE over DIMSE with DCMTK's ``storescu`` (Debian ``dcmtk``).

One call sends a set of datasets as one association; the files are written to an owner-only temporary
folder (they hold PHI) and removed afterwards. A failure is a :class:`DimseError` carrying storescu's
own last lines.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pydicom

from dicomflow.dicom.dicomweb import ensure_file_meta
from dicomflow.errors import DicomflowError
from dicomflow.paths import private_dir


class DimseError(DicomflowError):
    """A C-STORE did not go through; the message has storescu's reason."""


def storescu() -> str:
    """The path of DCMTK's storescu, or a :class:`DimseError` saying how to install it."""
    path = shutil.which("storescu")
    if path is None:
        raise DimseError("storescu is missing: install Debian's dcmtk (`make setup` does)")
    return path


def send(datasets: Sequence[pydicom.Dataset], host: str, port: int, calling_aet: str, called_aet: str,
         work_dir: Path, timeout_s: float = 300.0) -> int:
    """C-STORE ``datasets`` to ``called_aet`` at ``host:port`` as ``calling_aet``; returns how many were sent."""
    tool = storescu()
    folder = Path(tempfile.mkdtemp(prefix="dimse-", dir=private_dir(work_dir)))
    try:
        for i, ds in enumerate(datasets):
            pydicom.dcmwrite(folder / f"{i:05d}.dcm", ensure_file_meta(ds), enforce_file_format=True)
        argv = [tool, "-aet", calling_aet, "-aec", called_aet, "-to", "30", host, str(port), "+sd", str(folder)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)  # noqa: S603
        except subprocess.TimeoutExpired:
            raise DimseError(f"storescu to {called_aet}@{host}:{port} did not finish in {timeout_s:.0f} s") from None
        if done.returncode != 0:
            last = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise DimseError(f"C-STORE to {called_aet}@{host}:{port} as {calling_aet} failed: {last}")
        return len(datasets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
