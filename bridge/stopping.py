"""The poller's stop, seen by every wait a job can be in.

supervisord gives a process `stopwaitsecs` (10 s) after SIGTERM before it kills it. A job waiting
out a budget pause, a Retry-After, a backoff or another process's token refresh would otherwise
sleep through that and be killed in the middle of whatever came after the wait. Each of those
waits ends at once when the poller stops, with `Stopping`: the item in hand is left as a crash
leaves it (its intent is recorded before any remote call), and the next run takes it up.
"""

from __future__ import annotations

import threading

STOP = threading.Event()


class Stopping(BaseException):
    """Not an Exception: the per-item handlers that count a failure and push its next attempt
    forward must let it through, since nothing failed."""


def wait(seconds: float) -> None:
    """Sleep `seconds`, unless the poller stops first."""
    if STOP.wait(max(0.0, seconds)):
        raise Stopping()


def check() -> None:
    if STOP.is_set():
        raise Stopping()
