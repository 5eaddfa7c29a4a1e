"""The local Ground Truth job: task queue, pre-label and consolidation Lambdas, output manifest.

It follows GT's contract: each input manifest line is a data object; the pre-label Lambda turns it
into ``taskInput`` (a failure fails that object only); each object goes to ``N`` distinct workers;
once ``N`` answers are in, the consolidation Lambda gets GT's event and its answer becomes the
object's output manifest line. Both Lambdas are invoked through ``lambda:Invoke`` (the emulator
locally, AWS otherwise).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dicomflow import aws
from dicomflow.emulator.groundtruth.render import WorkerTemplate
from dicomflow.emulator.groundtruth.store import JobStore, iso_now
from dicomflow.errors import DicomflowError
from dicomflow.groundtruth import manifest, signing
from dicomflow.groundtruth.job_request import JobRequest
from dicomflow.groundtruth.labels import CHEXPERT_CLASSES, parse_label_category_config

log = logging.getLogger(__name__)
MAX_ANSWER_BYTES = 1_000_000
CONSOLIDATION_ATTEMPTS = 3  # a consolidation Lambda that fails is invoked again, after 2 s then 4 s
CONSOLIDATION_BACKOFF_S = 2.0


class LabelingJobError(DicomflowError):
    """The local labeling job cannot go on; the message says why and how to fix it."""


class LambdaInvokeError(DicomflowError):
    """A Lambda returned an error (FunctionError) or could not be invoked."""


def invoke_lambda(client: Any, arn: str, event: Any) -> Any:
    """``lambda:Invoke`` (RequestResponse); the handler's error becomes :class:`LambdaInvokeError`."""
    try:
        resp = client.invoke(FunctionName=arn, InvocationType="RequestResponse",
                             Payload=json.dumps(event).encode())
    except client.exceptions.ResourceNotFoundException:
        raise LambdaInvokeError(f"Lambda {arn} does not exist; deploy it ('dicomflow infra deploy')") from None
    body = resp["Payload"].read()
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        raise LambdaInvokeError(f"Lambda {arn.rsplit(':', 1)[-1]} returned non-JSON") from None
    if resp.get("FunctionError"):
        msg = payload.get("errorMessage") if isinstance(payload, dict) else str(payload)
        raise LambdaInvokeError(f"{arn.rsplit(':', 1)[-1]}: {msg}")
    return payload


def rebase_gateway_urls(value: Any) -> Any:
    """Point WADO URLs at the portal's own origin (``/wado?...``): the signature does not cover the host."""
    if isinstance(value, dict):
        return {k: rebase_gateway_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase_gateway_urls(v) for v in value]
    if isinstance(value, str) and value.startswith(("http://", "https://")) and "sig=" in value:
        parts = urlsplit(value)
        if parts.path.endswith("/wado"):
            return f"/wado?{parts.query}"
    return value


@dataclass
class Assignment:
    id: str
    worker: str
    index: int
    task_input: dict[str, Any]
    accepted: float = field(default_factory=time.time)
    accepted_iso: str = field(default_factory=iso_now)


class LocalLabelingJob:
    """One labeling job run locally. Thread-safe; the portal calls it from request threads."""

    def __init__(self, request: JobRequest, *, data_dir: Path | None = None, workers: int | None = None,
                 template_source: str | None = None, lambda_client: Any = None, s3: Any = None) -> None:
        self.request = request
        self.s3 = s3 or aws.client("s3")
        self.lambdas = lambda_client or aws.client("lambda")
        self.store = JobStore(request, data_dir, self.s3)
        self.worker_count = max(workers or 0, request.workers_per_object)
        self._lock = threading.RLock()
        self._assignments: dict[str, Assignment] = {}
        self._task_cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._consolidator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consolidate")
        self._pending: list[Future] = []
        self.arn = request.job_arn(aws.region(), self._account())
        self.scope = signing.job_scope(self.arn)
        self.objects = self._read_manifest()
        self.labels = self._read_labels()
        self.template = WorkerTemplate(template_source if template_source is not None else self._read_template())
        state = self.store.read_state()
        self.failed: dict[int, str] = {int(k): v for k, v in state.get("failed", {}).items()}
        self.skipped: set[int] = set(state.get("skipped", []))
        self.responses = self.store.worker_responses()
        self.consolidated: dict[int, dict[str, Any]] = {}
        self.consolidation_errors: dict[int, str] = {}
        for index, resp in self.store.consolidation_responses().items():
            line = self._output_line(index, resp)
            if line is not None:
                self.consolidated[index] = line
        self.worker_record, self.new_tokens = self.store.workers(self.worker_count)
        self._save_state()
        # answers complete but not consolidated before a restart: consolidate now
        for index, answers in self.responses.items():
            if len(answers) >= request.workers_per_object and index not in self.consolidated:
                self._schedule_consolidation(index)

    # ---- set-up ----------------------------------------------------------------------------------
    def _account(self) -> str:
        try:
            return aws.client("sts").get_caller_identity()["Account"]
        except Exception:  # noqa: BLE001 - only used to build the job ARN
            return "000000000000"

    def _read_manifest(self) -> list[dict[str, Any]]:
        try:
            lines = manifest.read_jsonl_s3(self.request.manifest_uri, s3=self.s3)
        except DicomflowError as exc:
            raise LabelingJobError(f"input manifest: {exc}") from None
        if not lines:
            raise LabelingJobError(f"input manifest {self.request.manifest_uri} is empty; build one with "
                                   "'dicomflow label manifest'")
        for i, line in enumerate(lines):
            if not isinstance(line, dict) or not any(k in line for k in manifest.SOURCE_KEYS):
                raise LabelingJobError(f"input manifest line {i + 1} has neither source nor source-ref")
        return lines

    def _read_labels(self) -> list[str]:
        uri = self.request.label_category_config_uri
        if not uri:
            return list(CHEXPERT_CLASSES)
        try:
            return parse_label_category_config(manifest.read_json_s3(uri, s3=self.s3))
        except DicomflowError as exc:
            raise LabelingJobError(f"LabelCategoryConfigS3Uri {uri}: {exc}") from None

    def _read_template(self) -> str:
        try:
            return aws.read(self.request.ui_template_uri, s3=self.s3).decode()
        except DicomflowError as exc:
            raise LabelingJobError(f"UiTemplateS3Uri: {exc}; upload the template "
                                   "(labeling_ui/template.liquid.html)") from None

    def signing_key(self) -> bytes:
        """The pre-label Lambda's signing key (from its configuration), else this process's."""
        try:
            env = self.lambdas.get_function_configuration(FunctionName=self.request.pre_lambda_arn)
            variables = env.get("Environment", {}).get("Variables", {})
        except Exception:  # noqa: BLE001 - fall back to this process's settings
            variables = {}
        if variables.get(signing.SIGNING_SECRET_ENV):
            return signing.signing_key(variables[signing.SIGNING_SECRET_ENV])
        if variables.get(signing.SIGNING_KEY_ENV):
            return variables[signing.SIGNING_KEY_ENV].encode()
        return signing.signing_key()

    # ---- queue -----------------------------------------------------------------------------------
    def _open(self, index: int) -> bool:
        return index not in self.failed and index not in self.skipped and index not in self.consolidated

    def _busy(self, index: int, worker: str | None = None) -> tuple[int, bool]:
        now = time.time()
        live = [a for a in self._assignments.values()
                if a.index == index and now - a.accepted < self.request.task_time_limit]
        return len(live), any(a.worker == worker for a in live)

    def next_assignment(self, worker: str) -> Assignment | None:
        """The next data object this worker has not answered and that still needs answers."""
        with self._lock:
            for a in self._assignments.values():  # a worker reloading the page keeps its task
                if a.worker == worker and time.time() - a.accepted < self.request.task_time_limit:
                    return a
        for index in range(len(self.objects)):
            with self._lock:
                if not self._open(index):
                    continue
                answers = self.responses.get(index, [])
                if any(a.get("workerId") == worker for a in answers):
                    continue
                live, mine = self._busy(index, worker)
                if mine or len(answers) + live >= self.request.workers_per_object:
                    continue
                assignment = Assignment(secrets.token_urlsafe(16), worker, index, {})
                self._assignments[assignment.id] = assignment  # reserve before the slow Lambda call
            try:
                assignment.task_input = self.task_input(index)
            except LambdaInvokeError as exc:
                with self._lock:
                    self._assignments.pop(assignment.id, None)
                    self.failed[index] = str(exc)
                    self._save_state()
                log.warning("data object %d failed pre-labeling: %s", index, exc)
                continue
            if assignment.task_input is None:
                with self._lock:
                    self._assignments.pop(assignment.id, None)
                continue
            return assignment
        return None

    def task_input(self, index: int) -> dict[str, Any] | None:
        """Pre-label the object (cached while its signed URLs stay valid for a whole task)."""
        cached = self._task_cache.get(index)
        if cached and cached[0] - time.time() > self.request.task_time_limit:
            return cached[1]
        event = {"version": "2018-10-16", "labelingJobArn": self.arn, "dataObject": self.objects[index]}
        response = invoke_lambda(self.lambdas, self.request.pre_lambda_arn, event)
        if not isinstance(response, dict) or not isinstance(response.get("taskInput"), dict):
            raise LambdaInvokeError("pre-label Lambda returned no taskInput")
        if str(response.get("isHumanAnnotationRequired", "true")).lower() != "true":
            with self._lock:
                self.skipped.add(index)
                self._save_state()
            return None
        task = rebase_gateway_urls(response["taskInput"])
        expires = task.get("urlExpires") if isinstance(task.get("urlExpires"), int) else time.time() + 600
        self._task_cache[index] = (expires, task)
        return task

    def assignment(self, assignment_id: str) -> Assignment | None:
        with self._lock:
            return self._assignments.get(assignment_id)

    def render(self, assignment: Assignment, viewer_base_url: str) -> str:
        return self.template.render(assignment.task_input, viewer_base_url=viewer_base_url)

    # ---- answers ---------------------------------------------------------------------------------
    def submit(self, worker: str, assignment_id: str, content: Any) -> dict[str, Any]:
        """Accept a worker's answer: GT's worker-response file in S3, then consolidation when complete."""
        if not isinstance(content, dict):
            raise LabelingJobError("the answer must be a JSON object of the form's fields")
        if len(json.dumps(content)) > MAX_ANSWER_BYTES:
            raise LabelingJobError("the answer is larger than 1 MB")
        with self._lock:
            a = self._assignments.get(assignment_id)
            if a is None or a.worker != worker:
                raise LabelingJobError("this task is not assigned to you (expired or already submitted); "
                                       "open the portal again for a new task")
            now = time.time()
            record = {
                "acceptanceTime": a.accepted_iso,
                "answerContent": content,
                "submissionTime": iso_now(),
                "timeSpentInSeconds": round(now - a.accepted, 3),
                "workerId": worker,
                "workerMetadata": {"identityData": {"identityProviderType": "dicomflow-local",
                                                    "issuer": "dicomflow", "sub": worker}},
            }
            self.store.write_worker_response(a.index, record)
            self.responses.setdefault(a.index, []).append(record)
            del self._assignments[assignment_id]
            complete = len(self.responses[a.index]) >= self.request.workers_per_object
        if complete:
            self._schedule_consolidation(a.index)
        return {"ok": True, "dataObject": a.index, "complete": complete}

    def _schedule_consolidation(self, index: int) -> None:
        self._pending.append(self._consolidator.submit(self._consolidate, index))

    def _consolidate(self, index: int) -> None:
        answers = self.responses.get(index, [])
        payload = [{
            "datasetObjectId": str(index),
            "dataObject": self.objects[index],
            "annotations": [{"workerId": a["workerId"],
                             "annotationData": {"content": json.dumps(a["answerContent"])}} for a in answers],
        }]
        event = {
            "version": "2018-10-16",
            "labelingJobArn": self.arn,
            "labelCategories": self.labels,
            "labelAttributeName": self.request.label_attribute,
            "roleArn": self.request.role_arn,
            "payload": {"s3Uri": self.store.write_consolidation_request(index, payload)},
            "outputConfig": self.store.consolidation_response_dir(),
        }
        for attempt in range(1, CONSOLIDATION_ATTEMPTS + 1):
            try:
                response = invoke_lambda(self.lambdas, self.request.consolidation_lambda_arn, event)
            except DicomflowError as exc:  # the invoke failed (an error, a timeout): worth another try
                last = attempt == CONSOLIDATION_ATTEMPTS
                self._consolidation_failed(index, f"attempt {attempt} of {CONSOLIDATION_ATTEMPTS}: {exc}", last)
                if last:
                    return
                time.sleep(CONSOLIDATION_BACKOFF_S * 2 ** (attempt - 1))
                continue
            line = self._output_line(index, response)
            if line is None:  # the function answered without this object: the same answer again
                self._consolidation_failed(index, "consolidation Lambda returned nothing for this data object",
                                          True)
                return
            break
        self.store.write_consolidation_response(index, response)
        with self._lock:
            self.consolidated[index] = line
            self.consolidation_errors.pop(index, None)
            lines = [self.consolidated[i] for i in sorted(self.consolidated)]
        self.store.write_output_manifest(lines)
        self._save_state()

    def _consolidation_failed(self, index: int, reason: str, last: bool) -> None:
        with self._lock:
            self.consolidation_errors[index] = reason
        log.log(logging.ERROR if last else logging.WARNING, "consolidation of data object %d failed: %s%s",
                index, reason, "" if last else "; trying again")

    def _output_line(self, index: int, response: Any) -> dict[str, Any] | None:
        if not isinstance(response, list) or index >= len(self.objects):
            return None
        for item in response:
            if isinstance(item, Mapping) and str(item.get("datasetObjectId")) == str(index):
                content = (item.get("consolidatedAnnotation") or {}).get("content") or {}
                attr = self.request.label_attribute
                if attr not in content:
                    return None
                line = manifest.output_line(self.objects[index], attr, content[attr], self.request.name)
                if f"{attr}-metadata" in content:
                    line[f"{attr}-metadata"] = {**line[f"{attr}-metadata"], **content[f"{attr}-metadata"]}
                return line
        return None

    def wait_idle(self, timeout: float = 120) -> None:
        """Wait for scheduled consolidations (tests, demo)."""
        deadline = time.time() + timeout
        for fut in list(self._pending):
            fut.result(timeout=max(0.1, deadline - time.time()))

    # ---- progress --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        with self._lock:
            return all(not self._open(i) for i in range(len(self.objects)))

    def status(self) -> dict[str, Any]:
        with self._lock:
            n = len(self.objects)
            answers = sum(len(v) for v in self.responses.values())
            return {
                "job": self.request.name,
                "status": "Completed" if self.done else "InProgress",
                "objects": n,
                "workersPerObject": self.request.workers_per_object,
                "answers": answers,
                "answersNeeded": (n - len(self.failed) - len(self.skipped)) * self.request.workers_per_object,
                "consolidated": len(self.consolidated),
                "failed": {str(k): v for k, v in sorted(self.failed.items())},
                "skipped": sorted(self.skipped),
                "consolidationErrors": {str(k): v for k, v in self.consolidation_errors.items()},
                "perWorker": {w: sum(1 for v in self.responses.values() for a in v if a.get("workerId") == w)
                              for w in self.worker_record["workers"]},
                "outputManifest": self.store.output_manifest_uri(),
            }

    def _save_state(self) -> None:
        with self._lock:
            self.store.write_state({
                "request": dict(self.request.raw),
                "arn": self.arn,
                "failed": {str(k): v for k, v in self.failed.items()},
                "skipped": sorted(self.skipped),
                "updated": iso_now(),
            })

    def close(self) -> None:
        self._consolidator.shutdown(wait=True)
