"""The SageMaker training contract: where inputs, model, output and checkpoints live; hosts; ranks."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dicomflow.errors import DicomflowError

DEFAULT_ROOT = "/opt/ml"


class TrainingEnvironmentError(DicomflowError):
    """The SageMaker environment is incomplete or inconsistent."""


@dataclass
class TrainingEnvironment:
    """Paths and cluster layout of one training process."""

    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    channels: dict[str, Path]
    hosts: list[str]
    current_host: str
    num_gpus: int

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    def channel(self, name: str) -> Path:
        """The local folder of a data channel; raises with the channels that exist."""
        if name not in self.channels:
            have = ", ".join(sorted(self.channels)) or "none"
            raise TrainingEnvironmentError(
                f"no data channel {name!r} (have: {have}); fit(inputs={{'{name}': 's3://...'}}) "
                f"or set SM_CHANNEL_{name.upper()}")
        return self.channels[name]


def from_env(env: Mapping[str, str] | None = None, checkpoint_dir: str = "") -> TrainingEnvironment:
    """Read ``SM_*`` variables with the ``/opt/ml`` defaults of the SageMaker contract."""
    env = os.environ if env is None else env
    root = Path(env.get("SM_ROOT_DIR", DEFAULT_ROOT))
    channels: dict[str, Path] = {}
    for key, value in env.items():
        if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
            channels[key[len("SM_CHANNEL_"):].lower()] = Path(value)
    data_root = root / "input" / "data"
    if not channels and data_root.is_dir():
        channels = {p.name: p for p in data_root.iterdir() if p.is_dir()}
    hosts = json.loads(env.get("SM_HOSTS", "[]")) or [env.get("SM_CURRENT_HOST", "algo-1")]
    current = env.get("SM_CURRENT_HOST", hosts[0])
    if current not in hosts:
        raise TrainingEnvironmentError(f"SM_CURRENT_HOST {current!r} is not in SM_HOSTS {hosts}")
    ckpt = checkpoint_dir or env.get("SM_CHECKPOINT_DIR") or str(root / "checkpoints")
    return TrainingEnvironment(
        model_dir=Path(env.get("SM_MODEL_DIR", root / "model")),
        output_dir=Path(env.get("SM_OUTPUT_DIR", root / "output")),
        output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", root / "output" / "data")),
        checkpoint_dir=Path(ckpt),
        channels=channels,
        hosts=list(hosts),
        current_host=current,
        num_gpus=int(env.get("SM_NUM_GPUS", "0") or 0),
    )


def init_distributed(tenv: TrainingEnvironment, use_cuda: bool, env: Mapping[str, str] | None = None) -> bool:
    """Join the process group when there are several hosts; returns whether distributed is on.

    ``MASTER_ADDR`` defaults to the first host (override it where host names do not resolve,
    e.g. several local processes: ``MASTER_ADDR=127.0.0.1``); ``MASTER_PORT`` defaults to 29500.
    gloo on CPU, nccl on GPU.
    """
    if tenv.world_size <= 1:
        return False
    import torch.distributed as dist

    env = os.environ if env is None else env
    addr = env.get("MASTER_ADDR") or tenv.hosts[0]
    port = env.get("MASTER_PORT", "29500")
    try:
        socket.getaddrinfo(addr, int(port))
    except (socket.gaierror, ValueError) as exc:
        raise TrainingEnvironmentError(
            f"master host {addr!r} does not resolve; set MASTER_ADDR to its address") from exc
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=f"tcp://{addr}:{port}",
                            world_size=tenv.world_size, rank=tenv.rank)
    return True


def failure_path(env: Mapping[str, str] | None = None) -> Path:
    """Where SageMaker reads the FailureReason: ``<SM_OUTPUT_DIR or /opt/ml/output>/failure``."""
    env = os.environ if env is None else env
    root = Path(env.get("SM_ROOT_DIR", DEFAULT_ROOT))
    return Path(env.get("SM_OUTPUT_DIR", root / "output")) / "failure"
