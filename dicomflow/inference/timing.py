"""Wall-clock time per named stage of one request (milliseconds).

The request's start is also kept as wall-clock time (``started_at``, epoch seconds) so a caller of
an async endpoint can add the queue time: from its ``InvokeEndpointAsync`` call to the start of
processing (:func:`queue_ms`); the container cannot see that moment, SageMaker does not pass it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

STAGES = ("queue", "query", "retrieve", "preprocess", "model", "postprocess", "encode", "stow", "occlusion")


class StageTimer:
    """``with timer.stage("retrieve"): ...`` adds the elapsed time to that stage."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.started_at = time.time()
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000.0

    def as_dict(self) -> dict[str, float]:
        """Stages in pipeline order plus ``total`` (since construction) and ``overhead`` (total - model)."""
        out = {k: round(self.ms[k], 2) for k in STAGES if k in self.ms}
        out.update({k: round(v, 2) for k, v in self.ms.items() if k not in out})
        total = (time.perf_counter() - self._start) * 1000.0
        out["total"] = round(total, 2)
        return out


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds (``...Z``)."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_utc(text: str) -> float:
    """The inverse of :func:`iso_utc` (any ISO 8601 with a zone is accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def queue_ms(invoked_at: float, started_at: str) -> float:
    """Milliseconds from the invocation (epoch seconds, caller's clock) to ``startedAt`` of the response."""
    return round(max(0.0, (parse_iso_utc(started_at) - invoked_at) * 1000.0), 2)
