"""Settings in one place: CLI flags > ``DICOMFLOW_*`` environment > state file > defaults.

The state file (``<data_dir>/state.json``) records what ``dicomflow up`` started (ports,
URLs), so later commands, tests, lambdas and containers running locally find the same
services without repeating flags.

Lambdas and containers import :func:`pacs_settings_from_env` and friends; nothing here
starts a process.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from dicomflow.errors import DicomflowError

DEFAULT_HOST = "127.0.0.1"
STATE_FILE = "state.json"

ENV_PREFIX = "DICOMFLOW_"


class ConfigError(DicomflowError):
    """A setting is missing or invalid; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Where the local cloud lives and which ports it uses."""

    data_dir: Path
    orthanc_http_port: int = 8042
    orthanc_dicom_port: int = 4242
    aws_port: int = 4566
    region: str = "us-east-1"
    host: str = DEFAULT_HOST
    start_timeout: float = 30.0

    # ---- derived -------------------------------------------------------
    @property
    def orthanc_url(self) -> str:
        return f"http://{self.host}:{self.orthanc_http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.orthanc_url}/dicom-web"

    @property
    def aws_endpoint_url(self) -> str:
        return f"http://{self.host}:{self.aws_port}"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    # ---- loading ---------------------------------------------------------
    @classmethod
    def load(cls, data_dir: str | Path | None = None, **flags: Any) -> Settings:
        """Resolve settings: ``flags`` (None = unset) > env > state file > defaults."""
        if data_dir is None:
            data_dir = os.environ.get(f"{ENV_PREFIX}HOME") or Path.home() / ".dicomflow"
        data_dir = Path(data_dir).expanduser().absolute()
        values: dict[str, Any] = {}
        state = read_state(data_dir)
        for f in fields(cls):
            if f.name == "data_dir":
                continue
            if flags.get(f.name) is not None:
                values[f.name] = flags[f.name]
                continue
            env = os.environ.get(ENV_PREFIX + f.name.upper())
            if env not in (None, ""):
                values[f.name] = _coerce(f.name, env, type(f.default))
            elif f.name in state.get("settings", {}):
                values[f.name] = state["settings"][f.name]
        unknown = set(flags) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(data_dir=data_dir, **values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d


def _coerce(name: str, raw: str, typ: type) -> Any:
    try:
        return typ(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {typ.__name__}; fix or unset it"
        ) from exc


# ---- state file ----------------------------------------------------------
def read_state(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; delete it and run 'dicomflow up' again") from exc


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Atomically replace the state file."""
    path = Path(data_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


# ---- secrets on disk -------------------------------------------------------
def write_secret_file(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON secret readable by the owner only (0600), created that way."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def read_secret_file(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def generate_password(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
