"""Mercado Livre tokens encrypted at rest with TOKEN_ENCRYPTION_KEY (Fernet, with rotation).

Also runs every test of test_tokens.py with a key configured (imported below): the conditional
writes of the refresh (a token compared with the stored one) must hold when the stored one is
encrypted with a random IV.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import responses
from cryptography.fernet import Fernet

from bridge.admin import health
from bridge.admin.setup import run_check
from config import load_settings
from db_manager import Database
from mercado_livre_api import MeliClient, ReauthorizationRequired
from tests.conftest import base_env
from tests.e2e import APP_DIR, ROOT
from tests.test_tokens import *  # noqa: F403 — the same behaviour, every token encrypted
from tests.test_tokens import API, token_body

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


@pytest.fixture
def make_settings(tmp_path):
    """As conftest's, with a key unless the test sets TOKEN_ENCRYPTION_KEY itself (None: no key)."""
    def make(**overrides):
        overrides.setdefault("TOKEN_ENCRYPTION_KEY", KEY_A)
        return load_settings(base_env(tmp_path, **overrides))
    return make


def open_db(make_settings, key):
    settings = make_settings(TOKEN_ENCRYPTION_KEY=key)
    return settings, Database(settings.database_path, settings.token_encryption_keys).open()


def file_bytes(path: str) -> bytes:
    """The database as it lies on disk, with what is still only in its write-ahead log."""
    return b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if Path(p).exists())


def stored(path: str) -> tuple:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT access_token, refresh_token FROM meli_auth WHERE id = 1").fetchone()
    finally:
        conn.close()


def under(key: str, value: str) -> str:
    assert value.startswith("fernet:"), "stored in plain text"
    return Fernet(key).decrypt(value[len("fernet:"):].encode()).decode()


def authorize(db, clock, access="APP_USR-access-1", refresh="TG-refresh-1", expires_in=21600.0):
    db.auth.store_authorized(555, "LOJA", access, refresh, clock() + expires_in, clock())


# ---- at rest -----------------------------------------------------------------------------------

def test_with_a_key_no_token_or_verifier_is_in_the_database_file(make_settings, clock):
    settings, db = open_db(make_settings, KEY_A)
    authorize(db, clock)
    db.auth.create_oauth_state("state-1", "pkce-verifier-secret-1", clock(), 600)
    assert (db.auth.current()["access_token"], db.auth.current()["refresh_token"]) == (
        "APP_USR-access-1", "TG-refresh-1")
    db.close()
    raw = file_bytes(settings.database_path)
    for secret in (b"APP_USR-access-1", b"TG-refresh-1", b"pkce-verifier-secret-1"):
        assert secret not in raw
    assert [under(KEY_A, v) for v in stored(settings.database_path)] == ["APP_USR-access-1", "TG-refresh-1"]
    db = Database(settings.database_path, settings.token_encryption_keys).open()
    assert db.auth.consume_oauth_state("state-1", clock()) == (True, "pkce-verifier-secret-1")


def test_without_a_key_tokens_are_stored_as_before(make_settings, clock):
    settings, db = open_db(make_settings, None)
    authorize(db, clock)
    assert stored(settings.database_path) == ("APP_USR-access-1", "TG-refresh-1")


# ---- rows from before the key --------------------------------------------------------------------

@responses.activate
def test_plain_text_tokens_from_before_the_key_work_and_are_encrypted_by_the_next_refresh(make_settings, clock):
    settings, db = open_db(make_settings, None)
    authorize(db, clock, expires_in=100)
    db.close()
    settings, db = open_db(make_settings, KEY_A)
    responses.post(f"{API}/oauth/token", json=token_body(access="APP_USR-access-2", refresh="TG-refresh-2"))
    responses.get(f"{API}/users/me", json={"id": 555})
    MeliClient(settings, db, clock=clock, sleep=lambda s: None).me()
    assert "refresh_token=TG-refresh-1" in responses.calls[0].request.body
    assert [under(KEY_A, v) for v in stored(settings.database_path)] == ["APP_USR-access-2", "TG-refresh-2"]


def test_starting_with_a_new_key_encrypts_the_plain_text_rows_at_once(make_settings, clock):
    settings, db = open_db(make_settings, None)
    authorize(db, clock)
    db.auth.create_oauth_state("state-1", "pkce-verifier-secret-1", clock(), 600)
    db.close()
    settings, db = open_db(make_settings, KEY_A)
    assert db.auth.secrets_at_rest() == {"stored": 3, "encrypted": 0, "stale": 3, "unreadable": 0}
    MeliClient(settings, db, clock=clock).seed_tokens()
    assert db.auth.secrets_at_rest() == {"stored": 3, "encrypted": 3, "stale": 0, "unreadable": 0}
    db.close()
    assert b"TG-refresh-1" not in file_bytes(settings.database_path)
    assert b"pkce-verifier-secret-1" not in file_bytes(settings.database_path)


# ---- rotation ------------------------------------------------------------------------------------

@responses.activate
def test_a_new_key_put_first_reads_the_old_rows_and_writes_under_itself(make_settings, clock):
    settings, db = open_db(make_settings, KEY_A)
    authorize(db, clock, expires_in=100)
    db.close()
    settings, db = open_db(make_settings, f"{KEY_B},{KEY_A}")
    assert db.auth.current()["refresh_token"] == "TG-refresh-1"
    assert db.auth.secrets_at_rest()["stale"] == 2
    responses.post(f"{API}/oauth/token", json=token_body(access="APP_USR-access-2", refresh="TG-refresh-2"))
    responses.get(f"{API}/users/me", json={"id": 555})
    MeliClient(settings, db, clock=clock, sleep=lambda s: None).me()
    assert [under(KEY_B, v) for v in stored(settings.database_path)] == ["APP_USR-access-2", "TG-refresh-2"]
    assert db.auth.secrets_at_rest()["stale"] == 0
    db.close()
    # The old key can now go.
    _settings, db = open_db(make_settings, KEY_B)
    assert db.auth.current()["refresh_token"] == "TG-refresh-2"


def test_a_restart_with_a_new_key_first_rewrites_the_rows_so_the_old_key_can_go(make_settings, clock):
    settings, db = open_db(make_settings, KEY_A)
    authorize(db, clock)
    db.close()
    settings, db = open_db(make_settings, f"{KEY_B},{KEY_A}")
    MeliClient(settings, db, clock=clock).seed_tokens()
    assert [under(KEY_B, v) for v in stored(settings.database_path)] == ["APP_USR-access-1", "TG-refresh-1"]
    db.close()
    _settings, db = open_db(make_settings, KEY_B)
    assert db.auth.current()["status"] == "active"


# ---- a key that does not open the tokens -----------------------------------------------------------

@pytest.mark.parametrize("key", [KEY_B, None], ids=["another key", "no key"])
def test_tokens_no_configured_key_opens_ask_for_the_key_or_a_new_authorization(make_settings, clock, key, caplog):
    settings, db = open_db(make_settings, KEY_A)
    authorize(db, clock)
    db.close()
    settings, db = open_db(make_settings, key)
    meli = MeliClient(settings, db, clock=clock, sleep=lambda s: None)
    with caplog.at_level(logging.DEBUG):
        meli.seed_tokens()
        with responses.RequestsMock(), pytest.raises(ReauthorizationRequired) as err:
            meli.me()  # no call goes out: the RequestsMock would refuse it
    message = str(err.value.message)
    assert "TOKEN_ENCRYPTION_KEY" in message and "put back the key" in message and "authorize" in message
    assert "unusable" in caplog.text and "TOKEN_ENCRYPTION_KEY" in caplog.text
    everything = message + caplog.text
    for secret in ("APP_USR-access-1", "TG-refresh-1", KEY_A, KEY_B, *stored(settings.database_path)):
        assert secret not in everything
    status = health.build_status(db, settings, clock())
    assert status["checks"]["authorization"]["ok"] is False
    assert "TOKEN_ENCRYPTION_KEY" in status["checks"]["authorization"]["reason"]
    # Nothing was written over them: putting the key back is enough.
    assert [under(KEY_A, v) for v in stored(settings.database_path)] == ["APP_USR-access-1", "TG-refresh-1"]
    # And an authorization starts afresh under the configured key.
    authorize(db, clock, access="APP_USR-access-9", refresh="TG-refresh-9")
    assert db.auth.current()["status"] == "active"
    assert db.auth.current()["refresh_token"] == "TG-refresh-9"


def test_an_oauth_link_whose_verifier_no_key_opens_is_refused_as_unknown(make_settings, clock):
    _settings, db = open_db(make_settings, KEY_A)
    db.auth.create_oauth_state("state-1", "pkce-verifier-secret-1", clock(), 600)
    db.close()
    _settings, db = open_db(make_settings, KEY_B)
    assert db.auth.consume_oauth_state("state-1", clock()) == (False, None)


# ---- the variable ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["not-a-key", f"{KEY_A},{KEY_A[:-2]}", ",,"],
                         ids=["not a key", "the second cut short", "only commas"])
def test_a_bad_key_stops_a_command_with_one_line_that_does_not_show_it(tmp_path, value):
    env = base_env(tmp_path, TOKEN_ENCRYPTION_KEY=value, PATH="/usr/bin:/bin")
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "status"], cwd=APP_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: TOKEN_ENCRYPTION_KEY: "), done.stderr
    for part in value.split(","):
        if part:
            assert part not in done.stderr
    assert not Path(env["DATABASE_PATH"]).exists()


def test_several_keys_are_read_newest_first(make_settings):
    assert make_settings(TOKEN_ENCRYPTION_KEY=f" {KEY_B} , {KEY_A} ").token_encryption_keys == (KEY_B, KEY_A)


def test_the_keys_are_among_the_secrets_kept_out_of_logs(make_settings):
    settings = make_settings(TOKEN_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    assert {KEY_A, KEY_B} <= set(settings.secrets())
    assert KEY_A not in repr(settings)


@responses.activate
def test_a_refresh_logs_no_token_and_no_key(make_settings, clock, caplog):
    settings, db = open_db(make_settings, f"{KEY_B},{KEY_A}")
    authorize(db, clock, expires_in=100)
    responses.post(f"{API}/oauth/token", json=token_body(access="APP_USR-access-2", refresh="TG-refresh-2"))
    responses.get(f"{API}/users/me", json={"id": 555})
    with caplog.at_level(logging.DEBUG):
        meli = MeliClient(settings, db, clock=clock, sleep=lambda s: None)
        meli.seed_tokens()
        meli.me()
    assert "refreshed" in caplog.text
    for secret in ("APP_USR-access-1", "TG-refresh-1", "APP_USR-access-2", "TG-refresh-2", KEY_A, KEY_B,
                   "fernet:"):
        assert secret not in caplog.text


# ---- check ------------------------------------------------------------------------------------

def _check_lines(settings) -> tuple[int, list[str]]:
    lines: list[str] = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(f"{API}/users/me", json={"id": 555, "nickname": "LOJA"})
        code = run_check(settings, None, out=lines.append, sleep=lambda s: None)
    return code, [line for line in lines if " token encryption: " in line]


def test_check_warns_while_no_key_is_set_and_says_so_once(make_settings, clock):
    settings, db = open_db(make_settings, None)
    authorize(db, clock)
    _code, lines = _check_lines(settings)
    assert len(lines) == 1 and lines[0].startswith("WARN token encryption: TOKEN_ENCRYPTION_KEY is not set"), lines


def test_check_says_the_tokens_are_encrypted_once_a_key_is_set(make_settings, clock):
    settings, db = open_db(make_settings, None)
    authorize(db, clock)
    settings = make_settings(TOKEN_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    _code, lines = _check_lines(settings)
    assert lines == ["ok   token encryption: on, 2 stored secret(s) encrypted"]


def test_check_fails_on_tokens_no_key_opens(make_settings, clock):
    settings, db = open_db(make_settings, KEY_A)
    authorize(db, clock)
    _code, lines = _check_lines(make_settings(TOKEN_ENCRYPTION_KEY=KEY_B))
    assert lines[0].startswith("FAIL token encryption: 2 stored secret(s) that no key in TOKEN_ENCRYPTION_KEY"), lines


# ---- concurrency ------------------------------------------------------------------------------

def test_refresh_stays_single_flight_across_processes_with_encrypted_tokens():
    from tests.token_race import run_race
    figures = run_race(seconds=6, processes=2, threads=8, access_ttl=2.0,
                       extra_env={"TOKEN_ENCRYPTION_KEY": f"{KEY_B},{KEY_A}"})
    assert figures["invalid_grant"] == 0, figures
    assert (figures["status"], figures["reauth_seen"]) == ("active", 0), figures
    assert figures["errors"] == {}, figures
    assert figures["refreshes"] >= 2 and figures["stored_encrypted"], figures


# ---- the real processes -----------------------------------------------------------------------

def test_the_real_poller_stores_no_token_in_clear_and_a_lost_key_says_what_to_do(tmp_path, fakes):
    import json

    from tests.e2e import Bridge
    bridge = Bridge(tmp_path, fakes, TOKEN_ENCRYPTION_KEY=KEY_A)
    try:
        first = bridge.once()
        assert first.returncode == 0, first.stderr[-2000:]
        database = bridge.env["DATABASE_PATH"]
        issued = fakes.meli.state.all_tokens()
        assert issued and not [t for t in issued if t.encode() in file_bytes(database)]

        bridge.env["TOKEN_ENCRYPTION_KEY"] = KEY_B  # the key was lost
        status = bridge.cli("status")
        assert status.returncode == 1 and "Traceback" not in status.stderr
        authorization = json.loads(status.stdout)["checks"]["authorization"]
        assert "TOKEN_ENCRYPTION_KEY" in authorization["reason"] and "authorize" in authorization["reason"]
        again = bridge.once()
        output = (again.stdout + again.stderr).decode()
        assert again.returncode == 1 and "Traceback" not in output
        assert "mercado livre authorization unusable: no key in TOKEN_ENCRYPTION_KEY decrypts" in output
    finally:
        bridge.close()
