"""``dicomflow route``: new studies analysed automatically (watch the PACS, status, retry, send as a modality)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import click

from dicomflow import aws
from dicomflow.cli.common import console, json_option, out, pacs_for, print_json, settings_from, value_table
from dicomflow.config import runtime
from dicomflow.routing import router

function_option = click.option("--function", "function", envvar="DICOMFLOW_ROUTER_FUNCTION", required=True,
                               help="The router Lambda (the stack's RouterFunctionArn) "
                                    "[env DICOMFLOW_ROUTER_FUNCTION].")


@click.group()
def route() -> None:
    """Auto-routing: each study that turns stable in the PACS goes to the models its rules name."""


@route.command()
@function_option
@click.option("--search-function", envvar="DICOMFLOW_SEARCH_INGEST_FUNCTION", metavar="ARN",
              help="Also deliver each stable study to the search ingestion Lambda (the stack's "
                   "SearchIngestFunctionArn): its images get search items, thumbnails and embeddings "
                   "[env DICOMFLOW_SEARCH_INGEST_FUNCTION].")
@click.option("--from-start", is_flag=True, help="Also deliver the studies already in the change log.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds between polls.")
@click.pass_context
def watch(ctx: click.Context, function: str, search_function: str | None, from_start: bool, interval: float
          ) -> None:
    """Feed the local Orthanc's stable studies to the router (and search ingestion).

    Reads Orthanc's change log and invokes the router Lambda (then the search ingestion Lambda, with
    --search-function) for each StableStudy, until Ctrl-C; the position is kept in the data dir, so a
    restart goes on where it stopped."""
    from dicomflow.dicom.orthanc import OrthancRest
    from dicomflow.routing.feed import feed_for

    settings = settings_from(ctx)
    functions = [function, *([search_function] if search_function else [])]
    feed = feed_for(settings.data_dir, OrthancRest(pacs_for(settings)), functions, runtime().routing_dlq)
    if not from_start and feed.position() == 0:
        feed.skip_to_now()
    console.print(f"watching {settings.orthanc_url} for stable studies -> {', '.join(functions)} (from change "
                  f"{feed.position()}; Ctrl-C stops)", highlight=False, soft_wrap=True)
    stop = threading.Event()
    try:
        feed.run(stop, interval)
    except KeyboardInterrupt:
        stop.set()


@route.command()
@click.option("--study", help="One StudyInstanceUID [every routed study].")
@json_option
def status(study: str | None, as_json: bool) -> None:
    """List routed analyses: pending, invoked, done, failed (why).

    An invoked async analysis is shown done or failed once its output or failure object exists."""
    rows = [router.settle(r) for r in router.records(study)]
    if as_json:
        print_json(rows)
        return
    table = value_table("study", "series", "rule", "endpoint", "model", "status", "reason")
    for r in rows:
        table.add_row(r.get("study", ""), r.get("series", ""), r.get("rule", ""), r.get("endpoint", ""),
                      r.get("model", ""), r.get("status", ""), r.get("reason", "") or "")
    out.print(table)
    counts = {s: sum(r.get("status") == s for r in rows) for s in (router.PENDING, router.INVOKED, router.DONE,
                                                                    router.FAILED)}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)


@route.command()
@function_option
@click.option("--study", help="One StudyInstanceUID [every study with a failed analysis or a dead letter].")
@json_option
def retry(function: str, study: str | None, as_json: bool) -> None:
    """Route failed analyses again; clear their dead letters.

    Invokes the router Lambda for every study with a failed analysis or a message in the dead-letter
    queue (or just --study); a dead letter goes once its analysis no longer fails."""
    letters = _dead_letters()
    studies = {study} if study else {r["study"] for r in router.records() if r.get("status") == router.FAILED} | {
        m["study"] for m in letters}
    results = []
    lam = aws.client("lambda")
    for uid in sorted(s for s in studies if s):
        resp = lam.invoke(FunctionName=function, Payload=json.dumps({"studyInstanceUID": uid, "retry": True}).encode())
        results.append(json.loads(resp["Payload"].read() or b"{}"))
    still = {r["key"] for r in router.records() if r.get("status") == router.FAILED}
    for letter in letters:
        if letter["study"] in studies and letter["key"] not in still:
            aws.client("sqs").delete_message(QueueUrl=runtime().routing_dlq, ReceiptHandle=letter["receipt"])
    if as_json:
        print_json(results)
        return
    for r in results:
        if "error" in r:
            console.print(f"error: {r['error']}", highlight=False)
            continue
        for a in r.get("analyses", []):
            console.print(f"{r['studyInstanceUID']} {a['rule']} -> {a['endpoint']}: {a['status']}"
                          f"{' (' + a['reason'] + ')' if a.get('reason') else ''}", highlight=False, soft_wrap=True)
    if not results:
        console.print("nothing to retry", highlight=False)


def _dead_letters() -> list[dict]:
    """The dead-letter queue's messages (kept invisible for a minute while this command runs)."""
    queue = runtime().routing_dlq
    if not queue:
        return []
    sqs = aws.client("sqs")
    found = []
    while True:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if not got:
            return found
        for m in got:
            body = json.loads(m["Body"])
            found.append({"study": (body.get("event") or {}).get("studyInstanceUID"), "key": body.get("key"),
                          "receipt": m["ReceiptHandle"]})


@route.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--called-aet", default="DICOMFLOW", show_default=True, help="The PACS's AE title.")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], called_aet: str) -> None:
    """Send DICOM files or folders to the PACS by C-STORE (a modality)."""
    import pydicom

    from dicomflow.dicom import dimse

    settings = settings_from(ctx)
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()))]
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f))
        except (pydicom.errors.InvalidDicomError, OSError) as exc:
            raise click.BadParameter(f"{f} is not a DICOM file ({exc})", param_hint="PATHS") from None
    sent = dimse.send(datasets, settings.host, settings.orthanc_dicom_port, settings.modality_aet, called_aet,
                      settings.data_dir)
    console.print(f"sent {sent} instance(s) to {called_aet}@{settings.host}:{settings.orthanc_dicom_port} as "
                  f"{settings.modality_aet}", highlight=False)


@route.command()
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--put", "put_uri", help="Upload it there once it is valid (the stack's RoutingRulesUri).")
@json_option
def rules(rules_file: Path, put_uri: str | None, as_json: bool) -> None:
    """Check a rules file (line and problem of any error); --put uploads it."""
    from dicomflow.routing.rules import describe, load_rules

    parsed = load_rules(rules_file)
    if put_uri:
        aws.write(put_uri, rules_file.read_bytes(), "application/yaml")
    if as_json:
        print_json({"rules": describe(parsed.rules), "uploaded": put_uri})
        return
    for r in describe(parsed.rules):
        console.print(f"{r['name']}: -> {r['endpoint']}{' (' + r['targetModel'] + ')' if r['targetModel'] else ''}"
                      f" outputs {', '.join(r['outputs'])}", highlight=False)
    if put_uri:
        console.print(f"uploaded to {put_uri}", highlight=False, soft_wrap=True)
