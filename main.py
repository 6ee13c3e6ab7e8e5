"""The poller and the command line.

    python main.py              run the sync jobs until SIGTERM/SIGINT
    python main.py --once       run every job once, exit 0 (non-zero on failure)
    python main.py authorize    print the Mercado Livre authorization URL
    python main.py authorize --code TG-...   exchange a code by hand
    python main.py status       print what /health shows
    python main.py retry [KIND [ID]]   retry failing questions, sales or notifications now
    python main.py setup URL    find or create the Chatwoot inboxes and webhook
    python main.py check [URL]  check the configuration end to end
    python main.py check-config check the variables only (./run.sh, before starting anything)
    python main.py backup [FILE]   copy the database, consistently, while the bridge runs (rotated)
    python main.py restore FILE    put a backup in place, stopping and starting both processes
    python main.py compact      VACUUM the database while the bridge runs
    python main.py forget-buyer BUYER [--chatwoot] [--yes]   erase one buyer (LGPD)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from bridge import failures, rate_budget, stopping
from bridge.admin import backup, erasure, health
from bridge.admin import setup as setup_chatwoot
from bridge.http import ApiError
from bridge.logging import setup_logging
from bridge.progress import JobWatch
from bridge.replies import delivery
from bridge.services import Services, build_services
from bridge.sync import claims as sync_claims
from bridge.sync import notifications
from bridge.sync import questions as sync_questions
from bridge.sync import sales as sync_messages
from bridge.sync.contacts import is_gone as contacts_is_gone
from config import Settings, load_settings_leniently, settings_or_exit, settings_or_wait
from db_manager import Database, DatabaseError, crashpoint
from mercado_livre_api import AuthorizationRefused, ReauthorizationRequired

log = logging.getLogger("bridge.poller")

OUTBOX_INTERVAL = 0.25  # seconds: a reply goes out well within a second of its webhook
NOTIFICATIONS_INTERVAL = 0.25
MISSED_FEEDS_INTERVAL = 600.0
HOUSEKEEPING_INTERVAL = 3600.0
REAUTH_LOG_EVERY = 60.0
_last_reauth_log: dict[str, float] = {}
QUIET_JOBS = ("outbox", "notifications", "housekeeping")
# Under rate pressure: agent replies first, then buyer messages, then questions.
JOB_PRIORITY = {"outbox": rate_budget.REPLIES, "notifications": rate_budget.BUYER_MESSAGES,
                "messages": rate_budget.BUYER_MESSAGES, "claims": rate_budget.BUYER_MESSAGES,
                "questions": rate_budget.QUESTIONS}


def job_table(settings: Settings) -> list[tuple[str, Callable[[Services], dict], float]]:
    """(name, function, interval seconds), in the order `--once` runs them."""
    return [
        ("questions", sync_questions.sync_questions, settings.questions_poll_seconds),
        ("messages", sync_messages.sync_messages, settings.messages_poll_seconds),
        # Off (no call at all) unless CHATWOOT_CLAIMS_INBOX_ID is set.
        ("claims", sync_claims.sync_claims, settings.messages_poll_seconds),
        ("missed_feeds", notifications.read_missed_feeds, MISSED_FEEDS_INTERVAL),
        ("notifications", notifications.process_notifications, NOTIFICATIONS_INTERVAL),
        ("outbox", delivery.run_outbox, OUTBOX_INTERVAL),
        ("housekeeping", housekeeping, HOUSEKEEPING_INTERVAL),
    ]


def housekeeping(s: Services) -> dict:
    now, days = s.clock(), s.settings.retention_days
    counts = s.db.prune(now, keep_days=min(30.0, days))
    retention = s.db.privacy.apply_retention(now, days)
    counts.update({f"retention_{k}": v for k, v in sorted(retention.items())})
    # Deleted rows (and reply texts cleared since the last run) leave the -wal file too.
    counts["wal_busy"] = s.db.compact()["busy"]
    counts.update(failures.report_pending(s))
    return counts


def _confirmed(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("yes", "sim", "s", "y")
    except EOFError:  # no terminal (a script, CI): not a yes
        return False


def _forget_in_chatwoot(s: Services, buyer_id: str, yes: bool) -> int | None:
    """The buyer's conversations and contact in Chatwoot; None when the erasure may go on with the
    bridge's own rows, else the exit code.

    1. Read what is this buyer's in Chatwoot now (bridge.admin.erasure.read_plan); a failed read
       deletes nothing.
    2. Say what is kept and why, and what will be deleted; ask, unless --yes.
    3. Hold the buyer: until the bridge's rows go (forget_buyer), no poller makes a contact or
       conversation of theirs in Chatwoot again (db.privacy.begin_erasure).
    4. Delete the conversations, then each contact once it is read again and still holds only
       this buyer's conversations. A failure other than "already gone" stops here, before the
       bridge's rows go: running the command again resumes.
    """
    try:
        plan = erasure.read_plan(s, buyer_id)
    except ApiError as exc:
        print(f"Chatwoot did not answer as expected: {exc.short()}; nothing was deleted", file=sys.stderr)
        return 1
    for line in plan.kept:
        print(f"Chatwoot: {line}")
    if not plan.contacts and not plan.conversations:
        print(f"Chatwoot: nothing of buyer {buyer_id} to delete")
        return None
    print(f"Chatwoot: contacts {sorted(plan.contacts)} and conversations {sorted(plan.conversations)} of buyer "
          f"{buyer_id} will be deleted, with all their messages. This cannot be undone.")
    if not yes and not _confirmed("Type yes to delete them: "):
        print("nothing was deleted (use --yes when no one can answer)")
        return 1
    s.db.privacy.begin_erasure(buyer_id, s.clock())
    deletions = [("conversation", i, s.chatwoot.delete_conversation) for i in sorted(plan.conversations)]
    deletions += [("contact", i, s.chatwoot.delete_contact) for i in sorted(plan.contacts)]
    for label, object_id, delete in deletions:
        try:
            # A conversation may have landed in the contact since it was read: deleting the contact would take it.
            kept = erasure.still_only_this_buyers(s, buyer_id, object_id) if label == "contact" else None
            if kept:
                print(f"Chatwoot: {kept}")
                continue
            delete(object_id)
            print(f"Chatwoot: {label} {object_id} deleted")
        except ApiError as exc:
            if not contacts_is_gone(exc):
                print(f"Chatwoot: {label} {object_id} not deleted: {exc.short()}; nothing was removed from the "
                      f"bridge's database, run the command again", file=sys.stderr)
                return 1
            print(f"Chatwoot: {label} {object_id} was already gone")
    return None


def cmd_forget_buyer(settings: Settings, who: str, chatwoot: bool, yes: bool) -> int:
    """LGPD erasure of one buyer: Chatwoot first (the local rows say where to look, the conversations' attributes
    in Chatwoot what is this buyer's: bridge.admin.erasure), then here."""
    s = open_services(settings)
    who = who.strip()
    if who.startswith("meli:buyer:") and who[len("meli:buyer:"):].isdigit():  # the contact identifier: an id
        buyer_id = who[len("meli:buyer:"):]
    elif who.isdigit():
        named = [b for b in s.db.privacy.buyers_by_nickname(who) if b != who]
        if named:
            # Taken as an id, it would erase nothing and report success while that buyer stays.
            print(f"{who} is also the nickname of buyer(s) {', '.join(named)}; give meli:buyer:<id> (the Chatwoot "
                  f"contact's identifier) to say which", file=sys.stderr)
            return 1
        buyer_id = who
    else:
        matches = s.db.privacy.buyers_by_nickname(who)
        if len(matches) != 1:
            reason = "no buyer with that nickname is remembered" if not matches else \
                f"{len(matches)} buyers have that nickname ({', '.join(matches)})"
            print(f"{reason}; give the buyer id instead (the number in the Chatwoot contact's identifier "
                  f"meli:buyer:<id>)", file=sys.stderr)
            return 1
        buyer_id = matches[0]
    if chatwoot and (failed := _forget_in_chatwoot(s, buyer_id, yes)) is not None:
        return failed
    undelivered: dict[str, list[int]] = {}
    removed = s.db.privacy.forget_buyer(buyer_id, s.clock(), untold=undelivered)
    compacted = s.db.compact()
    log.info("buyer forgotten buyer=%s %s", buyer_id, " ".join(f"{k}={v}" for k, v in sorted(removed.items())))
    if removed:
        print(f"Removed from the bridge's database for buyer {buyer_id}: "
              + ", ".join(f"{v} {k}" for k, v in sorted(removed.items())))
    else:
        print(f"The bridge's database held nothing about buyer {buyer_id}.")
    if undelivered["pending"]:
        print(f"Replies not delivered to the buyer were dropped with the rest (Chatwoot messages "
              f"{', '.join(map(str, undelivered['pending']))}): they will never reach the buyer; tell the agents.")
    if undelivered["sending"]:
        print(f"Replies being sent were dropped with the rest (Chatwoot messages "
              f"{', '.join(map(str, undelivered['sending']))}): they may or may not have reached the buyer; "
              f"check on Mercado Livre.")
    if undelivered["failed"]:
        print(f"Replies that failed were dropped before their agents were shown it (Chatwoot messages "
              f"{', '.join(map(str, undelivered['failed']))}): they did not reach the buyer (or only in part); "
              f"tell the agents.")
    if undelivered["delivered"]:
        print(f"Replies delivered were dropped before their agents were shown it (Chatwoot messages "
              f"{', '.join(map(str, undelivered['delivered']))}): they reached the buyer; tell the agents.")
    if compacted["busy"]:
        print("The -wal file could not be emptied now (a process is reading); the poller's housekeeping does it "
              "within the hour.")
    print("Its questions and sales will not be imported again; new messages from this buyer start fresh.")
    return 0


def run_job(s: Services, name: str, func: Callable[[Services], dict], *, quiet_when_idle: bool = False,
            watch: JobWatch | None = None) -> bool:
    """Run one job with its bookkeeping; never raises. Returns True on success.

    `watch`: the running poller's JobWatch, which its heartbeat reports (a stuck job shows).
    """
    with watch.running(name) if watch is not None else contextlib.nullcontext():
        return _run_job(s, name, func, quiet_when_idle)


def _run_job(s: Services, name: str, func: Callable[[Services], dict], quiet_when_idle: bool) -> bool:
    started = time.monotonic()
    if not quiet_when_idle:
        s.db.jobs.mark_started(name, s.clock())
    try:
        with rate_budget.priority(JOB_PRIORITY.get(name, rate_budget.RECONCILIATION)):
            counts = func(s) or {}
    except ReauthorizationRequired as exc:
        _finish(s, name, started, f"reauthorization required: {exc.message}")
        # One line per poll cycle; the fast loops would otherwise repeat it twice a second.
        if time.monotonic() - _last_reauth_log.get(name, -1e9) >= REAUTH_LOG_EVERY:
            _last_reauth_log[name] = time.monotonic()
            log.error("job %s skipped: Mercado Livre authorization required (%s); run `./bridge.sh authorize`",
                      name, exc.message)
        return False
    except ApiError as exc:
        _finish(s, name, started, exc.short())
        log.error("job %s failed after %dms: %s", name, (time.monotonic() - started) * 1000, exc.short())
        return False
    except Exception as exc:  # noqa: BLE001 — a bug in one job must not stop the poller
        _finish(s, name, started, f"{type(exc).__name__}: {exc}")
        log.exception("job %s crashed", name)
        return False
    except stopping.Stopping:
        log.info("job %s left for the next run after %dms: the poller is stopping", name,
                 (time.monotonic() - started) * 1000)
        return False
    busy = any(v for k, v in counts.items() if k not in ("ms", "unanswered", "threads"))
    if quiet_when_idle and not busy:
        return True
    if quiet_when_idle:
        s.db.jobs.mark_started(name, s.clock())
    _finish(s, name, started, None)
    log.info("job %s done in %dms %s", name, (time.monotonic() - started) * 1000,
             " ".join(f"{k}={v}" for k, v in counts.items() if k != "ms"))
    # The job went through, but an item failed: `--once` says so with its exit code.
    return not counts.get("item_errors")


def _finish(s: Services, name: str, started: float, error: str | None) -> None:
    s.db.jobs.mark_finished(name, s.clock(), int((time.monotonic() - started) * 1000), error)


def open_services(settings: Settings) -> Services:
    try:
        db = Database(settings.database_path, settings.token_encryption_keys).open()
    except DatabaseError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    s = build_services(settings, db, paced=True)
    s.meli.seed_tokens()
    return s


def resume_interrupted(s: Services) -> None:
    """As the only poller, take back the replies a killed predecessor left in flight."""
    if not s.db.hold_poller_lock():
        log.info("another poller is running on this database; replies in its hands stay there")
        return
    released = s.db.replies.release_leases(s.clock())
    if released:
        log.warning("resuming %d replies interrupted by a previous poller's crash", released)


def run_once(s: Services) -> int:
    resume_interrupted(s)
    ok = True
    for name, func, _interval in job_table(s.settings):
        ok = run_job(s, name, func) and ok
    return 0 if ok else 1


def run_forever(s: Services) -> int:
    """The poller, until SIGTERM/SIGINT.

    1. Signals first: they end the wait of step 2 as well as the run (the item in hand is finished).
    2. Become the only poller on this database. Another one already working (two containers on
       one volume during a redeploy) keeps this one waiting; it takes over when that one's
       process ends. One poller at a time: nothing is fetched, created or delivered twice.
    3. Take back the replies a killed predecessor left in flight (resume_interrupted).
    4. Run every job on its interval, each watched (bridge.progress), and write the heartbeat every
       health.HEARTBEAT_SECONDS: /health sees a dead, stopped or stuck poller.
    """
    stop = threading.Event()
    stopping.STOP.clear()  # a poller run again in the same process (tests) starts unstopped

    def on_signal(signum, _frame):
        log.info("poller stopping on %s: finishing the item in hand", signal.Signals(signum).name)
        s.stopping.set()
        stopping.STOP.set()  # and no wait of a job outlasts supervisord's stopwaitsecs
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not s.db.hold_poller_lock():
        holder = s.db.jobs.heartbeat()
        log.info("another poller is working on this database (%s): this one waits and takes over when it stops",
                 f"pid {holder['pid']} on {holder['host']}" if holder else "it has not written its heartbeat yet")
        if not s.db.wait_for_poller_lock(stop):
            log.info("poller stopped (it was waiting to take over)")
            return 0
        log.info("poller taking over: the one working on this database stopped")
    crashpoint("poller_started")
    resume_interrupted(s)
    watch = JobWatch()
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": None})
    for name, func, interval in job_table(s.settings):
        # The fast loops log only when they did something; the polls log every run.
        quiet = name in QUIET_JOBS
        scheduler.add_job(run_job, "interval", seconds=interval, args=(s, name, func), id=name, name=name,
                          kwargs={"quiet_when_idle": quiet, "watch": watch}, next_run_time=_now_dt())
    scheduler.add_job(beat, "interval", seconds=health.HEARTBEAT_SECONDS, args=(s, watch, time.time()),
                      id="heartbeat", name="heartbeat", next_run_time=_now_dt())
    scheduler.start()
    log.info("poller started: questions every %ss, messages every %ss, outbox every %ss",
             s.settings.questions_poll_seconds, s.settings.messages_poll_seconds, OUTBOX_INTERVAL)
    stop.wait()
    scheduler.shutdown(wait=True)
    log.info("poller stopped")
    return 0


def beat(s: Services, watch: JobWatch, started_at: float) -> None:
    """The heartbeat: this poller is alive, and what its jobs are doing (never raises)."""
    try:
        s.db.jobs.beat(os.getpid(), socket.gethostname(), started_at, s.clock(), watch.snapshot())
    except sqlite3.Error as exc:
        log.warning("heartbeat not written: %s", exc)


def wait_for_configuration(settings: Settings, problems: list[str]) -> int:
    """In the container, before `setup`: say once what is missing, then idle until stopped.

    Environment variables cannot change under a running process, so there is nothing to
    re-check: the seller pastes the variables and restarts the container.
    """
    for problem in problems:
        log.error("configuration error: %s", problem)
    log.error("poller waiting for its configuration: set the variables above and restart the container")
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    log.info("poller stopped (it was waiting for its configuration)")
    return 0


def _now_dt() -> datetime:
    return datetime.now(timezone.utc)


def cmd_authorize(settings: Settings, code: str | None, state: str | None = None) -> int:
    s = open_services(settings)
    try:
        if code:
            who = s.meli.exchange_code(code, state, require_state=bool(state or settings.meli_use_pkce))
            print(f"Authorized seller {who['user_id']} ({who['nickname']}).")
            return 0
        url = s.meli.authorization_url()
    except AuthorizationRefused as exc:
        print(f"authorization refused: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"Mercado Livre did not answer as expected: {exc.short()}", file=sys.stderr)
        return 1
    print("Open this link in a browser logged in as the seller (valid for 10 minutes, single use):")
    print(url)
    return 0


def cmd_status(settings: Settings) -> int:
    s = open_services(settings)
    # A database no poller ever worked on (only `--once` so far) is not a failure here; a poller
    # that stopped beating is. The listener also fails a poller that never started beside it.
    report = health.build_status(s.db, settings, s.clock())
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if report["ok"] else 1


def cmd_retry(settings: Settings, kind: str | None, item_id: str | None) -> int:
    s = open_services(settings)
    count = s.db.items.reset(s.clock(), kind, item_id)
    print(f"{count} failing item(s) will be tried again on the next run.")
    return 0


def cmd_backup(settings: Settings, target: str | None, keep: int) -> int:
    return backup.run_backup(settings.database_path, target=target, keep=keep)


def cmd_restore(settings: Settings, source: str, stopped: bool, conf: str) -> int:
    supervisor = backup.find_supervisor(conf, print)
    return backup.run_restore(settings.database_path, source, supervisor=supervisor, stopped_by_hand=stopped)


def cmd_compact(settings: Settings) -> int:
    return backup.run_compact(settings.database_path)


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="main.py", description="Mercado Livre ↔ Chatwoot bridge poller")
    parser.add_argument("--once", action="store_true", help="run every job once and exit")
    sub = parser.add_subparsers(dest="command")
    auth = sub.add_parser("authorize", help="print the authorization URL, or exchange --code")
    auth.add_argument("--code", help="authorization code (TG-...) to exchange by hand")
    auth.add_argument("--state", help="the state from the same address bar (needed with MELI_USE_PKCE)")
    sub.add_parser("status", help="print the bridge's health")
    retry = sub.add_parser("retry", help="try failing items again now instead of at their next turn; "
                                              "clears given-up replies from the status")
    retry.add_argument("kind", nargs="?", choices=("question", "pack", "claim", "notification", "reply"),
                       help="only this kind of item (default: every failing item)")
    retry.add_argument("item_id", nargs="?", help="only this item (a question id, a pack id...)")
    setup = sub.add_parser("setup", help="find or create the Chatwoot inboxes and webhook; print the .env lines")
    setup.add_argument("public_url", help="the bridge's public URL, e.g. https://bridge.example.com")
    check = sub.add_parser("check", help="check the running configuration end to end (nothing changes in "
                                          "Chatwoot; the local database is created and its tokens refreshed "
                                          "as the poller would)")
    check.add_argument("public_url", nargs="?", help="the bridge's public URL, to check the listener")
    sub.add_parser("check-config", help="check the variables of both processes; exit 2 naming each problem")
    forget = sub.add_parser("forget-buyer", help="erase everything the bridge keeps about one buyer (LGPD)")
    forget.add_argument("buyer", help="the buyer's Mercado Livre id (or meli:buyer:<id>), or nickname")
    forget.add_argument("--chatwoot", action="store_true",
                        help="also delete the buyer's contact and conversations in Chatwoot (asks first)")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    backup_cmd = sub.add_parser("backup", help="write a consistent copy of the database (safe while running) to "
                                               "backups/ beside it, keeping the newest --keep, or to FILE")
    backup_cmd.add_argument("file", nargs="?", help="write exactly this file instead (not rotated)")
    backup_cmd.add_argument("--keep", type=_positive, default=backup.KEEP_BACKUPS,
                            help=f"backups to keep in backups/ (default {backup.KEEP_BACKUPS})")
    restore = sub.add_parser("restore", help="put a backup in place of the database, stopping and starting the "
                                             "listener and the poller through supervisord")
    restore.add_argument("file", help="the backup, e.g. /app/data/backups/meli_chatwoot-20261120-030000.db")
    restore.add_argument("--stopped", action="store_true",
                         help="without supervisord: you have stopped both processes yourself")
    restore.add_argument("--supervisord-conf", default=backup.DEFAULT_SUPERVISORD_CONF,
                         help="the supervisord.conf the bridge runs under (default: the one beside main.py)")
    sub.add_parser("compact", help="VACUUM the database (safe while running); prints its size before and after")
    args = parser.parse_args(argv)

    if args.command in ("backup", "restore", "compact"):
        # Need only DATABASE_PATH: these must work whatever else is wrong.
        settings, _problems = load_settings_leniently()
        if args.command == "restore":
            return cmd_restore(settings, args.file, args.stopped, args.supervisord_conf)
        if args.command == "compact":
            return cmd_compact(settings)
        return cmd_backup(settings, args.file, args.keep)
    if args.command is None and not args.once:
        # The long-running poller: in the container it waits for an incomplete configuration.
        settings, problems = settings_or_wait()
        setup_logging(settings.log_level, settings.secrets())
        if problems:
            return wait_for_configuration(settings, problems)
    else:
        settings = settings_or_exit(require_redirect_uri=args.command == "authorize",
                                    require_inboxes=args.command != "setup",
                                    require_webhook_secret=args.command == "check-config")
        setup_logging(settings.log_level, settings.secrets())
    if args.command == "check-config":
        print("configuration complete")
        return 0

    if args.command == "setup":
        return setup_chatwoot.run_setup(settings, args.public_url)
    if args.command == "check":
        return setup_chatwoot.run_check(settings, args.public_url)
    if args.command == "authorize":
        return cmd_authorize(settings, args.code, args.state)
    if args.command == "status":
        return cmd_status(settings)
    if args.command == "retry":
        return cmd_retry(settings, args.kind, args.item_id)
    if args.command == "forget-buyer":
        return cmd_forget_buyer(settings, args.buyer, args.chatwoot, args.yes)
    s = open_services(settings)
    return run_once(s) if args.once else run_forever(s)


if __name__ == "__main__":
    sys.exit(main())
