"""Start-up with an incomplete configuration: clear, said once, never a restart loop."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from config import load_settings_leniently
from db_manager import Database
from tests.conftest import base_env
from tests.e2e import APP_DIR, LOG_DIR, ROOT, wait_until
from webhook_server import create_app

INBOXES = ["CHATWOOT_QUESTIONS_INBOX_ID", "CHATWOOT_MESSAGES_INBOX_ID"]


def _health_check_code() -> str:
    return json.loads(re.search(r'CMD (\["python".*\])', (ROOT / "Dockerfile").read_text()).group(1))[2]


def test_in_the_container_both_processes_wait_for_a_missing_configuration(bridge):
    """First deploy on EasyPanel, before `setup`: the container stays up for the seller's console."""
    for name in INBOXES:
        bridge.env.pop(name)
    bridge.env["BRIDGE_WAIT_FOR_CONFIG"] = "1"  # what the Dockerfile sets
    log_path = LOG_DIR / f"{bridge.tmp.name}-supervisord-{len(bridge.procs)}.log"
    sup = bridge.supervisord()
    # supervisord calls a program RUNNING once it has stayed up `startsecs`; an exit before would respawn it.
    wait_until(lambda: all(f"success: {p} entered RUNNING state" in log_path.read_text()
                           for p in ("listener", "poller")), 30, what="both programs RUNNING")
    response = bridge.health()
    assert response.status_code == 503
    report = response.json()
    assert "configuration" in report["failing"]
    assert report["checks"]["configuration"]["missing"] == INBOXES
    assert report["checks"]["database"]["ok"]
    text = log_path.read_text()
    assert text.count("spawned: 'poller'") == 1 and text.count("spawned: 'listener'") == 1
    for name in INBOXES:
        assert text.count(f"bridge.poller: configuration error: {name}") == 1
        assert text.count(f"bridge.listener: configuration error: {name}") == 1
    assert text.count("poller waiting for its configuration") == 1
    assert "Traceback" not in text
    assert sup.poll() is None
    # The image's HEALTHCHECK (liveness) passes: EasyPanel leaves the container alone.
    env = dict(bridge.env, PORT=str(bridge.port))
    check = subprocess.run([sys.executable, "-c", _health_check_code()], env=env, cwd=APP_DIR, timeout=10)
    assert check.returncode == 0


def test_without_the_container_switch_a_missing_variable_still_exits_2(bridge):
    bridge.env.pop("CHATWOOT_QUESTIONS_INBOX_ID")
    result = subprocess.run([sys.executable, "main.py"], cwd=str(APP_DIR), env=bridge.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: CHATWOOT_QUESTIONS_INBOX_ID: is required but not set "
        "(example: CHATWOOT_QUESTIONS_INBOX_ID=3)"]


@pytest.mark.parametrize("command", [["setup", "https://bridge.example.com"], ["check"], ["authorize"], ["--once"],
                                     ["status"]])
def test_commands_exit_2_even_in_the_container(bridge, command):
    bridge.env.pop("CHATWOOT_URL")
    bridge.env["BRIDGE_WAIT_FOR_CONFIG"] = "1"
    result = bridge.cli(*command)
    assert result.returncode == 2
    assert result.stderr.count("configuration error: CHATWOOT_URL") == 1
    assert "Traceback" not in result.stderr


def _waiting_app(tmp_path, **overrides):
    settings, problems = load_settings_leniently(base_env(tmp_path, **overrides), require_webhook_secret=True)
    db = Database(settings.database_path).open()
    return create_app(settings, db=db, problems=problems).test_client()


def test_a_waiting_listener_names_what_is_missing_and_refuses_webhooks(tmp_path):
    client = _waiting_app(tmp_path, CHATWOOT_QUESTIONS_INBOX_ID=None, CHATWOOT_WEBHOOK_SECRET=None)
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["checks"]["configuration"]["missing"] == ["CHATWOOT_WEBHOOK_SECRET",
                                                                       "CHATWOOT_QUESTIONS_INBOX_ID"]
    hook = client.post("/webhook", json={"event": "message_created", "id": 1})
    # Chatwoot marks the agent's message failed: the agent sees it was not taken.
    assert hook.status_code == 503
    assert hook.get_json()["missing"] == ["CHATWOOT_WEBHOOK_SECRET", "CHATWOOT_QUESTIONS_INBOX_ID"]


def test_a_waiting_listener_still_records_notifications_and_authorizes(tmp_path):
    client = _waiting_app(tmp_path, CHATWOOT_MESSAGES_INBOX_ID=None, MELI_USER_ID="555000111")
    note = client.post("/notifications", json={"topic": "questions", "resource": "/questions/1",
                                               "application_id": 123456, "user_id": 555000111, "_id": "n1"})
    assert note.status_code == 200 and note.get_json()["status"] == "recorded"
    # The callback is served (a missing state is the caller's fault, not the configuration's).
    assert client.get("/oauth/callback?code=TG-1").status_code == 400


def test_a_waiting_listener_without_the_app_id_says_so_on_the_callback(tmp_path):
    client = _waiting_app(tmp_path, MELI_APP_ID=None)
    page = client.get("/oauth/callback?code=TG-1&state=s")
    assert page.status_code == 503 and "MELI_APP_ID" in page.get_data(as_text=True)


def _fake_venv(app, tmp_path):
    """A .venv whose python is the one running the tests; pip and supervisord must not run."""
    bin_dir = app / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for tool in ("pip", "supervisord"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} >> "{tmp_path}/ran"\nexit 1\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    shutil.copy(ROOT / "requirements.txt", app / ".venv" / "requirements.installed")


def test_run_sh_with_an_incomplete_env_exits_2_naming_each_problem_once(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "run.sh", app / "run.sh")
    for path in [*ROOT.glob("*.py"), ROOT / "requirements.txt", ROOT / "supervisord.conf"]:
        (app / path.name).symlink_to(path)
    _fake_venv(app, tmp_path)
    # .env.example as copied, with only some values filled in.
    example = (ROOT / ".env.example").read_text()
    (app / ".env").write_text(example.replace("DATABASE_PATH=data/meli_chatwoot.db",
                                              f"DATABASE_PATH={tmp_path}/db/bridge.db"))
    result = subprocess.run(["bash", str(app / "run.sh")], cwd=app,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("configuration error: ")]
    names = [line.split()[2].rstrip(":") for line in problems]
    assert sorted(names) == sorted(["MELI_SECRET_KEY", "CHATWOOT_API_TOKEN", "CHATWOOT_WEBHOOK_SECRET", *INBOXES])
    assert len(problems) == len(set(problems))
    assert ".venv/bin/python tools/sandbox.py" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists(), "pip or supervisord ran"


def test_run_sh_with_a_complete_env_starts_supervisord(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "run.sh", app / "run.sh")
    for path in [*ROOT.glob("*.py"), ROOT / "requirements.txt", ROOT / "supervisord.conf"]:
        (app / path.name).symlink_to(path)
    _fake_venv(app, tmp_path)
    env = base_env(tmp_path, CHATWOOT_WEBHOOK_SECRET="whsec-real-1")
    (app / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    result = subprocess.run(["bash", str(app / "run.sh")], cwd=app,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                            timeout=60)
    assert "configuration error" not in result.stderr
    assert (tmp_path / "ran").read_text().split() == ["supervisord"]


NO_ENV_LINE = ("No .env here: starting the sandbox (fake Mercado Livre and Chatwoot, nothing leaves this machine); "
               "to connect real accounts, cp .env.example .env, fill it in and run ./run.sh again.")


def test_run_sh_without_a_dotenv_starts_the_sandbox_and_says_so_in_one_line(tmp_path):
    """A fresh clone: the first command shows the product instead of eight configuration errors."""
    import os
    import signal

    import requests

    from tests.e2e import free_port
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "run.sh", app / "run.sh")
    for path in [*ROOT.glob("*.py"), ROOT / "requirements.txt", ROOT / "supervisord.conf", ROOT / "tools"]:
        (app / path.name).symlink_to(path)
    _fake_venv(app, tmp_path)
    meli, chatwoot, bridge = free_port(), free_port(), free_port()
    out = tmp_path / "out.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(["bash", str(app / "run.sh"), "--meli-port", str(meli), "--chatwoot-port",
                                 str(chatwoot), "--bridge-port", str(bridge), "--poll-seconds", "1"], cwd=app,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or f"Abra http://127.0.0.1:{chatwoot}/sandbox" in out.read_text(),
                   40, 0.1, what="the sandbox to start")
        assert proc.poll() is None, out.read_text()[-3000:]
        assert out.read_text().splitlines()[0] == NO_ENV_LINE
        assert requests.get(f"http://127.0.0.1:{chatwoot}/sandbox", timeout=5).status_code == 200
        # The real bridge behind it: listener up, poller beating, the fake seller authorized.
        wait_until(lambda: requests.get(f"http://127.0.0.1:{bridge}/health", timeout=5).status_code == 200, 30, 0.2,
                   what="the sandbox bridge healthy")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert not (tmp_path / "ran").exists(), "pip or supervisord ran"


def _bridge_sh(tmp_path, with_venv: bool, path: str) -> subprocess.CompletedProcess:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "bridge.sh", app / "bridge.sh")
    for entry in ROOT.iterdir():
        if entry.name not in (".env", ".venv", "data", "bridge.sh"):
            (app / entry.name).symlink_to(entry)
    if with_venv:
        _fake_venv(app, tmp_path)
    return subprocess.run(["./bridge.sh", "--help"], cwd=app, env={"PATH": path, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)


def test_bridge_sh_runs_main_py_with_the_virtualenv_on_a_plain_machine(tmp_path):
    result = _bridge_sh(tmp_path, with_venv=True, path="/usr/bin:/bin")
    assert result.returncode == 0 and result.stdout.startswith("usage: main.py"), result.stderr


def test_bridge_sh_runs_main_py_with_the_images_python_in_the_container(tmp_path):
    image_bin = tmp_path / "usr-local-bin"  # the image has no .venv; its python3 has the requirements
    image_bin.mkdir()
    (image_bin / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (image_bin / "python3").chmod(0o755)
    result = _bridge_sh(tmp_path, with_venv=False, path=f"{image_bin}:/usr/bin:/bin")
    assert result.returncode == 0 and result.stdout.startswith("usage: main.py"), result.stderr


def test_bridge_sh_without_an_installation_says_to_run_run_sh(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "python3").write_text("#!/bin/sh\nexit 1\n")  # a python3 without the bridge's packages
    (empty / "python3").chmod(0o755)
    result = _bridge_sh(tmp_path, with_venv=False, path=f"{empty}:/usr/bin:/bin")
    assert result.returncode == 2
    assert result.stderr.strip() == ("The bridge is not installed here: run ./run.sh once (it installs it into .venv),"
                                     " then ./bridge.sh again.")
