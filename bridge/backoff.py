"""The bridge's backoff: doubling waits, jittered so that retries do not come in step.

`retry_delay` is for work that waits in the database (replies, items, notifications);
`backoff_wait` for the few quick retries inside one HTTP call, where full jitter spreads
the callers of a briefly failing service the most.
"""

from __future__ import annotations

import random

RETRY_BASE = 2.0
RETRY_MAX = 900.0


def retry_delay(attempts: int, retry_after: float | None = None, *, first: float = RETRY_BASE,
                longest: float = RETRY_MAX) -> float:
    """Doubling from `first` up to `longest`, jittered by up to half; never sooner than `retry_after`."""
    base = min(longest, first * 2 ** max(0, attempts - 1))
    delay = random.uniform(base / 2, base)
    return max(delay, retry_after or 0.0)


def backoff_wait(attempt: int, initial: float = 0.5, maximum: float = 8.0) -> float:
    """Within one call: doubling from `initial` up to `maximum`, with full jitter."""
    return random.uniform(0, min(maximum, initial * (2 ** (attempt - 1))))
