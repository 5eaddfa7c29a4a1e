"""The model contract's torch-free names, so the CLI and the Lambdas can use them without importing torch:
the tasks a model can have (the network each trains is in :mod:`dicomflow.modeling.networks`) and the
metadata file inside ``model.tar.gz`` (written and read by :mod:`dicomflow.modeling.artifact`)."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

TASKS = ("classification2d", "classification3d", "segmentation3d")
METADATA_FILE = "dicomflow_model.json"


def read_metadata(tarball: bytes | io.IOBase) -> dict[str, Any]:
    """``dicomflow_model.json`` of a ``model.tar.gz`` (its bytes or an open file); {} when it holds none.
    Raises ``tarfile.TarError`` / ``ValueError`` for an archive that is not one."""
    fileobj = io.BytesIO(tarball) if isinstance(tarball, bytes) else tarball
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        member = next((m for m in tar.getmembers() if m.name.lstrip("./") == METADATA_FILE), None)
        handle = tar.extractfile(member) if member is not None else None
        return json.loads(handle.read()) if handle is not None else {}


def numeric_metrics(meta: dict[str, Any]) -> dict[str, float]:
    """The numbers among the metadata's ``metrics``."""
    metrics = meta.get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
