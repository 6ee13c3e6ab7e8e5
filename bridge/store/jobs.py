"""Job runs: when each poller job last started, succeeded or failed (for /health and `main.py status`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from db_manager import Database


class JobRun(TypedDict):
    """A `job_runs` row."""
    job: str
    last_start: float | None
    last_success: float | None
    last_error_at: float | None
    last_error: str | None
    last_duration_ms: int | None


class Heartbeat(TypedDict):
    """The `poller_heartbeat` row, `running` decoded."""
    pid: int
    host: str
    started_at: float
    beat_at: float
    running: dict[str, dict[str, float]]


class JobsStore:
    """`db.jobs`: query runs, commands mark_started/mark_finished."""

    def __init__(self, db: Database):
        self._db = db

    def mark_started(self, job: str, now: float) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT INTO job_runs (job, last_start) VALUES (?, ?)"
                         " ON CONFLICT (job) DO UPDATE SET last_start = excluded.last_start", (job, now))

    def mark_finished(self, job: str, now: float, duration_ms: int, error: str | None = None) -> None:
        with self._db.write() as conn:
            if error is None:
                conn.execute("UPDATE job_runs SET last_success = ?, last_duration_ms = ? WHERE job = ?",
                             (now, duration_ms, job))
            else:
                conn.execute("UPDATE job_runs SET last_error_at = ?, last_error = ?, last_duration_ms = ?"
                             " WHERE job = ?", (now, error[:500], duration_ms, job))

    def runs(self) -> list[JobRun]:
        return self._db.all("SELECT * FROM job_runs ORDER BY job")

    def beat(self, pid: int, host: str, started_at: float, now: float, running: dict) -> None:
        """The working poller is alive; `running`: its jobs in progress (bridge.progress.JobWatch)."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO poller_heartbeat (id, pid, host, started_at, beat_at, running)"
                         " VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
                         " host = excluded.host, started_at = excluded.started_at, beat_at = excluded.beat_at,"
                         " running = excluded.running", (pid, host, started_at, now, json.dumps(running)))

    def heartbeat(self) -> Heartbeat | None:
        row = self._db.one("SELECT pid, host, started_at, beat_at, running FROM poller_heartbeat WHERE id = 1")
        if row is None:
            return None
        row["running"] = json.loads(row["running"] or "{}")
        return row
