"""Token races against the fake Mercado Livre, whose refresh tokens are single use.

`cold_start` starts the real poller once on a fresh database seeded with nothing but
MELI_REFRESH_TOKEN — its questions, messages and missed_feeds jobs all want a token at
the same moment — and says whether the authorization survived.

`run_race` starts the fake (access tokens living `access_ttl` seconds), seeds nothing but
a refresh token — a cold start — and runs `processes` copies of this module as workers.
Each worker seeds the store from MELI_REFRESH_TOKEN like the real processes do, then
`threads` threads call the API through one shared MeliClient until the time is up.
The figures: refreshes the fake granted, `invalid_grant` answers it gave, the store's
final status, and what the workers saw. Used by tests/test_token_race.py (short) and
bench/token_race.py (the issue's 60 s).

    python -m tests.token_race worker   (environment set by run_race)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _app_dir() -> Path:
    from tests.e2e import APP_DIR  # where test processes run: no developer .env there
    return APP_DIR
# The jobs that call Mercado Livre as soon as the poller starts.
FIRST_JOBS = ("questions", "messages", "missed_feeds")
JOB_ENDED = re.compile(r"bridge\.poller: job (\w+) (?:done|failed|skipped|crashed)")


def cold_start(fakes, tmp: Path, also_once: bool = False, timeout: float = 60.0) -> dict:
    """One cold start of the real poller (plus, with `also_once`, a `main.py --once` beside it).

    The poller runs until each of FIRST_JOBS has finished once, then gets SIGTERM.
    """
    from tests.e2e import Bridge, wait_until

    meli = fakes.meli.state
    refused, granted = meli.invalid_grant_count, meli.refresh_count
    bridge = Bridge(tmp, fakes)
    bridge.env.pop("MELI_ACCESS_TOKEN")  # seeded with a refresh token only
    database = bridge.env["DATABASE_PATH"]
    try:
        poller = bridge.poller()
        once = bridge.start("once", [sys.executable, "main.py", "--once"]) if also_once else None
        # Read from the poller's own log: with --once beside it, job_runs rows are shared.
        wait_until(lambda: poller.poll() is not None or set(FIRST_JOBS) <= _poller_jobs_ended(tmp),
                   timeout, what="the poller's first jobs")
        once_rc = once.wait(timeout=timeout) if once else None
        poller_rc = bridge.stop(poller)
        status, reason = _auth_status(database)
    finally:
        bridge.close()
    return {"kept": status == "active", "status": status, "status_reason": reason,
            "invalid_grant": meli.invalid_grant_count - refused, "refreshes": meli.refresh_count - granted,
            "poller_rc": poller_rc, "once_rc": once_rc}


def _read(database: str, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _poller_jobs_ended(tmp: Path) -> set[str]:
    """Jobs the poller of this start has logged as done, failed or skipped."""
    from tests.e2e import LOG_DIR
    ended = set()
    for log in LOG_DIR.glob(f"{tmp.name}-poller-*.log"):
        ended.update(JOB_ENDED.findall(log.read_text(errors="replace")))
    return ended


def _auth_status(database: str) -> tuple[str, str | None]:
    return _read(database, "SELECT status, status_reason FROM meli_auth WHERE id = 1")[0]


def run_race(seconds: float, processes: int = 2, threads: int = 16, access_ttl: float = 2.0,
             refresh_margin: float = 1.0, pause: float = 0.05, extra_env: dict | None = None) -> dict:
    from tests.fakes import start_fakes

    fakes = start_fakes(access_ttl=access_ttl)
    tmp = Path(tempfile.mkdtemp(prefix="meli-token-race-"))
    try:
        meli = fakes.meli.state
        _access, refresh = meli.seed_tokens()
        database = tmp / "data" / "bridge.db"
        env = {
            "PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "PYTHONUNBUFFERED": "1",
            "MELI_APP_ID": str(meli.app_id), "MELI_SECRET_KEY": meli.secret,
            "MELI_REFRESH_TOKEN": refresh,  # a cold start: no access token yet
            "MELI_API_URL": fakes.meli.url, "MELI_AUTH_URL": fakes.meli.url,
            "CHATWOOT_URL": fakes.chatwoot.url, "CHATWOOT_API_TOKEN": fakes.chatwoot.state.api_token,
            "CHATWOOT_ACCOUNT_ID": "1", "CHATWOOT_QUESTIONS_INBOX_ID": "1", "CHATWOOT_MESSAGES_INBOX_ID": "2",
            "DATABASE_PATH": str(database),
            # Every worker starts its threads at the same moment, after its imports.
            "RACE_START_AT": str(time.time() + 3.0), "RACE_SECONDS": str(seconds), "RACE_THREADS": str(threads),
            "RACE_MARGIN": str(refresh_margin), "RACE_PAUSE": str(pause),
            **(extra_env or {}),
        }
        procs = [subprocess.Popen([sys.executable, "-m", "tests.token_race", "worker"], cwd=str(_app_dir()), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(processes)]
        workers = []
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 180)
            lines = out.strip().splitlines()
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"token race worker failed ({proc.returncode}): {err.strip()[-2000:]}")
            workers.append(json.loads(lines[-1]))
        status, reason = _auth_status(str(database))
        sealed = bool(_read(str(database), "SELECT refresh_token LIKE 'fernet:%' FROM meli_auth WHERE id = 1")[0][0])
        errors: Counter = Counter()
        for worker in workers:
            errors.update(worker["errors"])
        return {
            "seconds": seconds, "processes": processes, "threads": threads, "access_ttl": access_ttl,
            "refreshes": meli.refresh_count, "invalid_grant": meli.invalid_grant_count, "stored_encrypted": sealed,
            "unauthorized": meli.unauthorized_count, "status": status, "status_reason": reason,
            "calls": sum(w["calls"] for w in workers), "reauth_seen": sum(w["reauth_seen"] for w in workers),
            "errors": dict(errors), "client_refreshes": [w["refreshes"] for w in workers],
        }
    finally:
        fakes.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def worker() -> int:
    """One process: seed from the environment, then threads calling /users/me through one client."""
    from config import load_settings
    from db_manager import Database
    from mercado_livre_api import MeliClient, ReauthorizationRequired

    settings = load_settings(dict(os.environ))
    db = Database(settings.database_path, settings.token_encryption_keys).open()
    meli = MeliClient(settings, db, refresh_margin=float(os.environ["RACE_MARGIN"]))
    time.sleep(max(0.0, float(os.environ["RACE_START_AT"]) - time.time()))
    meli.seed_tokens()
    deadline = time.monotonic() + float(os.environ["RACE_SECONDS"])
    pause = float(os.environ["RACE_PAUSE"])
    guard = threading.Lock()
    figures = {"calls": 0, "reauth_seen": 0, "errors": Counter()}

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                meli.me()
                outcome = None
            except ReauthorizationRequired:
                outcome = "reauth"
            except Exception as exc:  # noqa: BLE001 — counted and reported, never hidden
                outcome = type(exc).__name__
            with guard:
                figures["calls"] += 1
                if outcome == "reauth":
                    figures["reauth_seen"] += 1
                elif outcome:
                    figures["errors"][outcome] += 1
            time.sleep(pause)

    pool = [threading.Thread(target=work) for _ in range(int(os.environ["RACE_THREADS"]))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(json.dumps(dict(figures, errors=dict(figures["errors"]), refreshes=meli.refreshes)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        raise SystemExit(__doc__)
    sys.path.insert(0, str(ROOT))
    raise SystemExit(worker())
