"""Request budgets: stay under Mercado Livre's and Chatwoot's rate limits instead of hitting them.

A budget allows `per_minute` calls in any sliding 60-second window, so a backlog runs
at the limit without provoking a 429; a 429 that still happens pauses the budget for
its Retry-After. When several jobs wait, the most urgent goes first: agent replies,
then new buyer messages, then questions, then reconciliation.

The budgets live in the poller: it makes every Mercado Livre and Chatwoot call except
the one-off OAuth code exchange in the listener, so a cross-process budget would only
add a database write per call.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import threading
import time
from collections import deque
from typing import Callable, Iterator

from bridge import progress, stopping

REPLIES, BUYER_MESSAGES, QUESTIONS, RECONCILIATION = 0, 1, 2, 3
_priority: contextvars.ContextVar[int] = contextvars.ContextVar("priority", default=QUESTIONS)

# Spend this share of the published limit: the rest absorbs clock skew and other clients.
SAFETY = 0.95


@contextlib.contextmanager
def priority(level: int) -> Iterator[None]:
    token = _priority.set(level)
    try:
        yield
    finally:
        _priority.reset(token)


def current_priority() -> int:
    return _priority.get()


class Budget:
    def __init__(self, name: str, per_minute: float, *, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.limit = max(1, int(per_minute * SAFETY))
        self.window = window
        self.clock = clock
        self.sent: deque[float] = deque()
        self.paused_until = 0.0
        self.waiting: list[tuple[int, int]] = []
        self.tickets = itertools.count()
        self.cond = threading.Condition()
        self.waited_seconds = 0.0
        self.pauses = 0

    def acquire(self, level: int | None = None) -> None:
        """Block until a call may go out; the lowest level waiting goes first."""
        ticket = (current_priority() if level is None else level, next(self.tickets))
        started = self.clock()
        with self.cond:
            heapq.heappush(self.waiting, ticket)
            try:
                while True:
                    now = self.clock()
                    while self.sent and self.sent[0] <= now - self.window:
                        self.sent.popleft()
                    if self.paused_until > now:
                        delay = self.paused_until - now
                    elif len(self.sent) >= self.limit:
                        delay = self.sent[0] + self.window - now
                    elif self.waiting[0] != ticket:
                        delay = 0.05  # someone more urgent is first in line
                    else:
                        self.sent.append(now)
                        return
                    # Waiting for a budget is a known, bounded wait: the job is not stuck.
                    progress.made()
                    stopping.check()
                    self.cond.wait(timeout=max(0.001, min(delay, 0.5)))
            finally:
                self.waiting.remove(ticket)
                heapq.heapify(self.waiting)
                self.waited_seconds += self.clock() - started
                self.cond.notify_all()

    def pause(self, seconds: float) -> None:
        """A 429 despite the budget: stop everyone for the server's Retry-After."""
        with self.cond:
            self.paused_until = max(self.paused_until, self.clock() + max(seconds, 0.5))
            self.pauses += 1
            self.cond.notify_all()


class Unlimited:
    """For tests and one-off commands that need no pacing."""

    waited_seconds = 0.0
    pauses = 0

    def acquire(self, level: int | None = None) -> None:
        return None

    def pause(self, seconds: float) -> None:
        return None
