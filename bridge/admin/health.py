"""The bridge's status, as /health serves it and `main.py status` prints it."""

from __future__ import annotations

import sqlite3
from typing import Sequence

from config import Settings, problem_names
from db_manager import Database

OUTBOX_MAX_AGE = 15 * 60  # an agent reply waiting longer than this is an incident


def build_status(db: Database, settings: Settings, now: float, problems: Sequence[str] = ()) -> dict:
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
        return {"ok": False, "checks": checks, "failing": [name for name, c in checks.items() if not c["ok"]]}

    auth = db.auth.current()
    if auth["status"] == "active":
        checks["authorization"] = {
            "ok": True, "seller_id": auth["user_id"], "nickname": auth["nickname"],
            "access_token_expires_in_seconds": round((auth["expires_at"] or now) - now)}
    elif auth["status"] == "reauth_required":
        checks["authorization"] = {"ok": False, "error": "reauthorization required: run `python main.py authorize`",
                                   "reason": auth["status_reason"]}
    else:
        checks["authorization"] = {"ok": False,
                                   "error": "not authorized yet: run `python main.py authorize` "
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
    checks["jobs"] = {"ok": True, "runs": jobs}
    checks["notifications"] = {"ok": True, "received_last_hour": db.notifications.received_since(now - 3600)}
    checks["items"] = item_failures(db)

    failing = [name for name, check in checks.items() if not check["ok"]]
    # Needs a person, but restarting the bridge would not help and would hold up every other item.
    attention = ["items"] if checks["items"]["gave_up_count"] else []
    return {"ok": not failing, "failing": failing, "attention": attention, "checks": checks, "time": now}


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
                            "fix the cause, then `python main.py retry`")
    return check
