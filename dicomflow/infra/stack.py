"""Create, update, inspect and destroy the dicomflow CloudFormation stack through boto3.

``deploy`` validates parameters against the template first (one clear line for a bad one),
creates the stack or updates it (an unchanged template + parameters is a reported no-op, on AWS
and on the emulator), reports stack events as they arrive, and, only on the emulator, applies what
moto skipped (:mod:`dicomflow.infra.emulator_fixups`). ``destroy`` empties the stack's buckets, deletes the
stack, removes what the fix-ups added and the deploy bucket holding the Lambda zips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.infra import emulator_fixups
from dicomflow.infra.errors import InfraError
from dicomflow.infra.template import load_template, template_body, validate_parameters

DEFAULT_STACK = "dicomflow"
CAPABILITIES = ["CAPABILITY_IAM"]
NO_UPDATES = "No updates are to be performed"
EventCallback = Callable[[dict[str, Any]], None]
_TERMINAL_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "DELETE_COMPLETE", "IMPORT_COMPLETE"}
_POLL_SECONDS = 2.0


@dataclass
class DeployResult:
    """What ``deploy`` did: ``action`` is create, update or no-op."""

    stack: str
    action: str
    status: str
    outputs: dict[str, str]
    fixups: list[str] = field(default_factory=list)
    emulator: bool = False


def _error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or exc).replace("\n", " ")


def describe(stack: str) -> dict[str, Any] | None:
    """The stack's description, or None when it does not exist (or is deleted)."""
    cf = aws.client("cloudformation")
    try:
        stacks = cf.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in _error_message(exc):
            return None
        raise InfraError(f"cannot describe stack {stack}: {_error_message(exc)}") from exc
    if not stacks or stacks[0]["StackStatus"] == "DELETE_COMPLETE":
        return None
    return stacks[0]


def deployed_parameters(desc: Mapping[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: str(p.get("ParameterValue", "")) for p in desc.get("Parameters") or []}


def outputs(stack: str = DEFAULT_STACK, template_path: str | Path | None = None) -> dict[str, str]:
    """The stack's outputs. On the emulator, outputs moto dropped (they referenced resources it skipped)
    are resolved from the template against what the fix-ups created."""
    desc = describe(stack)
    if desc is None:
        raise InfraError(f"stack {stack} does not exist; run 'dicomflow infra deploy --stack {stack}'")
    result = {o["OutputKey"]: str(o["OutputValue"]) for o in desc.get("Outputs") or []}
    if aws.is_emulated():
        template = load_template(template_path)
        parameters = deployed_parameters(desc)
        extra = emulator_fixups.created_resources(stack, template, parameters)
        resolver = emulator_fixups.resolver_for(stack, template, parameters, extra)
        for key, spec in (template.get("Outputs") or {}).items():
            if key not in result and resolver.active(spec):
                try:
                    result[key] = str(resolver.resolve(spec["Value"]))
                except InfraError:
                    continue
    return result


def _events_since(stack: str, seen: set[str]) -> list[dict[str, Any]]:
    cf = aws.client("cloudformation")
    try:
        events = cf.describe_stack_events(StackName=stack)["StackEvents"]
    except ClientError:
        return []
    fresh = [e for e in events if e["EventId"] not in seen]
    seen.update(e["EventId"] for e in fresh)
    return list(reversed(fresh))  # oldest first


def wait(stack: str, on_event: EventCallback | None = None, timeout: float = 3600.0,
         seen: set[str] | None = None) -> str:
    """Poll until the stack reaches a terminal status; report each new event; return the status."""
    seen = set() if seen is None else seen
    deadline = time.monotonic() + timeout
    while True:
        for event in _events_since(stack, seen):
            if on_event:
                on_event(event)
        desc = describe(stack)
        status = "DELETE_COMPLETE" if desc is None else desc["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            return status
        if time.monotonic() > deadline:
            raise InfraError(f"stack {stack} still {status} after {timeout:.0f} s; watch it in the console")
        time.sleep(_POLL_SECONDS)


def _unchanged(stack: str, desc: Mapping[str, Any], body: str, values: Mapping[str, str]) -> bool:
    """Template and parameters exactly as deployed (checked here too: moto compares Number parameters
    as numbers on one side and strings on the other, so it never reports "No updates")."""
    if deployed_parameters(desc) != dict(values):
        return False
    deployed = aws.client("cloudformation").get_template(StackName=stack, TemplateStage="Original")["TemplateBody"]
    if isinstance(deployed, str):
        return deployed == body
    try:
        return deployed == json.loads(body)
    except ValueError:
        return False


def _failure_reason(stack: str) -> str:
    cf = aws.client("cloudformation")
    try:
        events = cf.describe_stack_events(StackName=stack)["StackEvents"]
    except ClientError:
        return "no events"
    for e in reversed(events):
        if e["ResourceStatus"].endswith("_FAILED") and e.get("ResourceStatusReason"):
            return f"{e['LogicalResourceId']}: {e['ResourceStatusReason']}"
    return "see the stack events"


def deploy(stack: str = DEFAULT_STACK, params: Mapping[str, str] | None = None,
           template_path: str | Path | None = None, on_event: EventCallback | None = None,
           timeout: float = 3600.0) -> DeployResult:
    """Create or update ``stack`` with the template and ``params`` (validated first); wait for it."""
    template = load_template(template_path)
    body = template_body(template_path)
    desc = describe(stack)
    given = dict(params or {})
    if desc is not None:  # an update keeps earlier values of parameters not given now (like UsePreviousValue)
        for key, value in deployed_parameters(desc).items():
            if key in (template.get("Parameters") or {}):
                given.setdefault(key, value)
    values = validate_parameters(template, given)
    cf = aws.client("cloudformation")
    cf_params = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]
    seen: set[str] = set()
    if desc is not None:
        if desc["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
            raise InfraError(f"stack {stack} is {desc['StackStatus']} and cannot be updated; run "
                             f"'dicomflow infra destroy --stack {stack}' and deploy again")
        _events_since(stack, seen)  # the old events are history, not progress
        try:
            if _unchanged(stack, desc, body, values):
                raise ClientError({"Error": {"Code": "ValidationError", "Message": NO_UPDATES + "."}}, "UpdateStack")
            cf.update_stack(StackName=stack, TemplateBody=body, Parameters=cf_params, Capabilities=CAPABILITIES)
            action = "update"
        except ClientError as exc:
            if NO_UPDATES in _error_message(exc):
                action = "no-op"
            else:
                raise InfraError(f"cannot update stack {stack}: {_error_message(exc)}") from exc
    else:
        try:
            cf.create_stack(StackName=stack, TemplateBody=body, Parameters=cf_params, Capabilities=CAPABILITIES,
                            Tags=[{"Key": "dicomflow:stack", "Value": stack}])
        except ClientError as exc:
            raise InfraError(f"cannot create stack {stack}: {_error_message(exc)}") from exc
        action = "create"
    status = desc["StackStatus"] if action == "no-op" else wait(stack, on_event, timeout, seen)
    if status not in _TERMINAL_OK:
        raise InfraError(f"stack {stack} ended {status}: {_failure_reason(stack)}")
    fixups: list[str] = []
    is_emulator = aws.is_emulated()
    if is_emulator:
        fixups, _ = emulator_fixups.apply_fixups(stack, template, values, quiet=action == "no-op")
    return DeployResult(stack=stack, action=action, status=status, outputs=outputs(stack, template_path),
                        fixups=fixups, emulator=is_emulator)


def set_pacs_secret(secret_arn: str, url: str, username: str, password: str) -> None:
    """Store the PACS credentials in the stack's secret (never in the template or a log line)."""
    if not username or not password:
        raise InfraError("PACS username and password must both be set (DICOMFLOW_PACS_USERNAME/PASSWORD)")
    aws.client("secretsmanager").put_secret_value(
        SecretId=secret_arn, SecretString=json.dumps({"username": username, "password": password, "url": url}))


def empty_bucket(bucket: str) -> int:
    """Delete every object version and delete marker in ``bucket``; returns how many were deleted."""
    s3 = aws.client("s3")
    count = 0
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in (page.get("Versions") or []) + (page.get("DeleteMarkers") or [])]
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
            count += len(keys)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # unversioned leftovers
            keys = [{"Key": o["Key"]} for o in page.get("Contents") or []]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                count += len(keys)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return 0
        raise InfraError(f"cannot empty bucket {bucket}: {_error_message(exc)}") from exc
    return count


def _delete_bucket(bucket: str) -> bool:
    s3 = aws.client("s3")
    empty_bucket(bucket)
    try:
        s3.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return False
        raise InfraError(f"cannot delete bucket {bucket}: {_error_message(exc)}") from exc
    return True


def destroy(stack: str = DEFAULT_STACK, on_event: EventCallback | None = None, deploy_bucket: str | None = None,
            timeout: float = 3600.0) -> list[str]:
    """Delete the stack and everything deploy made around it; returns one line per step."""
    notes: list[str] = []
    desc = describe(stack)
    is_emulator = aws.is_emulated()
    if desc is None:
        notes.append(f"stack {stack} does not exist")
    else:
        resources = emulator_fixups.stack_resources(stack)
        buckets = [r["physical"] for r in resources.values() if r["type"] == "AWS::S3::Bucket"]
        topics = [r["physical"] for r in resources.values() if r["type"] == "AWS::SNS::Topic"]
        for bucket in buckets:
            n = empty_bucket(bucket)
            notes.append(f"emptied bucket {bucket} ({n} objects)")
        if is_emulator:
            notes.extend(emulator_fixups.unsubscribe_topics(topics))
        seen: set[str] = set()
        _events_since(stack, seen)
        aws.client("cloudformation").delete_stack(StackName=stack)
        status = wait(stack, on_event, timeout, seen)
        if status != "DELETE_COMPLETE":
            raise InfraError(f"stack {stack} ended {status}: {_failure_reason(stack)}")
        notes.append(f"deleted stack {stack}")
        for bucket in buckets:  # moto deletes the stack but keeps buckets; AWS has removed them already
            if _delete_bucket(bucket):
                notes.append(f"deleted bucket {bucket} (left behind by the stack delete)")
    if is_emulator:
        notes.extend(emulator_fixups.remove_fixups(stack))
    if deploy_bucket:
        users = stacks_using_bucket(deploy_bucket)
        if users:
            notes.append(f"kept deploy bucket {deploy_bucket}: stack(s) {', '.join(users)} still use it")
        elif _delete_bucket(deploy_bucket):
            notes.append(f"deleted deploy bucket {deploy_bucket}")
    return notes


def stacks_using_bucket(bucket: str) -> list[str]:
    """Live stacks whose ``LambdaCodeBucket`` parameter is ``bucket``."""
    cf = aws.client("cloudformation")
    users = []
    for page in cf.get_paginator("describe_stacks").paginate():
        for desc in page["Stacks"]:
            if desc["StackStatus"] != "DELETE_COMPLETE" and deployed_parameters(desc).get("LambdaCodeBucket") == bucket:
                users.append(desc["StackName"])
    return users
