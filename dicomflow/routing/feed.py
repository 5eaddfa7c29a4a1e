"""Orthanc's stable-study events to Lambdas: the local cloud's side of auto-routing and search ingestion.

:class:`StableStudyFeed` reads Orthanc's change log (``GET /changes``) from a position it keeps on disk
(``<DICOMFLOW_HOME>/routing/changes.json``) and, for each ``StableStudy`` change (the study received no new
instance for Orthanc's ``StableAge`` seconds), invokes each of its Lambdas in turn (the router; the search
ingester, when given) with ``{"studyInstanceUID": UID}`` and waits for the answer (the router only starts
the inference, so this is quick). A Lambda that fails is asked again at the next polls (the others are not
asked twice); after :data:`ATTEMPTS` the event goes to the dead-letter queue with the function and the
reason (``dlq``) and the feed moves on: nothing is dropped silently, and one bad study never stops the
feed. The position is saved after each change, so a feed restarted after a crash sends one event again
at worst (the router analyses each study once) and never skips one. The change log is
chosen over an Orthanc Python plugin: it needs nothing inside Orthanc, survives Orthanc and feed restarts,
and the same router Lambda serves every PACS that can post a study UID.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from dicomflow import aws
from dicomflow.dicom.orthanc import OrthancRest

log = logging.getLogger("dicomflow.routing.feed")

BATCH = 100
ATTEMPTS = 3


class StableStudyFeed:
    def __init__(self, orthanc: OrthancRest, functions: Sequence[str], state_path: Path, dlq: str | None = None
                 ) -> None:
        if not functions:
            raise ValueError("a stable-study feed needs at least one function to deliver to")
        self.orthanc, self.functions, self.state_path, self.dlq = orthanc, tuple(functions), state_path, dlq
        self._failures: dict[tuple[int, str], int] = {}
        self._delivered: dict[int, set[str]] = {}

    def position(self) -> int:
        try:
            return int(json.loads(self.state_path.read_text())["last"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save(self, last: int) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last": last}))
        os.replace(tmp, self.state_path)

    def skip_to_now(self) -> int:
        """Start from the current end of the change log (ignore studies that arrived before)."""
        self._save(self.orthanc.last_change())
        return self.position()

    def _deliver(self, function: str, uid: str) -> str | None:
        """Invoke ``function`` for ``uid``; None, or why it failed."""
        resp = aws.client("lambda").invoke(FunctionName=function,
                                           Payload=json.dumps({"studyInstanceUID": uid}).encode())
        answer = json.loads(resp["Payload"].read() or b"{}")
        if resp.get("FunctionError"):
            return str(answer.get("errorMessage") or answer)[:1000]
        if isinstance(answer, dict) and answer.get("error"):
            log.warning("%s refused study %s: %s", function, uid, answer["error"])
        return None

    def poll(self) -> list[str]:
        """Deliver every StableStudy after the saved position; the study UIDs done with (delivered to every
        function, or dead-lettered for one that kept failing)."""
        sent: list[str] = []
        while True:
            since = self.position()
            answer = self.orthanc.changes(since, BATCH)
            for change in answer.get("Changes", []):
                seq = int(change.get("Seq", since))
                uid = self.orthanc.study_uid(change["ID"]) if change.get("ChangeType") == "StableStudy" else None
                if uid is not None:
                    if not self._deliver_all(seq, uid):
                        return sent  # asked again at the next poll, from this change
                    sent.append(uid)
                self._save(max(seq, since))
            last = int(answer.get("Last", since))
            self._save(max(last, self.position()))
            if answer.get("Done", True) or last <= since:
                return sent

    def _deliver_all(self, seq: int, uid: str) -> bool:
        """Deliver change ``seq`` to each function not yet done with it; False while one is to be asked again."""
        done = self._delivered.setdefault(seq, set())
        for function in self.functions:
            if function in done:
                continue
            why = self._deliver(function, uid)
            if why is not None:
                tries = self._failures[(seq, function)] = self._failures.get((seq, function), 0) + 1
                log.warning("%s failed on study %s (%d of %d): %s", function, uid, tries, ATTEMPTS, why[:300])
                if tries < ATTEMPTS:
                    return False
                self._dead_letter(function, uid, why)
            else:
                log.info("stable study %s -> %s", uid, function)
            self._failures.pop((seq, function), None)
            done.add(function)
        del self._delivered[seq]
        return True

    def _dead_letter(self, function: str, uid: str, why: str) -> None:
        if not self.dlq:
            log.error("%s failed on study %s %d times and no dead-letter queue is set: %s", function, uid, ATTEMPTS,
                      why)
            return
        aws.client("sqs").send_message(QueueUrl=self.dlq, MessageBody=json.dumps(
            {"event": {"studyInstanceUID": uid}, "function": function, "key": None, "rule": None,
             "reason": f"{function} failed: {why}"}))

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; a failed poll is logged and tried again."""
        while not stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # the feed must outlive a PACS or emulator restart
                log.warning("stable-study feed: %s", exc)
            stop.wait(interval)


def feed_for(data_dir: Path, orthanc: OrthancRest, functions: Sequence[str], dlq: str | None = None
             ) -> StableStudyFeed:
    return StableStudyFeed(orthanc, functions, Path(data_dir) / "routing" / "changes.json", dlq)

