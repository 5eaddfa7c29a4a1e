"""``dicomflow label ...``: Ground Truth labeling. ``manifest`` builds the input manifest from a PACS query,
``start`` runs a CreateLabelingJob request locally (or submits it to Ground Truth), ``status`` reports progress.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dicomflow import aws
from dicomflow.cli.common import console, json_option, out, pacs_for, print_json, settings_from
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import OrthancRest
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import active, manifest


@click.group("label")
def label() -> None:
    """Label DICOM images and series with a Ground Truth custom workflow (locally or on AWS)."""


@label.command("manifest")
@click.option("--query", "queries", multiple=True, metavar="KEYWORD=VALUE",
              help="QIDO filter, repeatable (e.g. --query Modality=CR --query StudyDate=20200101-). "
                   "None: everything on the PACS.")
@click.option("--per", type=click.Choice(manifest.PER_LEVELS), default="instance", show_default=True,
              help="One task per instance (images) or per series (volumes).")
@click.option("--to", "target", required=True, metavar="s3://BUCKET/KEY | -",
              help="Where to write the JSON Lines manifest ('-' prints it).")
@click.option("--source-format", type=click.Choice(manifest.SOURCE_FORMATS), default="orthanc-id",
              show_default=True, help="Orthanc IDs, or UID JSON objects (any DICOMweb PACS).")
@click.option("--via", type=click.Choice(["orthanc", "qido"]), default=None,
              help="How to search: Orthanc's /tools/find (fast; default for orthanc-id) or QIDO-RS "
                   "(any DICOMweb PACS; default for uids).")
@json_option
@click.pass_context
def manifest_cmd(ctx: click.Context, queries: tuple[str, ...], per: str, target: str, source_format: str,
                 via: str | None, as_json: bool) -> None:
    """Build Ground Truth's input manifest ({"source": ...} per line) from a PACS query.

    The whole manifest is built first and written with one PUT: it appears complete or not at all.
    """
    filters = manifest.parse_query_filters(queries)
    if target != "-":
        manifest.check_object_uri(target)  # a bad URI fails before the PACS is queried
    settings = settings_from(ctx)
    started = time.perf_counter()
    via = via or ("orthanc" if source_format == "orthanc-id" else "qido")
    if via == "orthanc" and source_format != "orthanc-id":
        raise click.UsageError("--via orthanc gives Orthanc IDs; use it with --source-format orthanc-id")
    conn = pacs_for(settings)
    if via == "orthanc":
        lines = manifest.orthanc_input_lines(OrthancRest(conn), filters, per)
    else:
        lines = manifest.query_input_lines(dicomweb.connect(conn), filters, per, source_format)
    if not lines:
        what = " ".join(queries) or "(no filter)"
        raise manifest.ManifestError(f"no {per} on the PACS matches {what}; nothing written "
                                     "(check the query, or run 'dicomflow seed')")
    if target == "-":
        sys.stdout.buffer.write(manifest.dumps_jsonl(lines))
        return
    count = manifest.write_jsonl_s3(target, lines)
    seconds = round(time.perf_counter() - started, 3)
    if as_json:
        print_json({"to": target, "per": per, "via": via, "lines": count, "filters": filters, "seconds": seconds})
    else:
        console.print(f"wrote {count} {per} line(s) to {target} in {seconds:.2f}s", highlight=False)


@label.command("next")
@click.option("--model", required=True, metavar="GROUP | s3://…/model.tar.gz | DIR",
              help="The model that scores: a Model Registry package group (its newest approved version), an s3:// "
                   "model.tar.gz, or a local artifact. A classifier ranks images; a segmenter ranks series.")
@click.option("--query", "queries", multiple=True, metavar="KEYWORD=VALUE",
              help="QIDO filter of the images to choose from, repeatable (e.g. --query Modality=CR). "
                   "None: every image on the PACS.")
@click.option("--count", type=click.IntRange(1, 100_000), required=True, help="How many images the next job labels.")
@click.option("--strategy", type=click.Choice(active.STRATEGIES), default="entropy", show_default=True,
              help="How to rank: entropy, margin, mc-dropout (disagreement of dropout samples) or random.")
@click.option("--to", "target", required=True, metavar="s3://BUCKET/KEY | -",
              help="Where to write the next job's input manifest ('-' prints it).")
@click.option("--label-attribute", default="labels", show_default=True,
              help="The label attribute of the earlier jobs whose images are left out.")
@click.option("--labeled", "labeled_uris", multiple=True, metavar="s3://…/output.manifest",
              help="Output manifests of earlier jobs (e.g. on AWS) whose images are left out, repeatable; the "
                   "local jobs of this data dir with --label-attribute are always read.")
@click.option("--exclude-labeled/--include-labeled", default=True, show_default=True,
              help="Leave out images an earlier job of --label-attribute labeled.")
@click.option("--source-format", type=click.Choice(manifest.SOURCE_FORMATS), default="orthanc-id",
              show_default=True, help="Orthanc IDs, or UID JSON objects (any DICOMweb PACS).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Images per forward pass.")
@click.option("--samples", type=click.IntRange(2, 200), default=active.MC_SAMPLES, show_default=True,
              help="[mc-dropout] Dropout samples per image.")
@click.option("--seed", type=int, default=0, show_default=True, help="[random, mc-dropout] Seed of the draws.")
@json_option
@click.pass_context
def next_cmd(ctx: click.Context, model: str, queries: tuple[str, ...], count: int, strategy: str, target: str,
             label_attribute: str, labeled_uris: tuple[str, ...], exclude_labeled: bool, source_format: str,
             batch_size: int, samples: int, seed: int, as_json: bool) -> None:
    """Choose the next images (or, with a segmenter, series) to label by active learning: score the not-yet-labeled
    ones on the PACS with the model, most uncertain first, and write the next job's input manifest (each line says
    its rank and score)."""
    from dicomflow.inference import scoring

    filters = manifest.parse_query_filters(queries)
    if target != "-":
        manifest.check_object_uri(target)
    settings = settings_from(ctx)
    labeled: set[str] = set()
    if exclude_labeled:
        labeled = _labeled(settings.data_dir, label_attribute, labeled_uris)
    client = dicomweb.connect(pacs_for(settings))
    service, model_id = scoring.load_classifier(model, tasks=("classification2d", "segmentation3d"))
    per = "series" if service.task == "segmentation3d" else "image"
    with Progress(TextColumn(f"scoring with {model_id['name']}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=as_json) as progress:
        bar = progress.add_task("score", total=None)

        def score(pool: list[active.Candidate]) -> active.Scored:
            progress.update(bar, total=len(pool))

            return scoring.score_pool(client, service, pool, batch_size=batch_size,
                                      mc_samples=samples if strategy == "mc-dropout" else 0, seed=seed,
                                      progress=lambda done: progress.update(bar, completed=done))

        batch = active.choose_next(client, filters, labeled, score, count=count, strategy=strategy,
                                   labels=service.labels, activation=service.activation, model=model_id,
                                   source_format=source_format, seed=seed, per=per)
    if target == "-":
        sys.stdout.buffer.write(manifest.dumps_jsonl(batch.lines))
        return
    manifest.write_jsonl_s3(target, batch.lines)
    summary = {"to": target, **batch.summary()}
    if as_json:
        print_json(summary)
        return
    chosen, probs = batch.chosen, batch.probabilities
    out.print(f"{summary['found']} {per}(s) match, {summary['labeled']} already labeled under {label_attribute!r}, "
              f"{summary['scored']} scored ({len(summary['failed'])} failed); ranked by {strategy}: "
              f"{summary['explanation']}", highlight=False, soft_wrap=True)
    for r in chosen[:20]:  # plain lines: a UID stays whole for copying
        row = probs[r.key]
        if per == "series":
            least = min(row, key=lambda c: row[c])
            why = f"least sure of: {least} (mean p {row[least]:.2f} where it finds it)"
        else:
            cls = min(row, key=lambda c: abs(row[c] - 0.5))
            why = f"nearest a decision: {cls} (p {row[cls]:.2f})"
        out.print(f"{r.rank:>4}. {r.key}  score {r.score:.4f}  {why}", highlight=False, soft_wrap=True)
    if len(chosen) > 20:
        out.print(f"… and {len(chosen) - 20} more in the manifest", highlight=False)
    out.print(f"mean score {summary['scoreMean']['chosen']:.4f} chosen against {summary['scoreMean']['pool']:.4f} "
              f"over all {summary['scored']} scored; wrote {len(batch.lines)} line(s) to {target}",
              highlight=False, soft_wrap=True)
    for sop, why in list(summary["failed"].items())[:10]:
        out.print(f"[yellow]not scored[/yellow] {sop}: {why}", highlight=False, soft_wrap=True)


def _labeled(data_dir: Path, label_attribute: str, uris: tuple[str, ...]) -> set[str]:
    """The objects earlier jobs of ``label_attribute`` labeled: those of ``uris`` and this data dir's local jobs."""
    from dicomflow.emulator.groundtruth import job_status

    sources = list(uris)
    for request in _requests(data_dir, None):
        if request.label_attribute == label_attribute:
            uri = job_status(request, data_dir).get("outputManifest")
            if uri and aws.exists(uri):
                sources.append(uri)
    keys: set[str] = set()
    for uri in sources:
        keys |= active.labeled_keys(manifest.read_jsonl_s3(uri), label_attribute)
    return keys


@label.command("start")
@click.option("--job", "job_file", type=click.Path(dir_okay=False),
              help="CreateLabelingJob request JSON (the same file real Ground Truth takes).")
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="local: run the job here (portal + gateway). aws: submit it to Ground Truth "
                   "(the emulator when AWS_ENDPOINT_URL is set).")
@click.option("--workteam", help="[aws] Private workteam ARN (arn:aws:sagemaker:REGION:ACCOUNT:workteam/...).")
@click.option("--stack", "stack_name", default="dicomflow", show_default=True,
              help="[aws] Stack whose outputs give the Lambdas, role, buckets and gateway.")
@click.option("--job-name", help="[aws, without --job] Labeling job name.")
@click.option("--manifest", "manifest_uri", help="[aws, without --job] s3:// URI of the input manifest.")
@click.option("--viewer-base-url", help="[aws] Where workers' browsers load viewer.js [GatewayUrl origin + /ui/].")
@click.option("--workers", type=click.IntRange(1, 50), default=None,
              help="Local workers to create [NumberOfHumanWorkersPerDataObject]; with --target aws and no "
                   "--job: workers per data object (1-9).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Portal port on 127.0.0.1 (0: a free one).")
@click.option("--template", "template_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this local worker template instead of UiTemplateS3Uri (while editing it).")
@click.option("--exit-when-done/--keep-serving", default=True, show_default=True,
              help="Stop once every data object is consolidated.")
@json_option
@click.pass_context
def start(ctx: click.Context, job_file: str | None, target: str, workteam: str | None, stack_name: str,
          job_name: str | None, manifest_uri: str | None, viewer_base_url: str | None, workers: int | None,
          port: int, template_file: str | None, exit_when_done: bool, as_json: bool) -> None:
    """Run a labeling job locally (worker portal, signed-image gateway, Lambdas, output manifest in S3), or
    submit it to Ground Truth with --target aws."""
    if target == "aws":
        _start_on_aws(job_file, workteam, stack_name, job_name, manifest_uri, viewer_base_url, workers,
                      template_file, as_json)
        return
    if not job_file:
        raise click.UsageError("--job FILE is required (the CreateLabelingJob request JSON; "
                               "'dicomflow infra labeling-job' writes one)")
    from dicomflow.emulator.groundtruth import run_job

    settings = settings_from(ctx)
    template = Path(template_file).read_text() if template_file else None
    running = run_job(job_file, data_dir=settings.data_dir, workers=workers, port=port,
                      template_source=template)
    job = running.job
    console.print(f"labeling job [bold]{job.request.name}[/bold]: {len(job.objects)} data objects, "
                  f"{job.request.workers_per_object} worker(s) each; portal {running.url}")
    if running.signin_urls:
        console.print("sign-in links (shown once; also in "
                      f"{job.store.signin_path}, mode 0600):")
        for worker, url in running.signin_urls.items():
            click.echo(f"  {worker}: {url}")
    else:
        console.print(f"workers keep their sign-in links from {job.store.signin_path} (port may differ)")
    last = None
    try:
        while True:
            st = job.status()
            line = (f"{st['answers']}/{st['answersNeeded']} answers, {st['consolidated']} consolidated, "
                    f"{len(st['failed'])} failed")
            if line != last:
                console.print(line)
                last = line
            if exit_when_done and job.done:
                job.wait_idle()
                console.print(f"done: output manifest {st['outputManifest']}")
                break
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopped; answers so far are kept in S3, 'label start' again resumes the job")
    finally:
        running.stop()


def _start_on_aws(job_file: str | None, workteam: str | None, stack_name: str, job_name: str | None,
                  manifest_uri: str | None, viewer_base_url: str | None, workers: int | None,
                  template_file: str | None, as_json: bool) -> None:
    """Upload template + viewer bundle + label categories, then submit the request to Ground Truth."""
    from dicomflow.groundtruth import submit
    from dicomflow.groundtruth.labels import CHEXPERT_CLASSES
    from dicomflow.infra import stack

    if not workteam:
        raise click.UsageError("--target aws needs --workteam "
                               "arn:aws:sagemaker:REGION:ACCOUNT:workteam/private-crowd/NAME")
    request = None
    if job_file:
        if job_name or manifest_uri:
            raise click.UsageError("give either --job FILE or --job-name/--manifest, not both")
        try:
            request = json.loads(Path(job_file).read_text())
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"cannot read the request {job_file}: {exc}") from None
        if not isinstance(request, dict):
            raise click.UsageError(f"{job_file} is not a CreateLabelingJob request (a JSON object)")
    elif not (job_name and manifest_uri):
        raise click.UsageError("--target aws needs --job FILE, or --job-name NAME and --manifest s3://...")
    outputs = stack.outputs(stack_name)
    labels = list(CHEXPERT_CLASSES)
    label_set = stack.deployed_parameters(stack.describe(stack_name) or {}).get("LabelSet", "")
    if label_set.strip():
        try:
            labels = json.loads(label_set)
        except ValueError:
            raise click.UsageError(f"the stack's LabelSet parameter is not a JSON list: {label_set!r}") from None
    done = submit.submit_job(outputs, workteam, request=request, job_name=job_name, manifest_uri=manifest_uri,
                             workers=workers or 1, labels=labels, template_path=template_file or submit.UI_TEMPLATE,
                             viewer_base_url=viewer_base_url)
    for note in done.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    up = done.uploaded
    console.print(f"uploaded the worker template, {up.viewer_files} viewer files and {len(done.labels)} label "
                  f"categories under {up.template_uri.rsplit('/', 1)[0]}/; workers load the viewer from "
                  f"{up.viewer_base_url}", highlight=False)
    if as_json:
        print_json({"labelingJobArn": done.arn, "request": done.request, "uploaded": up.summary()})
    else:
        console.print(f"submitted labeling job {done.request['LabelingJobName']}: {done.arn}", highlight=False)
        click.echo(done.arn)


def _requests(data_dir: Path, job_file: str | None) -> list:
    from dicomflow.groundtruth.job_request import load_request, parse_request

    if job_file:
        return [load_request(job_file)]
    found = []
    for state in sorted((data_dir / "labeling").glob("*/state.json")):
        try:
            found.append(parse_request(json.loads(state.read_text())["request"]))
        except (ValueError, KeyError, DicomflowError):
            console.print(f"[yellow]skipping unreadable {state}[/yellow]")
    return found


@label.command("status")
@click.option("--job", "job_file", type=click.Path(dir_okay=False), default=None,
              help="The job's request JSON (default: every job started from this data dir).")
@json_option
@click.pass_context
def status(ctx: click.Context, job_file: str | None, as_json: bool) -> None:
    """Per-job progress: answers, consolidated objects, failures, output manifest."""
    from dicomflow.emulator.groundtruth import job_status

    settings = settings_from(ctx)
    rows = [job_status(r, settings.data_dir) for r in _requests(settings.data_dir, job_file)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no labeling jobs started from this data dir; run 'dicomflow label start --job FILE'")
        return
    for r in rows:
        click.echo(f"{r['job']}: {r['status']} - {r['consolidated']}/{r['objects']} objects consolidated, "
                   f"{r['answers']} answers, {len(r['failed'])} failed; {r['outputManifest']}")


@label.command("import")
@click.option("--labels", "labels_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="JSON Lines, one series a line: {StudyInstanceUID, SeriesInstanceUID, label: NIfTI path} or "
                   "{..., seg: {SeriesInstanceUID, SOPInstanceUID}} of a SEG in the PACS.")
@click.option("--structures", "structures_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON list of the label values' structures, names or {name, label, type: {value, scheme, "
                   "meaning}} (needed for NIfTI labels).")
@click.option("--to", "target", required=True, metavar="s3://BUCKET/KEY", help="Where to write the output manifest.")
@click.option("--label-attribute", default="labels", show_default=True, help="The manifest's label attribute.")
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, labels_file: str, structures_file: str | None, target: str,
               label_attribute: str, as_json: bool) -> None:
    """Bring labels you already have: NIfTI label volumes become DICOM SEGs in their studies (or SEGs already in
    the PACS are checked), listed in a Ground Truth output manifest for `dataset export`."""
    from dicomflow import safejson
    from dicomflow.dicom.structures import StructureError, parse_structures
    from dicomflow.groundtruth import label_import

    manifest.check_object_uri(target)
    structures = []
    if structures_file:
        try:
            structures = parse_structures(safejson.loads(Path(structures_file).read_text(), structures_file),
                                          where=structures_file)
        except (ValueError, StructureError) as exc:
            raise click.BadParameter(str(exc), param_hint="--structures") from None
    requests = label_import.read_requests(labels_file)
    if not structures and any("label" in line for line in requests):
        raise click.UsageError("NIfTI labels need --structures (the name of each label value)")
    conn = pacs_for(settings_from(ctx))
    with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=as_json) as progress:
        bar = progress.add_task("import", total=len(requests))
        result = label_import.import_labels(
            requests, dicomweb.connect(conn), structures, label_attribute,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total))
    if result.lines:
        manifest.write_jsonl_s3(target, result.lines)
    summary = {"to": target if result.lines else None, "lines": len(result.lines), "segsStored": result.stored,
               "segsReused": result.reused, "failures": result.failures}
    if as_json:
        print_json(summary)
    else:
        console.print(f"{len(result.lines)}/{len(requests)} series imported ({result.stored} SEG(s) stored, "
                      f"{result.reused} already there) -> {target if result.lines else 'nothing written'}",
                      highlight=False, soft_wrap=True)
        for failure in result.failures[:10]:
            console.print(f"[yellow]failed[/yellow] {failure}", highlight=False, soft_wrap=True)
    if not result.lines:
        raise label_import.LabelImportError(f"no series could be imported ({result.failures[0]})")
