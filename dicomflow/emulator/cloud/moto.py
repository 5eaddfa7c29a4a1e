"""The emulated AWS: a moto server on 127.0.0.1 (default port 4566, LocalStack's) with dicomflow's
additions loaded (see :mod:`dicomflow.emulator.moto.main`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dicomflow.emulator.cloud.service import Service

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
ACCOUNT_ID = "123456789012"  # moto's default account
SDK_CONFIG_ENV = "SAGEMAKER_ADMIN_CONFIG_OVERRIDE"


class MotoService(Service):
    name = "aws"
    _sts = None  # the health-check client, made on first use

    @property
    def url(self) -> str:
        return self.settings.aws_endpoint_url

    def ports(self) -> list[int]:
        return [self.settings.aws_port]

    def prepare(self) -> None:
        """Map the serving images to their host commands unless the user mapped them already, and
        write the SageMaker SDK's defaults for sessions against the emulator (:func:`write_sdk_config`)."""
        from dicomflow.emulator.moto.endpoints import DEFAULT_IMAGES, load_image_map, register_image

        path = self.settings.data_dir / "images.json"
        existing = load_image_map() if path.exists() else {}
        for image, command in DEFAULT_IMAGES.items():
            if image not in existing:
                register_image(self.settings.data_dir, image, command)
        write_sdk_config(self.settings)

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        return module_command(self.settings, "dicomflow.emulator.moto.main", self.settings.aws_port)

    def healthy(self) -> bool:
        """STS GetCallerIdentity answers. (Not ``/moto-api/data.json``: it dumps every backend and fails with
        500 once a Lambda exists and no Docker engine does, which made ``up`` restart a healthy emulator and
        lose its state.)"""
        import boto3
        import botocore.config
        import botocore.exceptions

        if self._sts is None:
            self._sts = boto3.session.Session().client(
                "sts", endpoint_url=self.url, region_name=self.settings.region,
                aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                config=botocore.config.Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 1}))
        try:
            return bool(self._sts.get_caller_identity().get("Account"))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False


def sdk_config_path(settings) -> Path:
    return settings.data_dir / "sagemaker" / "config.yaml"


def write_sdk_config(settings) -> Path:
    """The SageMaker SDK defaults file for sessions against the emulator (``SAGEMAKER_ADMIN_CONFIG_OVERRIDE``).

    ``TelemetryOptOut``: the SDK otherwise sends a request to an AWS host (and asks STS there for the
    account) after every ``fit`` and ``deploy``. ``DefaultS3Bucket``: ``sagemaker.Session().default_bucket()``
    otherwise asks STS at its hard-coded AWS endpoint for the account to name the bucket. A user's own
    ``~/.config/sagemaker/config.yaml`` still applies on top.
    """
    import yaml

    path = sdk_config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {
        "TelemetryOptOut": True,
        "Session": {"DefaultS3Bucket": f"sagemaker-{settings.region}-{ACCOUNT_ID}"}}}}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)
    return path


def module_command(settings, module: str, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a service that is a module of this checkout (``python -m MODULE --host --port``)
    on the data dir of ``settings``, its AWS clients pointed at the emulator. The settings go in the environment
    too (``DICOMFLOW_<SETTING>``): on a new data dir they are recorded only once every service is up, and the
    service's own ``Settings.load()`` must see the ports of this cloud (the viewer's, the emulator's) from the start."""
    own = {f"DICOMFLOW_{k.upper()}": str(v) for k, v in settings.as_dict().items() if k != "data_dir"}
    env = {**os.environ, **client_environment(settings), **own, "DICOMFLOW_HOME": str(settings.data_dir)}
    return [sys.executable, "-m", module, "--host", settings.host, "--port", str(port)], env


def client_environment(settings) -> dict[str, str]:
    """What a boto3 / AWS CLI / SageMaker SDK session needs to talk to the emulator."""
    return {
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "AWS_REGION": settings.region,
        "AWS_DEFAULT_REGION": settings.region,
        SDK_CONFIG_ENV: str(sdk_config_path(settings)),
        **DUMMY_CREDENTIALS,
    }
