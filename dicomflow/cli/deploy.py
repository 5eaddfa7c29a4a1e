"""``dicomflow deploy`` (Model + EndpointConfig + Endpoint) and ``dicomflow infer`` (study JSON -> endpoint)."""

from __future__ import annotations

import json
import os

import click

from dicomflow.cli.common import console, json_option, print_json
from dicomflow.errors import DicomflowError
from dicomflow.inference import batch as batch_mod
from dicomflow.inference import endpoint as ep
from dicomflow.inference.request import OUTPUTS, parse_request
from dicomflow.inference.scaling import ScalingPlan, register_async_scaling


@click.command()
@click.option("--endpoint", "name", required=True, help="Endpoint name (letters, digits, hyphens).")
@click.option("--model", "model_data", help="s3://.../model.tar.gz from a training job (or --model-package-group); "
              "with --multi-model, the s3:// prefix of the model.tar.gz files to serve.")
@click.option("--multi-model", is_flag=True, help="A multi-model endpoint (real-time): each request names its "
              "artifact under the --model prefix (dicomflow infer --target-model NAME.tar.gz).")
@click.option("--model-package-group", "group", help="Serve the newest Approved version of this Model Package "
              "Group (refused when none is approved).")
@click.option("--async/--realtime", "asynchronous", default=True, show_default=True,
              help="Async endpoint (S3 in/out, SNS topics) or real-time.")
@click.option("--image", default=lambda: os.environ.get("DICOMFLOW_INFERENCE_IMAGE", ep.DEFAULT_IMAGE),
              show_default=f"$DICOMFLOW_INFERENCE_IMAGE or {ep.DEFAULT_IMAGE}",
              help="Serving image (ECR URI on AWS; mapped to a host command locally).")
@click.option("--instance-type", default=ep.DEFAULT_INSTANCE_TYPE, show_default=True)
@click.option("--max-concurrency", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="MaxConcurrentInvocationsPerInstance (async).")
@click.option("--role", envvar="DICOMFLOW_SAGEMAKER_ROLE", help="Execution role ARN or name "
              f"[env DICOMFLOW_SAGEMAKER_ROLE; locally {ep.DEFAULT_ROLE_NAME} is created].")
@click.option("--output", "output_s3_uri", help="s3:// prefix for async output/failure objects "
              "[s3://<model bucket>/async-inference/<endpoint>].")
@click.option("--pacs-secret", envvar="DICOMFLOW_PACS_SECRET_ARN",
              help="Secrets Manager ARN the container reads PACS credentials from [env DICOMFLOW_PACS_SECRET_ARN].")
@click.option("--min-instances", type=click.IntRange(0), help="Autoscale (async): the fewest instances; 0 "
              "scales to zero when idle and back on the first request.")
@click.option("--max-instances", type=click.IntRange(1), help="Autoscale (async): the most instances.")
@click.option("--backlog-per-instance", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Autoscale: queued requests per instance to aim for (ApproximateBacklogSizePerInstance).")
@click.option("--scale-in-cooldown", default=600, show_default=True, type=click.IntRange(0),
              help="Autoscale: seconds of low backlog before instances are removed.")
@click.option("--scale-out-cooldown", default=300, show_default=True, type=click.IntRange(0),
              help="Autoscale: seconds between two scale-outs.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until InService.")
@json_option
@click.pass_context
def deploy(ctx: click.Context, name: str, model_data: str | None, multi_model: bool, group: str | None,
           asynchronous: bool, image: str, instance_type: str, max_concurrency: int, role: str | None,
           output_s3_uri: str | None, pacs_secret: str | None, min_instances: int | None, max_instances: int | None,
           backlog_per_instance: float, scale_in_cooldown: int, scale_out_cooldown: int, wait: bool,
           as_json: bool) -> None:
    """Deploy a trained model as a SageMaker endpoint (async by default), optionally autoscaled."""
    if bool(model_data) == bool(group):
        raise click.UsageError("give exactly one of --model s3://…/model.tar.gz and --model-package-group NAME")
    if multi_model and group:
        raise click.UsageError("--multi-model serves the artifacts under a --model prefix, not a package group")
    if multi_model and ctx.get_parameter_source("asynchronous") == click.core.ParameterSource.DEFAULT:
        asynchronous = False  # multi-model endpoints are real-time
    plan = None
    if min_instances is not None or max_instances is not None:
        if not asynchronous:
            raise click.UsageError("--min-instances/--max-instances scale async endpoints; drop --realtime")
        if min_instances is None or max_instances is None:
            raise click.UsageError("autoscaling needs both --min-instances and --max-instances")
        plan = ScalingPlan(min_instances, max_instances, backlog_per_instance, scale_in_cooldown, scale_out_cooldown)
        plan.check()
    env = {"DICOMFLOW_PACS_SECRET_ARN": pacs_secret} if pacs_secret else {}
    version = None
    with console.status(f"deploying {name}") as status:
        common = {"asynchronous": asynchronous, "instance_type": instance_type, "max_concurrency": max_concurrency,
                  "role": role, "output_s3_uri": output_s3_uri, "environment": env, "wait": wait,
                  "progress": lambda m: status.update(m)}
        if group:
            explicit = ctx.get_parameter_source("image") not in (click.core.ParameterSource.DEFAULT, None)
            dep, version = ep.deploy_from_group(name, group, image=image if explicit else None, **common)
        else:
            dep = ep.deploy(name, str(model_data), image=image, multi_model=multi_model, **common)
        scaling = None
        if plan is not None:
            status.update(f"registering autoscaling of {name}")
            scaling = register_async_scaling(name, plan)
    registered = {"group": version.group, "version": version.version, "arn": version.arn} if version else None
    if as_json:
        print_json({**dep.as_dict(), **({"scaling": scaling} if scaling else {}),
                    **({"modelPackage": registered} if registered else {})})
        return
    console.print(f"[green]endpoint {dep.endpoint}[/green] {dep.status or ''} "
                  f"({'async' if dep.asynchronous else 'real-time'}, model {dep.model_name})", highlight=False)
    if registered:
        console.print(f"  serves {registered['group']} version {registered['version']} (approved)", highlight=False)
    if dep.asynchronous:
        console.print(f"  output  {dep.output_path}\n  failure {dep.failure_path}\n"
                      f"  topics  {dep.success_topic} / {dep.error_topic}", highlight=False)
    if scaling:
        console.print(f"  scaling {scaling['minInstances']}..{scaling['maxInstances']} instances, "
                      f"{plan.backlog_per_instance:g} queued requests per instance", highlight=False)


def _pacs_url(explicit: str | None) -> str | None:
    from dicomflow.credentials import normalize_url, pacs_connection

    if explicit:
        try:
            normalize_url(explicit)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--pacs-url") from None
        return explicit

    try:
        return pacs_connection().url
    except DicomflowError:
        return None  # the container resolves it from its own environment / secret


@click.command()
@click.option("--endpoint", "name", required=True, help="Endpoint deployed with 'dicomflow deploy'.")
@click.option("--study", help="StudyInstanceUID to analyse (or --batch).")
@click.option("--series", help="SeriesInstanceUID (default: the container picks the usable series).")
@click.option("--target-model", help="Multi-model endpoint: the artifact to use, e.g. hippocampus-v3.tar.gz.")
@click.option("--outputs", default="json,sr", show_default=True, help=f"Comma list of {', '.join(OUTPUTS)}.")
@click.option("--store/--no-store", default=True, show_default=True, help="STOW the SR/SEG into the study.")
@click.option("--pacs-url", help="DICOMweb root the container uses [the local PACS / DICOMFLOW_PACS_URL]; the "
              "endpoint refuses one it is not configured for (DICOMFLOW_ALLOWED_PACS).")
@click.option("--secret-arn", envvar="DICOMFLOW_PACS_SECRET_ARN", help="PACS credentials secret for the container.")
@click.option("--output-s3", "output_s3_uri", help="s3:// prefix for the occlusion PNG.")
@click.option("--wait/--no-wait", default=False, show_default=True, help="Follow the async result and print it.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--batch", is_flag=True, help="Many studies in one SageMaker batch transform job (with --studies or "
              "--query, and --to).")
@click.option("--studies", "study_file", type=click.File("r"), help="--batch: file of StudyInstanceUIDs, one per line.")
@click.option("--query", multiple=True, metavar="KEY=VALUE", help="--batch: the PACS's studies matching QIDO-RS "
              "filters, e.g. Modality=MR (repeatable).")
@click.option("--to", "batch_to", help="--batch: s3:// prefix for the job's input/ and output/.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, 100),
              help="--batch: instances running the model.")
@click.option("--max-concurrent", default=2, show_default=True, type=click.IntRange(1, 100),
              help="--batch: requests at once per instance (MaxConcurrentTransforms).")
@json_option
def infer(name: str, study: str | None, series: str | None, target_model: str | None, outputs: str, store: bool,
          pacs_url: str | None, secret_arn: str | None, output_s3_uri: str | None, wait: bool, timeout: float,
          batch: bool, study_file, query: tuple[str, ...], batch_to: str | None, instances: int, max_concurrent: int,
          as_json: bool) -> None:
    """Run inference on a study through an endpoint (async: S3 in, poll S3 out), or on many (--batch)."""
    if batch:
        if study or series:
            raise click.UsageError("--batch takes --studies FILE or --query KEY=VALUE, not --study/--series")
        if not batch_to:
            raise click.UsageError("--batch needs --to s3://bucket/prefix for the job's input and output")
        studies = studies_from(study_file, query, pacs_url)
        requests_ = {uid: study_request(uid, None, outputs, store, pacs_url, secret_arn, output_s3_uri)
                     for uid in studies}
        _run_batch(name, batch_to, requests_, instances, max_concurrent, timeout, as_json)
        return
    if not study:
        raise click.UsageError("give --study UID (or --batch with --studies/--query)")
    body = study_request(study, series, outputs, store, pacs_url, secret_arn, output_s3_uri)
    config = ep.async_config(name)
    if target_model and config is not None:
        raise click.UsageError(f"--target-model is for multi-model endpoints; {name} is asynchronous")
    if config is None:
        with console.status(f"invoking {name}"):
            result = ep.invoke_realtime(name, body, target_model)
        _show(result, as_json)
        return
    inv = ep.invoke_async(name, body, config)
    if not wait:
        info = {"inferenceId": inv.inference_id, "inputLocation": inv.input_location,
                "outputLocation": inv.output_location, "failureLocation": inv.failure_location}
        if as_json:
            print_json(info)
        else:
            console.print(f"queued {inv.inference_id}\n  output  {inv.output_location}\n"
                          f"  failure {inv.failure_location}", highlight=False)
        return
    with console.status(f"waiting for {inv.inference_id} on {name}"):
        ok, data = ep.wait_result(inv, timeout_s=timeout)
    if not ok:
        raise ep.EndpointError(f"inference {inv.inference_id} failed: {ep.failure_message(data)} "
                               f"(details in {inv.failure_location})")
    _show(ep.with_queue_time(inv, json.loads(data)), as_json)


def study_request(study: str, series: str | None, outputs: str, store: bool, pacs_url: str | None,
             secret_arn: str | None, output_s3_uri: str | None) -> dict:
    """The study JSON for one study, validated as the container validates it."""
    body: dict = {"studyInstanceUID": study, "outputs": [o.strip() for o in outputs.split(",") if o.strip()],
                  "storeToPacs": store}
    if series:
        body["seriesInstanceUID"] = series
    url = _pacs_url(pacs_url)
    dw: dict = {}
    if url:
        dw["url"] = url
    if secret_arn:
        dw["auth"] = {"secretArn": secret_arn}
    if dw:
        body["dicomweb"] = dw
    if output_s3_uri:
        body["outputS3Uri"] = output_s3_uri
    return parse_request(body).as_dict()  # same validation as the container, before anything is sent


def studies_from(study_file, query: tuple[str, ...], pacs_url: str | None) -> list[str]:
    if bool(study_file) == bool(query):
        raise click.UsageError("give exactly one of --studies FILE and --query KEY=VALUE")
    if study_file:
        return batch_mod.read_study_list(study_file)
    filters = {}
    for item in query:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--query")
        key = key.strip()
        filters["ModalitiesInStudy" if key == "Modality" else key] = value.strip()
    from dicomflow.credentials import PacsConnection, pacs_connection
    from dicomflow.dicom import dicomweb

    conn = pacs_connection()
    if pacs_url:
        conn = PacsConnection(pacs_url, conn.username, conn.password)
    found = dicomweb.search_studies(dicomweb.connect(conn), **filters)
    studies = [str(s["0020000D"]["Value"][0]) for s in found if s.get("0020000D", {}).get("Value")]
    if not studies:
        raise ep.EndpointError(f"no study in the PACS matches {' '.join(query)}")
    return studies


def _run_batch(name: str, to: str, requests_: dict, instances: int, max_concurrent: int, timeout: float,
               as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    job = batch_mod.start(name, to, requests_, instance_count=instances, max_concurrent=max_concurrent)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=as_json) as bar:
        task = bar.add_task(f"{job.name} InProgress", total=len(job.studies))
        desc = batch_mod.follow(job, lambda done, status: bar.update(
            task, completed=done, description=f"{job.name} {status}"), timeout_s=timeout)
    rows = batch_mod.results(job)
    summary = {"transformJobName": job.name, "status": desc["TransformJobStatus"],
               "failureReason": desc.get("FailureReason") or None, "input": job.input_uri, "output": job.output_uri,
               "studies": len(rows), "succeeded": sum(r["ok"] for r in rows),
               "failed": [{"study": r["study"], "error": r["error"]} for r in rows if not r["ok"]]}
    if as_json:
        print_json(summary)
    else:
        console.print(f"{job.name} {summary['status']}: {summary['succeeded']} of {summary['studies']} studies "
                      f"analysed, outputs in {job.output_uri}", highlight=False)
        for row in summary["failed"]:
            console.print(f"  failed {row['study']}: {row['error']}", highlight=False)
    if summary["status"] != "Completed":
        raise ep.EndpointError(f"transform job {job.name} {summary['status']}: {summary['failureReason']}")


def _show(result: dict, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    series = result.get("series", {})
    console.print(f"study {result.get('studyInstanceUID')} series {series.get('seriesInstanceUID')} "
                  f"({series.get('reason')})", highlight=False)
    findings = result.get("findings", {})
    if "volumesMm3" in findings:
        for k, v in findings["volumesMm3"].items():
            console.print(f"  {k:<12} {v:>12.1f} mm³", highlight=False)
    else:
        for k, v in sorted(findings.get("probabilities", {}).items(), key=lambda kv: -kv[1]):
            console.print(f"  {k:<28} {v:.3f}", highlight=False)
    for kind, ref in result.get("outputs", {}).items():
        console.print(f"  {kind.upper()} {ref['SOPInstanceUID']}{' stored' if ref.get('storedToPacs') else ''}",
                      highlight=False)
    timing = result.get("timingMs", {})
    console.print("  timing ms: " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()), highlight=False)
