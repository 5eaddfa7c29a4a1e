"""Where a local labeling job keeps its state: GT's S3 layout for answers and results, the data dir
for what is local only (worker sign-in secrets, the job request, failures).

S3, under ``<S3OutputPath>/<job>/`` exactly as Ground Truth lays it out::

    annotations/worker-response/iteration-1/<n>/<timestamp>.json      one file per submitted answer
    annotations/consolidated-annotation/consolidation-request/iteration-1/<n>-<timestamp>.json
    annotations/consolidated-annotation/consolidation-response/iteration-1/<n>-<timestamp>.json
    manifests/output/output.manifest                                   input line + label attribute

Submitted answers live in S3 the moment they are accepted, so a restarted portal rebuilds its
progress from the listing and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomflow import aws
from dicomflow.config import Settings, write_secret_file
from dicomflow.groundtruth.job_request import JobRequest

ITERATION = "iteration-1"


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%S.%fZ")


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JobStore:
    """S3 + data-dir persistence of one labeling job."""

    def __init__(self, request: JobRequest, data_dir: Path | None = None, s3: Any = None) -> None:
        self.request = request
        self.s3 = s3 or aws.client("s3")
        self.bucket, prefix = aws.parse_s3_uri(request.output_prefix)
        self.prefix = prefix.strip("/")
        base = Path(data_dir) if data_dir else Settings.load().data_dir
        self.dir = base / "labeling" / request.name

    # ---- S3 layout -----------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def uri(self, key: str) -> str:
        return aws.s3_uri(self.bucket, key)

    def _put(self, key: str, body: bytes, content_type: str = "application/json") -> str:
        aws.write(self.uri(key), body, content_type, s3=self.s3)
        return self.uri(key)

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def _get_json(self, key: str) -> Any:
        return json.loads(aws.read(self.uri(key), s3=self.s3))

    def write_worker_response(self, index: int, answer: dict[str, Any]) -> str:
        key = self.key("annotations", "worker-response", ITERATION, str(index), f"{now_stamp()}.json")
        return self._put(key, json.dumps({"answers": [answer]}).encode())

    def worker_responses(self) -> dict[int, list[dict[str, Any]]]:
        """Every accepted answer, by data object index (GT's ``answers`` entries)."""
        out: dict[int, list[dict[str, Any]]] = {}
        for key in self._list(self.key("annotations", "worker-response", ITERATION) + "/"):
            try:
                index = int(key.rsplit("/", 2)[-2])
                answers = self._get_json(key).get("answers", [])
            except (ValueError, KeyError, AttributeError):
                continue  # not ours / unreadable: ignored, never fatal
            out.setdefault(index, []).extend(a for a in answers if isinstance(a, dict))
        return out

    def write_consolidation_request(self, index: int, payload: list[dict[str, Any]]) -> str:
        key = self.key("annotations", "consolidated-annotation", "consolidation-request", ITERATION,
                       f"{index}-{now_stamp()}.json")
        return self._put(key, json.dumps(payload).encode())

    def consolidation_response_dir(self) -> str:
        return self.uri(self.key("annotations", "consolidated-annotation", "consolidation-response"))

    def write_consolidation_response(self, index: int, response: Any) -> str:
        key = self.key("annotations", "consolidated-annotation", "consolidation-response", ITERATION,
                       f"{index}-{now_stamp()}.json")
        return self._put(key, json.dumps(response).encode())

    def consolidation_responses(self) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for key in self._list(self.key("annotations", "consolidated-annotation", "consolidation-response",
                                       ITERATION) + "/"):
            try:
                index = int(key.rsplit("/", 1)[-1].split("-", 1)[0])
                out[index] = self._get_json(key)  # later files (sorted by time) win
            except ValueError:
                continue
        return out

    def output_manifest_uri(self) -> str:
        return self.uri(self.key("manifests", "output", "output.manifest"))

    def write_output_manifest(self, lines: list[dict[str, Any]]) -> str:
        body = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
        return self._put(self.key("manifests", "output", "output.manifest"), body, "application/jsonlines")

    # ---- data dir --------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def workers_path(self) -> Path:
        return self.dir / "workers.json"

    @property
    def signin_path(self) -> Path:
        return self.dir / "sign-in-urls.txt"

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}

    def write_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_path)

    def workers(self, count: int) -> tuple[dict[str, Any], dict[str, str]]:
        """(the 0600 worker record, {worker id: token} for workers created now).

        Tokens are stored only as SHA-256; a new token is shown once, at creation.
        """
        try:
            record = json.loads(self.workers_path.read_text())
        except FileNotFoundError:
            record = {"cookieSecret": secrets.token_urlsafe(32), "workers": {}}
        created: dict[str, str] = {}
        for i in range(1, count + 1):
            wid = f"worker-{i}"
            if wid not in record["workers"]:
                token = secrets.token_urlsafe(24)
                record["workers"][wid] = {"tokenSha256": hash_token(token)}
                created[wid] = token
        if created or not self.workers_path.exists():
            write_secret_file(self.workers_path, record)
        return record, created

    def write_signin_urls(self, urls: dict[str, str]) -> Path:
        """Append new sign-in URLs to a 0600 file (the only place they are kept in clear)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.signin_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            for wid, url in urls.items():
                fh.write(f"{wid} {url}\n")
        os.chmod(self.signin_path, 0o600)
        return self.signin_path

    def reset_token(self, record: dict[str, Any], worker: str) -> str:
        """A new sign-in token for ``worker`` (the old one stops working)."""
        token = secrets.token_urlsafe(24)
        record["workers"][worker] = {"tokenSha256": hash_token(token)}
        write_secret_file(self.workers_path, record)
        return token
