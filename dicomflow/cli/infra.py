"""``dicomflow infra package | deploy | destroy | outputs | labeling-job``: the CloudFormation stack.

Targets real AWS unless ``AWS_ENDPOINT_URL`` is set (``eval "$(dicomflow env)"`` points it at the
local emulator); every command says which target it used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from dicomflow import aws
from dicomflow.cli.common import console, json_option, out, print_json, value_table
from dicomflow.groundtruth import job_request, submit
from dicomflow.infra import deployment, package, stack
from dicomflow.infra.template import parse_param_args

stack_option = click.option("--stack", "stack_name", default=stack.DEFAULT_STACK, show_default=True,
                            help="CloudFormation stack name.")
template_option = click.option("--template", "template_path", type=click.Path(dir_okay=False, exists=True),
                               help="Template file [infrastructure/dicomflow.yaml].")
deps_option = click.option("--deps", type=click.Choice(package.DEPS_MODES),
                           help="Where Lambda third-party packages come from [venv on the emulator, pip on AWS].")


def _target() -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_CLOUDFORMATION")
    return f"emulator at {endpoint}" if endpoint else f"AWS region {aws.region()}"


def _show_event(event: dict[str, Any]) -> None:
    status = event["ResourceStatus"]
    colour = "red" if "FAILED" in status or "ROLLBACK" in status else "green" if "COMPLETE" in status else "yellow"
    reason = event.get("ResourceStatusReason") or ""
    reason = "" if reason in ("User Initiated", "None") else f"  {reason}"
    console.print(f"  [{colour}]{status:<20}[/{colour}] {event['LogicalResourceId']} "
                  f"[dim]{event.get('ResourceType', '')}[/dim]{reason}", highlight=False)


@click.group()
def infra() -> None:
    """Package, deploy and destroy the CloudFormation stack (real AWS, or the emulator when
    AWS_ENDPOINT_URL is set)."""


@infra.command("package")
@deps_option
@click.option("--bucket", help="Upload to this bucket [dicomflow-deploy-ACCOUNT-REGION, created if missing].")
@click.option("--no-upload", is_flag=True, help="Build and report only.")
@json_option
def package_cmd(deps: str | None, bucket: str | None, no_upload: bool, as_json: bool) -> None:
    """Zip each lambdas/<name>/ handler with the dicomflow modules it imports and upload it."""
    if not no_upload:
        aws.require_credentials()
    with console.status(f"packaging Lambdas ({_target()})…"):
        built = package.package_all(deps=deps or deployment.default_deps(), bucket=bucket,
                                    upload_zips=not no_upload)
    if as_json:
        print_json([p.summary() for p in built])
        return
    table = value_table("lambda", "sha256", "size", "dicomflow modules", "vendored", "s3")
    for p in built:
        table.add_row(p.name, p.sha256, f"{p.size / 1e6:.2f} MB", str(len(p.modules)),
                      ", ".join(p.distributions) or "-", p.summary()["s3"] or "-")
    out.print(table)


@infra.command()
@stack_option
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Template parameter (repeatable).")
@template_option
@deps_option
@click.option("--no-package", is_flag=True,
              help="Do not package; pass LambdaCodeBucket, the *CodeKey and SearchApiSchemaKey yourself.")
@click.option("--pacs-credentials", type=click.Choice(deployment.PACS_MODES), default="auto", show_default=True,
              help="auto: put DICOMFLOW_PACS_USERNAME/PASSWORD (emulator: the local Orthanc's) into the PACS "
                   "secret after deploy.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait for the stack.")
@json_option
def deploy(stack_name: str, params: tuple[str, ...], template_path: str | None, deps: str | None, no_package: bool,
           pacs_credentials: str, timeout: float, as_json: bool) -> None:
    """Create or update the stack and wait for it, showing stack events."""
    parsed = parse_param_args(params)
    aws.require_credentials()
    console.print(f"deploying stack [bold]{stack_name}[/bold] to {_target()}", highlight=False)
    with console.status("packaging and deploying…"):
        done = deployment.run(stack_name, parsed, deps=deps, template_path=template_path,
                              package_lambdas=not no_package, pacs_credentials=pacs_credentials,
                              on_event=_show_event, timeout=timeout)
    r = done.result
    if as_json:
        print_json(done.summary())
        return
    for p in done.packages:
        console.print(f"  lambda {p.name}: {p.sha256} {p.size / 1e6:.1f} MB -> s3://{p.bucket}/{p.key}",
                      highlight=False)
    if r.action == "no-op":
        console.print(f"stack {stack_name}: no changes (template and parameters are as deployed)")
    else:
        console.print(f"stack {stack_name}: {r.action} finished, {r.status}")
    for note in r.fixups:
        console.print(f"  [cyan]emulator fix-up:[/cyan] {note}", highlight=False)
    for note in done.notes:
        console.print(f"  {note}", highlight=False)


@infra.command()
@stack_option
@click.option("--keep-deploy-bucket", is_flag=True, help="Keep the bucket holding the Lambda zips.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait for the stack.")
def destroy(stack_name: str, keep_deploy_bucket: bool, yes: bool, timeout: float) -> None:
    """Empty the stack's buckets (their data is lost), delete the stack and what deploy added."""
    target = _target()
    if not yes and not aws.is_emulated():
        click.confirm(f"delete stack {stack_name} and ALL data in its buckets ({target})?", abort=True)
    desc = stack.describe(stack_name)
    bucket = None
    if not keep_deploy_bucket:
        bucket = stack.deployed_parameters(desc).get("LambdaCodeBucket") if desc else None
        bucket = bucket or package.deploy_bucket_name()
    console.print(f"destroying stack [bold]{stack_name}[/bold] on {target}", highlight=False)
    with console.status("deleting…"):
        notes = stack.destroy(stack_name, on_event=_show_event, deploy_bucket=bucket, timeout=timeout)
    for note in notes:
        console.print(f"  {note}", highlight=False)


@infra.command("outputs")
@stack_option
@template_option
@json_option
def outputs_cmd(stack_name: str, template_path: str | None, as_json: bool) -> None:
    """Print the stack's outputs (bucket names, Lambda and role ARNs, topics, endpoint)."""
    values = stack.outputs(stack_name, template_path)
    if as_json:
        print_json(values)
        return
    table = value_table("output", "value")
    for key in sorted(values):
        table.add_row(key, values[key])
    out.print(table)


@infra.command("labeling-job")
@stack_option
@click.option("--job-name", required=True, help="Labeling job name (letters, digits, hyphens).")
@click.option("--manifest", "manifest_uri", required=True, help="s3:// URI of the input manifest.")
@click.option("--workteam", help="Private workteam ARN [placeholder; required to submit].")
@click.option("--label-attribute-name", help="Output attribute name [the job name].")
@click.option("--workers", type=int, default=1, show_default=True, help="Workers per data object.")
@click.option("--upload-config", is_flag=True,
              help="Upload the worker template, the viewer bundle and the label-category config under "
                   "LabelingConfigUri.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="Write the request JSON here [stdout].")
def labeling_job_cmd(stack_name: str, job_name: str, manifest_uri: str, workteam: str | None,
                     label_attribute_name: str | None, workers: int, upload_config: bool,
                     output_path: str | None) -> None:
    """Write the Ground Truth CreateLabelingJob request built from the stack's outputs."""
    values = stack.outputs(stack_name)
    if upload_config:
        up = submit.upload_labeling_config(values, viewer_dir=submit.VIEWER_DIST)
        console.print(f"uploaded {up.template_uri}, {up.categories_uri} and the viewer bundle ({up.viewer_files} "
                      f"files) to {up.viewer_uri}; workers load it from {up.viewer_base_url}", highlight=False)
    request = job_request.labeling_job_request(values, job_name, manifest_uri, workteam,
                                                label_attribute_name=label_attribute_name,
                                                workers_per_object=workers)
    text = json.dumps(request, indent=2) + "\n"
    if output_path:
        Path(output_path).write_text(text)
        console.print(f"wrote {output_path}")
    else:
        click.echo(text, nl=False)
