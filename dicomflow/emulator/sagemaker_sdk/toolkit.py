"""What a SageMaker framework container does before it runs user code, done on the host.

The job of ``sagemaker-training-toolkit`` / ``sagemaker-inference-toolkit`` inside the real
containers: map the ``/opt/ml`` layout, stage the user's source directory, check its
``requirements.txt`` and build the ``SM_*`` environment. Used by
:mod:`dicomflow.emulator.sagemaker_sdk.compose`, which runs one host process per compose service.

``/opt/ml`` is a fixed path that need not exist or be writable on the host, and two "hosts" on
one machine must not share it. So every container path is translated to the host directory the
SDK created for it (:class:`HostLayout`): the compose volumes give the map (longest prefix wins,
as with nested Docker mounts) and any other ``/opt/ml/<rest>`` lands in
``<container_root>/<host>/<rest>``. Every ``SM_*`` directory, every environment value and every
hyperparameter value that is an ``/opt/ml`` path is translated the same way; the JSON files the
SDK wrote (``hyperparameters.json`` ...) are left as the SDK wrote them (container view).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from dicomflow.config import runtime
from dicomflow.errors import DicomflowError

OPT_ML = "/opt/ml"
INSTALL_REQUIREMENTS_ENV = "DICOMFLOW_INSTALL_REQUIREMENTS"
_OPT_ML_RE = re.compile(r"^/opt/ml(?=/|$)")


class ToolkitError(DicomflowError):
    """The job cannot start (code, requirements, layout); written to the failure file."""


@dataclass
class HostLayout:
    """The ``/opt/ml`` of one host, mapped onto host directories."""

    container_root: Path
    host: str
    volumes: dict[str, Path] = field(default_factory=dict)  # container dir -> host dir

    @classmethod
    def from_compose(cls, container_root: Path, host: str, volume_specs: list[str]) -> HostLayout:
        """Parse compose ``volumes`` entries (``host:container`` with an optional ``:z``/``:ro``)."""
        volumes: dict[str, Path] = {}
        for spec in volume_specs:
            parts = spec.split(":")
            if len(parts) >= 3 and parts[-1] in ("z", "Z", "ro", "rw"):
                parts = parts[:-1]
            if len(parts) != 2:
                raise ToolkitError(f"cannot read volume {spec!r} of host {host} in the compose file")
            volumes[parts[1].rstrip("/") or "/"] = Path(parts[0])
        return cls(Path(container_root), host, volumes)

    def to_host(self, container_path: str) -> Path:
        """The host path for a container path under /opt/ml (others are returned unchanged)."""
        path = container_path.rstrip("/") or "/"
        best = ""
        for cdir in self.volumes:
            if (path == cdir or path.startswith(cdir + "/")) and len(cdir) > len(best):
                best = cdir
        if best:
            rest = path[len(best):].lstrip("/")
            return self.volumes[best] / rest if rest else self.volumes[best]
        if _OPT_ML_RE.match(path):
            rest = path[len(OPT_ML):].lstrip("/")
            return self.container_root / self.host / rest
        return Path(container_path)

    def translate(self, value: str) -> str:
        """Translate a value that is an /opt/ml path; anything else is returned unchanged."""
        if isinstance(value, str) and _OPT_ML_RE.match(value):
            return str(self.to_host(value))
        return value

    def dir(self, container_path: str) -> Path:
        """:meth:`to_host` and create the directory."""
        path = self.to_host(container_path)
        path.mkdir(parents=True, exist_ok=True)
        return path


def env_list_to_dict(items: list[str] | dict | None) -> dict[str, str]:
    """Compose ``environment`` (list of ``K=V`` or a mapping) as a dict."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {str(k): "" if v is None else str(v) for k, v in items.items()}
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def decode_hyperparameters(raw: dict[str, str]) -> dict[str, object]:
    """hyperparameters.json values are JSON-encoded strings; decode them like the toolkit does."""
    out: dict[str, object] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            out[key] = value
    return out


def to_cmd_args(hyperparameters: dict[str, object]) -> list[str]:
    """``{"epochs": 1}`` -> ``["--epochs", "1"]`` (sorted; one-letter names get one dash)."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        args.append(f"--{key}" if len(key) > 1 else f"-{key}")
        if isinstance(value, dict):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append(str(value))
    return args


def _env_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def stage_code(layout: HostLayout, submit_dir: str, env: dict[str, str]) -> Path:
    """Make the user's source directory available on the host; returns its path.

    ``submit_dir`` is what the SDK put in ``sagemaker_submit_directory``: an ``s3://`` tarball
    (downloaded and extracted to the host's ``/opt/ml/code``), a ``file://`` directory, or an
    ``/opt/ml`` path (mapped by the compose volumes, e.g. ``/opt/ml/model/code``).
    """
    if not submit_dir:
        raise ToolkitError("no source directory given (sagemaker_submit_directory is empty)")
    parsed = urlparse(submit_dir)
    if parsed.scheme == "s3":
        code_dir = layout.dir(f"{OPT_ML}/code")
        with tempfile.TemporaryDirectory() as tmp:
            tarball = Path(tmp) / "sourcedir.tar.gz"
            _download_s3(parsed.netloc, parsed.path.lstrip("/"), tarball, env)
            try:
                with tarfile.open(tarball) as tar:
                    tar.extractall(code_dir, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise ToolkitError(f"cannot extract {submit_dir}: {exc}") from None
        return code_dir
    if parsed.scheme == "file":
        code_dir = Path(parsed.netloc + parsed.path)
    elif parsed.scheme == "":
        code_dir = layout.to_host(submit_dir)
    else:
        raise ToolkitError(f"unsupported source location {submit_dir!r}; expected s3://, file:// or a path")
    if not code_dir.is_dir():
        raise ToolkitError(f"source directory {submit_dir} (on the host: {code_dir}) does not exist")
    return code_dir


def _download_s3(bucket: str, key: str, dest: Path, env: dict[str, str]) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        region_name=env.get("AWS_REGION") or env.get("SAGEMAKER_REGION") or None,
    )
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or None
    try:
        session.client("s3", endpoint_url=endpoint).download_file(bucket, key, str(dest))
    except (BotoCoreError, ClientError) as exc:
        raise ToolkitError(f"cannot download the source code s3://{bucket}/{key}: {exc}") from None


def check_requirements(code_dir: Path, log=print) -> None:
    """Check ``requirements.txt`` of the source dir against the installed packages.

    Unsatisfied lines are an error, unless ``DICOMFLOW_INSTALL_REQUIREMENTS=1``: then pip installs
    the file into the running interpreter, as the real container would.
    """
    req_file = code_dir / "requirements.txt"
    if not req_file.is_file():
        return
    missing = unsatisfied_requirements(req_file)
    if not missing:
        log(f"requirements.txt: all {_count_lines(req_file)} requirement(s) already satisfied")
        return
    if runtime().install_requirements:
        log(f"requirements.txt: installing ({', '.join(missing)})")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-r", str(req_file)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["-"]
            raise ToolkitError(f"pip install -r requirements.txt failed: {tail[0]}")
        return
    raise ToolkitError(
        f"requirements.txt of the source dir is not satisfied by this environment: {', '.join(missing)}; "
        f"install them, or set {INSTALL_REQUIREMENTS_ENV}=1 to let pip install them"
    )


def _count_lines(req_file: Path) -> int:
    return sum(1 for line in req_file.read_text().splitlines() if line.split("#", 1)[0].strip())


def unsatisfied_requirements(req_file: Path) -> list[str]:
    """Requirement lines not satisfied by the installed distributions (unparseable lines count)."""
    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for raw in req_file.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(line)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (installed {version})")
    return missing


def _num_gpus(instance_type: str) -> int:
    if instance_type != "local_gpu" or not shutil.which("nvidia-smi"):
        return 0
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return len([line for line in proc.stdout.splitlines() if line.startswith("GPU")])


@dataclass
class TrainingSetup:
    """Everything needed to start the user's entry point on one host."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def training_setup(layout: HostLayout, compose_env: dict[str, str], code_dir: Path, *,
                   master_port: int, base_env: dict[str, str] | None = None, log=print) -> TrainingSetup:
    """The command line, environment and cwd the training toolkit would use on this host."""
    config_dir = layout.to_host(f"{OPT_ML}/input/config")
    try:
        raw_hps = json.loads((config_dir / "hyperparameters.json").read_text())
        resource = json.loads((config_dir / "resourceconfig.json").read_text())
        input_data = json.loads((config_dir / "inputdataconfig.json").read_text())
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"cannot read the job config in {config_dir}: {exc}") from None
    all_hps = decode_hyperparameters(raw_hps)
    framework = {k: v for k, v in all_hps.items() if k.startswith("sagemaker_")}
    hps = {k: (layout.translate(v) if isinstance(v, str) else v)
           for k, v in all_hps.items() if not k.startswith("sagemaker_")}
    program = str(framework.get("sagemaker_program") or "")
    if not program:
        raise ToolkitError("no entry point: hyperparameter sagemaker_program is missing")
    if not (code_dir / program).is_file():
        raise ToolkitError(f"entry point {program} not found in the source directory")

    hosts = list(resource.get("hosts") or [layout.host])
    current = resource.get("current_host") or layout.host
    instance_type = resource.get("current_instance_type", "local")
    channels = sorted(input_data)
    dirs = {
        "model_dir": str(layout.dir(f"{OPT_ML}/model")),
        "input_dir": str(layout.dir(f"{OPT_ML}/input")),
        "input_config_dir": str(config_dir),
        "output_dir": str(layout.dir(f"{OPT_ML}/output")),
        "output_data_dir": str(layout.dir(f"{OPT_ML}/output/data")),
        "output_intermediate_dir": str(layout.dir(f"{OPT_ML}/output/intermediate")),
        "checkpoint_dir": str(layout.dir(f"{OPT_ML}/checkpoints")),
    }
    channel_dirs = {ch: str(layout.dir(f"{OPT_ML}/input/data/{ch}")) for ch in channels}
    args = to_cmd_args(hps)
    num_cpus, num_gpus = os.cpu_count() or 1, _num_gpus(instance_type)
    module_name = program[:-3] if program.endswith(".py") else program
    training_env = {
        "additional_framework_parameters": framework,
        "channel_input_dirs": channel_dirs,
        "current_host": current,
        "current_instance_type": instance_type,
        "hosts": hosts,
        "hyperparameters": hps,
        "input_data_config": input_data,
        "is_master": current == hosts[0],
        "job_name": compose_env.get("TRAINING_JOB_NAME", ""),
        "log_level": framework.get("sagemaker_container_log_level", 20),
        "master_hostname": hosts[0],
        "module_dir": str(framework.get("sagemaker_submit_directory", "")),
        "module_name": module_name,
        "network_interface_name": resource.get("network_interface_name", "eth0"),
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "resource_config": resource,
        "user_entry_point": program,
        **dirs,
    }
    env = dict(base_env if base_env is not None else os.environ)
    env.update({k: layout.translate(v) for k, v in compose_env.items()})
    env.update({
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": current,
        "SM_CURRENT_INSTANCE_TYPE": instance_type,
        "SM_NETWORK_INTERFACE_NAME": training_env["network_interface_name"],
        "SM_HPS": json.dumps(hps),
        "SM_USER_ARGS": json.dumps(args),
        "SM_CHANNELS": json.dumps(channels),
        "SM_INPUT_DATA_CONFIG": json.dumps(input_data),
        "SM_RESOURCE_CONFIG": json.dumps(resource),
        "SM_FRAMEWORK_PARAMS": json.dumps(framework),
        "SM_USER_ENTRY_POINT": program,
        "SM_MODULE_NAME": module_name,
        "SM_MODULE_DIR": training_env["module_dir"],
        "SM_LOG_LEVEL": str(training_env["log_level"]),
        "SM_NUM_CPUS": str(num_cpus),
        "SM_NUM_GPUS": str(num_gpus),
        "SM_MODEL_DIR": dirs["model_dir"],
        "SM_INPUT_DIR": dirs["input_dir"],
        "SM_INPUT_CONFIG_DIR": dirs["input_config_dir"],
        "SM_OUTPUT_DIR": dirs["output_dir"],
        "SM_OUTPUT_DATA_DIR": dirs["output_data_dir"],
        "SM_OUTPUT_INTERMEDIATE_DIR": dirs["output_intermediate_dir"],
        "SM_CHECKPOINT_DIR": dirs["checkpoint_dir"],
        "SM_TRAINING_ENV": json.dumps(training_env),
        # The SDK's host names (algo-1-xxxxx) resolve only inside Docker's network: rendezvous on loopback.
        "SM_MASTER_ADDR": "127.0.0.1",
        "SM_MASTER_PORT": str(master_port),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(code_dir), env.get("PYTHONPATH", "")) if p),
    })
    for ch, path in channel_dirs.items():
        env[f"SM_CHANNEL_{ch.upper()}"] = path
    for key, value in hps.items():
        env[f"SM_HP_{key.upper()}"] = _env_value(value)
    if framework.get("sagemaker_torch_distributed_enabled"):
        # what torchrun (nproc_per_node=1) gives each process in the real container
        rank = hosts.index(current) if current in hosts else 0
        env.update({"RANK": str(rank), "WORLD_SIZE": str(len(hosts)), "LOCAL_RANK": "0",
                    "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": str(rank), "NODE_RANK": str(rank)})
    if program.endswith(".py"):
        argv = [sys.executable, program, *args]
    else:
        entry = code_dir / program
        entry.chmod(entry.stat().st_mode | stat.S_IXUSR)
        argv = ["/bin/sh", "-c", " ".join(["./" + program, *(_shell_quote(a) for a in args)])]
    log(f"{layout.host}: running {program} with {len(hps)} hyperparameter(s) and channels {channels}")
    return TrainingSetup(argv, env, code_dir)


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def write_failure(layout: HostLayout, reason: str) -> Path:
    """Write ``/opt/ml/output/failure`` of this host (what SageMaker reports as FailureReason)."""
    path = layout.dir(f"{OPT_ML}/output") / "failure"
    path.write_text(reason if reason.endswith("\n") else reason + "\n")
    return path
