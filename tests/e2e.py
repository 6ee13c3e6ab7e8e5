"""Running the real processes (gunicorn, the poller, supervisord) against the fakes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Every log a process writes during the test run lands here; the session checks them for secrets.
# Under pytest, conftest.py points it into pytest's own temporary directory (which pytest
# prunes); a script run by hand (bench/) gets a folder of its own that it names when it ends.
LOG_DIR = Path(os.environ.get("MELI_TEST_LOG_DIR") or tempfile.mkdtemp(prefix="meli-chatwoot-logs-"))


# Where every process the tests start runs: the repository's files (symlinked) without its `.env`
# (a developer's own, loaded from the working directory by config.py) or `data/`. The tests'
# processes then see only the environment a test gives them, whatever the repository holds.
SHADOWED_OUT = frozenset({".env", "data", ".git"})


def shadow_of(root: Path, where: Path) -> Path:
    """`where` filled with a symlink to each entry of `root`, except those in SHADOWED_OUT."""
    where.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name not in SHADOWED_OUT and not (where / entry.name).exists():
            (where / entry.name).symlink_to(entry)
    return where


APP_DIR = shadow_of(ROOT, Path(tempfile.mkdtemp(prefix="app-", dir=LOG_DIR.parent if LOG_DIR.parent.exists()
                                                else None)))

WEBHOOK_SECRET = "whsec-e2e-7d41"
# The fixed paths of supervisord.conf, and what a test's own copy uses instead.
SUPERVISORD_PATHS = {"/tmp/meli-chatwoot-supervisord.pid": "supervisord.pid",
                     "/tmp/meli-chatwoot-supervisor.sock": "supervisor.sock"}


# Every secret handed to a process in this run; the session checks all logs against them.
_SECRETS: set[str] = set()


def leaked_secrets(log_dir: Path = LOG_DIR, secrets: set[str] | None = None) -> list[str]:
    """Secrets found in any process log (shown only by their first characters)."""
    secrets = _SECRETS if secrets is None else secrets
    if not log_dir.exists():
        return []
    leaks = set()
    for path in log_dir.glob("*.log"):
        text = path.read_text(errors="replace")
        leaks.update(s for s in secrets if s and s in text)
    return sorted(f"{s[:4]}…" for s in leaks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Bridge:
    """Environment and processes of one bridge installation under test."""

    def __init__(self, tmp_path: Path, fakes, **env_overrides):
        self.tmp = tmp_path
        self.fakes = fakes
        self.port = free_port()
        meli, chatwoot = fakes.meli.state, fakes.chatwoot.state
        access, refresh = meli.seed_tokens()
        self.env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
            "MELI_APP_ID": str(meli.app_id),
            "MELI_SECRET_KEY": meli.secret,
            "MELI_REDIRECT_URI": f"http://127.0.0.1:{self.port}/oauth/callback",
            "MELI_REFRESH_TOKEN": refresh,
            "MELI_ACCESS_TOKEN": access,
            "MELI_API_URL": fakes.meli.url,
            "MELI_AUTH_URL": fakes.meli.url,
            "CHATWOOT_URL": fakes.chatwoot.url,
            "CHATWOOT_API_TOKEN": chatwoot.api_token,
            "CHATWOOT_ACCOUNT_ID": str(chatwoot.account_id),
            "CHATWOOT_QUESTIONS_INBOX_ID": str(fakes.questions_inbox),
            "CHATWOOT_MESSAGES_INBOX_ID": str(fakes.messages_inbox),
            "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DATABASE_PATH": str(tmp_path / "data" / "bridge.db"),
            "PORT": str(self.port),
            "QUESTIONS_POLL_SECONDS": "0.5",
            "MESSAGES_POLL_SECONDS": "0.5",
            "LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
            # The harness is what may turn the test hooks (BRIDGE_CRASH_AT, …): see bridge.testhooks.
            "BRIDGE_TEST_HOOKS": "1",
        }
        self.env.update(env_overrides)
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        chatwoot.add_webhook(f"{self.url}/webhook", WEBHOOK_SECRET)

    def secrets(self) -> list[str]:
        meli = self.fakes.meli.state
        return [self.env["MELI_SECRET_KEY"], self.env["CHATWOOT_API_TOKEN"], WEBHOOK_SECRET,
                *meli.all_tokens(), *self.env.get("TOKEN_ENCRYPTION_KEY", "").split(",")]

    def remember_secrets(self) -> None:
        _SECRETS.update(self.secrets())

    def _log(self, name: str):
        return open(LOG_DIR / f"{self.tmp.name}-{name}-{len(self.procs)}.log", "ab")

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        self.remember_secrets()
        log = self._log(name)
        proc = subprocess.Popen(args, cwd=str(APP_DIR), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def listener(self) -> subprocess.Popen:
        proc = self.start("listener", [str(VENV_BIN / "gunicorn"), "webhook_server:app"])
        self.wait_http()
        return proc

    def poller(self) -> subprocess.Popen:
        return self.start("poller", [sys.executable, "main.py"])

    def supervisord(self) -> subprocess.Popen:
        proc = self.start("supervisord", [str(VENV_BIN / "supervisord"), "-c", str(self.supervisord_conf())])
        self.wait_http()
        return proc

    def supervisord_conf(self) -> Path:
        """The repository's supervisord.conf with its socket and pidfile in this test's folder.

        Its fixed /tmp paths would make two test runs at once refuse each other's supervisord.
        supervisord has no default for an unset %(ENV_X)s, so the paths cannot come from the
        environment without breaking a plain `supervisord -c supervisord.conf`.
        """
        text = (ROOT / "supervisord.conf").read_text()
        for fixed, own in SUPERVISORD_PATHS.items():
            assert fixed in text, f"supervisord.conf no longer uses {fixed}"
            text = text.replace(fixed, str(self.tmp / own))
        conf = self.tmp / "supervisord.conf"
        conf.write_text(text.replace("%(here)s", str(APP_DIR)))
        return conf

    def once(self, timeout: float = 120) -> subprocess.CompletedProcess:
        self.remember_secrets()
        with self._log("once") as log:
            result = subprocess.run([sys.executable, "main.py", "--once"], cwd=str(APP_DIR), env=self.env,
                                    capture_output=True, timeout=timeout)
            log.write(result.stdout + result.stderr)
        return result

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        with self._log("cli") as log:
            result = subprocess.run([sys.executable, "main.py", *args], cwd=str(APP_DIR), env=self.env,
                                    capture_output=True, text=True, timeout=timeout)
            log.write((result.stdout + result.stderr).encode())
        return result

    def wait_http(self, timeout: float = 20):
        def up():
            try:
                return requests.get(f"{self.url}/health", timeout=1).status_code in (200, 503)
            except requests.RequestException:
                return False
        wait_until(up, timeout, what="the listener to answer")

    def health(self) -> requests.Response:
        return requests.get(f"{self.url}/health", timeout=5)

    def stop(self, proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
            except ProcessLookupError:
                pass
        return proc.wait(timeout=timeout)

    def close(self):
        self.remember_secrets()  # tokens issued during the test count too
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=5)
