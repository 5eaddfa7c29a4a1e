"""AI pre-labels: the model's probabilities for an image, shown to the worker as suggestions.

The pre-label Lambda asks a real-time classification endpoint (``DICOMFLOW_PRELABEL_ENDPOINT``) about the
object with a study JSON (``outputs: ["json"]``, nothing stored) and adds ``suggestions`` to the task input::

    {"status": "ok", "model": {"name", "version"}, "probabilities": {"<label>": p, ...},
     "suggested": ["<label>", ...], "threshold": 0.5, "ms": 41.0}
    {"status": "unavailable", "reason": "the model did not answer within 5 s", "ms": 5003.0}

Only the job's own labels are kept. A model that is down, slow (``DICOMFLOW_PRELABEL_TIMEOUT_SECONDS``),
of another task or of other classes never blocks labeling: the task goes out with an ``unavailable``
suggestion that says why. The template shows suggestions marked as the model's and never ticks them for the
worker; the worker's answer echoes what was suggested (``suggestion``), so that the consolidation can record
which suggestions people kept, which they rejected and what they added.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from dicomflow import aws

THRESHOLD = 0.5


def _unavailable(reason: str, started: float) -> dict[str, Any]:
    return {"status": "unavailable", "reason": reason, "ms": round((time.perf_counter() - started) * 1000, 1)}


def suggest(endpoint: str, study_uid: str, series_uid: str, labels: Sequence[str], *, instances: int,
            timeout_s: float, runtime_client: Any = None) -> dict[str, Any]:
    """The suggestions for one image (the only instance of its series); never raises."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    started = time.perf_counter()
    if instances < 1:
        return _unavailable("the images of its series could not be counted (the PACS did not answer)", started)
    if instances != 1:
        return _unavailable(f"the model scores one image per series and this series has {instances}; "
                            "no suggestions for series yet", started)
    client = runtime_client or aws.client("sagemaker-runtime", config=Config(
        connect_timeout=min(timeout_s, 2.0), read_timeout=timeout_s, retries={"max_attempts": 1}))
    body = {"studyInstanceUID": study_uid, "seriesInstanceUID": series_uid, "outputs": ["json"],
            "storeToPacs": False}
    try:
        resp = client.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(body).encode(),
                                      ContentType="application/json", Accept="application/json")
        answer = json.loads(resp["Body"].read())
    except ClientError as exc:
        message = exc.response.get("OriginalMessage") or exc.response.get("Error", {}).get("Message") or str(exc)
        return _unavailable(f"endpoint {endpoint} answered an error: {str(message)[:200]}", started)
    except (BotoCoreError, OSError, ValueError) as exc:
        slow = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
        why = f"the model did not answer within {timeout_s:g} s" if slow else f"{type(exc).__name__}: {str(exc)[:200]}"
        return _unavailable(why, started)
    findings = answer.get("findings") if isinstance(answer, dict) else None
    probs = findings.get("probabilities") if isinstance(findings, dict) else None
    if not isinstance(probs, dict):
        return _unavailable(f"endpoint {endpoint} gave no class probabilities (is it a classifier?)", started)
    kept = {name: round(float(probs[name]), 4) for name in labels
            if isinstance(probs.get(name), int | float) and not isinstance(probs.get(name), bool)}
    if not kept:
        return _unavailable(f"the model's classes ({', '.join(list(probs)[:5])}) are none of this job's labels",
                            started)
    model = answer.get("model") if isinstance(answer.get("model"), dict) else {}
    return {"status": "ok", "model": {"name": model.get("name"), "version": model.get("version")},
            "probabilities": kept, "suggested": [n for n, p in kept.items() if p >= THRESHOLD],
            "threshold": THRESHOLD, "ms": round((time.perf_counter() - started) * 1000, 1)}


def outcome(suggested: Sequence[str], final: Sequence[str]) -> dict[str, Any]:
    """How a suggestion fared against the consolidated labels: per suggested class ``kept`` or ``rejected``,
    the classes people ``added``, and the share of suggested classes kept (``acceptance``)."""
    final_set = set(final)
    classes = {name: ("kept" if name in final_set else "rejected") for name in suggested}
    kept = sum(v == "kept" for v in classes.values())
    return {"classes": classes, "added": [n for n in final if n not in set(suggested)],
            "acceptance": round(kept / len(classes), 4) if classes else None}
