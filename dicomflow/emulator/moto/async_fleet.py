"""The instances of one asynchronous endpoint and its queue: requests wait until an instance takes them.

A :class:`Fleet` holds the endpoint's queued requests and its serving processes ("instances", each started
by :func:`dicomflow.emulator.moto.endpoints.start_instance` with its own model copy). Each instance runs
``MaxConcurrentInvocationsPerInstance`` workers that take requests from the one queue. How many instances
there should be is decided elsewhere (:mod:`dicomflow.emulator.moto.autoscaling`) and applied with
:meth:`Fleet.scale_to`:

* growing starts processes in the background (requests keep waiting, never dropped, while none is up);
* shrinking *drains*: the instance takes no new request, finishes those it runs, then its process stops;
* at 0 instances requests stay queued (until ``RequestTTLSeconds``, checked when one is taken);
* an instance that cannot start fails the queued requests with the reason when no other instance serves.

A live process registered for the endpoint by someone else (the SageMaker SDK's host mode,
``<DICOMFLOW_HOME>/endpoints/<name>.json``) is used as the one fixed instance instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dicomflow.emulator.moto import endpoints
from dicomflow.emulator.moto.endpoints import EndpointUnavailable

log = logging.getLogger("dicomflow.sagemaker")

Run = Callable[[Any, str], None]  # (request, instance URL) -> None; records its own output or failure
Fail = Callable[[Any, str], None]  # (request, reason) -> None; records the failure


@dataclass
class Instance:
    index: int
    url: str = ""
    process: endpoints.Process | None = None  # None: an externally registered process
    ready: bool = False
    draining: bool = False
    busy: int = 0
    workers: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Fleet:
    """Queue + instances of one async endpoint (its name, Model spec and per-instance concurrency)."""

    def __init__(self, view: Any, per_instance: int, run: Run, fail: Fail,
                 changed: Callable[[], None] = lambda: None) -> None:
        self.view = view
        self.per_instance = max(1, per_instance)
        self._run, self._fail, self._changed = run, fail, changed
        self.queue: deque[Any] = deque()
        self.instances: list[Instance] = []
        self.in_flight = 0
        self.closed = False
        self.cond = threading.Condition()
        self._next_index = 0

    # ---- state -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.view.name

    def counts(self) -> tuple[int, int, int]:
        """(backlog = queued + running, instances serving or starting, instances serving)."""
        with self.cond:
            active = [i for i in self.instances if not i.draining]
            return len(self.queue) + self.in_flight, len(active), sum(1 for i in active if i.ready)

    def oldest_age(self) -> float:
        with self.cond:
            return time.monotonic() - self.queue[0].received_monotonic if self.queue else 0.0

    def external(self) -> bool:
        with self.cond:
            return any(i.process is None and i.ready for i in self.instances)

    # ---- requests ----------------------------------------------------------------------------

    def submit(self, request: Any) -> None:
        with self.cond:
            if self.closed:
                raise EndpointUnavailable(f"endpoint {self.name} is being deleted")
            self.queue.append(request)
            self.cond.notify_all()

    def _worker(self, instance: Instance) -> None:
        while True:
            with self.cond:
                while not self.queue and not instance.draining:
                    self.cond.wait()
                if instance.draining:
                    instance.workers -= 1
                    last = instance.workers == 0
                    break
                if instance.process is not None and not instance.process.alive():
                    instance.draining = True  # it died (a crash): the request waits for another instance
                    instance.workers -= 1
                    last = instance.workers == 0
                    break
                request = self.queue.popleft()
                self.in_flight += 1
                instance.busy += 1
            try:
                self._run(request, instance.url)
            except Exception:  # the runner records failures itself; a worker must never die
                log.exception("async request on %s instance %d", self.name, instance.index)
            finally:
                with self.cond:
                    self.in_flight -= 1
                    instance.busy -= 1
                    self.cond.notify_all()
        if last:
            self._stop(instance)

    # ---- instances ---------------------------------------------------------------------------

    def scale_to(self, desired: int) -> None:
        """Start or drain instances until ``desired`` are serving or starting."""
        with self.cond:
            if self.closed:
                return
            active = [i for i in self.instances if not i.draining]
            if any(i.process is None for i in active):
                return  # an external process: one fixed instance
            for _ in range(desired - len(active)):
                instance = Instance(self._next_index)
                self._next_index += 1
                self.instances.append(instance)
                threading.Thread(target=self._start, args=(instance,), daemon=True,
                                 name=f"start-{self.name}-{instance.index}").start()
            surplus = len(active) - desired
            # drain the idle and the still-starting first, the newest first
            for instance in sorted(active, key=lambda i: (i.busy > 0, i.ready, -i.index))[:max(0, surplus)]:
                self._drain(instance)

    def _drain(self, instance: Instance) -> None:
        """Take no new request; stop after the running ones (caller holds the lock)."""
        instance.draining = True
        self.cond.notify_all()

    def _start(self, instance: Instance) -> None:
        external = endpoints.read_registry(self.name) if instance.index == 0 else None
        try:
            if external:
                instance.url = external
            else:
                instance.process = endpoints.start_instance(self.name, self.view.spec, instance.index)
                instance.url = instance.process.url
        except EndpointUnavailable as exc:
            log.warning("endpoint %s: instance %d did not start: %s", self.name, instance.index, exc)
            with self.cond:
                self.instances.remove(instance)
                serving = any(i.ready and not i.draining for i in self.instances)
                failed = [] if serving else list(self.queue)
                if not serving:
                    self.queue.clear()
            for request in failed:
                self._fail(request, f"ServerError: {exc}")
            self._changed()
            return
        with self.cond:
            instance.ready = True
            instance.workers = self.per_instance
            if instance.draining or self.closed:
                instance.workers = 0
                stop_now = True
            else:
                stop_now = False
                for n in range(self.per_instance):
                    threading.Thread(target=self._worker, args=(instance,), daemon=True,
                                     name=f"async-{self.name}-{instance.index}-{n}").start()
        log.info("endpoint %s: instance %d serving at %s", self.name, instance.index, instance.url)
        self._record()
        self._changed()
        if stop_now:
            self._stop(instance)

    def _stop(self, instance: Instance) -> None:
        if instance.process is not None:
            instance.process.stop()
        with self.cond:
            if instance in self.instances:
                self.instances.remove(instance)
        log.info("endpoint %s: instance %d stopped", self.name, instance.index)
        self._record()
        self._changed()

    def _record(self) -> None:
        """``<DICOMFLOW_HOME>/endpoints/<name>/instances.json``: the serving instances (index, url, pid)."""
        with self.cond:
            rows = [{"index": i.index, "url": i.url, "pid": i.process.proc.pid if i.process else None,
                     "draining": i.draining} for i in self.instances if i.ready]
        endpoints.write_json(endpoints.instances_path(self.name), rows)

    def replace(self, view: Any, per_instance: int) -> None:
        """The endpoint now runs another Model/config: drain every instance; new ones start from ``view``."""
        with self.cond:
            self.view, self.per_instance = view, max(1, per_instance)
            for instance in [i for i in self.instances if not i.draining]:
                self._drain(instance)

    def close(self, reason: str, *, fail_queued: bool = True) -> None:
        """The endpoint is gone: queued requests fail with ``reason``, instances drain and stop."""
        with self.cond:
            self.closed = True
            failed = list(self.queue) if fail_queued else []
            self.queue.clear()
            for instance in [i for i in self.instances if not i.draining]:
                self._drain(instance)
        for request in failed:
            self._fail(request, reason)

    def kill(self) -> None:
        """Stop every process now (the emulator is shutting down)."""
        with self.cond:
            self.closed = True
            self.queue.clear()
            instances = list(self.instances)
            for instance in instances:
                instance.draining = True
            self.cond.notify_all()
        for instance in instances:
            if instance.process is not None:
                instance.process.stop()
