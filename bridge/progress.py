"""What tells the poller's slow job from a stuck one: progress, as the job in hand makes it.

A poll over a large backlog may run for many minutes and is healthy as long as it keeps
going; a job waiting on nothing that will ever come is not. Each HTTP attempt that ends
(answered or not) and each second spent waiting for a rate budget counts as progress of the
job that made it; `/health` calls a job stuck when it has made none for a while
(bridge.admin.health). The job is known through a context variable, so the outbox's worker
threads (which copy the job's context) report for it too.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

_REPORT: ContextVar[Callable[[], None] | None] = ContextVar("progress_report", default=None)


def made() -> None:
    """The job in hand moved on (a no-op outside a watched job)."""
    report = _REPORT.get()
    if report is not None:
        report()


class JobWatch:
    """The poller's jobs in progress: when each started and when it last made progress."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, dict[str, float]] = {}

    @contextmanager
    def running(self, job: str) -> Iterator[None]:
        now = self.clock()
        with self._lock:
            self._running[job] = {"since": now, "progress": now}

        def report() -> None:
            with self._lock:
                if job in self._running:
                    self._running[job]["progress"] = self.clock()

        token = _REPORT.set(report)
        try:
            yield
        finally:
            _REPORT.reset(token)
            with self._lock:
                self._running.pop(job, None)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """{job: {"since": start, "progress": last progress}} for the jobs running now."""
        with self._lock:
            return {job: dict(times) for job, times in self._running.items()}
