"""One deploy as the CLI runs it: package the Lambdas, fill the code parameters, deploy, set the PACS secret.

Parameter defaults that depend on the target: on the emulator ``PacsDicomwebUrl`` defaults to the
local Orthanc (from the data dir's state), ``GatewayUrl`` to :data:`LOCAL_GATEWAY_URL` (the local
portal of ``dicomflow label start`` serves the gateway on its own origin and points the signed URLs
there, whatever host they name: the signature covers the object and expiry, not the host) and Lambda
dependencies come from this venv; on real AWS both URLs are required and dependencies are fetched
for the Lambda platform with pip (see :mod:`dicomflow.infra.package`).

The PACS secret's value never passes through the template: after deploy it is set from
``DICOMFLOW_PACS_USERNAME``/``DICOMFLOW_PACS_PASSWORD`` (or, on the emulator only, the local
Orthanc's credentials), and only when it differs from what is stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dicomflow import aws
from dicomflow.config import Settings, read_state, runtime, write_state
from dicomflow.credentials import pacs_connection
from dicomflow.errors import DicomflowError
from dicomflow.infra import package, stack
from dicomflow.infra.errors import InfraError

PACS_MODES = ("auto", "skip")
#: ``GatewayUrl`` on the emulator when none is given; the local portal rebases signed URLs to itself.
LOCAL_GATEWAY_URL = "http://127.0.0.1/wado"


@dataclass
class Deployment:
    """What one ``infra deploy`` did."""

    result: stack.DeployResult
    packages: list[package.BuiltPackage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        r = self.result
        return {"stack": r.stack, "action": r.action, "status": r.status, "emulator": r.emulator,
                "outputs": r.outputs, "fixups": r.fixups, "notes": self.notes,
                "lambdas": [p.summary() for p in self.packages]}


def default_deps() -> str:
    return "venv" if aws.is_emulated() else "pip"


def run(stack_name: str = stack.DEFAULT_STACK, params: Mapping[str, str] | None = None, *,
        deps: str | None = None, template_path: str | Path | None = None, package_lambdas: bool = True,
        pacs_credentials: str = "auto", on_event: stack.EventCallback | None = None,
        timeout: float = 3600.0) -> Deployment:
    """Package + deploy + set the PACS secret; see the module docstring."""
    if pacs_credentials not in PACS_MODES:
        raise InfraError(f"--pacs-credentials {pacs_credentials!r} is not one of {', '.join(PACS_MODES)}")
    params = dict(params or {})
    notes: list[str] = []
    if aws.is_emulated() and "PacsDicomwebUrl" not in params and stack.describe(stack_name) is None:
        settings = Settings.load()
        if settings.state_path.exists():
            params["PacsDicomwebUrl"] = settings.dicomweb_url
            notes.append(f"PacsDicomwebUrl defaults to the local Orthanc {settings.dicomweb_url}")
    if aws.is_emulated() and "GatewayUrl" not in params and stack.describe(stack_name) is None:
        params["GatewayUrl"] = LOCAL_GATEWAY_URL
        notes.append(f"GatewayUrl defaults to {LOCAL_GATEWAY_URL} (the local portal of 'dicomflow label start' "
                     "serves the gateway on its own origin)")
    built: list[package.BuiltPackage] = []
    if package_lambdas:
        built = package.package_all(deps=deps or default_deps(), bucket=params.get("LambdaCodeBucket"))
        params.setdefault("LambdaCodeBucket", built[0].bucket or "")
        for pkg in built:
            params.setdefault(pkg.parameter, pkg.key or "")
        params.setdefault("SearchApiSchemaKey", package.upload_schema(params["LambdaCodeBucket"]))
    result = stack.deploy(stack_name, params, template_path, on_event=on_event, timeout=timeout)
    if aws.is_emulated():
        _record_local_stack(stack_name)
    if pacs_credentials == "auto":
        notes.append(_set_pacs_secret(result.outputs))
    return Deployment(result=result, packages=built, notes=notes)


#: The local cloud's state-file record of the stack last deployed to it, whose user pool the local search page
#: signs its users in with.
LOCAL_STACK_KEY = "search_stack"


def _record_local_stack(stack_name: str) -> None:
    settings = Settings.load()
    if settings.state_path.exists():
        state = read_state(settings.data_dir)
        if state.get(LOCAL_STACK_KEY) != stack_name:
            write_state(settings.data_dir, {**state, LOCAL_STACK_KEY: stack_name})


def _set_pacs_secret(outputs: Mapping[str, str]) -> str:
    arn, url = outputs.get("PacsSecretArn"), outputs.get("PacsDicomwebUrl", "")
    if not arn:
        return "stack has no PacsSecretArn output; PACS secret not set"
    settings = runtime()
    username, password = settings.pacs_username, settings.pacs_password
    source = "DICOMFLOW_PACS_USERNAME/PASSWORD"
    if not (username and password) and aws.is_emulated():
        try:
            conn = pacs_connection(url=url)
        except DicomflowError:
            conn = None
        if conn is not None and conn.auth:
            username, password = conn.auth
            source = "the local Orthanc's credentials"
    if not (username and password):
        return (f"PACS secret {arn.rsplit(':', 1)[-1]} still holds a placeholder: set DICOMFLOW_PACS_USERNAME and "
                "DICOMFLOW_PACS_PASSWORD and deploy again, or run: aws secretsmanager put-secret-value "
                f"--secret-id {arn} --secret-string file://pacs.json")
    sm = aws.client("secretsmanager")
    wanted = {"username": username, "password": password, "url": url}
    try:
        current = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])
    except (ValueError, KeyError):
        current = {}
    if current == wanted:
        return "PACS secret unchanged"
    stack.set_pacs_secret(arn, url, username, password)
    return f"PACS secret set from {source}"
