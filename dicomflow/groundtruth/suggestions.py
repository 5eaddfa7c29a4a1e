"""AI pre-labels: the model's probabilities for an image, shown to the worker as suggestions.

The pre-label Lambda asks a real-time classification endpoint (``DICOMFLOW_PRELABEL_ENDPOINT``, or the one
serving the newest approved version of ``DICOMFLOW_PRELABEL_MODEL_GROUP``: :func:`serving_endpoint`) about the
object with a study JSON (nothing stored) and adds ``suggestions`` to the task input: for an image, a
classifier's probabilities (``outputs: ["json"]``); for a series, a segmenter's outlines of each structure on
each slice (``outputs: ["json", "contours"]``)::

    {"status": "ok", "kind": "classes", "model": {"name", "version"}, "probabilities": {"<label>": p, ...},
     "suggested": ["<label>", ...], "threshold": 0.5, "ms": 41.0}
    {"status": "ok", "kind": "outlines", "model": {..}, "outlines": [{"sopInstanceUID", "label", "points"}],
     "structures": ["anterior", ...], "ms": 420.0}
    {"status": "unavailable", "reason": "the model did not answer within 5 s", "ms": 5003.0}

Only the job's own labels are kept. A model that is down, slow (``DICOMFLOW_PRELABEL_TIMEOUT_SECONDS``),
of another task or of other classes never blocks labeling: the task goes out with an ``unavailable``
suggestion that says why. The template shows suggestions marked as the model's and never ticks them for the
worker (outlines are placed dashed yellow for the worker to check, edit or delete); the worker's answer echoes
what was suggested (``suggestion``) and marks each outline that came from the model (``suggestion`` id,
``edited``), so that the consolidation can record which suggestions people kept, changed, rejected or added to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dicomflow import aws

THRESHOLD = 0.5
#: seconds a Lambda container keeps the endpoint it found for a model package group
GROUP_LOOKUP_TTL_S = 60.0
_found: dict[str, tuple[float, str | None, str]] = {}
#: outlines of a series beyond this many points are not sent to the browser (a task input stays small)
MAX_SUGGESTED_POINTS = 50_000


def unavailable(reason: str, started: float) -> dict[str, Any]:
    return {"status": "unavailable", "reason": reason, "ms": round((time.perf_counter() - started) * 1000, 1)}


def serving_endpoint(group: str, sagemaker: Any = None) -> tuple[str | None, str]:
    """The InService real-time endpoint serving the newest Approved version of model package group ``group``
    (its Model's ``DICOMFLOW_MODEL_PACKAGE_ARN``, which ``dicomflow deploy --model-package-group`` sets):
    ``(name, "")``, or ``(None, why)`` when there is none. Async and multi-model endpoints are passed over (they
    cannot answer a task's ``InvokeEndpoint``). An endpoint found is kept for :data:`GROUP_LOOKUP_TTL_S` per Lambda
    container; none found is looked up again on the next task (a model may be approved or deployed any time)."""
    from botocore.exceptions import BotoCoreError, ClientError

    now = time.monotonic()
    if group in _found and _found[group][0] > now:
        return _found[group][1], _found[group][2]
    sm = sagemaker or aws.client("sagemaker")
    try:
        approved = sm.list_model_packages(ModelPackageGroupName=group, ModelApprovalStatus="Approved",
                                          SortBy="CreationTime", SortOrder="Descending", MaxResults=1)
        packages = approved.get("ModelPackageSummaryList") or []
        if not packages:
            found: tuple[str | None, str] = (None, f"model package group {group} has no approved version")
        else:
            arn = packages[0]["ModelPackageArn"]
            found = (None, f"no InService real-time endpoint serves the approved version {arn.rsplit('/', 1)[-1]} of "
                           f"{group}; deploy one with 'dicomflow deploy --model-package-group {group} --realtime'")
            for name in _endpoints_serving(sm, arn):
                found = (name, "")
                break
    except (ClientError, BotoCoreError) as exc:
        found = (None, f"could not look up the endpoint of {group}: {str(exc)[:200]}")
    if found[0]:
        _found[group] = (now + GROUP_LOOKUP_TTL_S, *found)
    return found


def _endpoints_serving(sm: Any, package_arn: str) -> Iterator[str]:
    """The names of the InService real-time, single-model endpoints whose model carries ``package_arn``; an
    endpoint whose config or model cannot be read (deleted meanwhile, not ours to read) is passed over."""
    from botocore.exceptions import ClientError

    from dicomflow.config import env_name

    package_env = env_name("model_package_arn")
    pages = sm.get_paginator("list_endpoints").paginate(StatusEquals="InService", SortBy="CreationTime",
                                                        SortOrder="Descending")
    for page in pages:
        for summary in page.get("Endpoints", []):
            name = summary["EndpointName"]
            try:
                config = sm.describe_endpoint_config(
                    EndpointConfigName=sm.describe_endpoint(EndpointName=name)["EndpointConfigName"])
                if config.get("AsyncInferenceConfig"):
                    continue
                containers = [sm.describe_model(ModelName=v["ModelName"]).get("PrimaryContainer") or {}
                              for v in config.get("ProductionVariants", [])]
            except ClientError:
                continue
            if any(c.get("Mode") != "MultiModel" and (c.get("Environment") or {}).get(package_env) == package_arn
                   for c in containers):
                yield name


def suggest(endpoint: str, study_uid: str, series_uid: str, labels: Sequence[str], *, instances: int,
            timeout_s: float, series: bool = False, runtime_client: Any = None) -> dict[str, Any]:
    """The suggestions for one image (the only instance of its series), or with ``series`` the outlines of a
    segmentation model for the whole series; never raises."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    started = time.perf_counter()
    if instances < 1:
        return unavailable("the images of its series could not be counted (the PACS did not answer)", started)
    if not series and instances != 1:
        return unavailable(f"the model scores one image per series and this series has {instances}", started)
    client = runtime_client or aws.client("sagemaker-runtime", config=Config(
        connect_timeout=min(timeout_s, 2.0), read_timeout=timeout_s, retries={"max_attempts": 1}))
    body = {"studyInstanceUID": study_uid, "seriesInstanceUID": series_uid,
            "outputs": ["json", "contours"] if series else ["json"], "storeToPacs": False}
    try:
        resp = client.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(body).encode(),
                                      ContentType="application/json", Accept="application/json")
        answer = json.loads(resp["Body"].read())
    except ClientError as exc:
        message = exc.response.get("OriginalMessage") or exc.response.get("Error", {}).get("Message") or str(exc)
        return unavailable(f"endpoint {endpoint} answered an error: {str(message)[:200]}", started)
    except (BotoCoreError, OSError, ValueError) as exc:
        slow = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
        why = f"the model did not answer within {timeout_s:g} s" if slow else f"{type(exc).__name__}: {str(exc)[:200]}"
        return unavailable(why, started)
    if not isinstance(answer, dict):
        return unavailable(f"endpoint {endpoint} answered something other than a JSON object", started)
    model = answer.get("model") if isinstance(answer.get("model"), dict) else {}
    done = {"status": "ok", "model": {"name": model.get("name"), "version": model.get("version")}}
    if series:
        return _outlines(answer, labels, done, started)
    findings = answer.get("findings")
    probs = findings.get("probabilities") if isinstance(findings, dict) else None
    if not isinstance(probs, dict):
        return unavailable(f"endpoint {endpoint} gave no class probabilities (is it a classifier?)", started)
    kept = {name: round(float(probs[name]), 4) for name in labels
            if isinstance(probs.get(name), int | float) and not isinstance(probs.get(name), bool)}
    if not kept:
        return unavailable(f"the model's classes ({', '.join(list(probs)[:5])}) are none of this job's labels",
                            started)
    return {**done, "kind": "classes", "probabilities": kept,
            "suggested": [n for n, p in kept.items() if p >= THRESHOLD], "threshold": THRESHOLD,
            "ms": round((time.perf_counter() - started) * 1000, 1)}


def _outlines(answer: dict[str, Any], labels: Sequence[str], done: dict[str, Any], started: float) -> dict[str, Any]:
    contours = answer.get("contours")
    if answer.get("task") != "segmentation3d" or not isinstance(contours, list):
        return unavailable(f"the model is a {answer.get('task') or 'model'} without outlines; series suggestions "
                            "need a segmentation model", started)
    kept = [c for c in contours if isinstance(c, dict) and c.get("label") in labels]
    points = sum(len(c.get("points") or ()) for c in kept)
    if points > MAX_SUGGESTED_POINTS:
        return unavailable(f"the model's outlines have {points} points, more than a task shows "
                            f"({MAX_SUGGESTED_POINTS})", started)
    if contours and not kept:
        return unavailable("the model's structures are none of this job's labels", started)
    return {**done, "kind": "outlines", "outlines": kept, "structures": sorted({c["label"] for c in kept}),
            "ms": round((time.perf_counter() - started) * 1000, 1)}


def outcome(suggested: Sequence[str], final: Sequence[str]) -> dict[str, Any]:
    """How a suggestion fared against the consolidated labels: per suggested class ``kept`` or ``rejected``,
    the classes people ``added``, and the share of suggested classes kept (``acceptance``)."""
    final_set = set(final)
    classes = {name: ("kept" if name in final_set else "rejected") for name in suggested}
    kept = sum(v == "kept" for v in classes.values())
    return {"classes": classes, "added": [n for n in final if n not in set(suggested)],
            "acceptance": round(kept / len(classes), 4) if classes else None}


def outline_outcome(shown: Sequence[dict[str, Any]], rois: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How one worker left the model's outlines: ``kept`` as suggested, ``changed`` (edited), ``rejected``
    (deleted), of ``shown``."""
    left = {r["suggestion"]: bool(r.get("edited")) for r in rois if r.get("suggestion")}
    ids = {o["suggestion"] for o in shown}
    kept = sum(1 for i in ids if i in left and not left[i])
    changed = sum(1 for i in ids if left.get(i))
    return {"shown": len(ids), "kept": kept, "changed": changed, "rejected": len(ids) - kept - changed}
