"""PACS connection settings for code that runs anywhere (CLI, Lambda, container).

Resolution order, first hit wins:

1. a Secrets Manager secret (``secret_arn`` argument or ``DICOMFLOW_PACS_SECRET_ARN``) holding
   JSON ``{"username": .., "password": .., "url": ..(optional)}``;
2. environment ``DICOMFLOW_PACS_USERNAME`` / ``DICOMFLOW_PACS_PASSWORD``;
3. the local cloud's data dir (``<DICOMFLOW_HOME>/secrets/orthanc.json``, mode 0600).

The URL comes from the argument, ``DICOMFLOW_PACS_URL``, the secret, or the local state file.
Credentials are never logged: :class:`PacsConnection` hides them from ``repr``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomflow import aws
from dicomflow.config import ConfigError, Settings, read_secret_file

ORTHANC_SECRET_FILE = "orthanc.json"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class PacsConnection:
    """DICOMweb base URL plus Basic-auth credentials (``repr`` omits the password)."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)


def secret_from_secrets_manager(secret_arn: str) -> dict:
    """Read a JSON secret; a clear error if it is missing or not JSON."""
    sm = aws.client("secretsmanager")
    try:
        value = sm.get_secret_value(SecretId=secret_arn)["SecretString"]
    except sm.exceptions.ResourceNotFoundException as exc:
        raise ConfigError(f"secret {secret_arn} does not exist; check DICOMFLOW_PACS_SECRET_ARN") from exc
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"secret {secret_arn} is not JSON with username/password") from exc


def pacs_connection(url: str | None = None, secret_arn: str | None = None) -> PacsConnection:
    """Resolve the PACS DICOMweb URL and credentials (see module docstring)."""
    secret_arn = secret_arn or os.environ.get("DICOMFLOW_PACS_SECRET_ARN")
    secret: dict = secret_from_secrets_manager(secret_arn) if secret_arn else {}
    username = secret.get("username") or os.environ.get("DICOMFLOW_PACS_USERNAME")
    password = secret.get("password") or os.environ.get("DICOMFLOW_PACS_PASSWORD")
    url = url or os.environ.get("DICOMFLOW_PACS_URL") or secret.get("url")
    if username is None or url is None:
        settings = Settings.load()
        local = settings.secrets_dir / ORTHANC_SECRET_FILE
        if username is None and local.exists():
            creds = read_secret_file(local)
            username, password = creds["username"], creds["password"]
        if url is None and settings.state_path.exists():
            url = settings.dicomweb_url
    if not url:
        raise ConfigError(
            "no PACS URL: set DICOMFLOW_PACS_URL, put 'url' in the PACS secret, or run 'dicomflow up'"
        )
    return PacsConnection(url=url.rstrip("/"), username=username, password=password)


def local_orthanc_secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / "secrets" / ORTHANC_SECRET_FILE
