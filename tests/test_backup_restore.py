"""`main.py backup` / `restore FILE` / `compact`: from the console, while both processes run."""

import os
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from bridge.admin import backup
from db_manager import SCHEMA_VERSION, Database, DatabaseError
from tests.e2e import wait_until

T0 = datetime(2026, 11, 20, 3, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def path(tmp_path):
    database = tmp_path / "data" / "meli_chatwoot.db"
    Database(str(database)).open().close()
    return str(database)


def run(func, *args, **kwargs):
    lines, errors = [], []
    code = func(*args, out=lines.append, err=errors.append, **kwargs)
    return code, "\n".join(lines), "\n".join(errors)


def mark(database: str, question: str) -> None:
    db = Database(database).open()
    db.links.mark_created("question", question, time.time(), conversation_id=7)
    db.close()


def has(database: str, question: str) -> bool:
    db = Database(database).open()
    try:
        return db.links.get("question", question) is not None
    finally:
        db.close()


# ---- backup and rotation ----------------------------------------------------------------------------


def test_rotation_deletes_only_the_bridges_own_backups_beyond_the_newest_n():
    names = ["meli_chatwoot-20261120-030000.db", "meli_chatwoot-20261121-030000.db",
             "meli_chatwoot-20261121-030000-2.db", "meli_chatwoot-20261122-030000-before-restore.db",
             "meli_chatwoot-20261123-030000.db", "notes.txt", "meli_chatwoot-20261119-030000.db.partial",
             "other-20261101-030000.db"]
    assert backup.backups_to_remove(names, "meli_chatwoot", 3) == ["meli_chatwoot-20261121-030000.db",
                                                                   "meli_chatwoot-20261120-030000.db"]
    assert backup.backups_to_remove(names, "meli_chatwoot", 10) == []


def test_backups_go_to_the_backups_folder_and_the_oldest_beyond_keep_are_deleted(path):
    folder = os.path.join(os.path.dirname(path), "backups")
    for day in range(4):
        code, output, _ = run(backup.run_backup, path, keep=3, now=T0 + timedelta(days=day))
        assert code == 0
    assert sorted(os.listdir(folder)) == ["meli_chatwoot-20261121-030000.db", "meli_chatwoot-20261122-030000.db",
                                          "meli_chatwoot-20261123-030000.db"]
    assert "deleted old backup: meli_chatwoot-20261120-030000.db" in output
    assert f"3 backups kept in {folder} (the newest 3)" in output
    assert f"restore it with: ./bridge.sh restore {folder}/meli_chatwoot-20261123-030000.db" in output
    # A backup is one self-contained file: no -wal beside it.
    assert not any(name.endswith(("-wal", "-shm")) for name in os.listdir(folder))


def test_two_backups_in_the_same_second_both_stay(path):
    assert run(backup.run_backup, path, now=T0)[0] == 0
    assert run(backup.run_backup, path, now=T0)[0] == 0
    assert sorted(os.listdir(os.path.join(os.path.dirname(path), "backups"))) == [
        "meli_chatwoot-20261120-030000-2.db", "meli_chatwoot-20261120-030000.db"]


# ---- restore refusals ---------------------------------------------------------------------------------


def staged_files(database: str) -> list[str]:
    return [n for n in os.listdir(os.path.dirname(database)) if n.endswith((".restoring", ".partial"))]


def test_a_file_that_is_not_a_database_is_refused_and_nothing_changes(path, tmp_path):
    mark(path, "1")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    code, output, errors = run(backup.run_restore, path, str(garbage), supervisor=None, stopped_by_hand=True)
    assert code == 1 and "is not a bridge database" in errors and "nothing was changed" in errors
    assert has(path, "1") and staged_files(path) == []


def test_a_sqlite_file_of_something_else_is_refused(path, tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    code, _output, errors = run(backup.run_restore, path, str(other), supervisor=None, stopped_by_hand=True)
    assert code == 1 and "a SQLite file but not a bridge database" in errors


def test_a_backup_of_a_newer_schema_is_refused(path, tmp_path):
    assert run(backup.run_backup, path, target=str(tmp_path / "newer.db"))[0] == 0
    conn = sqlite3.connect(tmp_path / "newer.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    code, _output, errors = run(backup.run_restore, path, str(tmp_path / "newer.db"), supervisor=None,
                                stopped_by_hand=True)
    assert code == 1 and f"newer than this code knows ({SCHEMA_VERSION})" in errors
    assert staged_files(path) == []


def test_without_supervisord_restore_refuses_unless_the_processes_were_stopped_by_hand(path, tmp_path):
    copy = str(tmp_path / "copy.db")
    assert run(backup.run_backup, path, target=copy)[0] == 0
    mark(path, "2")
    code, _output, errors = run(backup.run_restore, path, copy, supervisor=None)
    assert code == 1 and "--stopped" in errors
    assert has(path, "2") and staged_files(path) == []


def test_a_poller_still_running_outside_supervisord_stops_the_restore(path, tmp_path):
    copy = str(tmp_path / "copy.db")
    assert run(backup.run_backup, path, target=copy)[0] == 0
    poller = Database(path)
    assert poller.hold_poller_lock()
    code, _output, errors = run(backup.run_restore, path, copy, supervisor=None, stopped_by_hand=True)
    assert code == 1 and "a poller outside supervisord still uses the database" in errors
    assert staged_files(path) == []


def test_restore_by_hand_swaps_the_file_saves_the_state_before_and_drops_the_stale_wal(path, tmp_path):
    copy = str(tmp_path / "copy.db")
    assert run(backup.run_backup, path, target=copy)[0] == 0
    db = Database(path).open()
    db.conn().execute("PRAGMA wal_autocheckpoint = 0")
    db.links.mark_created("question", "3", time.time())
    assert os.path.getsize(path + "-wal") > 0  # the change lives only in the -wal, as after a crash
    code, output, errors = run(backup.run_restore, path, copy, supervisor=None, stopped_by_hand=True, now=T0)
    db.close()
    assert code == 0, errors
    assert not has(path, "3")
    safety = os.path.join(os.path.dirname(path), "backups", "meli_chatwoot-20261120-030000-before-restore.db")
    assert f"backup of the state before the restore: {safety}" in output
    assert has(safety, "3")
    # Left beside the new file, the old -wal would be replayed into it.
    assert "(removed the old meli_chatwoot.db-wal, meli_chatwoot.db-shm)" in output
    assert "start the listener and the poller again" in output
    assert not os.path.exists(path + ".poller.lock")  # looked for, never created (its owner would matter)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_from_a_root_console_what_it_writes_belongs_to_the_bridges_user(path, tmp_path):
    data = os.path.dirname(path)
    for name in [data, *(os.path.join(data, n) for n in os.listdir(data))]:
        os.chown(name, 10001, 10001)
    assert run(backup.run_backup, path, now=T0)[0] == 0
    copy = os.path.join(data, "backups", "meli_chatwoot-20261120-030000.db")
    assert run(backup.run_restore, path, copy, supervisor=None, stopped_by_hand=True)[0] == 0
    for name in (os.path.join(data, "backups"), copy, path):
        assert os.stat(name).st_uid == 10001, name


# ---- compact ------------------------------------------------------------------------------------------


def test_compact_vacuums_and_prints_the_size_before_and_after(path):
    db = Database(path).open()
    for n in range(400):
        db.links.mark_created("question", str(n), time.time(), conversation_id=n)
    with db.write() as conn:
        conn.execute("DELETE FROM links")
    db.compact()
    before = db.size_bytes()
    db.close()
    code, output, _ = run(backup.run_compact, path)
    assert code == 0
    after = os.path.getsize(path) + (os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0)
    assert after < before
    assert output.startswith(f"compacted {path}: ") and " before, " in output and " after" in output


def test_compact_says_so_and_changes_nothing_when_another_process_keeps_the_lock(path):
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        db = Database(path).open()
        with pytest.raises(DatabaseError, match="kept the database busy"):
            db.vacuum(wait_seconds=0.2)
        db.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# ---- end to end: the real supervisord stack -------------------------------------------------------------


def test_restore_round_trip_while_supervisord_runs_both_processes(bridge):
    bridge.supervisord()
    wait_until(lambda: bridge.health().status_code == 200, 30, what="/health 200")
    conf = str(bridge.tmp / "supervisord.conf")
    made = bridge.cli("backup")
    assert made.returncode == 0, made.stderr
    copy = next(line.rsplit(" ", 1)[1] for line in made.stdout.splitlines()
                if line.startswith("restore it with"))
    database = bridge.env["DATABASE_PATH"]
    mark(database, "990001")
    restored = bridge.cli("restore", copy, "--supervisord-conf", conf)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    lines = restored.stdout.splitlines()
    assert [line for line in lines if line.startswith(("stopped", "started"))] == [
        "stopped the listener (supervisord)", "stopped the poller (supervisord)",
        "started the poller (supervisord)", "started the listener (supervisord)"]
    assert not has(database, "990001")
    supervisor = backup.Supervisor.from_conf(conf)
    assert [supervisor.state(p) for p in backup.PROGRAMS] == ["RUNNING", "RUNNING"]
    wait_until(lambda: bridge.health().status_code == 200, 30, what="/health 200 after the restore")
    safety = next(line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in lines
                  if line.startswith("backup of the state before the restore"))
    assert has(safety, "990001")
