"""Local Ground Truth: run a ``CreateLabelingJob`` request against the local cloud (or AWS services).

:func:`run_job` starts a job and its worker portal in this process; ``dicomflow label start`` is the
command-line face of it. Modules: :mod:`.request` (the job request), :mod:`.job` (queue, Lambdas,
output), :mod:`.store` (GT's S3 layout + local state), :mod:`.render` (Liquid with GT's filters),
:mod:`.gateway` (signed WADO proxy), :mod:`.portal` (HTTP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomflow.credentials import PacsConnection, pacs_connection
from dicomflow.emulator.groundtruth.gateway import WadoGateway
from dicomflow.emulator.groundtruth.job import LabelingJobError, LocalLabelingJob
from dicomflow.emulator.groundtruth.portal import VIEWER_DIR, Portal, PortalError
from dicomflow.emulator.groundtruth.store import JobStore
from dicomflow.groundtruth.job_request import JobRequest, JobRequestError, load_request, parse_request

__all__ = ["JobRequest", "JobRequestError", "LabelingJobError", "LocalLabelingJob", "Portal", "PortalError",
           "RunningJob", "load_request", "parse_request", "run_job", "job_status"]


@dataclass
class RunningJob:
    """A job with its portal serving; ``signin_urls`` holds tokens created (or reset) by this start."""

    job: LocalLabelingJob
    portal: Portal
    signin_urls: dict[str, str]

    @property
    def url(self) -> str:
        return self.portal.url

    def signin_url(self, worker: str) -> str:
        """A sign-in URL for ``worker`` (resets its token if this run did not create it)."""
        if worker not in self.signin_urls:
            token = self.job.store.reset_token(self.job.worker_record, worker)
            self.signin_urls[worker] = self.portal.signin_url(token)
        return self.signin_urls[worker]

    def stop(self) -> None:
        self.portal.stop()
        self.job.close()


def run_job(request: JobRequest | Mapping[str, Any] | str | Path, *, data_dir: Path | None = None,
            workers: int | None = None, host: str = "127.0.0.1", port: int = 0,
            pacs: PacsConnection | None = None, template_source: str | None = None,
            viewer_dir: Path = VIEWER_DIR) -> RunningJob:
    """Start (or resume) a labeling job and serve its portal in a background thread."""
    if isinstance(request, str | Path):
        request = load_request(request)
    elif not isinstance(request, JobRequest):
        request = parse_request(request)
    job = LocalLabelingJob(request, data_dir=data_dir, workers=workers, template_source=template_source)
    gateway = WadoGateway(pacs or pacs_connection(), job.signing_key(), job.scope)
    portal = Portal(job, gateway, host=host, port=port, viewer_dir=viewer_dir).start()
    urls = {w: portal.signin_url(t) for w, t in job.new_tokens.items()}
    if urls:
        job.store.write_signin_urls(urls)
    return RunningJob(job, portal, urls)


def job_status(request: JobRequest, data_dir: Path | None = None) -> dict[str, Any]:
    """Progress of a job from its S3 layout and local state, without a running portal."""
    store = JobStore(request, data_dir)
    state = store.read_state()
    responses = store.worker_responses()
    consolidated = store.consolidation_responses()
    from dicomflow.groundtruth import manifest

    try:
        objects = len(manifest.read_jsonl_s3(request.manifest_uri))
    except Exception:  # noqa: BLE001 - status still shows what it can
        objects = None
    failed = state.get("failed", {})
    skipped = state.get("skipped", [])
    done = objects is not None and len(consolidated) + len(failed) + len(skipped) >= objects
    return {
        "job": request.name,
        "status": "Completed" if done else ("InProgress" if state else "NotStarted"),
        "objects": objects,
        "workersPerObject": request.workers_per_object,
        "answers": sum(len(v) for v in responses.values()),
        "consolidated": len(consolidated),
        "failed": failed,
        "skipped": skipped,
        "outputManifest": store.output_manifest_uri(),
    }
