"""The real processes: supervisord, gunicorn, the poller, against the fakes."""

import os
import signal
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from db_manager import Database
from tests.e2e import APP_DIR, ROOT, WEBHOOK_SECRET, wait_until


def test_supervisord_runs_both_processes_healthy_and_stops_on_sigterm(bridge):
    sup = bridge.supervisord()
    wait_until(lambda: bridge.health().status_code == 200, 30, what="/health 200")
    report = bridge.health().json()
    assert report["ok"] and report["checks"]["authorization"]["ok"]
    wait_until(lambda: "questions" in bridge.health().json()["checks"]["jobs"]["runs"], 30,
               what="the poller's first run")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=10) == 0
    # Its children (gunicorn master and workers, the poller) are gone with it: the session is empty.
    with pytest.raises(ProcessLookupError):
        os.killpg(sup.pid, 0)
    try:
        requests.get(f"{bridge.url}/health", timeout=1)
        listening = True
    except requests.RequestException:
        listening = False
    assert not listening


def test_the_poller_finishes_and_exits_0_on_sigterm(bridge):
    poller = bridge.poller()
    wait_until(lambda: bridge.fakes.meli.state.count("GET", "/questions/search") > 0, 20, what="a poll")
    poller.send_signal(signal.SIGTERM)
    assert poller.wait(timeout=10) == 0


def test_a_poller_waiting_out_mercado_livres_retry_after_stops_at_once_on_sigterm(bridge):
    """supervisord kills a program 10 s after SIGTERM: a wait of a job (here a 429's Retry-After
    under the retry patience, again and again) must not hold the stop (soak seed 20261129, 25 s)."""
    meli = bridge.fakes.meli.state
    meli.fail_next("GET", "/questions/search", 429, times=1000, headers={"Retry-After": "8"})
    poller = bridge.poller()
    wait_until(lambda: meli.count("GET", "/questions/search") > 0, 20, what="a poll")
    time.sleep(0.5)  # inside the 8-second wait now
    started = time.monotonic()
    poller.send_signal(signal.SIGTERM)
    assert poller.wait(timeout=10) == 0
    assert time.monotonic() - started < 3


HAMMER = """
import sys, time
from config import load_settings
from db_manager import Database
from mercado_livre_api import MeliClient
import os
settings = load_settings(dict(os.environ))
client = MeliClient(settings, Database(settings.database_path).open())
deadline = time.time() + float(sys.argv[1])
calls = 0
while time.time() < deadline:
    client.me()
    calls += 1
print(calls, client.refreshes)
"""


def test_two_processes_refresh_each_expiry_exactly_once(bridge):
    meli = bridge.fakes.meli.state
    # Tokens live 301 s on paper, so with the 5-minute margin the bridge refreshes every second.
    meli.access_ttl = 301.0
    bridge.once()  # seeds the store from the environment
    # Expire the seeded token: every token issued from here lives "301 s".
    db = Database(bridge.env["DATABASE_PATH"])
    token = db.auth.current()["access_token"]
    assert token
    db.auth.invalidate_access(token)
    before = meli.refresh_count
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, "6"], cwd=str(APP_DIR), env=bridge.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    calls = [int(o[0].split()[0]) for o in outs]
    refreshes = meli.refresh_count - before
    assert meli.invalid_grant_count == 0
    assert all(c > 10 for c in calls)
    # One refresh per second of expiry, never two for the same token (that would be an invalid_grant).
    assert 3 <= refreshes <= 8
    assert sum(int(o[0].split()[1]) for o in outs) == refreshes


def test_invalid_grant_makes_health_503_and_the_poller_keeps_running(bridge):
    bridge.listener()
    poller = bridge.poller()
    wait_until(lambda: bridge.health().status_code == 200, 20, what="healthy")
    bridge.fakes.meli.state.revoke_all()
    wait_until(lambda: bridge.health().status_code == 503, 30, what="/health 503")
    report = bridge.health().json()
    assert "authorization" in report["failing"]
    assert "reauthorization required" in report["checks"]["authorization"]["error"]
    time.sleep(1.5)
    assert poller.poll() is None


def test_authorize_then_callback_stores_the_seller(bridge):
    bridge.listener()
    out = bridge.cli("authorize")
    assert out.returncode == 0
    url = [line for line in out.stdout.splitlines() if line.startswith("http")][0]
    query = parse_qs(urlsplit(url).query)
    code = bridge.fakes.meli.state.issue_code(redirect_uri=query["redirect_uri"][0])
    resp = requests.get(f"{query['redirect_uri'][0]}?code={code}&state={query['state'][0]}", timeout=10)
    assert resp.status_code == 200 and bridge.fakes.meli.state.seller_nickname in resp.text
    again = requests.get(f"{query['redirect_uri'][0]}?code={code}&state={query['state'][0]}", timeout=10)
    assert again.status_code == 400
    status = bridge.cli("status")
    assert '"nickname": "' + bridge.fakes.meli.state.seller_nickname in status.stdout


def test_gunicorn_answers_413_to_a_chunked_body_over_one_megabyte(bridge):
    bridge.listener()

    def two_megabytes():  # a generator: requests sends it chunked, with no Content-Length
        yield b'{"event": "message_created", "content": "'
        for _ in range(32):
            yield b"x" * 65536
        yield b'"}'

    for path in (f"/webhook?token={WEBHOOK_SECRET}", "/notifications"):
        resp = requests.post(f"{bridge.url}{path}", data=two_megabytes(), timeout=20,
                             headers={"Content-Type": "application/json"})
        assert resp.request.headers["Transfer-Encoding"] == "chunked"
        assert (resp.status_code, resp.json()["reason"]) == (413, "body over 1 MB"), path.split("?")[0]


def test_the_secret_scan_finds_a_leak(tmp_path):
    from tests.e2e import leaked_secrets
    (tmp_path / "x.log").write_text("token APP_USR-123-abc leaked\n")
    assert leaked_secrets(tmp_path, {"APP_USR-123-abc", "other"}) == ["APP_…"]
    assert leaked_secrets(tmp_path, {"not-there"}) == []


def test_process_logs_and_hypothesis_caches_go_to_pytests_temporary_folder(tmp_path_factory):
    from hypothesis.configuration import storage_directory

    from tests.e2e import LOG_DIR
    base = tmp_path_factory.getbasetemp()
    assert LOG_DIR.is_relative_to(base)
    assert storage_directory("x", intent_to_write=False).path.is_relative_to(base)


def test_each_test_supervisord_has_its_own_socket_and_pidfile(tmp_path):
    from types import SimpleNamespace

    from tests.e2e import SUPERVISORD_PATHS, Bridge
    conf = Bridge.supervisord_conf(SimpleNamespace(tmp=tmp_path)).read_text()
    assert not any(fixed in conf for fixed in SUPERVISORD_PATHS)
    assert f"file={tmp_path}/supervisor.sock" in conf and f"pidfile={tmp_path}/supervisord.pid" in conf
    assert f"serverurl=unix://{tmp_path}/supervisor.sock" in conf
    assert f"directory={APP_DIR}" in conf
    original = (ROOT / "supervisord.conf").read_text()
    assert conf.count("\n") == original.count("\n")  # nothing else changed shape


def test_the_container_health_check_is_liveness_only(bridge):
    """Lost authorization is a 503 for operators, but the container is alive: no restart loop."""
    import json
    import re
    code = json.loads(re.search(r'CMD (\["python".*\])', (ROOT / "Dockerfile").read_text()).group(1))[2]
    bridge.listener()
    env = dict(bridge.env, PORT=str(bridge.port))
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=APP_DIR, timeout=10).returncode == 0
    bridge.fakes.meli.state.revoke_all()
    Database(bridge.env["DATABASE_PATH"]).auth.require_reauthorization("test", time.time())
    assert bridge.health().status_code == 503
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=APP_DIR, timeout=10).returncode == 0
