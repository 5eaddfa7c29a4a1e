"""Settings in one place.

* :class:`Settings` - the local cloud (data dir, ports): CLI flags > ``DICOMFLOW_*`` environment >
  the state file > defaults. The state file (``<data_dir>/state.json``) records what ``dicomflow up``
  started, so later commands, tests, lambdas and containers running locally find the same services.
* :class:`Runtime` - what code running in a Lambda, a container, the training job or the emulator is
  configured with: every other ``DICOMFLOW_*`` variable, typed and checked in :data:`VARIABLES`, read by
  :func:`runtime` at the moment of use. A bad value is a :class:`ConfigError` naming the variable.

Nothing here starts a process.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dicomflow import paths
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
    search_port: int = 8044
    viewer_port: int = 8045
    region: str = "us-east-1"
    modality_aet: str = "MODALITY"  # the calling AE title Orthanc accepts C-ECHO / C-STORE from (loopback only)
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
        data_dir = paths.data_dir(data_dir)
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


# ---- runtime settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variable:
    """One ``DICOMFLOW_*`` runtime variable: its field, type (``str``, ``list``, ``json``, ``int``, ``float``,
    ``bool`` or a tuple of choices), default, bounds and what it is for."""

    field: str
    env: str
    kind: Any = "str"
    default: Any = None
    low: float | None = None
    high: float | None = None
    high_inclusive: bool = True
    secret: bool = False
    doc: str = ""


VARIABLES: tuple[Variable, ...] = (
    Variable("pacs_url", "DICOMFLOW_PACS_URL", doc="DICOMweb root of the configured PACS"),
    Variable("pacs_username", "DICOMFLOW_PACS_USERNAME", doc="PACS user (without a secret)"),
    Variable("pacs_password", "DICOMFLOW_PACS_PASSWORD", secret=True, doc="PACS password (without a secret)"),
    Variable("pacs_secret_arn", "DICOMFLOW_PACS_SECRET_ARN", doc="Secrets Manager secret with the PACS credentials"),
    Variable("allowed_pacs", "DICOMFLOW_ALLOWED_PACS", "list", (), doc="further DICOMweb roots a request may name"),
    Variable("allowed_pacs_secrets", "DICOMFLOW_ALLOWED_PACS_SECRETS", "list", (),
             doc="further secret ARNs a request may name"),
    Variable("pacs_retry_seconds", "DICOMFLOW_PACS_RETRY_SECONDS", "float", 15.0, 0, 3600,
             doc="how long a request rides out an unavailable PACS"),
    Variable("gateway_url", "DICOMFLOW_GATEWAY_URL", doc="the WADO gateway workers' browsers reach"),
    Variable("signing_secret_arn", "DICOMFLOW_SIGNING_SECRET_ARN", doc="secret holding the URL signing key"),
    Variable("signing_key", "DICOMFLOW_SIGNING_KEY", secret=True, doc="the URL signing key itself (local use)"),
    Variable("url_ttl_seconds", "DICOMFLOW_URL_TTL_SECONDS", "int", 3600, 1, 7 * 24 * 3600,
             doc="lifetime of a signed WADO URL"),
    Variable("labels", "DICOMFLOW_LABELS", "json", None, doc="the label set, a JSON list of class names"),
    Variable("prelabel_endpoint", "DICOMFLOW_PRELABEL_ENDPOINT",
             doc="a real-time classification endpoint whose answers the pre-label Lambda shows as suggestions"),
    Variable("prelabel_model_group", "DICOMFLOW_PRELABEL_MODEL_GROUP",
             doc="a model package group: the pre-label Lambda asks the real-time endpoint serving its newest approved "
                 "version (when no endpoint is configured)"),
    Variable("prelabel_timeout_seconds", "DICOMFLOW_PRELABEL_TIMEOUT_SECONDS", "float", 5.0, 0.1, 60,
             doc="how long the pre-label Lambda waits for the model before the task goes without suggestions"),
    Variable("vote_threshold", "DICOMFLOW_VOTE_THRESHOLD", "float", 0.5, 0, 1, high_inclusive=False,
             doc="share of workers above which a class is present"),
    Variable("output_s3_uri", "DICOMFLOW_OUTPUT_S3_URI",
             doc="where the endpoint writes files it makes (occlusion PNG)"),
    Variable("model_name", "DICOMFLOW_MODEL_NAME",
             doc="the registered model an endpoint serves (its Model Package Group); results name it"),
    Variable("model_version", "DICOMFLOW_MODEL_VERSION", doc="that model's version in the Model Registry"),
    Variable("model_package_arn", "DICOMFLOW_MODEL_PACKAGE_ARN", doc="that version's model package"),
    Variable("routing_rules", "DICOMFLOW_ROUTING_RULES", doc="the router's rules file (s3:// URI or path)"),
    Variable("routing_table", "DICOMFLOW_ROUTING_TABLE",
             doc="DynamoDB table of routed analyses (idempotency and status)"),
    Variable("routing_dlq", "DICOMFLOW_ROUTING_DLQ", doc="SQS queue URL where routing that still fails goes"),
    Variable("routing_attempts", "DICOMFLOW_ROUTING_ATTEMPTS", "int", 3, 1, 20,
             doc="tries per analysis before it goes to the dead-letter queue (backoff 1 s, 2 s, 4 s, ...)"),
    Variable("mme_memory_mb", "DICOMFLOW_MME_MEMORY_MB", "float", 0.0, 0, 1e7,
             doc="multi-model endpoint: MB of models loaded at once (0: 70% of the memory free at start)"),
    Variable("http_header_seconds", "DICOMFLOW_HTTP_HEADER_SECONDS", "float", 10.0, 0.001, 3600,
             doc="time a client has to send a request head"),
    Variable("http_body_seconds", "DICOMFLOW_HTTP_BODY_SECONDS", "float", 30.0, 0.001, 3600,
             doc="time a client has to send a request body"),
    Variable("log_level", "DICOMFLOW_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO",
             doc="log level of the serving container and the training job"),
    Variable("sagemaker_role", "DICOMFLOW_SAGEMAKER_ROLE", doc="SageMaker execution role for training jobs"),
    Variable("sagemaker_mode", "DICOMFLOW_SAGEMAKER_MODE", ("auto", "host", "docker"), "auto",
             doc="how local mode runs containers: host processes, Docker, or host when Docker is absent"),
    Variable("local_images", "DICOMFLOW_LOCAL_IMAGES",
             doc="container image -> host command map of the emulator, JSON (over images.json)"),
    Variable("endpoint_start_timeout", "DICOMFLOW_ENDPOINT_START_TIMEOUT", "float", 120.0, 1, 3600,
             doc="seconds the emulator waits for a serving process to answer /ping"),
    Variable("install_requirements", "DICOMFLOW_INSTALL_REQUIREMENTS", "bool", False,
             doc="local mode installs a source_dir's requirements.txt (1) instead of checking it"),
    Variable("lambda_idle_seconds", "DICOMFLOW_LAMBDA_IDLE_SECONDS", "float", 600.0, 1, 24 * 3600,
             doc="how long the emulator keeps an idle warm Lambda environment"),
    Variable("lambda_concurrency", "DICOMFLOW_LAMBDA_CONCURRENCY", "int", 10, 1, 1000,
             doc="warm environments per function when it has no reserved concurrency"),
    Variable("search_table", "DICOMFLOW_SEARCH_TABLE", doc="DynamoDB table of ingested images' and reports' metadata"),
    Variable("search_output_uri", "DICOMFLOW_SEARCH_OUTPUT_URI",
             doc="s3:// prefix where ingestion writes thumbnails (thumbnails/) and report analyses (reports/)"),
    Variable("search_dlq", "DICOMFLOW_SEARCH_DLQ", doc="SQS queue URL where objects that cannot be ingested go"),
    Variable("search_endpoint", "DICOMFLOW_SEARCH_ENDPOINT",
             doc="the classification endpoint ingestion embeds each image with (none: no embedding at ingestion)"),
    Variable("search_embed_modalities", "DICOMFLOW_SEARCH_EMBED_MODALITIES", "list", ("CR", "DX"),
             doc="the modalities ingestion embeds (the embedding model's own; others get an item and thumbnail)"),
    Variable("report_engine", "DICOMFLOW_REPORT_ENGINE", ("rules", "comprehend-medical"), "rules",
             doc="what reads reports: the local rule engine or Amazon Comprehend Medical InferICD10CM"),
    Variable("search_opensearch_url", "DICOMFLOW_SEARCH_OPENSEARCH_URL",
             doc="an Amazon OpenSearch domain (https://) that holds the image index instead of the data dir"),
    Variable("search_index_dir", "DICOMFLOW_SEARCH_INDEX_DIR",
             doc="the embedded image index ingestion writes each embedding into (the local cloud sets its data "
                 "dir's; on AWS ingestion writes DICOMFLOW_SEARCH_OPENSEARCH_URL's index instead)"),
    Variable("search_reports_index", "DICOMFLOW_SEARCH_REPORTS_INDEX",
             doc="the embedded report index (SQLite file) the search API reads (the local cloud sets its data "
                 "dir's; on AWS the API reads DICOMFLOW_SEARCH_OPENSEARCH_URL's index instead)"),
    Variable("search_opensearch_index", "DICOMFLOW_SEARCH_OPENSEARCH_INDEX", default="dicomflow-images",
             doc="the OpenSearch index of the image embeddings"),
    Variable("search_opensearch_reports_index", "DICOMFLOW_SEARCH_OPENSEARCH_REPORTS_INDEX",
             default="dicomflow-reports", doc="the OpenSearch index of the reports (with the domain above)"),
    Variable("aws_snapshot_seconds", "DICOMFLOW_AWS_SNAPSHOT_SECONDS", "float", 1.0, 0.05, 3600,
             doc="how often the emulator saves its AWS state while it changes (at most this much is lost)"),
)


def env_name(setting: str) -> str:
    """The environment variable of runtime setting ``setting`` (e.g. ``"model_package_arn"``)."""
    for var in VARIABLES:
        if var.field == setting:
            return var.env
    raise KeyError(f"no runtime setting {setting!r}")


def _parse(var: Variable, raw: str) -> Any:
    kind = var.kind
    if isinstance(kind, tuple):
        value = raw.upper() if all(c.isupper() for c in kind) else raw.lower()
        if value not in kind:
            raise ConfigError(f"{var.env}={raw!r} must be one of {', '.join(kind)}; fix or unset it")
        return value
    if kind == "str":
        return raw
    if kind == "list":
        return tuple(item for item in (p.strip() for p in raw.replace(",", " ").split()) if item)
    if kind == "json":
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError(f"{var.env} is not JSON; fix it or unset it") from None
    if kind == "bool":
        if raw.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{var.env}={raw!r} must be 1 or 0")
        return raw.lower() in ("1", "true", "yes")
    try:
        value = int(raw) if kind == "int" else float(raw)
    except ValueError:
        value = float("nan")
    too_high = value > var.high if var.high_inclusive else value >= var.high
    if not (value >= var.low and not too_high):  # also false for NaN
        what = "a whole number" if kind == "int" else "a number"
        upper = f"{var.high:g} ({'inclusive' if var.high_inclusive else 'exclusive'})"
        raise ConfigError(f"{var.env}={raw!r} must be {what} from {var.low:g} to {upper}; fix or unset it")
    return value


@dataclass(frozen=True)
class Runtime:
    """The runtime settings (see :data:`VARIABLES` for each one's variable, type and default)."""

    pacs_url: str | None
    pacs_username: str | None
    pacs_password: str | None = field(repr=False)
    pacs_secret_arn: str | None
    allowed_pacs: tuple[str, ...]
    allowed_pacs_secrets: tuple[str, ...]
    pacs_retry_seconds: float
    gateway_url: str | None
    signing_secret_arn: str | None
    signing_key: str | None = field(repr=False)
    url_ttl_seconds: int
    labels: Any
    prelabel_endpoint: str | None
    prelabel_model_group: str | None
    prelabel_timeout_seconds: float
    vote_threshold: float
    output_s3_uri: str | None
    model_name: str | None
    model_version: str | None
    model_package_arn: str | None
    routing_rules: str | None
    routing_table: str | None
    routing_dlq: str | None
    routing_attempts: int
    mme_memory_mb: float
    http_header_seconds: float
    http_body_seconds: float
    log_level: str
    sagemaker_role: str | None
    sagemaker_mode: str
    local_images: str | None
    endpoint_start_timeout: float
    install_requirements: bool
    lambda_idle_seconds: float
    lambda_concurrency: int
    search_table: str | None
    search_output_uri: str | None
    search_dlq: str | None
    search_endpoint: str | None
    search_embed_modalities: tuple[str, ...]
    report_engine: str
    search_opensearch_url: str | None
    search_index_dir: str | None
    search_reports_index: str | None
    search_opensearch_index: str
    search_opensearch_reports_index: str
    aws_snapshot_seconds: float


_last: tuple[tuple[str | None, ...], Runtime] | None = None


def runtime(env: Mapping[str, str] | None = None) -> Runtime:
    """The runtime settings from ``env`` (default: the process environment), typed and checked now.

    For the process environment the parsed settings are kept while its variables keep their values (a
    serving process asks once or twice per request): a changed variable is read again at the next call."""
    global _last
    if env is None:
        raws = tuple(os.environ.get(var.env) for var in VARIABLES)
        cached = _last
        if cached is not None and cached[0] == raws:
            return cached[1]
        settings = _settings(dict(zip((v.env for v in VARIABLES), raws, strict=True)))
        _last = (raws, settings)
        return settings
    return _settings(env)


def _settings(env: Mapping[str, str | None]) -> Runtime:
    values = {}
    for var in VARIABLES:
        raw = (env.get(var.env) or "").strip()
        values[var.field] = _parse(var, raw) if raw else var.default
    return Runtime(**values)


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
