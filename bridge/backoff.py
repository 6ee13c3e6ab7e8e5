"""The bridge's one backoff for work that waits in the database (replies, items, notifications)."""

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
