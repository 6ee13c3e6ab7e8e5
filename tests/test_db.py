import os
import sqlite3
import subprocess
import sys
import time

import pytest

from db_manager import SCHEMA_VERSION, Database, DatabaseError
from tests.e2e import APP_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_fresh_database_gets_every_migration(tmp_path):
    db = Database(str(tmp_path / "new" / "dir" / "b.db")).open()
    assert db.schema_version() == SCHEMA_VERSION
    tables = {r["name"] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meli_auth", "oauth_states", "links", "replies", "reply_parts", "job_runs", "cache",
            "notifications"} <= tables
    assert db.one("PRAGMA journal_mode")["journal_mode"] == "wal"
    assert db.one("PRAGMA foreign_keys")["foreign_keys"] == 1
    assert db.one("PRAGMA busy_timeout")["timeout"] >= 5000


def test_opening_again_changes_nothing(tmp_path):
    path = str(tmp_path / "b.db")
    Database(path).open().links.record_intent("question", "1", 1.0)
    db = Database(path).open()
    assert db.schema_version() == SCHEMA_VERSION
    assert db.links.get("question", "1")["status"] == "pending"


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    path = str(tmp_path / "b.db")
    Database(path).open().conn().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseError, match="newer than this code"):
        Database(path).open()


def test_a_file_that_is_not_a_database_gives_one_clear_line(tmp_path):
    path = tmp_path / "b.db"
    path.write_bytes(b"this is a text file, not sqlite" * 100)
    with pytest.raises(DatabaseError) as err:
        Database(str(path)).open()
    assert "not a database" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_gives_one_clear_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(DatabaseError, match="not writable"):
        Database(str(ro / "b.db")).open()


def test_the_poller_exits_2_with_one_line_on_a_bad_database(tmp_path):
    from tests.conftest import base_env
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"\x00garbage" * 1000)
    env = {"PATH": os.environ["PATH"], **base_env(tmp_path, DATABASE_PATH=str(bad))}
    result = subprocess.run([sys.executable, "main.py", "--once"], cwd=APP_DIR, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "database error" in result.stderr and "not a database" in result.stderr


def test_two_processes_migrating_at_once_both_succeed(tmp_path):
    path = str(tmp_path / "race.db")
    code = ("import sys, db_manager; db = db_manager.Database(sys.argv[1]).open();"
            " print(db.schema_version())")
    procs = [subprocess.Popen([sys.executable, "-c", code, path], cwd=APP_DIR, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(o[0].strip() == str(SCHEMA_VERSION) for o in outs)


RACER = """
import os, sys, time
import db_manager
workdir, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for n in range(rounds):
    open(os.path.join(workdir, f"ready-{n}-{me}"), "w").close()
    while not os.path.exists(os.path.join(workdir, f"go-{n}")):
        time.sleep(0.0005)
    db = db_manager.Database(os.path.join(workdir, f"fresh-{n}.db")).open()
    print(n, db.schema_version(), flush=True)
    db.close()
"""


def test_five_processes_opening_fresh_databases_at_once_all_succeed(tmp_path):
    """Four gunicorn workers and the poller on a first deploy: every one opens the new file."""
    processes, rounds = 5, 20
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(k), str(rounds)], cwd=APP_DIR,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(processes)]
    try:
        for n in range(rounds):
            # Release all of them together once each is ready at the door of round n.
            deadline = time.monotonic() + 60
            while not all((tmp_path / f"ready-{n}-{k}").exists() for k in range(processes)):
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                assert time.monotonic() < deadline, "a process never reached the start line"
                time.sleep(0.001)
            (tmp_path / f"go-{n}").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    expected = [f"{n} {SCHEMA_VERSION}" for n in range(rounds)]
    assert all(o[0].split("\n")[:-1] == expected for o in outs), outs


def test_a_reply_is_accepted_once_per_chatwoot_message(db):
    parts = [{"text": "a", "attachments": []}]
    first = db.replies.accept(chatwoot_message_id=9, conversation_id=1, kind="answer", target_id="5", parts=parts,
                              now=1.0)
    again = db.replies.accept(chatwoot_message_id=9, conversation_id=1, kind="answer", target_id="5", parts=parts,
                              now=2.0)
    assert first and again is None


def test_only_one_worker_claims_a_reply(db):
    reply = db.replies.accept(chatwoot_message_id=9, conversation_id=1, kind="answer", target_id="5",
                              parts=[{"text": "a"}], now=1.0)
    other = Database(db.path)
    assert db.replies.claim(reply, 2.0, 60) is not None
    assert other.replies.claim(reply, 2.0, 60) is None
    # A worker that died: its lease runs out and the reply can be taken again.
    assert other.replies.claim(reply, 100.0, 60) is not None


def test_delivered_replies_forget_their_text(db):
    reply = db.replies.accept(chatwoot_message_id=9, conversation_id=1, kind="answer", target_id="5",
                              parts=[{"text": "texto do agente"}], now=1.0)
    db.replies.mark_delivered(reply, 2.0)
    assert db.replies.parts(reply)[0]["text"] is None


def test_an_oauth_state_is_single_use_and_expires(db):
    db.auth.create_oauth_state("s1", None, now=100.0, ttl=600)
    assert db.auth.consume_oauth_state("s1", 200.0) == (True, None)
    assert db.auth.consume_oauth_state("s1", 201.0)[0] is False
    db.auth.create_oauth_state("s2", "verifier", now=100.0, ttl=600)
    assert db.auth.consume_oauth_state("s2", 701.0)[0] is False
    assert db.auth.consume_oauth_state("unknown", 1.0)[0] is False


def test_sqlite_errors_are_not_swallowed(db):
    with pytest.raises(sqlite3.OperationalError):
        db.conn().execute("SELECT * FROM no_such_table")


def test_an_unwritable_directory_gives_one_clear_line(tmp_path, monkeypatch):
    # CI runs as root, which ignores permission bits: simulate what a non-root user sees.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
    with pytest.raises(DatabaseError, match="not writable by this user"):
        Database(str(tmp_path / "b.db")).open()


def test_housekeeping_forgets_old_records_but_keeps_links(db):
    day = 86400.0
    db.notifications.record("n1", "questions", "/questions/1", now=1.0)
    db.notifications.mark_done("n1", now=2.0)
    db.auth.create_oauth_state("s", None, now=1.0, ttl=600)
    db.cache.put_many("item", {"MLB1": {"title": "x"}}, now=1.0)
    reply = db.replies.accept(chatwoot_message_id=1, conversation_id=1, kind="answer", target_id="5",
                              parts=[{"text": "a"}], now=1.0)
    db.replies.mark_delivered(reply, 2.0)
    db.replies.mark_reported(reply, 3.0)
    db.links.mark_created("question", "5", 1.0, conversation_id=1)
    counts = db.prune(now=40 * day)
    assert counts == {"notifications": 1, "oauth_states": 1, "cache": 1, "replies": 1}
    assert db.links.get("question", "5")["status"] == "created"
    assert db.one("SELECT COUNT(*) AS n FROM reply_parts")["n"] == 0


def test_a_backup_holds_what_is_still_only_in_the_wal(db, tmp_path):
    db.conn().execute("PRAGMA wal_autocheckpoint = 0")
    db.links.mark_created("question", "77", 1.0, conversation_id=5)
    assert os.path.getsize(db.path + "-wal") > 0
    target = str(tmp_path / "copy.db")
    assert db.backup_to(target) > 0
    copy = Database(target).open()
    assert copy.links.get("question", "77")["conversation_id"] == 5
    assert copy.schema_version() == SCHEMA_VERSION


def test_a_backup_never_overwrites_a_file(db, tmp_path):
    target = tmp_path / "copy.db"
    target.write_text("keep me")
    with pytest.raises(DatabaseError, match="already exists"):
        db.backup_to(str(target))
    assert target.read_text() == "keep me"


def test_the_backup_command_needs_only_the_database_path(tmp_path):
    path = tmp_path / "state" / "bridge.db"
    Database(str(path)).open().links.mark_created("pack", "9", 1.0)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DATABASE_PATH": str(path)}
    target = tmp_path / "backup.db"
    result = subprocess.run([sys.executable, "main.py", "backup", str(target)], cwd=APP_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "backup written" in result.stdout
    assert Database(str(target)).open().links.get("pack", "9")["status"] == "created"
    again = subprocess.run([sys.executable, "main.py", "backup", str(target)], cwd=APP_DIR, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr


def _schema(conn) -> list[tuple]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                        " ORDER BY type, name").fetchall()


def test_a_database_written_before_migrations_became_steps_reaches_the_schema_of_a_new_one(tmp_path):
    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    with open(os.path.join(ROOT, "tests", "schema_v10.sql")) as script:
        old.executescript(script.read())
    old.execute("INSERT INTO links (kind, external_id, status, created_at, updated_at)"
                " VALUES ('question', '1', 'pending', 1, 1)")
    old.commit()
    old.close()
    db = Database(path).open()
    assert db.schema_version() == SCHEMA_VERSION
    assert db.links.get("question", "1")["status"] == "pending"
    assert _schema(db.conn()) == _schema(Database(str(tmp_path / "fresh.db")).open().conn())
