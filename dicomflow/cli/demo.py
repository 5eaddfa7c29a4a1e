"""``dicomflow demo``: start the local cloud and run the whole loop (see :mod:`dicomflow.demo.loop`)."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dicomflow.cli.common import console, json_option, make_console, pacs_for, print_json, settings_from, value_table
from dicomflow.demo import loop


class RichStep(loop.Step):
    def __init__(self, progress: Progress, task: Any) -> None:
        self.progress, self.task = progress, task

    def update(self, completed: float | None = None, total: float | None = None, note: str | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if completed is not None:
            kwargs["completed"] = completed
        if total is not None:
            kwargs["total"] = total
        if note is not None:
            kwargs["note"] = note[:60]
        self.progress.update(self.task, **kwargs)

    def log(self, message: str) -> None:
        self.progress.console.print(f"  {message}", highlight=False, soft_wrap=True)


class RichHooks(loop.Hooks):
    """One bar (or spinner, when the size is unknown) per step, kept on screen with its elapsed time."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    @contextmanager
    def step(self, name: str, total: float | None = None) -> Iterator[loop.Step]:
        task = self.progress.add_task(name, total=total, note="")
        try:
            yield RichStep(self.progress, task)
        except BaseException:
            self.progress.update(task, description=f"[red]{name} (failed)")
            raise
        done = self.progress.tasks[task]
        self.progress.update(task, total=done.total or 1, completed=done.total or 1, note="",
                             description=f"[green]{name}")
        self.progress.stop_task(task)


@contextmanager
def _logs_to(path: Path) -> Iterator[Console]:
    """Send fds 1 and 2 (SDK, training and serving output) and Python logging to ``path`` for the run;
    yields a console on a copy of the original stderr, for the progress bars.

    The root logger gets a file handler first, so the SDK's import-time ``logging.basicConfig`` (in
    ``sagemaker.experiments``) finds one and does not add a handler of its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    with open(path, "ab") as log:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield make_console(file=terminal, stderr=True)
        finally:
            root.removeHandler(handler)
            handler.close()
            root.setLevel(old_level)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


@click.command("demo")
@click.option("--size", type=click.Choice(loop.SIZES), default="full", show_default=True,
              help="full: the default demo; small: the end-to-end test's sizes (a few minutes).")
@click.option("--interactive", is_flag=True, help="Stop at labeling and wait for people to label in the portal.")
@click.option("--seed", "seed_value", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed of the synthetic studies and the simulated annotators.")
@json_option
@click.pass_context
def demo(ctx: click.Context, size: str, interactive: bool, seed_value: int, as_json: bool) -> None:
    """Run the whole loop end to end on the local cloud and print a summary.

    up, seed, label (3 simulated annotators in headless Chromium, or people with --interactive),
    export, train both models with estimator.fit, deploy async endpoints (autoscaled from zero), infer on
    held-out studies, and run the chest model over them once more as a batch transform job.
    Re-running resumes finished steps."""
    from dicomflow.emulator.cloud.cloud import LocalCloud
    from dicomflow.emulator.cloud.moto import client_environment

    settings = settings_from(ctx)
    config = loop.DemoConfig.preset(size, interactive=interactive, seed=seed_value)
    with console.status("starting the local cloud…"):
        LocalCloud(settings).up()
    os.environ.update({**client_environment(settings), "DICOMFLOW_HOME": str(settings.data_dir)})
    for key in ("DICOMFLOW_PACS_URL", "DICOMFLOW_PACS_SECRET_ARN", "AWS_PROFILE"):
        os.environ.pop(key, None)  # the demo uses the local PACS and the emulator only
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    dctx = loop.DemoContext(settings=settings, pacs=pacs_for(settings), config=config)
    log_path = settings.data_dir / "demo" / f"{config.tag}.log"
    console.print(f"dicomflow demo ({size}): local cloud in {settings.data_dir}; logs in {log_path}",
                  highlight=False)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}"))
    with _logs_to(log_path) as terminal, Progress(*columns, console=terminal, transient=False, redirect_stdout=False,
                                                                    redirect_stderr=False) as progress:
        results = loop.run(dctx, RichHooks(progress))
    if as_json:
        print_json(_jsonable(results))
        return
    show_summary(results, settings)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _viewer_links(r: dict) -> list[tuple[str, str, str]]:
    """(what, study, link) for each study with results: its viewer link, else (no viewer step) Orthanc
    Explorer's page of it."""
    links = (r.get("viewer") or {}).get("links", {})
    rows = []
    for s in r.get("inference", {}).get("studies", []):
        kind = "SR + SEG study" if s["task"] == "segmentation3d" else "SR study"
        rows.append((kind, s["StudyInstanceUID"], links.get(s["StudyInstanceUID"]) or s["orthancStudy"]))
    return rows


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _panel(title: str, text: str, command: str | None = None) -> None:
    """One section of the summary: a titled box whose text is printed as it is, then the ``command`` that does
    the same by hand, whole on its own line(s)."""
    console.print(Panel.fit(text, title=title, border_style="cyan"), highlight=False)
    if command:
        console.print(command, soft_wrap=True, highlight=False)


def show_summary(r: dict[str, Any], settings: Any) -> None:
    """The rich summary: labels and agreement, AUROC, Dice, volumes, where the SR/SEG landed, URLs."""
    lab = r["labeling"]
    _panel("labeling",
        f"{lab['consolidated']} images consolidated from 3 annotators; mean per-class agreement "
        f"{_fmt(lab['meanAgreement'], '.1%')}; {lab['unanimousObjects']} unanimous; majority = seeded truth on "
        f"{lab['majorityEqualsTruth']}/{lab['consolidated']}\noutput manifest {lab['outputManifest']}")
    if "outlining" in r:
        ol = r["outlining"]
        _panel("segmentation labeling",
            f"{ol['series']} hippocampus series outlined by the 3 annotators in the worker template (a shaky hand, "
            f"missed slices); the consolidation fused them into one SEG each: Dice to the seeded truth "
            f"{_fmt(ol['meanDiceToTruth'])}, inter-annotator Dice {_fmt(ol['meanInterAnnotatorDice'])}; the other "
            f"training series' labels were imported\noutput manifest {ol['outputManifest']}")
    tr = r["training"]
    cls_m, seg_m = tr["classification2d"].get("metrics") or {}, tr["segmentation3d"].get("metrics") or {}
    inf = r["inference"]
    metrics = value_table("metric", "value", title="models")
    metrics.add_row("classification2d validation mean AUROC (best)", _fmt(cls_m.get("best_metric")))
    metrics.add_row("classification2d held-out mean AUROC", _fmt(inf.get("heldOutMeanAuroc")))
    metrics.add_row("segmentation3d validation mean Dice (best)", _fmt(seg_m.get("best_metric")))
    metrics.add_row("segmentation3d test mean Dice", _fmt(seg_m.get("test_mean_dice")))
    metrics.add_row("segmentation3d held-out mean Dice (the SEGs in the PACS)", _fmt(inf.get("heldOutMeanDice")))
    for task, res in tr.items():
        metrics.add_row(f"{task} model", res["model_artifact"])
        reg = (r.get("registry") or {}).get(task)
        if reg:
            metrics.add_row(f"{task} registered", f"{reg['group']} version {reg['version']} ({reg['status']})")
        metrics.add_row(f"{task} model card", res["model_artifact"] + " → model_card.md")
        if res.get("curves"):
            metrics.add_row(f"{task} training curves", res["curves"]["archive"] + " → " + ", ".join(
                res["curves"]["files"]))
    console.print(metrics)
    vols = value_table("held-out study", "structure", "true mm³", "predicted mm³", "unlike training?",
                       title="hippocampal volumes")
    places = value_table("study", "model", "SR series", "SEG series", "PDF report series",
                         title="results stored in the PACS")
    for s in inf["studies"]:
        hippo = s["task"] == "segmentation3d"
        if hippo:
            flag = {True: "yes: " + "; ".join(s.get("qualityReasons", [])), False: "no"}.get(
                s.get("outOfDistribution"), "not checked")
            for name, true in s["trueVolumesMm3"].items():
                vols.add_row(s["StudyInstanceUID"], name, f"{true:.0f}",
                             _fmt(s["predictedVolumesMm3"].get(name), ".0f"), flag if name == "total" else "")
        out = s["outputs"]
        places.add_row(s["StudyInstanceUID"], "hippocampus" if hippo else "chest",
                       (out.get("sr") or {}).get("SeriesInstanceUID") or "-",
                       (out.get("seg") or {}).get("SeriesInstanceUID") or "-",
                       (out.get("pdf") or {}).get("SeriesInstanceUID") or "-")
    console.print(vols)
    console.print(places)
    scale = value_table("endpoint", "instances (now / desired)", "autoscaling", "backlog (max, last minute)",
                        title="endpoints")
    for row in r.get("endpointStatus", []):
        scale.add_row(row["endpoint"], f"{row.get('instances')} / {row.get('desiredInstances')}",
                      f"{row.get('minInstances')}..{row.get('maxInstances')}" if "maxInstances" in row else "fixed",
                      _fmt(row.get("backlog"), "g"))
    console.print(scale)
    if "activeLearning" in r:
        al = r["activeLearning"]
        _panel("active learning",
            f"next chest round: {al['chosen']} of the {al['scored']} images no job has labeled, chosen by "
            f"{al['strategy']} (mean score {al['scoreMean']['chosen']:.3f} against {al['scoreMean']['pool']:.3f}); "
            f"the model's mean probability error on them {_fmt(al['meanErrorChosen'], '.3f')} against "
            f"{_fmt(al['meanErrorRest'], '.3f')} on the others; they show the model {al['modelErrorsFound']} of its "
            f"errors, which a random pick needs {_fmt(al['randomLabelsForAsManyErrors'], '.1f')} labels for: "
            f"{_fmt(al['labelsSaved'], '.1f')} labels saved at equal errors found\nmanifest {al['manifest']}",
            al["command"])
    if "activeLearningSeries" in r:
        als = r["activeLearningSeries"]
        _panel("active learning for the segmenter",
            f"next outlining round: {als['chosen']} of the {als['scored']} MR series no job has labeled, chosen by "
            f"the segmenter's {als['strategy']} over each series (mean {als['scoreMean']['chosen']:.3f} against "
            f"{als['scoreMean']['pool']:.3f}); its held-out Dice on them {_fmt(als['meanDiceChosen'], '.3f')} "
            f"against {_fmt(als['meanDiceRest'], '.3f')} on the others\nmanifest {als['manifest']}", als["command"])
    if "secondRound" in r:
        sr = r["secondRound"]
        _panel("second labeling round, with AI pre-labels",
            f"{sr['objects']} chosen images labeled by the 3 annotators with the approved model's suggestions (real-"
            f"time endpoint {sr['endpoint']}, asked by the pre-label Lambda; deleted after the round): "
            f"{sr['withSuggestions']} tasks had suggestions; suggested classes kept by the consolidated labels "
            f"{_fmt(sr['acceptance'], '.1%')}; Accept clicked in {sr['acceptClicks']} of {sr['reviews']} reviews; "
            f"people's labels differ from the suggestion in {sr['changedBySomeone']} of them\n"
            f"output manifest {sr['outputManifest']}")
    if "routing" in r:
        ro = r["routing"]
        _panel("auto-routing",
            f"{ro['studies']} held-out MR series sent by C-STORE were analysed by the router with no inference "
            f"call (rules {ro['rules']}; `dicomflow route status` lists each analysis), and their "
            f"{ro.get('searchItems', 0)} images have search items and thumbnails (the search ingestion Lambda "
            "got the same stable-study events)")
    if "multiModel" in r:
        mm = r["multiModel"]
        _panel("multi-model endpoint",
            f"{mm['endpoint']} serves both models from {mm['prefix']}: " + "; ".join(
                f"{a['target']} on one held-out study, {a['maxDifferenceFromAsync']:.1e} from the async answer"
                for a in mm["answers"].values()))
    if "reports" in r:
        rep = r["reports"]
        _panel("radiology reports",
            f"{rep['reports']} chest reports analysed by the rule engine (InferICD10CM's answer shape); "
            f"{rep['agreement']:.1%} of the findings they mention read with the status they were written with, "
            f"{rep['unwrittenFindings']} found that were not written\ntop ICD-10-CM codes asserted: " + ", ".join(
                f"{c['code']} {c['description']} ({c['reports']})" for c in rep["topCodes"]) +
            f"\nreport index {rep['index']}: {rep['deniedEffusion']} reports deny a pleural effusion "
            "(dicomflow search reports \"pleural effusion\" --code J90 --status negative)")
    if "ingestion" in r:
        ing = r["ingestion"]
        _panel("search ingestion",
            f"{ing['images']} held-out chest images and {ing['reports']} reports put into the ingest bucket became "
            f"items of {ing['table']} (the search ingestion Lambda); {len(ing['thumbnails'])} thumbnails in "
            f"{ing['output']}thumbnails/; {ing['embedded']} images embedded by the Lambda through the chest "
            f"endpoint and written by it into the image index ({ing['indexedByLambda']} of them), with the "
            f"same vectors as the endpoint path (largest difference {ing['maxVectorDifference']:.1e})\n"
            f"backfill: dicomflow search ingest --from {ing['prefix']} --stack {ing['stack']}")
    if "imageSearch" in r:
        im = r["imageSearch"]
        first = im["queries"][0]
        _panel("similar-image search",
            f"{im['images']} chest images embedded by {im['model']['name']} {im['model']['version']} in "
            f"{im['index']}; of the {im['k']} images most like each held-out one, {im['meanSharing']:.1f} share a "
            f"true finding with it (by chance {im['chanceSharing']:.1f})\n"
            f"dicomflow search similar --study {first['study']}   (true findings: {', '.join(first['truth'])})")
    if "searchPage" in r:
        sp = r["searchPage"]
        _panel("search page",
            f"{sp['signIn']}  signs in demo-radiologist (reports, words, images); demo-researcher sees codes and "
            f"images only; passwords in {sp['credentials']}\n"
            f"as the page asks: {sp['effusionReports']} reports mention an effusion ({sp['deniedEffusion']} deny "
            f"it); {sp['neighbours']} images like study {sp['similarStudy']}, {sp['thumbnailLinks']} with a "
            f"5-minute thumbnail link; a researcher's word search is refused (HTTP {sp['researcherWordSearch']})\n"
            "users: dicomflow users ls --stack " + r.get("stack", {}).get("name", "dicomflow-demo"))
    if "viewer" in r:
        v, look = r["viewer"], r["viewer"]["look"]
        _panel("viewer",
            f"study {v['study']} opened in OHIF from its link: first image drawn after {look['first_image_s']:.1f} s, "
            f"the SEG overlaid after {look['overlay_s']:.1f} s ({', '.join(look['segments'])}); none of the "
            f"{look['responses']} answers the page got holds the PACS password\n"
            f"the links below work once each, for {v['validMinutes']} minutes; new ones: dicomflow view --study UID "
            "--open")
    if "batch" in r:
        b = r["batch"]
        _panel("batch transform",
            f"{b['transformJobName']} {b['status']}: {b['studies']} chest studies in {b['seconds']:.0f} s; "
            f"largest difference from the async endpoint's probabilities {b['maxDifferenceFromAsync']:.1e}\n"
            f"outputs {b['output']}")
    secs = r.get("seconds", {})
    console.print(Panel.fit(
        f"Orthanc web UI   {r['orthanc']}  (user and password in {settings.secrets_dir}/orthanc.json)\n"
        + (f"OHIF viewer      {r['viewer']['url']}  (study links below; new ones: dicomflow view --study UID)\n"
           if "viewer" in r else "") +
        (f"search page      {r['searchPage']['signIn']}  (passwords in {r['searchPage']['credentials']})\n"
         if "searchPage" in r else "") +
        f"worker portal    {lab['portal']} (while a job runs: dicomflow label start --job {lab['request']})\n"
        f"total {secs.get('total', 0):.0f} s: " + ", ".join(f"{k} {v:.0f}s" for k, v in secs.items() if k != "total"),
        title="where to look", border_style="green"), highlight=False)
    for kind, study, link in _viewer_links(r):  # whole, outside any box: a link must copy as one line
        console.print(f"{kind} {study}\n  {link}", soft_wrap=True, highlight=False)
