"""The whole loop as a library: PACS -> labeling -> training -> async inference -> SR/SEG back in the PACS.

Each step is a function over a :class:`DemoContext` (settings, PACS connection, config, what earlier
steps produced) and is idempotent where it can be: the stack deploy is a no-op the second time, seeding
skips studies the PACS holds, the labeling job resumes from its S3 state, export skips staged objects.
The local cloud itself is started by the caller (``dicomflow demo`` in :mod:`dicomflow.cli.demo`):
this module only talks to AWS APIs and the PACS, so it never imports :mod:`dicomflow.emulator.sagemaker_sdk`.

Three simulated annotators (:mod:`.annotators`) label every chest image in Debian's headless Chromium
through the real worker portal and template, so the consolidation Lambda has real disagreement to vote on.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dicomflow import aws
from dicomflow.config import Settings
from dicomflow.credentials import PacsConnection
from dicomflow.demo import seed as seeding
from dicomflow.demo.annotators import (
    LABEL_SET,
    annotate_in_browser,
    annotator_labels,
    expected_majority,
    review_in_browser,
)
from dicomflow.demo.synthetic import CHEST_CLASSES, HIPPOCAMPUS_STRUCTURES, NO_FINDING
from dicomflow.dicom import dicomweb
from dicomflow.dicom.orthanc import instance_id, orthanc_id
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import manifest
from dicomflow.paths import image_index_dir, report_index_path
from dicomflow.search.reports import RuleEngine, report_findings
from dicomflow.training.channel import MANIFEST, channel_uri

SEG_LABELS = [s["name"] for s in HIPPOCAMPUS_STRUCTURES]
SIZES = ("small", "full")
LOCAL_GATEWAY = "http://127.0.0.1/wado"
#: seconds after the held-out series are sent before the demo asks the router itself (see route_new_studies)
REDELIVER_AFTER_S = 20.0


class DemoError(DicomflowError):
    """A demo step failed; the message names the step and how to go on."""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and knobs of one demo run (see :meth:`preset`)."""

    size: str = "full"
    chest_train: int = 48
    chest_holdout: int = 16
    chest_size: int = 64
    hippo_train: int = 40
    hippo_holdout: int = 4
    hippo_shape: tuple[int, int, int] = (32, 48, 48)
    hippo_outlined: int = 2  # training series the simulated annotators outline (the others' labels are imported)
    cls_epochs: int = 8
    cls_batch: int = 8
    seg_epochs: int = 30
    seg_batch: int = 2
    annotators: int = 3
    flip_rates: tuple[float, ...] = (0.0, 0.1, 0.2)
    seed: int = 0
    stack: str = "dicomflow-demo"
    label_attribute: str = "findings"
    interactive: bool = False
    result_timeout_s: float = 900.0
    max_instances: int = 2  # each endpoint autoscales 0..max_instances on its backlog
    scale_in_cooldown: int = 300

    @classmethod
    def preset(cls, size: str = "full", **overrides: Any) -> DemoConfig:
        """``full`` (the default demo, well above-chance AUROC) or ``small`` (the end-to-end test)."""
        if size not in SIZES:
            raise DemoError(f"--size {size!r}: use one of {', '.join(SIZES)}")
        base = cls(size=size)
        if size == "small":
            base = replace(base, chest_train=16, chest_holdout=4, chest_size=64, hippo_train=12, hippo_holdout=3,
                           hippo_shape=(24, 40, 40), hippo_outlined=1, cls_epochs=2, cls_batch=4, seg_epochs=20,
                           seg_batch=2)
        return replace(base, **overrides)

    @property
    def tag(self) -> str:
        """Names of this run's job, channels and endpoints (one per size and seed, so re-runs resume)."""
        return f"demo-{self.size}-s{self.seed}"


@dataclass
class DemoContext:
    """What the steps share: where things are, and what earlier steps produced."""

    settings: Settings
    pacs: PacsConnection
    config: DemoConfig
    outputs: dict[str, str] = field(default_factory=dict)
    chest: list[seeding.SeedStudy] = field(default_factory=list)
    hippo: list[seeding.SeedStudy] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def chest_train(self) -> list[seeding.SeedStudy]:
        return self.chest[: self.config.chest_train]

    @property
    def chest_holdout(self) -> list[seeding.SeedStudy]:
        return self.chest[self.config.chest_train:]

    @property
    def hippo_train(self) -> list[seeding.SeedStudy]:
        return self.hippo[: self.config.hippo_train]

    @property
    def hippo_holdout(self) -> list[seeding.SeedStudy]:
        return self.hippo[self.config.hippo_train:]


class Step:
    """Progress of one step; the CLI's implementation draws a rich bar, the default does nothing."""

    def update(self, completed: float | None = None, total: float | None = None, note: str | None = None) -> None:
        """Set progress (``completed`` of ``total``) and/or a short note."""

    def log(self, message: str) -> None:
        """A line worth keeping on screen (URLs, warnings)."""


class Hooks:
    """How steps report; subclass to show progress. ``step(name)`` is used as a context manager."""

    @contextmanager
    def step(self, name: str, total: float | None = None) -> Iterator[Step]:
        yield Step()


# ---- 1. infrastructure ------------------------------------------------------------------------------
def deploy_stack(ctx: DemoContext, hooks: Hooks) -> dict[str, str]:
    """Deploy the CloudFormation stack (Lambdas, buckets, roles, secrets, topics); a no-op when unchanged."""
    from dicomflow.infra import deployment

    with hooks.step("deploy the stack (Lambdas, buckets, roles)") as st:
        # the local portal serves workers the signed URLs from its own origin (the host is not signed)
        # the pre-label Lambda asks the real-time endpoint serving the chest group's approved version (the second
        # labeling round deploys one); before that, tasks go out saying there are no suggestions
        params = {"LabelSet": json.dumps(LABEL_SET), "GatewayUrl": LOCAL_GATEWAY,
                  "SearchEmbeddingEndpoint": endpoint_name(ctx, "classification2d"),
                  "PreLabelModelGroup": endpoint_name(ctx, "classification2d")}
        done = deployment.run(ctx.config.stack, params,
                              on_event=lambda e: st.update(note=f"{e['LogicalResourceId']} {e['ResourceStatus']}"))
    ctx.outputs = dict(done.result.outputs)
    ctx.results["stack"] = {"name": ctx.config.stack, "action": done.result.action}
    return ctx.outputs


# ---- 2. seed ----------------------------------------------------------------------------------------
def seed_studies(ctx: DemoContext, hooks: Hooks) -> seeding.SeedResult:
    """Store the chest images and the training hippocampus series in the PACS by STOW-RS; the held-out
    hippocampus series come later, from a modality, once the models serve (:func:`route_new_studies`)."""
    cfg = ctx.config
    studies = seeding.plan(chest=cfg.chest_train + cfg.chest_holdout, hippocampus=cfg.hippo_train + cfg.hippo_holdout,
                           seed=cfg.seed, real=False, chest_size=cfg.chest_size, hippocampus_shape=cfg.hippo_shape)
    ctx.chest = [s for s in studies if s.kind == "chest"]
    ctx.hippo = [s for s in studies if s.kind == "hippocampus"]
    from_modality = {id(s) for s in ctx.hippo_holdout}
    total = sum(len(s.datasets) for s in studies if id(s) not in from_modality)
    with hooks.step("seed the PACS", total=total) as st:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            st.update(completed=done[0])

        result = seeding.seed(dicomweb.connect(ctx.pacs), ctx.settings.data_dir,
                              [s for s in studies if id(s) not in from_modality], progress=advance)
    ctx.results["seed"] = {**result.as_dict(), "chest": [len(ctx.chest_train), len(ctx.chest_holdout)],
                           "hippocampus": [len(ctx.hippo_train), len(ctx.hippo_holdout)]}
    return result


def analyse_reports(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Run the report engine over the seeded chest reports into the report index (what ``dicomflow search
    add-reports`` does), then from the index: the top ICD-10-CM codes of what the reports assert (negated,
    uncertain and hypothetical mentions left out) and how many deny a pleural effusion; and, for scoring the
    demo, the share of findings whose status the engine read as the report generator wrote it."""
    from dicomflow.search.report_index import ReportIndex

    engine, agree, extra, total = RuleEngine(), 0, 0, 0
    studies = [s for s in ctx.chest if "report_mentions" in s.entry]
    where = report_index_path(ctx.settings.data_dir)
    with hooks.step("analyse the chest reports (entities, negation, ICD-10-CM)", total=len(studies)) as st, \
            ReportIndex.open(where) as ix:
        for k, study in enumerate(studies, 1):
            record = json.loads((seeding.reports_dir(ctx.settings.data_dir) / f"{study.study_uid}.json").read_text())
            result = engine.infer_icd10cm(record["text"])
            ix.add(study.study_uid, record["text"], result, accession=record.get("AccessionNumber"),
                   study_date=record.get("StudyDate"))
            said, truth = report_findings(result), study.entry["report_mentions"]
            agree += sum(said.get(f) == status for f, status in truth.items())
            extra += len(set(said) - set(truth))
            total += len(truth)
            st.update(completed=k)
        top = [f for f in ix.facets(status="positive", limit=100) if f["mentioned"]][:5]
        denied = ix.search("pleural effusion", codes=["J90"], status="negative", limit=1).total
        indexed = len(ix)
    ctx.results["reports"] = {
        "reports": len(studies), "agreement": agree / total if total else None, "unwrittenFindings": extra,
        "index": str(where), "indexed": indexed, "deniedEffusion": denied,
        "topCodes": [{"code": f["code"], "description": f["description"], "reports": f["reports"]} for f in top]}
    return ctx.results["reports"]


# ---- 3. labeling ------------------------------------------------------------------------------------
def _uri(key: str, ctx: DemoContext, suffix: str) -> str:
    return ctx.outputs[key].rstrip("/") + "/" + suffix


def write_input_manifest(ctx: DemoContext) -> str:
    """The labeling job's input manifest: one Orthanc instance ID per training chest image (held-out left out)."""
    lines = [manifest.input_line(instance_id(s.entry["PatientID"], s.entry["StudyInstanceUID"],
                                             s.entry["SeriesInstanceUID"], s.entry["SOPInstanceUID"]))
             for s in ctx.chest_train]
    uri = _uri("LabelingInputUri", ctx, f"{ctx.config.tag}/input.manifest")
    manifest.write_jsonl_s3(uri, lines)
    return uri


def labeling_request(ctx: DemoContext, manifest_uri: str) -> dict[str, Any]:
    """The CreateLabelingJob request from the stack outputs, worker template and label config uploaded."""
    from dicomflow.groundtruth import job_request, submit

    submit.upload_labeling_config(ctx.outputs, LABEL_SET)
    return job_request.labeling_job_request(ctx.outputs, ctx.config.tag, manifest_uri,
                                             label_attribute_name=ctx.config.label_attribute,
                                             workers_per_object=ctx.config.annotators)


@dataclass
class LabelingRound:
    """A finished labeling job of the demo: its consolidated output lines and what the annotators answered."""

    tag: str
    portal: str
    request_file: Path
    output_manifest: str
    lines: list[dict[str, Any]]
    answers: dict[str, list[Any]]


Team = Callable[[Callable[[str], str], list[str], int, Callable[[int, int], None]], dict[str, list[Any]]]


def label_round(ctx: DemoContext, hooks: Hooks, request: dict[str, Any], doing: str, team: Team) -> LabelingRound:
    """Run one labeling job in the worker portal: ``team(signin_url, workers, total, on_progress)`` answers its
    tasks (the simulated annotators), or people do with ``--interactive``; then the consolidation Lambda. A job
    that does not complete raises :class:`DemoError` with its first consolidation error."""
    from dicomflow.emulator.groundtruth import run_job

    cfg, tag = ctx.config, request["LabelingJobName"]
    job_file = ctx.settings.data_dir / "demo" / f"{tag}-labeling-job.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(request, indent=2) + "\n")
    running = run_job(request, data_dir=ctx.settings.data_dir, workers=cfg.annotators, pacs=ctx.pacs)
    workers = [f"worker-{a + 1}" for a in range(cfg.annotators)]
    answers: dict[str, list[Any]] = {}
    try:
        job = running.job
        total = len(job.objects) * cfg.annotators
        if cfg.interactive:
            with hooks.step(f"waiting for people to {doing} in the portal {running.url}", total=total) as st:
                for worker in workers:
                    st.log(f"sign in as {worker}: {running.signin_url(worker)}")
                while not job.done:
                    s = job.status()
                    st.update(completed=s["answers"], total=s["answersNeeded"])
                    time.sleep(1)
        elif not job.done:
            with hooks.step(f"{cfg.annotators} annotators {doing} in headless Chromium", total=total) as st:
                st.log(f"worker portal {running.url}  (request: {job_file})")
                answers = team(running.signin_url, workers, total, lambda d, t: st.update(completed=d, total=t))
        with hooks.step(f"consolidation (post-label Lambda) of {tag}"):
            job.wait_idle(timeout=300)
            status = job.status()
    finally:
        running.stop()
    if status["status"] != "Completed":
        errors = status["consolidationErrors"]
        first = (f"; consolidation failed for {len(errors)} objects, first: {next(iter(errors.values()))}"
                 if errors else "")
        raise DemoError(f"labeling job {tag} is {status['status']} ({len(status['failed'])} failed objects"
                        f"{first}); see 'dicomflow label status --job {job_file}'")
    return LabelingRound(tag, running.url, job_file, status["outputManifest"],
                         manifest.read_jsonl_s3(status["outputManifest"]), answers)


def run_labeling(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Input manifest -> labeling job with the worker portal -> three annotators -> consolidated output."""
    cfg = ctx.config
    with hooks.step("labeling job: input manifest and request"):
        manifest_uri = write_input_manifest(ctx)
        request = labeling_request(ctx, manifest_uri)
    truth = {s.entry["SOPInstanceUID"]: list(s.entry["labels"]) for s in ctx.chest_train}
    done = label_round(ctx, hooks, request, "label the chest images", lambda url, workers, total, progress:
                       annotate_in_browser(url, workers, lambda a, sop: annotator_labels(
                           truth.get(sop, [NO_FINDING]), a, sop, cfg.seed, cfg.flip_rates), total, progress))
    summary = summarize_labels(done.lines, cfg.label_attribute, truth, done.answers)
    ctx.results["labeling"] = {"job": cfg.tag, "portal": done.portal, "request": str(done.request_file),
                               "inputManifest": manifest_uri, "outputManifest": done.output_manifest, **summary}
    return ctx.results["labeling"]


def summarize_labels(lines: list[dict[str, Any]], attr: str, truth: dict[str, list[str]],
                     answers: dict[str, list[list[str]]]) -> dict[str, Any]:
    """Consolidated objects, mean per-class agreement, and how often the majority equals truth / the votes."""
    agreements, match_truth, match_votes, unanimous = [], 0, 0, 0
    for line in lines:
        content = line.get(attr) or {}
        sop = (content.get("dicom") or {}).get("SOPInstanceUID")
        labels = content.get("labels") or []
        classes = content.get("classes") or {}
        agreements.extend(float(v.get("agreement", 0)) for v in classes.values())
        unanimous += all(float(v.get("agreement", 0)) in (0.0, 1.0) for v in classes.values())
        if sop in truth:
            match_truth += sorted(labels) == sorted(truth[sop])
        if sop in answers:
            match_votes += sorted(labels) == sorted(expected_majority(answers[sop]))
    return {"consolidated": len(lines), "meanAgreement": float(np.mean(agreements)) if agreements else None,
            "unanimousObjects": unanimous, "majorityEqualsTruth": match_truth,
            "majorityEqualsVotes": match_votes if answers else None}


# ---- 4. datasets ------------------------------------------------------------------------------------
def outline_hippocampus(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Segmentation labeling: a series-level labeling job over the first training hippocampus series, outlined
    by the simulated annotators in the real template in headless Chromium (from the seeded truth, with a shaky
    hand and now and then a missed slice); the consolidation Lambda fuses them into one DICOM SEG per series.
    The demo then reads the truth to say how close the fused SEGs came."""
    from dicomflow.demo.annotators import annotator_outlines, outline_in_browser
    from dicomflow.dicom.orthanc import series_id
    from dicomflow.groundtruth import job_request
    from dicomflow.groundtruth.labels import LINE_LABELS, label_category_config

    cfg = ctx.config
    series = ctx.hippo_train[:cfg.hippo_outlined]
    tag = f"{cfg.tag}-outlines"
    lines = [manifest.input_line(series_id(s.entry["PatientID"], s.study_uid, s.entry["SeriesInstanceUID"]),
                                 **{LINE_LABELS: HIPPOCAMPUS_STRUCTURES}) for s in series]
    manifest_uri = _uri("LabelingInputUri", ctx, f"{tag}/input.manifest")
    manifest.write_jsonl_s3(manifest_uri, lines)
    categories = _uri("LabelingInputUri", ctx, f"{tag}/categories.json")
    aws.write(categories, json.dumps(label_category_config(SEG_LABELS)).encode(), "application/json")
    request = job_request.labeling_job_request(
        ctx.outputs, tag, manifest_uri, label_attribute_name="hippocampus", label_category_config_uri=categories,
        workers_per_object=cfg.annotators, title="Outline the hippocampus",
        description="Outline the anterior and posterior hippocampus on every slice where they show")
    truth = {s.entry["SeriesInstanceUID"]: s.label_volume for s in series}
    done = label_round(ctx, hooks, request, f"outline {len(series)} hippocampus series",
                       lambda url, workers, total, progress: outline_in_browser(url, workers, lambda a, task: (
                           annotator_outlines(truth[task["seriesInstanceUID"]],
                                              [i["sopInstanceUID"] for i in task["instances"]], SEG_LABELS,
                                              seed=cfg.seed * 100 + a, jitter_px=0.7 * a,
                                              miss_rate=0.1 if a else 0.0)), total, progress))
    out_lines = done.lines
    by_series = {s.entry["SeriesInstanceUID"]: s for s in series}
    dice, agreement = [], []
    for line in out_lines:
        content = line["hippocampus"]
        if "segmentation" not in content:
            raise DemoError(f"outlined series {content.get('dicom', {}).get('SeriesInstanceUID')} has no SEG: "
                            f"{content.get('segmentationError', 'no outlines')}")
        per = stored_seg_dice(ctx, by_series[content["dicom"]["SeriesInstanceUID"]], content["segmentation"])
        dice.append(float(np.mean(list(per.values()))))
        agreement.append(content["segmentationAgreement"]["object"])
    ctx.results["outlining"] = {
        "job": tag, "series": len(out_lines), "outputManifest": done.output_manifest, "lines": out_lines,
        "meanDiceToTruth": float(np.mean(dice)) if dice else None,
        "meanInterAnnotatorDice": float(np.mean([a for a in agreement if a is not None])) if agreement else None}
    return ctx.results["outlining"]


def import_hippocampus_labels(ctx: DemoContext) -> str:
    """The seeder's label volumes of the training hippocampus series that nobody outlined, brought in the way any
    user brings their own (``dicomflow label import`` stores them as DICOM SEGs in the studies), and one output
    manifest with the outlined series' lines: the segmentation channel's labels."""
    outlined = (ctx.results.get("outlining") or {}).get("lines", [])
    done = {line["hippocampus"]["dicom"]["SeriesInstanceUID"] for line in outlined}
    rest = [s for s in ctx.hippo_train if s.entry["SeriesInstanceUID"] not in done]
    lines = [*outlined, *seeding.store_label_segs(dicomweb.connect(ctx.pacs), rest)]
    uri = hippocampus_labels_uri(ctx)
    manifest.write_jsonl_s3(uri, lines)
    return uri


def hippocampus_labels_uri(ctx: DemoContext) -> str:
    """The output manifest of every training hippocampus series' labels (outlined or imported)."""
    return _uri("LabelingOutputUri", ctx, f"{ctx.config.tag}-hippocampus/manifests/output/output.manifest")


def export_datasets(ctx: DemoContext, hooks: Hooks) -> dict[str, str]:
    """``dataset export`` of the chest output manifest (classification2d) and the hippocampus series."""
    from dicomflow.training.export import export_dataset

    tag = ctx.config.tag
    jobs = [("chest", ctx.results["labeling"]["outputManifest"], "classification2d", list(CHEST_CLASSES)),
            ("hippocampus", import_hippocampus_labels(ctx), "segmentation3d", None)]
    channels = {}
    for name, uri, task, classes in jobs:
        to = _uri("DatasetsUri", ctx, f"{tag}-{name}/")
        with hooks.step(f"export the {name} dataset") as st:
            res = export_dataset(uri, to, client_factory=lambda: dicomweb.connect(ctx.pacs), task=task,
                                 classes=classes, workers=4,
                                 on_progress=lambda d, t, st=st: st.update(completed=d, total=t))
        if res.failed_lines:
            raise DemoError(f"export of {name}: {res.failed_lines} line(s) failed: {res.failures[:3]}")
        channels[task] = to
        ctx.results.setdefault("datasets", {})[task] = {"channel": to, "lines": res.lines}
    return channels


# ---- 5. training ------------------------------------------------------------------------------------
def training_hyperparameters(cfg: DemoConfig) -> dict[str, dict[str, str]]:
    """The demo's training configuration of each task (``tests/integration/test_training_job.py`` holds the
    segmentation one to the seed's quality bar)."""
    plans = {
        "classification2d": {"epochs": cfg.cls_epochs, "image_size": cfg.chest_size, "batch_size": cfg.cls_batch,
                             "val_fraction": 0.25, "seed": cfg.seed},
        "segmentation3d": {"epochs": cfg.seg_epochs, "spatial_size": ",".join(map(str, cfg.hippo_shape)),
                           "batch_size": cfg.seg_batch, "lr": 0.01, "lr_schedule": "cosine", "val_fraction": 0.2,
                           "test_fraction": 0.2, "seed": cfg.seed},
    }
    return {task: {k: str(v) for k, v in hps.items()} for task, hps in plans.items()}


#: The demo's models are trained as managed SageMaker training jobs (the local cloud runs them).
TRAINING_INSTANCE = "ml.m5.xlarge"


def train_models(ctx: DemoContext, hooks: Hooks) -> dict[str, dict[str, Any]]:
    """A managed training job per task (``estimator.fit`` on an ``ml.*`` instance: the ``dicomflow train``
    code path), unless a job of the same task, dataset and hyperparameters completed before."""
    from dicomflow.training.launch import train_job, training_curves

    trained = {}
    for task, hps in training_hyperparameters(ctx.config).items():
        data = ctx.results["datasets"][task]["channel"]
        job_name = training_job_name(ctx, task, data, hps)
        earlier = _earlier_jobs(job_name)
        done = _trained_before(earlier)
        if done is not None:
            with hooks.step(f"train {task}: {done['job_name']} trained on this dataset before, model in S3") as st:
                st.log(f"{task}: not training again ({done['model_artifact']})")
            trained[task] = {**done, "task": task, "data": data, "curves": training_curves(done["model_artifact"])}
            continue
        # a job name is used once: a retry (after a failure or a restart mid-job) resumes from the same checkpoints
        name = f"{job_name}-{len(earlier) + 1}" if earlier else job_name
        with hooks.step(f"train {task} ({hps['epochs']} epochs, managed training job {name} on {TRAINING_INSTANCE})"):
            res = train_job(task, data, instance_type=TRAINING_INSTANCE, hps=hps, job_name=name,
                            output=ctx.outputs["ModelArtifactsUri"], checkpoint_name=job_name,
                            role=ctx.outputs.get("SageMakerRoleArn"))
        if res.get("status") != "Completed" or not res.get("model_artifact"):
            raise DemoError(f"training {task} failed: {res.get('failure_reason') or 'no model artifact'}")
        trained[task] = res
    ctx.results["training"] = trained
    return trained


def training_job_name(ctx: DemoContext, task: str, data: str, hps: dict[str, str]) -> str:
    """The same name for the same task, dataset (its manifest's content) and hyperparameters, so a demo
    run after a restart finds the model it trained before."""
    listing = aws.read(channel_uri(data, MANIFEST))
    digest = hashlib.sha256(json.dumps([task, data, hps], sort_keys=True).encode() + listing).hexdigest()
    short = "chest" if task == "classification2d" else "hippo"
    return f"{ctx.config.tag}-{short}-{digest[:12]}"


def _earlier_jobs(job_name: str) -> list[dict[str, Any]]:
    """Training jobs named ``job_name`` or ``job_name-N`` (its retries), newest first."""
    pattern = re.compile(re.escape(job_name) + r"(-\d+)?")
    pages = aws.client("sagemaker").get_paginator("list_training_jobs").paginate(NameContains=job_name)
    jobs = [j for page in pages for j in page["TrainingJobSummaries"] if pattern.fullmatch(j["TrainingJobName"])]
    return sorted(jobs, key=lambda j: j["CreationTime"], reverse=True)


def _trained_before(earlier: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The result of the newest earlier job that completed and whose model is in S3, else None."""
    from dicomflow.training.launch import artifact_metrics, final_metrics

    sm = aws.client("sagemaker")
    for job in earlier:
        if job["TrainingJobStatus"] != "Completed":
            continue
        desc = sm.describe_training_job(TrainingJobName=job["TrainingJobName"])
        artifact = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        if artifact and aws.exists(artifact):
            return {"job_name": job["TrainingJobName"], "status": "Completed", "model_artifact": artifact,
                    "resumed": True, "metrics": final_metrics(desc) or artifact_metrics(artifact)}
    return None


def register_models(ctx: DemoContext, hooks: Hooks) -> dict[str, dict[str, Any]]:
    """Each trained model as a version of its Model Package Group (what ``dicomflow train`` does), then the
    demo's review: it approves the version with a note giving the validation metric it read (a real team
    reviews the model card and approves by hand: ``dicomflow models approve``). A model registered before,
    by an earlier run, is not registered again."""
    from dicomflow.inference.endpoint import DEFAULT_IMAGE
    from dicomflow.modeling import registry

    registered = {}
    for task, res in ctx.results["training"].items():
        group = endpoint_name(ctx, task)
        with hooks.step(f"register {task} as a version of {group}"):
            artifact = str(res["model_artifact"])
            version = next((v for v in registry.versions(group) if v.model_data == artifact), None) or \
                registry.register(group, artifact, DEFAULT_IMAGE, training_job=res.get("job_name"))
            if version.status != registry.APPROVED:
                metric = (res.get("metrics") or {}).get("best_metric")
                what = "mean AUROC" if task == "classification2d" else "mean Dice"
                note = f"approved by the demo's review: validation {what} {metric:.3f}" if metric is not None \
                    else "approved by the demo's review"
                version = registry.set_status(group, version.version, registry.APPROVED, note)
        registered[task] = {"group": version.group, "version": version.version, "status": version.status,
                            "arn": version.arn}
    ctx.results["registry"] = registered
    return registered


# ---- 6. inference -----------------------------------------------------------------------------------
def demo_query(ctx: DemoContext, modality: str) -> dict[str, str]:
    """The QIDO filter of this demo's own images of ``modality`` (its seeded patients), whatever else the PACS holds."""
    from dicomflow.demo.synthetic import patient_prefix

    kind = "chest" if modality == "CR" else "hippocampus"
    return {"Modality": modality, "PatientID": patient_prefix(kind, ctx.config.seed) + "*"}


@dataclass
class NextRound:
    """What one of the demo's active-learning steps chose (``dicomflow label next`` as the demo runs it)."""

    batch: Any  # groundtruth.active.NextBatch
    manifest: str
    command: str

    def split(self, measure: Callable[[list[str]], float | None]) -> tuple[float | None, float | None]:
        """``measure`` of the chosen objects and of the other scored ones."""
        chosen = {r.key for r in self.batch.chosen}
        keys = self.batch.scored.keys
        return measure([k for k in keys if k in chosen]), measure([k for k in keys if k not in chosen])


def _next_round(ctx: DemoContext, hooks: Hooks, title: str, *, task: str, modality: str, labeled_uri: str,
                attribute: str, count: int, name: str) -> NextRound:
    """The approved ``task`` model ranks this demo's ``modality`` objects that no job of ``attribute`` labeled
    (the labels in ``labeled_uri``) by entropy and writes the next job's input manifest ``name``."""
    from dicomflow.groundtruth import active
    from dicomflow.inference import scoring

    group = ctx.results["registry"][task]["group"]
    labeled = active.labeled_keys(manifest.read_jsonl_s3(labeled_uri), attribute)
    with hooks.step(title) as st:
        service, model_id = scoring.load_classifier(group, tasks=(task,))
        client = dicomweb.connect(ctx.pacs)
        batch = active.choose_next(
            client, demo_query(ctx, modality), labeled,
            lambda pool: scoring.score_pool(client, service, pool, progress=lambda n: st.update(completed=n)),
            count=count, strategy="entropy", labels=service.labels, activation=service.activation, model=model_id,
            per="series" if task == "segmentation3d" else "image")
        uri = _uri("LabelingInputUri", ctx, f"{ctx.config.tag}/{name}")
        manifest.write_jsonl_s3(uri, batch.lines)
        st.log(f"next round's manifest {uri}")
    query = " ".join(f"--query {k}={v}" for k, v in demo_query(ctx, modality).items())
    return NextRound(batch, uri, f"dicomflow label next --model {group} {query} --count {count} --label-attribute "
                                 f"{attribute} --labeled {labeled_uri} --to {uri}")


def choose_next_round(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Active learning: the approved chest model scores the chest images no job has labeled yet and writes the
    next labeling job's input manifest, most uncertain first (``dicomflow label next``). The demo then reads the
    seeder's truth to show whether the images chosen are the ones the model gets wrong, and what that saved
    (:func:`labels_saved`)."""
    count = max(1, len(ctx.chest_holdout) // 2)
    nxt = _next_round(ctx, hooks, f"active learning: the {count} unlabeled chest images the model is least sure of",
                      task="classification2d", modality="CR", labeled_uri=ctx.results["labeling"]["outputManifest"],
                      attribute=ctx.config.label_attribute, count=count, name="next-round.manifest")
    batch = nxt.batch
    truth = {s.entry["SOPInstanceUID"]: set(s.entry["labels"]) for s in ctx.chest_holdout}

    def error(keys: list[str]) -> float | None:
        errs = [np.mean([abs(p - float(c in truth[k])) for c, p in batch.probabilities[k].items()])
                for k in keys if k in truth]
        return float(np.mean(errs)) if errs else None

    chosen_error, rest_error = nxt.split(error)
    ctx.results["activeLearning"] = {
        **batch.summary(), "manifest": nxt.manifest, "group": ctx.results["registry"]["classification2d"]["group"],
        "meanErrorChosen": chosen_error, "meanErrorRest": rest_error,
        **labels_saved(batch.probabilities, truth, [r.key for r in batch.chosen]), "command": nxt.command}
    return ctx.results["activeLearning"]


def prelabel_endpoint_name(ctx: DemoContext) -> str:
    """The real-time chest endpoint whose probabilities the second labeling round's workers see."""
    return f"{ctx.config.tag}-prelabel"


def label_next_round(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """The round active learning chose, labeled with AI pre-labels: the approved chest model goes on a real-time
    endpoint, which the stack's pre-label Lambda finds as the one serving its group's approved version
    (``PreLabelModelGroup``); the three annotators see its suggestions in the template and accept or correct them,
    and the consolidation records which suggestions people kept.
    The endpoint is deleted afterwards (on AWS it is an instance that costs by the hour)."""
    from dicomflow.groundtruth import job_request
    from dicomflow.inference import endpoint as ep

    cfg, al = ctx.config, ctx.results["activeLearning"]
    name = prelabel_endpoint_name(ctx)
    with hooks.step(f"deploy real-time endpoint {name} (the approved chest model) for AI pre-labels") as st:
        ep.deploy_from_group(name, al["group"], asynchronous=False, role=ctx.outputs.get("SageMakerRoleArn"),
                             environment={"DICOMFLOW_PACS_SECRET_ARN": ctx.outputs["PacsSecretArn"]},
                             progress=lambda m: st.update(note=m))
        # the local cloud starts an endpoint's serving process on its first request; on AWS an InService
        # endpoint answers at once, so ask it once before the workers come (their tasks wait only seconds)
        st.update(note="warming it up")
        first = next(s for s in ctx.chest_holdout if s.entry["SOPInstanceUID"] == al["ranking"][0]["SOPInstanceUID"])
        ep.invoke_realtime(name, {**study_request(ctx, first.study_uid, ["json"]), "storeToPacs": False})
    truth = {s.entry["SOPInstanceUID"]: list(s.entry["labels"]) for s in ctx.chest_holdout}
    request = job_request.labeling_job_request(ctx.outputs, f"{cfg.tag}-round-2", al["manifest"],
                                               label_attribute_name=cfg.label_attribute,
                                               workers_per_object=cfg.annotators)
    try:
        done = label_round(ctx, hooks, request, f"label the {al['chosen']} chosen images with the model's suggestions",
                           lambda url, workers, total, progress: review_in_browser(
                               url, workers, lambda a, sop: annotator_labels(
                                   truth.get(sop, [NO_FINDING]), a, sop, cfg.seed + 1, cfg.flip_rates),
                               total, progress))
    finally:
        ep.delete(name)
    shown = [line[cfg.label_attribute]["suggestions"] for line in done.lines
             if "suggestions" in line[cfg.label_attribute]]
    kept = [sg["acceptance"] for sg in shown if sg.get("acceptance") is not None]
    reviews = [r for answers in done.answers.values() for r in answers if r["suggested"] is not None]
    ctx.results["secondRound"] = {
        "job": done.tag, "endpoint": name, "objects": len(done.lines), "outputManifest": done.output_manifest,
        "withSuggestions": len(shown), "acceptance": float(np.mean(kept)) if kept else None,
        "acceptClicks": sum(r["accepted"] for r in reviews), "reviews": len(reviews),
        "changedBySomeone": sum(sorted(r["labels"]) != sorted(r["suggested"] or [NO_FINDING]) for r in reviews)}
    return ctx.results["secondRound"]


def labels_saved(probabilities: dict[str, dict[str, float]], truth: dict[str, set[str]],
                 chosen: list[str]) -> dict[str, Any]:
    """What the chosen images show the model of its own errors (classes on the wrong side of 0.5 against the
    truth), against a random pick from the same pool: the labels a random pick needs, on average, to show as
    many errors, and so the labels active learning saved at equal errors found."""
    def errors(key: str) -> int:
        return sum((p >= 0.5) != (c in truth[key]) for c, p in probabilities[key].items())

    pool = [k for k in probabilities if k in truth]
    found = sum(errors(k) for k in chosen if k in truth)
    per_image = float(np.mean([errors(k) for k in pool])) if pool else 0.0
    needed = found / per_image if per_image else None
    return {"modelErrorsFound": found, "modelErrorsPerRandomImage": round(per_image, 3),
            "randomLabelsForAsManyErrors": None if needed is None else round(needed, 1),
            "labelsSaved": None if needed is None else round(needed - len(chosen), 1)}


def endpoint_name(ctx: DemoContext, task: str) -> str:
    return f"{ctx.config.tag}-{'chest' if task == 'classification2d' else 'hippocampus'}"


def deploy_endpoints(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Both models' approved versions as async endpoints (the ``dicomflow deploy --model-package-group``
    code path), PACS credentials by secret ARN,
    autoscaled from 0 to ``max_instances`` instances on the backlog: the first request scales one up."""
    from dicomflow.inference import endpoint as ep
    from dicomflow.inference.scaling import ScalingPlan, register_async_scaling

    plan = ScalingPlan(0, ctx.config.max_instances, backlog_per_instance=4,
                       scale_in_cooldown=ctx.config.scale_in_cooldown, scale_out_cooldown=30)
    deployed = {}
    for task in ctx.results["training"]:
        name = endpoint_name(ctx, task)
        with hooks.step(f"deploy async endpoint {name}") as st:
            dep, _ = ep.deploy_from_group(
                name, ctx.results["registry"][task]["group"], asynchronous=True,
                role=ctx.outputs.get("SageMakerRoleArn"), output_s3_uri=_uri("AsyncOutputUri", ctx, name),
                environment={"DICOMFLOW_PACS_SECRET_ARN": ctx.outputs["PacsSecretArn"]},
                progress=lambda m, st=st: st.update(note=m))
            st.update(note=f"autoscaling {name} 0..{plan.maximum}")
            deployed[task] = {**dep.as_dict(), "scaling": register_async_scaling(name, plan)}
    ctx.results["endpoints"] = deployed
    return deployed


def routing_rules(ctx: DemoContext) -> str:
    """The demo's rules: every T1 hippocampus MR series goes to the hippocampus endpoint."""
    return (f"version: 1\nrules:\n  - name: hippocampal-volumetry\n"
            f"    endpoint: {endpoint_name(ctx, 'segmentation3d')}\n    outputs: [json, sr, seg, pdf]\n"
            f"    match:\n      modality: MR\n      seriesDescription: \"Synthetic T1 hippocampus.*\"\n"
            f"      minSlices: 8\n")


def route_new_studies(ctx: DemoContext, hooks: Hooks) -> list[dict[str, Any]]:
    """Auto-routing: the rules go to the stack's rules object, the local cloud's feed delivers Orthanc's
    stable-study events to the router Lambda, and the held-out MR series arrive from a modality (DIMSE
    C-STORE, DCMTK's storescu). Nobody calls the endpoint: the router does, once per series. Returns the
    hippocampus results (as :func:`run_inference` collects them)."""
    from dicomflow.dicom import dimse
    from dicomflow.dicom.orthanc import OrthancRest
    from dicomflow.emulator.cloud.orthanc import AE_TITLE
    from dicomflow.routing import router
    from dicomflow.routing.feed import feed_for

    aws.write(ctx.outputs["RoutingRulesUri"], routing_rules(ctx).encode(), "application/yaml")
    settings, table = ctx.settings, ctx.outputs["RoutingTableName"]
    feed = feed_for(settings.data_dir, OrthancRest(ctx.pacs),
                    [ctx.outputs["RouterFunctionArn"], ctx.outputs["SearchIngestFunctionArn"]],
                    ctx.outputs["RoutingDeadLetterQueueUrl"])
    feed.skip_to_now()
    stop = threading.Event()
    watcher = threading.Thread(target=feed.run, args=(stop, 0.5), name="stable-study-feed", daemon=True)
    watcher.start()
    results: list[dict[str, Any]] = []
    try:
        with hooks.step(f"send {len(ctx.hippo_holdout)} held-out MR series from a modality (DIMSE C-STORE as "
                        f"{settings.modality_aet})"):
            for study in ctx.hippo_holdout:
                dimse.send(study.datasets, settings.host, settings.orthanc_dicom_port, settings.modality_aet,
                           AE_TITLE, settings.data_dir / "tmp")
        sent_at = time.monotonic()
        deadline = sent_at + ctx.config.result_timeout_s
        model = router.model_version(endpoint_name(ctx, "segmentation3d"), None)
        redelivered = 0
        with hooks.step("auto-routing: stable study -> router Lambda -> hippocampus endpoint",
                        total=len(ctx.hippo_holdout)) as st:
            for n, study in enumerate(ctx.hippo_holdout, start=1):
                asked = False
                while True:
                    rows = [router.settle(r, table) for r in router.records(study.study_uid, table)
                            if r.get("model") == model]
                    if any(r["status"] == router.FAILED for r in rows):
                        raise DemoError(f"routing study {study.study_uid} failed: "
                                        f"{next(r for r in rows if r['status'] == router.FAILED).get('reason')}")
                    done = next((r for r in rows if r["status"] == router.DONE and r.get("outputLocation")), None)
                    if done is not None:
                        break
                    if not rows and not asked and time.monotonic() - sent_at > REDELIVER_AFTER_S:
                        # a re-run: Orthanc kept the instances from before, so the study did not change
                        for function in ("RouterFunctionArn", "SearchIngestFunctionArn"):
                            aws.client("lambda").invoke(FunctionName=ctx.outputs[function], Payload=json.dumps(
                                {"studyInstanceUID": study.study_uid}).encode())
                        asked, redelivered = True, redelivered + 1
                    if time.monotonic() > deadline:
                        raise DemoError(f"no routed result for study {study.study_uid} after "
                                        f"{ctx.config.result_timeout_s:.0f} s; see `dicomflow route status`")
                    time.sleep(0.5)
                results.append({"task": "segmentation3d", "study": study,
                                "output": json.loads(aws.read(done["outputLocation"])),
                                "location": done["outputLocation"]})
                st.update(completed=n)
        items = list(wait_for_search_items(ctx, [f"image#{ds.SOPInstanceUID}" for s in ctx.hippo_holdout
                                                 for ds in s.datasets], deadline).values())
    finally:
        stop.set()
        watcher.join(timeout=5)
    ctx.results["seed"]["sentByDimse"] = len(ctx.hippo_holdout)
    ctx.results["routed"] = results
    ctx.results["routing"] = {"studies": len(results), "redelivered": redelivered,
                              "rules": ctx.outputs["RoutingRulesUri"], "searchItems": len(items),
                              "searchThumbnails": sum(1 for i in items if i.get("thumbnail"))}
    return results


def wait_for_search_items(ctx: DemoContext, keys: list[str], deadline: float,
                          progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """The search table's item of each key (``image#<SOP>``, ``report#<study>``: the search ingestion Lambda
    writes them), waited for until ``deadline`` (monotonic); ``progress(n)`` after each round. A timeout
    names the first dead letter, if any."""
    table, dynamodb = ctx.outputs["SearchTableName"], aws.client("dynamodb")
    items: dict[str, dict[str, Any]] = {}
    while True:
        for key in keys:
            if key not in items:
                got = dynamodb.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)
                if "Item" in got:
                    items[key] = aws.plain_item(got["Item"])
        if progress:
            progress(len(items))
        if len(items) == len(keys):
            return items
        if time.monotonic() > deadline:
            dead = aws.client("sqs").receive_message(QueueUrl=ctx.outputs["SearchDeadLetterQueueUrl"],
                                                      WaitTimeSeconds=0).get("Messages") or []
            why = f"; dead-lettered: {dead[0]['Body'][:300]}" if dead else ""
            raise DemoError(f"search ingestion wrote {len(items)} of {len(keys)} items in time{why}; see the logs "
                            f"of {ctx.config.stack}-search-ingest")
        time.sleep(0.5)


def study_request(ctx: DemoContext, study_uid: str, outputs: list[str]) -> dict[str, Any]:
    """The study JSON the endpoint gets (validated as the container validates it)."""
    from dicomflow.inference.request import parse_request

    body = {"dicomweb": {"url": ctx.pacs.url, "auth": {"secretArn": ctx.outputs["PacsSecretArn"]}},
            "studyInstanceUID": study_uid, "outputs": outputs, "storeToPacs": True}
    return parse_request(body).as_dict()


def run_inference(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Invoke the chest endpoint for every held-out chest study (the ``dicomflow infer`` code path), wait for the
    S3 outputs, and score them with the routed hippocampus results against the truth."""
    from dicomflow.inference import endpoint as ep

    plan = [("classification2d", s, ["json", "sr", "pdf"]) for s in ctx.chest_holdout]
    configs = {task: ep.async_config(endpoint_name(ctx, task)) for task in ("classification2d", "segmentation3d")}
    results: list[dict[str, Any]] = list(ctx.results.get("routed") or [])
    with hooks.step("async inference on the held-out studies", total=len(plan)) as st:
        pending = [(task, s, ep.invoke_async(endpoint_name(ctx, task), study_request(ctx, s.study_uid, outs),
                                             configs[task])) for task, s, outs in plan]
        for n, (task, s, inv) in enumerate(pending, start=1):
            ok, data = ep.wait_result(inv, timeout_s=ctx.config.result_timeout_s)
            if not ok:
                raise DemoError(f"inference on study {s.study_uid} ({task}) failed: {data[:300]!r}; "
                                f"details in {inv.failure_location}")
            results.append({"task": task, "study": s, "output": json.loads(data), "location": inv.output_location})
            st.update(completed=n)
    ctx.results["inference"] = score_inference(ctx, results)
    from dicomflow.inference.scaling import scaling_status

    ctx.results["endpointStatus"] = [scaling_status(endpoint_name(ctx, task)) for task in sorted(configs)]
    return ctx.results["inference"]


def ingest_for_search(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """The held-out chest studies' images and reports put into the stack's ingest bucket, as a RIS and an
    archive export would drop them; the search ingestion Lambda turns each into its item in the search
    table (with a thumbnail and the chest endpoint's embedding, or the report's codes) and writes each
    embedding into the image index. The index held these images from :func:`index_images`; they are taken
    out first, so what is back is what the Lambda wrote, and the two paths must give the same vectors.
    Waits for every item; nothing may be dead-lettered."""
    from dicomflow.search.ingest import image_item
    from dicomflow.search.vectors import VectorIndex

    where = image_index_dir(ctx.settings.data_dir)
    sops = [str(s.datasets[0].SOPInstanceUID) for s in ctx.chest_holdout]
    with VectorIndex.open(where) as ix:
        before = {u: ix.vector_of(u) for u in sops}
        ix.remove(sops)
    bucket, table = ctx.outputs["SearchIngestBucket"], ctx.outputs["SearchTableName"]
    reports = seeding.reports_dir(ctx.settings.data_dir)
    s3 = aws.client("s3")
    keys = []
    prefix = f"demo/{ctx.config.tag}/"
    for s in ctx.chest_holdout:
        ds = s.datasets[0]
        s3.put_object(Bucket=bucket, Key=f"{prefix}{s.study_uid}.dcm", Body=dicomweb.dataset_bytes(ds))
        keys.append(image_item(ds, "")["pk"])
        report = reports / f"{s.study_uid}.json"
        if report.exists():
            s3.put_object(Bucket=bucket, Key=f"{prefix}reports/{s.study_uid}.json", Body=report.read_bytes())
            keys.append(f"report#{s.study_uid}")
    with hooks.step("search ingestion: S3 -> ingestion Lambda -> table, thumbnails, embeddings",
                    total=len(keys)) as st:
        items = wait_for_search_items(ctx, keys, time.monotonic() + ctx.config.result_timeout_s,
                                      lambda n: st.update(completed=n))
    images = [v for k, v in items.items() if k.startswith("image#")]
    embeddings = [v["embedding"] for v in images if "embedding" in v]
    if len(embeddings) != len(images):
        raise DemoError(f"the ingestion Lambda embedded {len(embeddings)} of {len(images)} images")
    with VectorIndex.open(where) as ix:
        after = {u: ix.vector_of(u) for u in sops if ix.study_of(u)}
        size = len(ix)
    if len(after) != len(sops):
        raise DemoError(f"the ingestion Lambda indexed {len(after)} of {len(sops)} images into {where}")
    ctx.results["ingestion"] = {
        "table": table, "images": len(images), "reports": len(items) - len(images), "prefix": f"s3://{bucket}/{prefix}",
        "stack": ctx.config.stack,
        "thumbnails": sorted({v["thumbnail"] for v in images}), "embedded": len(embeddings),
        "embeddings": embeddings, "indexedByLambda": len(after), "indexSize": size,
        "maxVectorDifference": max(float(np.max(np.abs(after[u] - before[u]))) for u in before),
        "output": ctx.outputs["SearchOutputUri"]}
    return ctx.results["ingestion"]


def index_images(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Every chest study embedded by the chest endpoint into the image index (the ``dicomflow search index``
    code path), then the images most like each held-out one; scored by how many neighbours share a true
    finding with their query (the demo's scoring reads the truth; the index never does)."""
    from dicomflow.search.images import index_studies
    from dicomflow.search.vectors import VectorIndex

    where = image_index_dir(ctx.settings.data_dir)
    bodies = {s.study_uid: {**study_request(ctx, s.study_uid, ["embedding"]), "storeToPacs": False,
                            "outputS3Uri": ctx.outputs["SearchOutputUri"]} for s in ctx.chest}
    with hooks.step("embed the chest studies into the image index", total=len(bodies)) as st:
        done = [0]

        def advance() -> None:
            done[0] += 1
            st.update(completed=done[0])

        run = index_studies(endpoint_name(ctx, "classification2d"), bodies, where, rebuild=True,
                            timeout_s=ctx.config.result_timeout_s, progress=advance)
    if run.failed:
        raise DemoError(f"{len(run.failed)} chest studies could not be embedded; first: {run.failed[0]['error']}")
    truth = {s.study_uid: set(s.entry["labels"]) for s in ctx.chest}
    queries = []
    with VectorIndex.open(where) as ix:
        for s in ctx.chest_holdout:
            found = ix.similar_to(ix.images_of_study(s.study_uid)[0], 5)
            sharing = sum(1 for n in found if truth[n.study_uid] & truth[s.study_uid])
            queries.append({"study": s.study_uid, "truth": sorted(truth[s.study_uid]), "neighboursSharingAFinding":
                            sharing, "neighbours": [{**n.as_dict(), "truth": sorted(truth[n.study_uid])}
                                                    for n in found]})
    others = [(a, b) for a in (s.study_uid for s in ctx.chest_holdout) for b in truth if b != a]
    chance = 5 * float(np.mean([bool(truth[a] & truth[b]) for a, b in others]))
    ctx.results["imageSearch"] = {**run.as_dict(), "k": 5, "queries": queries, "chanceSharing": chance,
                                  "meanSharing": float(np.mean([q["neighboursSharingAFinding"] for q in queries]))}
    return ctx.results["imageSearch"]


#: The demo's search page users: one per group, passwords in ``<data dir>/secrets/search-users.json``.
SEARCH_USERS = {"demo-radiologist": "radiologist", "demo-researcher": "researcher"}


def search_users_path(settings: Settings) -> Path:
    return settings.secrets_dir / "search-users.json"


def _graphql(url: str, token: str, query: str, variables: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import requests

    resp = requests.post(f"{url}graphql", json={"query": query, "variables": variables},
                         headers={"Authorization": token}, timeout=60)
    return resp.status_code, resp.json()


def open_search_page(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """The search page's users (a radiologist and a researcher, made again on every run with new passwords,
    kept owner-only in the data dir), then the local search API as the page calls it: signed in through
    Cognito, the reports that mention an effusion with the ICD-10-CM facets, the images most like a held-out
    study's with their thumbnail links, and the researcher refused word search."""
    from dicomflow.api.users import add_user, list_users, remove_user, sign_in
    from dicomflow.config import write_secret_file

    pool, client = ctx.outputs["SearchUserPoolId"], ctx.outputs["SearchUserPoolClientId"]
    url = f"http://{ctx.settings.host}:{ctx.settings.search_port}/"
    with hooks.step("search page: users, sign-in, the GraphQL API", total=4) as st:
        existing = {u.username for u in list_users(pool)}
        passwords = {}
        for name, group in SEARCH_USERS.items():
            if name in existing:
                remove_user(pool, name)
            passwords[name] = add_user(pool, name, group)
        write_secret_file(search_users_path(ctx.settings), {"page": url, "users": {
            name: {"group": group, "password": passwords[name]} for name, group in SEARCH_USERS.items()}})
        st.update(completed=1)
        token = sign_in(client, "demo-radiologist", passwords["demo-radiologist"])["IdToken"]
        status, found = _graphql(url, token, """query($text: String) {
            reports(text: $text, first: 20) { total }
            denied: reports(text: $text, codes: ["J90"], status: NEGATIVE, first: 1) { total }
            facets(text: $text, first: 5) { code description reports } }""", {"text": "effusion"})
        if status != 200 or "errors" in found:
            raise DemoError(f"the local search API answered {status}: {json.dumps(found)[:300]}; see "
                            f"{ctx.settings.log_dir}/search.log")
        st.update(completed=2)
        study = ctx.chest_holdout[0].study_uid
        status, similar = _graphql(url, token, """query($study: ID) { similarImages(study: $study, k: 5) {
            neighbours { rank score image { studyInstanceUID thumbnailUrl } } } }""", {"study": study})
        if status != 200 or "errors" in similar:
            raise DemoError(f"the local search API answered {status} to similarImages: {json.dumps(similar)[:300]}")
        st.update(completed=3)
        researcher = sign_in(client, "demo-researcher", passwords["demo-researcher"])["IdToken"]
        refused, _ = _graphql(url, researcher, "query { reports(text: \"effusion\") { total } }", {})
        st.update(completed=4)
    reports, denied = found["data"]["reports"], found["data"]["denied"]["total"]
    neighbours = similar["data"]["similarImages"]["neighbours"]
    ctx.results["searchPage"] = {
        "url": url, "signIn": f"{url}#/signin/demo-radiologist", "users": SEARCH_USERS,
        "credentials": str(search_users_path(ctx.settings)),
        "effusionReports": reports["total"], "deniedEffusion": denied, "topCodes": found["data"]["facets"],
        "similarStudy": study, "neighbours": len(neighbours),
        "thumbnailLinks": sum(1 for n in neighbours if n["image"]["thumbnailUrl"]),
        "researcherWordSearch": refused}
    return ctx.results["searchPage"]


#: How long the demo summary's viewer links may be used (once each); ``dicomflow view`` makes new ones.
VIEWER_LINK_MINUTES = 60


def open_viewer(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """A viewer link for every study with results (the summary lists them), and one held-out hippocampus study
    opened in headless Chromium as a radiologist opens it: the MR drawn, the SEG loaded over it, its structures
    named; timed from the link, and every text answer the page got checked for the PACS password."""
    from dicomflow.config import read_secret_file
    from dicomflow.credentials import local_orthanc_secret_path
    from dicomflow.demo.viewer_page import look_at_study
    from dicomflow.emulator.viewer.access import sign_in_link

    studies = [s["StudyInstanceUID"] for s in ctx.results["inference"]["studies"]]
    links = {uid: sign_in_link(ctx.settings, "demo", uid, VIEWER_LINK_MINUTES * 60) for uid in studies}
    study = ctx.hippo_holdout[0].study_uid
    with hooks.step(f"OHIF viewer: study {study} with its SEG") as st:
        password = read_secret_file(local_orthanc_secret_path(ctx.settings.data_dir))["password"]
        look = look_at_study(sign_in_link(ctx.settings, "demo", study), forbidden=[password])
        st.update(note=f"first image {look.first_image_s:.1f} s, overlay {look.overlay_s:.1f} s")
    if look.leaked_in:
        raise DemoError(f"the viewer page received the PACS password in {look.leaked_in[:3]}")
    ctx.results["viewer"] = {"url": f"http://{ctx.settings.host}:{ctx.settings.viewer_port}/", "links": links,
                             "validMinutes": VIEWER_LINK_MINUTES, "study": study, "look": look.as_dict()}
    return ctx.results["viewer"]


def run_batch_transform(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """The chest model over every held-out chest study again, as one batch transform job (what a backfill over
    an archive runs), and how far its probabilities are from the async endpoint's for the same studies."""
    from dicomflow.inference import batch

    studies = [s.study_uid for s in ctx.chest_holdout]
    requests = {uid: {**study_request(ctx, uid, ["json"]), "storeToPacs": False} for uid in studies}
    to = _uri("AsyncBatchUri", ctx, ctx.config.tag)
    t0 = time.perf_counter()
    with hooks.step("batch transform of the held-out chest studies", total=len(studies)) as st:
        job = batch.start(endpoint_name(ctx, "classification2d"), to, requests, max_concurrent=2)
        desc = batch.follow(job, lambda done, status: st.update(completed=done, note=status))
    rows = batch.results(job)
    if desc["TransformJobStatus"] != "Completed" or not all(r["ok"] for r in rows):
        failed = [f"{r['study']}: {r['error']}" for r in rows if not r["ok"]]
        raise DemoError(f"batch transform {job.name} {desc['TransformJobStatus']}: "
                        f"{desc.get('FailureReason') or '; '.join(failed)}")
    async_probs = {s["StudyInstanceUID"]: s["probabilities"] for s in ctx.results["inference"]["studies"]
                   if s["task"] == "classification2d"}
    diff = max(abs(p - async_probs[r["study"]][c]) for r in rows
               for c, p in r["result"]["findings"]["probabilities"].items())
    ctx.results["batch"] = {"transformJobName": job.name, "status": desc["TransformJobStatus"],
                            "studies": len(rows), "output": job.output_uri,
                            "seconds": round(time.perf_counter() - t0, 1), "maxDifferenceFromAsync": diff}
    return ctx.results["batch"]


def stored_seg_dice(ctx: DemoContext, study: seeding.SeedStudy, seg_ref: dict[str, Any]) -> dict[str, float]:
    """Dice per structure of the SEG the model stored in the PACS, read back onto the series, against the truth."""
    from dicomflow.dicom.seg import read_seg
    from dicomflow.training.metrics import overlap_metrics

    seg = dicomweb.retrieve_instance(dicomweb.connect(ctx.pacs), study.study_uid, seg_ref["SeriesInstanceUID"],
                                     seg_ref["SOPInstanceUID"])
    label, _ = read_seg(seg, [str(ds.SOPInstanceUID) for ds in study.datasets])
    per_class = overlap_metrics(label, study.label_volume, len(SEG_LABELS))
    return {name: per_class[i + 1]["dice"] for i, name in enumerate(SEG_LABELS)}


def choose_next_series(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Active learning for the segmenter: the approved hippocampus model ranks the MR series no job has labeled
    (by now, the held-out series the modality sent) by its entropy over each series (``dicomflow label next``
    with a segmenter) and writes the next outlining round's manifest. The demo then reads the held-out Dice of
    each series to show whether the model doubts the ones it segments worst."""
    count = max(1, len(ctx.hippo_holdout) // 2)
    nxt = _next_round(ctx, hooks, f"active learning: the {count} MR series the segmenter is least sure of",
                      task="segmentation3d", modality="MR", labeled_uri=hippocampus_labels_uri(ctx),
                      attribute="hippocampus", count=count, name="next-outlines.manifest")
    study_of = {s.entry["SeriesInstanceUID"]: s.study_uid for s in ctx.hippo_holdout}
    dice = {r["StudyInstanceUID"]: float(np.mean(list(r["dice"].values())))
            for r in ctx.results["inference"]["studies"] if r.get("dice")}

    def mean_dice(keys: list[str]) -> float | None:
        found = [dice[study_of[k]] for k in keys if study_of.get(k) in dice]
        return float(np.mean(found)) if found else None

    chosen_dice, rest_dice = nxt.split(mean_dice)
    ctx.results["activeLearningSeries"] = {
        **nxt.batch.summary(), "manifest": nxt.manifest, "group": ctx.results["registry"]["segmentation3d"]["group"],
        "meanDiceChosen": chosen_dice, "meanDiceRest": rest_dice, "command": nxt.command}
    return ctx.results["activeLearningSeries"]


def score_inference(ctx: DemoContext, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out AUROC (chest); predicted vs true volumes and the Dice of the stored SEG (hippocampus); where the
    SR/SEG landed. The demo's scoring is the one place that reads the seeder's truth."""
    from dicomflow.inference.findings import segmentation_volumes
    from dicomflow.training.metrics import multilabel_auroc, nanmean

    orthanc = ctx.settings.orthanc_url
    studies, scores, targets, dice = [], [], [], []
    for r in results:
        s, out = r["study"], r["output"]
        e = s.entry
        row: dict[str, Any] = {
            "task": r["task"], "StudyInstanceUID": s.study_uid, "outputLocation": r["location"],
            "model": {k: (out.get("model") or {}).get(k) for k in ("name", "version")},
            "orthancStudy": f"{orthanc}/app/explorer.html#study?uuid="
                            f"{orthanc_id(e['PatientID'], s.study_uid)}",
            "outputs": {k: {"SeriesInstanceUID": v.get("SeriesInstanceUID"), "SOPInstanceUID": v.get("SOPInstanceUID"),
                            "stored": bool(v.get("storedToPacs"))} for k, v in out.get("outputs", {}).items()}}
        findings = out.get("findings", {})
        quality = findings.get("quality", {})
        row.update(outOfDistribution=quality.get("outOfDistribution"), qualityReasons=quality.get("reasons", []))
        if r["task"] == "classification2d":
            probs = findings.get("probabilities", {})
            scores.append([float(probs.get(c, 0.0)) for c in CHEST_CLASSES])
            targets.append([float(c in e["labels"]) for c in CHEST_CLASSES])
            row.update(truth=e["labels"], predicted=findings.get("positive", []), probabilities=probs)
        else:
            spacing = [float(v) for v in e["spacing"]]
            true = segmentation_volumes(s.label_volume, spacing, SEG_LABELS)["volumesMm3"]
            row.update(trueVolumesMm3=true, predictedVolumesMm3=findings.get("volumesMm3", {}))
            if "seg" in out.get("outputs", {}):
                row["dice"] = stored_seg_dice(ctx, s, out["outputs"]["seg"])
                dice.append(float(np.mean(list(row["dice"].values()))))
        studies.append(row)
    per_class = multilabel_auroc(np.asarray(scores), np.asarray(targets), list(CHEST_CLASSES)) if scores else {}
    return {"studies": studies, "heldOutAuroc": per_class,
            "heldOutMeanAuroc": nanmean(list(per_class.values())) if per_class else None,
            "heldOutMeanDice": float(np.mean(dice)) if dice else None}


def serve_from_one_endpoint(ctx: DemoContext, hooks: Hooks) -> dict[str, Any]:
    """Both models behind one real-time multi-model endpoint (``dicomflow deploy --multi-model``), one held-out
    study each by ``TargetModel``, and how far the answers are from the async endpoints' for the same studies."""
    from dicomflow.inference import endpoint as ep

    name = f"{ctx.config.tag}-models"
    prefix = _uri("ModelArtifactsUri", ctx, f"multi-model/{ctx.config.tag}/")
    targets = {"classification2d": "chest.tar.gz", "segmentation3d": "hippocampus.tar.gz"}
    with hooks.step(f"multi-model endpoint {name}: both models by TargetModel") as st:
        for task, target in targets.items():
            aws.write(prefix + target, aws.read(str(ctx.results["training"][task]["model_artifact"])))
        st.update(note=f"deploying {name}")
        ep.deploy(name, prefix, multi_model=True, asynchronous=False, role=ctx.outputs.get("SageMakerRoleArn"),
                  environment={"DICOMFLOW_PACS_SECRET_ARN": ctx.outputs["PacsSecretArn"]})
        by_study = {s["StudyInstanceUID"]: s for s in ctx.results["inference"]["studies"]}
        answers = {}
        for task, study in (("classification2d", ctx.chest_holdout[0]), ("segmentation3d", ctx.hippo_holdout[0])):
            st.update(note=f"{targets[task]} on {study.study_uid}")
            out = ep.invoke_realtime(name, {**study_request(ctx, study.study_uid, ["json"]), "storeToPacs": False},
                                     targets[task])
            mine = by_study[study.study_uid]
            if task == "classification2d":
                diff = max(abs(p - mine["probabilities"][c]) for c, p in out["findings"]["probabilities"].items())
            else:
                diff = max(abs(v - mine["predictedVolumesMm3"][k]) for k, v in out["findings"]["volumesMm3"].items())
            answers[task] = {"target": targets[task], "study": study.study_uid, "model": out["model"]["name"],
                             "maxDifferenceFromAsync": diff}
    ctx.results["multiModel"] = {"endpoint": name, "prefix": prefix, "answers": answers}
    return ctx.results["multiModel"]


# ---- the loop ---------------------------------------------------------------------------------------
STEPS: list[Callable[[DemoContext, Hooks], Any]] = [
    deploy_stack, seed_studies, analyse_reports, run_labeling, outline_hippocampus, export_datasets, train_models,
    register_models,
    choose_next_round, label_next_round, deploy_endpoints, route_new_studies, run_inference, choose_next_series,
    open_viewer, index_images,
    ingest_for_search, open_search_page, run_batch_transform, serve_from_one_endpoint]


def run(ctx: DemoContext, hooks: Hooks | None = None) -> dict[str, Any]:
    """Every step in order; returns ``ctx.results`` (plus ``seconds`` per step and in total)."""
    hooks = hooks or Hooks()
    started = time.perf_counter()
    timing = ctx.results.setdefault("seconds", {})
    for step in STEPS:
        t0 = time.perf_counter()
        step(ctx, hooks)
        timing[step.__name__] = round(time.perf_counter() - t0, 1)
    timing["total"] = round(time.perf_counter() - started, 1)
    ctx.results["orthanc"] = ctx.settings.orthanc_url + "/app/explorer.html"
    return ctx.results
