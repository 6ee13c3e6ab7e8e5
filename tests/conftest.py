"""Shared fixtures: settings pointing at a temporary database, and known test secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from config import load_settings
from db_manager import Database

# Values chosen so a leak is easy to grep for (test_secrets_never_logged relies on them).
SECRETS = {
    "MELI_SECRET_KEY": "meli-secret-xyz",
    "CHATWOOT_API_TOKEN": "cw-token-abc",
    "CHATWOOT_WEBHOOK_SECRET": "whsec-one-5f3a,whsec-two-9b1c",
}


def base_env(tmp_path, **overrides) -> dict:
    env = {
        "MELI_APP_ID": "123456",
        "MELI_REDIRECT_URI": "https://bridge.example.com/oauth/callback",
        "MELI_API_URL": "https://api.meli.test",
        "MELI_AUTH_URL": "https://auth.meli.test",
        "CHATWOOT_URL": "https://chat.example.test",
        "CHATWOOT_ACCOUNT_ID": "1",
        "CHATWOOT_QUESTIONS_INBOX_ID": "1",
        "CHATWOOT_MESSAGES_INBOX_ID": "2",
        "DATABASE_PATH": str(tmp_path / "state" / "bridge.db"),
        **SECRETS,
    }
    env.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
    return env


@pytest.fixture
def make_settings(tmp_path):
    def make(**overrides):
        return load_settings(base_env(tmp_path, **overrides))
    return make


@pytest.fixture
def settings(make_settings):
    return make_settings()


@pytest.fixture
def clock():
    from tests.helpers import Clock
    return Clock()


@pytest.fixture
def db(settings):
    database = Database(settings.database_path, settings.token_encryption_keys).open()
    yield database
    database.close()


@pytest.fixture
def make_client(settings, db):
    """A test client of the listener (create_app), on this test's settings and database unless given."""
    from webhook_server import create_app

    def make(with_settings=None, with_db=None, **kwargs):
        return create_app(with_settings or settings, db=with_db or db, **kwargs).test_client()
    return make


@pytest.fixture
def client(make_client):
    return make_client()


# ---- end-to-end: fakes and real processes ---------------------------------------------------------

@pytest.fixture
def fakes():
    from tests.fakes import start_fakes
    running = start_fakes()
    chatwoot = running.chatwoot.state
    running.questions_inbox = chatwoot.add_inbox("Mercado Livre - Perguntas")
    running.messages_inbox = chatwoot.add_inbox("Mercado Livre - Vendas")
    yield running
    running.stop()


@pytest.fixture
def bridge(tmp_path, fakes):
    from tests.e2e import Bridge
    installation = Bridge(tmp_path, fakes)
    yield installation
    installation.close()


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has set itself up
def pytest_configure(config):
    """A test run leaves nothing behind: what it writes goes under pytest's own temporary folder.

    pytest keeps the folders of the last three runs and deletes older ones.  Set here, before
    any test module imports tests.e2e, because LOG_DIR is read when that module is imported.
    """
    base = config._tmp_path_factory.getbasetemp()  # the tmp_path_factory fixture is not up yet
    os.environ.setdefault("MELI_TEST_LOG_DIR", str(base / "process-logs"))
    from hypothesis.configuration import set_hypothesis_home_dir
    # Hypothesis writes caches even with database=None; by default into ./.hypothesis of the repository.
    set_hypothesis_home_dir(base / "hypothesis")
    refuse_the_repository_as_working_directory()


REPOSITORY = Path(__file__).resolve().parent.parent
BRIDGE_LAUNCHERS = {"gunicorn", "supervisord", "supervisorctl", "bash", "sh", "run.sh", "bridge.sh"}


def refuse_the_repository_as_working_directory() -> None:
    """No process the suite starts runs in the repository root.

    config.py loads `.env` from the working directory: a developer's own (the README's first
    step) would fill in what a test left out on purpose. Processes run in tests.e2e.APP_DIR
    instead; one started in the root fails its test here, whether or not a `.env` exists now.
    """
    if getattr(subprocess.Popen.__init__, "refuses_root", False):
        return
    start = subprocess.Popen.__init__

    def guarded(self, args, *more, cwd=None, **kwargs):
        where = Path(cwd if cwd is not None else os.getcwd()).resolve()
        program = Path(os.fspath(args if isinstance(args, (str, bytes, os.PathLike)) else args[0])).name
        # What may load config.py, directly or through a script; other tools (a browser) are left alone.
        if where == REPOSITORY and (str(program).startswith("python") or program in BRIDGE_LAUNCHERS):
            raise AssertionError(f"a test started {args!r} in the repository root, where a developer's .env "
                                 "would be loaded: give it cwd=tests.e2e.APP_DIR")
        start(self, args, *more, cwd=cwd, **kwargs)
    guarded.refuses_root = True
    subprocess.Popen.__init__ = guarded


def pytest_sessionfinish(session, exitstatus):
    """Every log a real process wrote during this run must be free of secrets."""
    from tests.e2e import LOG_DIR, leaked_secrets
    leaks = leaked_secrets()
    if leaks:
        print(f"\nSECRETS FOUND IN PROCESS LOGS under {LOG_DIR}: {leaks}")
        session.exitstatus = 1
