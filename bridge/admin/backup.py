"""`main.py backup`, `restore FILE` and `compact`: the state file, from the running container's console.

The image has no `sqlite3` and a stopped app has no console, so all three run beside the
listener and the poller. Backups go to `backups/` beside the database (in the image
`/app/data/backups/`, inside the volume), the newest KEEP_BACKUPS kept. Each command prints
through `out` what it did, one line per step, and answers a failure in a sentence (exit 1),
never a traceback.
"""

from __future__ import annotations

import configparser
import os
import re
import sqlite3
import sys
import xmlrpc.client
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bridge.store.links import RESTORE_DOUBT
from db_manager import SCHEMA_VERSION, Database, DatabaseError, inspect_backup, match_owner, stage_restore, swap_in

BACKUP_DIR = "backups"
KEEP_BACKUPS = 7
BEFORE_RESTORE = "-before-restore"
# supervisord's program names (supervisord.conf), stopped in this order and started in reverse.
PROGRAMS = ("listener", "poller")
RUNNING_STATES = ("RUNNING", "STARTING", "BACKOFF")
NOT_RUNNING, ALREADY_STARTED = 70, 60  # supervisor.xmlrpc.Faults
RESTORE_DOUBT_DAYS = round(RESTORE_DOUBT / 86400)
DEFAULT_SUPERVISORD_CONF = str(Path(__file__).resolve().parents[2] / "supervisord.conf")

Out = Callable[[str], Any]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# ---- backup -------------------------------------------------------------------------------------


def backup_dir(database_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(database_path)), BACKUP_DIR)


def _stem(database_path: str) -> str:
    return os.path.splitext(os.path.basename(database_path))[0]


def _pattern(stem: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(stem)}-(\d{{8}}-\d{{6}})(?:-(\d+))?({BEFORE_RESTORE})?\.db$")


def backups_to_remove(names: list[str], stem: str, keep: int) -> list[str]:
    """Which of the files in the backup folder rotation deletes: the bridge's own backups
    (by name: `<stem>-YYYYMMDD-HHMMSS[-n][-before-restore].db`) beyond the `keep` newest."""
    pattern = _pattern(stem)
    ours = []
    for name in names:
        match = pattern.match(name)
        if match:
            ours.append(((match.group(1), int(match.group(2) or 0)), name))
    ours.sort(reverse=True)
    return [name for _key, name in ours[max(keep, 1):]]


def _new_backup_path(database_path: str, now: datetime, suffix: str = "") -> str:
    folder = backup_dir(database_path)
    base = f"{_stem(database_path)}-{now.astimezone(timezone.utc):%Y%m%d-%H%M%S}"
    path, n = os.path.join(folder, f"{base}{suffix}.db"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f"{base}-{n}{suffix}.db")
    return path


def _write_backup(database_path: str, target: str) -> tuple[int, int]:
    """(pages, bytes) of a consistent copy of the database written to `target`."""
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        os.makedirs(folder)
        match_owner(folder, os.path.dirname(os.path.abspath(database_path)))
    db = Database(database_path).open()
    try:
        pages = db.backup_to(target)
    finally:
        db.close()
    return pages, os.path.getsize(target)


def run_backup(database_path: str, out: Out = print, *, target: str | None = None, keep: int = KEEP_BACKUPS,
               now: datetime | None = None, err: Out = _stderr) -> int:
    """Write a backup; 0 on success, 1 on failure.

    1. Copy the database through SQLite's backup API (consistent while both processes run)
       to `target`, or to a new dated file in the backup folder.
    2. Only in the backup folder: delete the bridge's backups beyond the `keep` newest.
    """
    try:
        path = target or _new_backup_path(database_path, now or datetime.now(timezone.utc))
        _pages, size = _write_backup(database_path, path)
    except (DatabaseError, OSError) as exc:
        err(f"error: {exc}")
        return 1
    out(f"backup written: {path} ({_size(size)})")
    if target is None:
        _rotate(database_path, keep, out)
    out(f"restore it with: ./bridge.sh restore {path}")
    return 0


def _rotate(database_path: str, keep: int, out: Out) -> None:
    folder, stem = backup_dir(database_path), _stem(database_path)
    names = sorted(os.listdir(folder))
    ours = [n for n in names if _pattern(stem).match(n)]
    removed = 0
    for name in backups_to_remove(names, stem, keep):
        try:
            os.remove(os.path.join(folder, name))
        except OSError as exc:
            out(f"note: could not delete the old backup {name}: {exc.strerror}")
            continue
        removed += 1
        out(f"deleted old backup: {name}")
    kept = len(ours) - removed
    out(f"{kept} backup{'' if kept == 1 else 's'} kept in {folder} (the newest {keep})")


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


# ---- compact ------------------------------------------------------------------------------------


def run_compact(database_path: str, out: Out = print, err: Out = _stderr) -> int:
    """VACUUM while the processes run; prints the sizes before and after. 0 on success, 1 on failure."""
    try:
        db = Database(database_path).open()
    except DatabaseError as exc:
        err(f"error: {exc}")
        return 1
    try:
        result = db.vacuum()
    except DatabaseError as exc:
        err(f"error: {exc}")
        return 1
    finally:
        db.close()
    out(f"compacted {database_path}: {_size(result['before'])} before, {_size(result['after'])} after "
        f"(database and its -wal file)")
    if result["wal_busy"]:
        out("note: a process was reading, so the -wal file is emptied by the poller's housekeeping within the hour")
    return 0


# ---- restore ------------------------------------------------------------------------------------


class SupervisorUnavailable(Exception):
    """supervisord cannot be reached or refused a command; the message says which."""


class Supervisor:
    """The listener and the poller, through supervisord's XML-RPC socket (what supervisorctl uses)."""

    def __init__(self, serverurl: str):
        from supervisor.xmlrpc import SupervisorTransport

        self.serverurl = serverurl
        self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1",
                                              transport=SupervisorTransport(None, None, serverurl)).supervisor

    @classmethod
    def from_conf(cls, conf_path: str) -> "Supervisor":
        """From the `[supervisorctl] serverurl` of supervisord.conf; SupervisorUnavailable without one."""
        parser = configparser.RawConfigParser()
        if not parser.read(conf_path):
            raise SupervisorUnavailable(f"{conf_path} cannot be read")
        url = parser.get("supervisorctl", "serverurl", fallback="")
        if not url:
            raise SupervisorUnavailable(f"{conf_path} has no [supervisorctl] serverurl")
        return cls(url.replace("%(here)s", os.path.dirname(os.path.abspath(conf_path))))

    def _call(self, what: str, func: Callable, *args: Any, already: int | None = None) -> Any:
        try:
            return func(*args)
        except xmlrpc.client.Fault as exc:
            if already is not None and exc.faultCode == already:
                return None  # already in the state asked for

            raise SupervisorUnavailable(f"supervisord refused to {what}: {exc.faultString}") from None
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorUnavailable(f"supervisord is not reachable at {self.serverurl} ({exc})") from None

    def state(self, program: str) -> str:
        return self._call(f"describe {program}", self._rpc.getProcessInfo, program)["statename"]

    def stop(self, program: str) -> None:
        self._call(f"stop {program}", self._rpc.stopProcess, program, True, already=NOT_RUNNING)

    def start(self, program: str) -> None:
        self._call(f"start {program}", self._rpc.startProcess, program, True, already=ALREADY_STARTED)


def find_supervisor(conf_path: str, out: Out) -> Supervisor | None:
    """The supervisord running the bridge, or None (saying why) when it cannot be reached."""
    try:
        supervisor = Supervisor.from_conf(conf_path)
        supervisor.state(PROGRAMS[0])
    except SupervisorUnavailable as exc:
        out(f"supervisord: {exc}")
        return None
    return supervisor


def run_restore(database_path: str, source: str, out: Out = print, *, supervisor: Supervisor | None,
                stopped_by_hand: bool = False, now: datetime | None = None, err: Out = _stderr) -> int:
    """Put a backup in place of the database while the bridge runs. 0 on success, 1 on failure.

    1. Without supervisord, refuse unless `stopped_by_hand` (the operator stopped both).
    2. Check FILE (a bridge database, schema not newer than this code, not damaged) and copy
       it beside the database, synced: the processes still run meanwhile. Mark the copy as
       restored (mark_in_doubt). Ask supervisord which of the listener and the poller run.
    3. Stop the listener, then the poller (it finishes the item in hand). Meanwhile Chatwoot's
       webhook deliveries fail and mark the agents' messages failed: nothing is lost silently.
       Refuse if a poller still holds the database (one started by hand).
    4. Back up the current state, now that nothing changes it (`-before-restore`, not rotated).
    5. Swap the copy in: stale `-wal`/`-shm` removed, then one rename; there is never a
       half-restored file under the database's name.
    6. Start again what was running in 2.
    A failure after 3 starts the programs again on whatever file is in place and says so.
    """
    if supervisor is None and not stopped_by_hand:
        err("error: supervisord is not reachable, so the listener and the poller cannot be stopped from here; "
            "stop both yourself and run it again with --stopped; nothing was changed")
        return 1
    try:
        version = inspect_backup(source)
        staged = stage_restore(source, database_path)
    except DatabaseError as exc:
        err(f"error: {exc}; nothing was changed")
        return 1
    out(f"checked {source}: a bridge database, schema version {version} (this code: {SCHEMA_VERSION}); "
        f"copied beside {database_path}")
    try:
        parts = mark_in_doubt(staged, (now or datetime.now(timezone.utc)).timestamp())
    except DatabaseError as exc:
        _remove_staged(staged)
        err(f"error: {exc}; nothing was changed")
        return 1
    out(f"for {RESTORE_DOUBT_DAYS} days what is not in the backup is looked for in Chatwoot before it is "
        f"created again; {parts} reply part{'' if parts == 1 else 's'} not known as sent "
        f"{'is' if parts == 1 else 'are'} looked for on Mercado Livre before sending")

    running: list[str] = []
    if supervisor is None:
        out("the listener and the poller were stopped by hand (--stopped)")
    else:
        try:
            running = [p for p in PROGRAMS if supervisor.state(p) in RUNNING_STATES]
            for program in PROGRAMS:
                if program in running:
                    supervisor.stop(program)
                    out(f"stopped the {program} (supervisord)")
                else:
                    out(f"the {program} was not running")
        except SupervisorUnavailable as exc:
            return _abandon(staged, supervisor, running, f"{exc}", out, err)

    try:
        if _poller_running(database_path):
            raise DatabaseError("a poller outside supervisord still uses the database (./bridge.sh started "
                                "by hand?); stop it first")
        safety = None
        if os.path.exists(database_path):
            safety = _new_backup_path(database_path, now or datetime.now(timezone.utc), BEFORE_RESTORE)
            _pages, size = _write_backup(database_path, safety)
            out(f"backup of the state before the restore: {safety} ({_size(size)})")
        removed = swap_in(staged, database_path)
    except (DatabaseError, OSError) as exc:
        return _abandon(staged, supervisor, running, f"{exc}", out, err)
    out(f"restored {source} as {database_path}"
        + (f" (removed the old {', '.join(os.path.basename(r) for r in removed)})" if removed else ""))

    if not _start(supervisor, running, out, err):
        if safety:
            out(f"to go back to the state before the restore: ./bridge.sh restore {safety}")
        return 1
    if supervisor is None:
        out("start the listener and the poller again")
    out("done: the bridge now runs on the restored state" if running else "done")
    return 0


def mark_in_doubt(staged: str, now: float) -> int:
    """The copy about to be put back knows nothing of what happened since the backup, while
    Chatwoot and Mercado Livre kept it: its conversations, messages and delivered replies.

    1. Migrate the copy (as the processes would) and record the restore in it: for
       RESTORE_DOUBT every item without a row is looked for in Chatwoot before it is made
       (LinksStore.record_intent), so nothing brought in after the backup appears twice.
    2. Every part of a reply not finished in the copy becomes in doubt (`sending`): the
       outbox looks for it on Mercado Livre before sending, so a reply delivered after the
       backup is not sent again.
    3. Leave it a single file again (journal DELETE) for the swap. Returns the parts of 2.
    """
    db = Database(staged).open()
    try:
        db.links.mark_restored(now)
        parts = db.replies.put_in_doubt()
        db.conn().execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot mark {staged} as restored: {exc}") from None
    finally:
        db.close()
    return parts


def _remove_staged(staged: str) -> None:
    for path in (staged, staged + "-wal", staged + "-shm"):
        try:
            os.remove(path)
        except OSError:
            pass


def _poller_running(database_path: str) -> bool:
    db = Database(database_path)
    try:
        return db.poller_running()
    finally:
        db.close()


def _start(supervisor: Supervisor | None, programs: list[str], out: Out, err: Out) -> bool:
    ok = True
    for program in reversed(programs):
        try:
            supervisor.start(program)  # type: ignore[union-attr]  # programs is empty without supervisord
            out(f"started the {program} (supervisord)")
        except SupervisorUnavailable as exc:
            err(f"error: {exc}; start it with: supervisorctl -c {DEFAULT_SUPERVISORD_CONF} start {program}")
            ok = False
    return ok


def _abandon(staged: str, supervisor: Supervisor | None, running: list[str], reason: str, out: Out,
             err: Out) -> int:
    _remove_staged(staged)
    err(f"error: {reason}; the database was not changed")
    _start(supervisor, running, out, err)
    return 1
