"""Test hooks: knobs the end-to-end tests and the chaos soak turn, inert in a production process.

A hook is honoured only while `BRIDGE_TEST_HOOKS=1` is set too, which the test harness
(tests/e2e.py) does and nothing else should: a `BRIDGE_CRASH_AT` left in an environment would
otherwise kill the poller in the middle of a reply. Set without it, a hook is ignored and the
process says so in one warning line when its logging starts (bridge.logging.setup_logging).
"""

from __future__ import annotations

import os
from typing import Mapping

ENABLE = "BRIDGE_TEST_HOOKS"
HOOKS = {
    "BRIDGE_CRASH_AT": "the poller kills itself (SIGKILL) in the named crash window (db_manager.crashpoint)",
    "BRIDGE_HTTP_READ_TIMEOUT": "the HTTP read timeout, seconds, instead of 30",
    "BRIDGE_HEARTBEAT_SECONDS": "how often the working poller writes its heartbeat, instead of 10",
    "BRIDGE_POLLER_STALE_SECONDS": "a heartbeat older than this makes /health say the poller stopped, instead of 60",
    "BRIDGE_POLLER_STUCK_SECONDS": "a job without progress for this long makes /health say it is stuck, instead of 90",
}


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return (env.get(ENABLE) or "").strip() == "1"


def value(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The hook's value, or None when it is unset or the test marker is absent."""
    assert name in HOOKS, name
    env = os.environ if env is None else env
    if not enabled(env):
        return None
    return (env.get(name) or "").strip() or None


def number(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A positive number from the hook, else `default`."""
    raw = value(name, env)
    try:
        number = float(raw) if raw is not None else default
    except ValueError:
        return default
    return number if 0 < number < float("inf") else default


def ignored(env: Mapping[str, str] | None = None) -> list[str]:
    """The hooks set in an environment that does not enable them."""
    env = os.environ if env is None else env
    if enabled(env):
        return []
    return [name for name in HOOKS if (env.get(name) or "").strip()]
