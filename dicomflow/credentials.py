"""PACS connection settings for code that runs anywhere (CLI, Lambda, container), with credentials bound to their PACS.

Where the credentials come from, first hit wins:

1. a Secrets Manager secret (``secret_arn`` argument or ``DICOMFLOW_PACS_SECRET_ARN``) holding
   JSON ``{"username": .., "password": .., "url": ..(optional)}``;
2. environment ``DICOMFLOW_PACS_USERNAME`` / ``DICOMFLOW_PACS_PASSWORD``;
3. the local cloud's data dir (``<DICOMFLOW_HOME>/secrets/orthanc.json``, mode 0600).

**A credential is bound to its PACS.** Credentials are sent only to the DICOMweb root they belong
to: the secret's own ``url`` or the configured ``DICOMFLOW_PACS_URL`` (for the local data dir's
credentials, the local Orthanc of the state file). URLs are compared after normalisation (scheme,
host, port and path, see :func:`normalize_url`); a target may lie under that root.

**A caller may name a PACS only if it is configured.** :func:`pacs_connection` with a ``url`` (a
study JSON's ``dicomweb.url``, say) accepts it only if it is a root above, or listed in
``DICOMFLOW_ALLOWED_PACS`` (comma-separated DICOMweb roots; those get no credentials unless a
secret binds them); a ``secret_arn`` only if it is ``DICOMFLOW_PACS_SECRET_ARN`` or listed in
``DICOMFLOW_ALLOWED_PACS_SECRETS``. Anything else raises :class:`PacsNotAllowed` before any
network call. Credentials are never logged: :class:`PacsConnection` hides them from ``repr``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dicomflow import aws
from dicomflow.config import ConfigError, Settings, read_secret_file, runtime

ORTHANC_SECRET_FILE = "orthanc.json"  # noqa: S105 - a file name, not a secret
ALLOWED_PACS_ENV = "DICOMFLOW_ALLOWED_PACS"
ALLOWED_SECRETS_ENV = "DICOMFLOW_ALLOWED_PACS_SECRETS"  # noqa: S105 - a variable name
#: The longest DICOMweb root accepted (real ones are well under 200 characters).
MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class PacsNotAllowed(ConfigError):
    """A request named a PACS (or a secret) that this deployment is not configured to use."""


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


def short(value: object, limit: int = 80) -> str:
    """A client-supplied value cut for a message or a log line: its ``repr``, from at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def normalize_url(url: object) -> str:
    """``scheme://host:port/path`` of an http(s) DICOMweb root, or ValueError saying what is wrong.

    Scheme and host are lower-cased, the default port is made explicit, the path loses its
    trailing slash. Refused: other schemes, no host, credentials, query or fragment, whitespace,
    control characters or backslashes, dot segments (also percent-encoded), invalid IPv6 hosts or
    ports, and URLs over :data:`MAX_URL_LENGTH` characters.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("a DICOMweb URL must be a non-empty string like https://pacs.example.org/dicom-web")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the URL is {len(url)} characters long; a DICOMweb root has at most {MAX_URL_LENGTH}")
    if _FORBIDDEN_CHARS.search(url):
        raise ValueError(f"the URL {short(url)} contains whitespace, a control character or a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"the URL {short(url)} is not valid ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"the URL {short(url)} must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("the URL must not contain credentials; keep them in a secret")
    if not host:
        raise ValueError(f"the URL {short(url)} has no host")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"the URL {short(url)} must be a DICOMweb root without query or fragment")
    segments = parts.path.split("/")
    if any(s.lower().replace("%2e", ".") in (".", "..") for s in segments) or "%2f" in parts.path.lower():
        raise ValueError(f"the URL {short(url)} has dot segments or encoded slashes in its path")
    host = host.lower()
    shown_host = f"[{host}]" if ":" in host else host
    path = "/".join(segments).rstrip("/")
    return f"{scheme}://{shown_host}:{port or _DEFAULT_PORTS[scheme]}{path}"


def _under(target: str, root: str) -> bool:
    """``target`` is the normalised ``root`` or a path below it."""
    return target == root or target.startswith(root + "/")


def allowed_roots() -> list[str]:
    """The normalised roots of ``DICOMFLOW_ALLOWED_PACS`` (a bad entry is a clear ConfigError)."""
    roots = []
    for entry in runtime().allowed_pacs:
        try:
            roots.append(normalize_url(entry))
        except ValueError as exc:
            raise ConfigError(f"{ALLOWED_PACS_ENV} entry {short(entry)}: {exc}") from None
    return roots


def secret_from_secrets_manager(secret_arn: str) -> dict:
    """Read a JSON secret; a clear error if it is missing or not JSON."""
    sm = aws.client("secretsmanager")
    try:
        value = sm.get_secret_value(SecretId=secret_arn)["SecretString"]
    except sm.exceptions.ResourceNotFoundException as exc:
        raise ConfigError(f"secret {secret_arn} does not exist; check DICOMFLOW_PACS_SECRET_ARN") from exc
    try:
        secret = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"secret {secret_arn} is not JSON with username/password") from exc
    if not isinstance(secret, dict):
        raise ConfigError(f"secret {secret_arn} is not a JSON object with username/password")
    return secret


def _check_secret(secret_arn: str, configured: str | None) -> None:
    allowed = [s for s in [configured, *runtime().allowed_pacs_secrets] if s]
    if secret_arn in allowed:
        return
    shown = ", ".join(allowed) if allowed else "none"
    raise PacsNotAllowed(
        f"secret {short(secret_arn)} is not one this deployment is configured to use (allowed: {shown}); "
        f"to allow another, add its ARN to {ALLOWED_SECRETS_ENV} on the endpoint or function")


@dataclass(frozen=True)
class _Credentials:
    username: str | None
    password: str | None
    bound_to: tuple[str, ...]  # normalised roots these credentials may be sent to
    default_url: str | None


def _normalized(url: str | None, where: str) -> str | None:
    if not url:
        return None
    try:
        return normalize_url(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _local_url() -> str | None:
    """The local Orthanc's DICOMweb root when ``dicomflow up`` has run in this data dir."""
    settings = Settings.load()
    return settings.dicomweb_url if settings.state_path.exists() else None


def _resolve_credentials(secret_arn: str | None) -> _Credentials:
    settings = runtime()
    env_url = settings.pacs_url
    configured_url = env_url or _local_url()
    configured = _normalized(configured_url, "DICOMFLOW_PACS_URL" if env_url else "the local state file")
    if secret_arn:
        secret = secret_from_secrets_manager(secret_arn)
        secret_url = secret.get("url") if isinstance(secret.get("url"), str) and secret.get("url") else None
        own = _normalized(secret_url, f"the 'url' of secret {secret_arn}")
        bound = tuple(u for u in (own, _normalized(env_url, "DICOMFLOW_PACS_URL") if own else configured) if u)
        return _Credentials(secret.get("username"), secret.get("password"), bound,
                            env_url or secret_url or configured_url)
    username, password = settings.pacs_username, settings.pacs_password
    if username is not None:
        return _Credentials(username, password, (configured,) if configured else (), configured_url)
    local = Settings.load().secrets_dir / ORTHANC_SECRET_FILE
    local_url = _local_url()
    if local.exists() and local_url:
        creds = read_secret_file(local)
        return _Credentials(creds["username"], creds["password"], (normalize_url(local_url),), configured_url)
    return _Credentials(None, None, (), configured_url)


def pacs_connection(url: str | None = None, secret_arn: str | None = None) -> PacsConnection:
    """The PACS to call and the credentials bound to it (see the module docstring).

    ``url`` and ``secret_arn`` are what a caller (a request, an event, a file) names; both are
    checked against the configuration before anything is read or sent, and
    :class:`PacsNotAllowed` says what is allowed and how to allow more.
    """
    configured_secret = runtime().pacs_secret_arn
    if secret_arn:
        _check_secret(secret_arn, configured_secret)
    named = None
    if url:
        try:
            named = normalize_url(url)
        except ValueError as exc:
            raise PacsNotAllowed(f"the requested PACS URL is not usable: {exc}") from None
    creds = _resolve_credentials(secret_arn or configured_secret)
    target_url = url or creds.default_url
    if not target_url:
        raise ConfigError(
            "no PACS URL: set DICOMFLOW_PACS_URL, put 'url' in the PACS secret, or run 'dicomflow up'"
        )
    if named is not None:
        allowed = [*creds.bound_to, *allowed_roots()]
        if not any(_under(named, root) for root in allowed):
            shown = ", ".join(dict.fromkeys(allowed)) or "none"
            raise PacsNotAllowed(
                f"PACS {short(url)} is not one this deployment is configured to use (allowed: {shown}); "
                f"omit the URL to use the configured PACS, or add it to {ALLOWED_PACS_ENV}")
    target = named or normalize_url(target_url)
    if any(_under(target, root) for root in creds.bound_to):
        return PacsConnection(url=target_url.rstrip("/"), username=creds.username, password=creds.password)
    return PacsConnection(url=target_url.rstrip("/"))


def local_orthanc_secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / "secrets" / ORTHANC_SECRET_FILE
