"""The bridge's status, as /health serves it and `main.py status` prints it."""

from __future__ import annotations

import sqlite3
from typing import Sequence

from bridge import testhooks
from bridge.store.jobs import Heartbeat
from config import Settings, problem_names
from db_manager import Database

OUTBOX_MAX_AGE = 15 * 60  # an agent reply waiting longer than this is an incident
# The working poller beats this often. A heartbeat older than POLLER_STALE_SECONDS means it is
# dead or stopped; a job without progress (bridge.progress) for JOB_STUCK_SECONDS means it is
# stuck. Either way /health answers 503 within two minutes, and the image's health check
# (every 30 s) fails with it. Test hooks shorten them in the suite only.
HEARTBEAT_SECONDS = testhooks.number("BRIDGE_HEARTBEAT_SECONDS", 10.0)
POLLER_STALE_SECONDS = testhooks.number("BRIDGE_POLLER_STALE_SECONDS", 60.0)
JOB_STUCK_SECONDS = testhooks.number("BRIDGE_POLLER_STUCK_SECONDS", 90.0)
# What the container's health check looks at: a restart helps only when one of these fails
# (a lost authorization or an old pending reply would come back after a restart).
LIVENESS = ("database", "poller", "jobs")


def build_status(db: Database, settings: Settings, now: float, problems: Sequence[str] = (), *,
                 poller_expected_since: float | None = None) -> dict:
    """`poller_expected_since`: from when a poller should be beating (the listener's start);
    None when a database no poller ever worked on is not a failure."""
    checks: dict[str, dict] = {}
    if problems:
        names = problem_names(list(problems))
        checks["configuration"] = {
            "ok": False, "missing": names, "problems": list(problems),
            "error": f"configuration incomplete ({', '.join(names)}): set the variables and restart the bridge"}
    try:
        db.check()
        checks["database"] = {"ok": True, "size_bytes": db.size_bytes()}
    except (sqlite3.Error, OSError) as exc:
        checks["database"] = {"ok": False, "error": f"database unusable: {exc}"}
        return {"ok": False, "live": False, "checks": checks,
                "failing": [name for name, c in checks.items() if not c["ok"]]}

    auth = db.auth.current()
    if auth["status"] == "active":
        checks["authorization"] = {
            "ok": True, "seller_id": auth["user_id"], "nickname": auth["nickname"],
            "access_token_expires_in_seconds": round((auth["expires_at"] or now) - now)}
    elif auth["status"] == "reauth_required":
        checks["authorization"] = {"ok": False, "error": "reauthorization required: run `./bridge.sh authorize`",
                                   "reason": auth["status_reason"]}
    else:
        checks["authorization"] = {"ok": False,
                                   "error": "not authorized yet: run `./bridge.sh authorize` "
                                            "(or set MELI_REFRESH_TOKEN)"}

    stats = db.replies.stats(now)
    age = stats["oldest_pending_age_seconds"]
    checks["outbox"] = dict(stats, ok=age is None or age <= OUTBOX_MAX_AGE)
    if not checks["outbox"]["ok"]:
        checks["outbox"]["error"] = f"oldest pending reply is {int(age)} s old (limit {OUTBOX_MAX_AGE} s)"

    jobs = {}
    for run in db.jobs.runs():
        jobs[run["job"]] = {
            "last_start": run["last_start"], "last_success": run["last_success"],
            "seconds_since_success": round(now - run["last_success"]) if run["last_success"] else None,
            "last_error_at": run["last_error_at"], "last_error": run["last_error"],
            "last_duration_ms": run["last_duration_ms"]}
    if problems:
        # The poller waits for the same variables (and writes no heartbeat): the configuration
        # check says what to do; a restart would not help.
        checks["poller"], stuck = {"ok": True, "waiting": "configuration incomplete"}, {"ok": True}
    else:
        checks["poller"], stuck = poller_checks(db.jobs.heartbeat(), now, expected_since=poller_expected_since)
    checks["jobs"] = {**stuck, "runs": jobs}
    checks["notifications"] = {"ok": True, "received_last_hour": db.notifications.received_since(now - 3600)}
    checks["items"] = item_failures(db)

    failing = [name for name, check in checks.items() if not check["ok"]]
    # Needs a person, but restarting the bridge would not help and would hold up every other item.
    attention = ["items"] if checks["items"]["gave_up_count"] else []
    live = all(checks[name]["ok"] for name in LIVENESS)
    return {"ok": not failing, "live": live, "failing": failing, "attention": attention, "checks": checks,
            "time": now}


def poller_checks(beat: Heartbeat | None, now: float, *, expected_since: float | None,
                  stale: float | None = None, stuck: float | None = None) -> tuple[dict, dict]:
    """(checks.poller, checks.jobs without its runs) from the working poller's heartbeat.

    Dead, stopped (SIGSTOP, `supervisorctl stop`) or frozen: no fresh heartbeat. Stuck: a job
    that has made no progress for `stuck` seconds while the heartbeat goes on.
    """
    stale = POLLER_STALE_SECONDS if stale is None else stale
    stuck = JOB_STUCK_SECONDS if stuck is None else stuck
    if beat is None:
        if expected_since is None or now - expected_since <= stale:
            return {"ok": True, "state": "no heartbeat yet"}, {"ok": True}
        return {"ok": False, "error": "poller not running: no poller has written a heartbeat on this database"}, \
            {"ok": True}
    age = now - beat["beat_at"]
    poller = {"ok": age <= stale, "pid": beat["pid"], "host": beat["host"], "seconds_since_heartbeat": round(age),
              "working_since": beat["started_at"]}
    if not poller["ok"]:
        poller["error"] = (f"poller stopped: no heartbeat for {int(age)} s (limit {int(stale)} s; last from pid "
                           f"{beat['pid']} on {beat['host']})")
        return poller, {"ok": True}  # what its jobs were doing is as old as the heartbeat
    running = {job: {"seconds": round(now - times["since"]), "seconds_without_progress": round(now - times["progress"])}
               for job, times in sorted(beat["running"].items())}
    stuck_jobs = [job for job, times in running.items() if times["seconds_without_progress"] > stuck]
    jobs = {"ok": not stuck_jobs, "running": running}
    if stuck_jobs:
        jobs["error"] = "poller stuck: " + ", ".join(
            f"job {job} has made no progress for {running[job]['seconds_without_progress']} s" for job in stuck_jobs
        ) + f" (limit {int(stuck)} s)"
    return poller, jobs


def item_failures(db: Database) -> dict:
    """Items failing alone while the rest goes on. Always ok: a bad item is a warning, not an outage."""
    summary = db.items.summary()
    by_kind = summary["by_kind"]
    retrying = {kind: counts["retrying"] for kind, counts in by_kind.items() if counts["retrying"]}
    for kind, count in (("notification", db.notifications.retrying()), ("reply", db.replies.retrying())):
        if count:
            retrying[kind] = retrying.get(kind, 0) + count
    gave_up_count = sum(counts["gave_up"] for counts in by_kind.values())
    check = {"ok": True, "retrying": retrying, "gave_up_count": gave_up_count, "gave_up": summary["gave_up"]}
    if gave_up_count:
        check["warning"] = (f"{gave_up_count} item(s) failed too often and are retried once a day; see `gave_up`, "
                            "fix the cause, then `./bridge.sh retry`")
    return check
