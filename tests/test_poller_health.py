"""A dead, stopped or stuck poller makes /health answer 503 naming it, and the container's check fail."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import responses

from bridge import progress
from bridge.admin import health, supervisor_watch
from bridge.http import HttpClient
from bridge.progress import JobWatch
from bridge.rate_budget import Budget
from db_manager import Database
from tests.e2e import APP_DIR, LOG_DIR, ROOT, wait_until
from tests.helpers import Clock, authorized_services

STALE, STUCK = health.POLLER_STALE_SECONDS, health.JOB_STUCK_SECONDS


@pytest.fixture
def listener(settings, db, clock, make_client):
    authorized_services(settings, db, clock)
    return make_client(clock=clock)


def test_health_answers_503_naming_the_poller_when_its_heartbeat_stops_and_200_when_it_beats_again(
        listener, db, clock):
    db.jobs.beat(4242, "box-a", clock(), clock(), {})
    assert listener.get("/health").status_code == 200
    clock.advance(STALE + 1)
    resp = listener.get("/health")
    assert resp.status_code == 503 and resp.json["failing"] == ["poller"] and not resp.json["live"]
    assert resp.json["checks"]["poller"]["error"].startswith(f"poller stopped: no heartbeat for {int(STALE) + 1} s")
    assert "pid 4242 on box-a" in resp.json["checks"]["poller"]["error"]
    db.jobs.beat(4242, "box-a", clock() - STALE, clock(), {})
    resp = listener.get("/health")
    assert resp.status_code == 200 and resp.json["live"]


def test_health_answers_503_naming_a_job_that_made_no_progress_and_200_once_it_moves(listener, db, clock):
    now = clock()
    db.jobs.beat(1, "box", now - 300, now, {"messages": {"since": now - 200, "progress": now - STUCK - 5}})
    resp = listener.get("/health")
    assert resp.status_code == 503 and resp.json["failing"] == ["jobs"] and not resp.json["live"]
    assert resp.json["checks"]["jobs"]["error"] == (f"poller stuck: job messages has made no progress for "
                                                    f"{int(STUCK) + 5} s (limit {int(STUCK)} s)")
    db.jobs.beat(1, "box", now - 300, now, {"messages": {"since": now - 200, "progress": now - 1}})
    assert listener.get("/health").status_code == 200


def test_a_long_poll_that_keeps_making_progress_is_not_stuck(listener, db, clock):
    now = clock()
    db.jobs.beat(1, "box", now - 3600, now, {"questions": {"since": now - 1800, "progress": now - 2}})
    resp = listener.get("/health")
    assert resp.status_code == 200
    assert resp.json["checks"]["jobs"]["running"] == {"questions": {"seconds": 1800, "seconds_without_progress": 2}}


def test_a_listener_without_any_poller_fails_once_a_poller_had_time_to_beat(listener, clock):
    assert listener.get("/health").status_code == 200  # just started: the poller starts beside it
    clock.advance(STALE + 1)
    resp = listener.get("/health")
    assert resp.status_code == 503 and resp.json["failing"] == ["poller"]
    assert resp.json["checks"]["poller"]["error"].startswith("poller not running")


def test_lost_authorization_is_a_503_but_the_container_stays_live(listener, db, clock):
    db.jobs.beat(1, "box", clock(), clock(), {})
    db.auth.require_reauthorization("refused", clock())
    resp = listener.get("/health")
    assert resp.status_code == 503 and resp.json["failing"] == ["authorization"] and resp.json["live"]


def test_a_poller_waiting_for_its_configuration_keeps_the_container_live(db, settings, clock):
    db.jobs.beat(1, "box", clock() - 999, clock() - 999, {})  # an old heartbeat from before the redeploy
    report = health.build_status(db, settings, clock(), problems=["CHATWOOT_URL: is required but not set"],
                                 poller_expected_since=clock() - 999)
    assert report["live"] and "configuration" in report["failing"] and "poller" not in report["failing"]


@responses.activate
def test_http_attempts_and_budget_waits_are_the_jobs_progress():
    clock = Clock(1000.0)
    watch = JobWatch(clock)
    responses.get("https://api.test/x", json={})
    client = HttpClient("https://api.test", attempts=1)
    client.budgets = {"*": Budget("test", 60.0)}
    with watch.running("questions"):
        clock.advance(50)
        client._request("GET", "/x")
        assert watch.snapshot() == {"questions": {"since": 1000.0, "progress": 1050.0}}
        clock.advance(50)
        budget = Budget("test", 1.0, window=0.3)
        budget.acquire()
        budget.acquire()  # waits for the window: progress while waiting
        assert watch.snapshot()["questions"]["progress"] == 1100.0
    assert watch.snapshot() == {}
    progress.made()  # outside a watched job: nothing to report, no error


def test_the_supervisor_watch_stops_supervisord_on_a_fatal_program_only():
    stops = []
    events = [("ver:3.0 server:supervisor serial:1 pool:fatal poolserial:1 eventname:PROCESS_STATE_RUNNING len:{}",
               "processname:poller groupname:poller from_state:STARTING pid:7"),
              ("ver:3.0 server:supervisor serial:2 pool:fatal poolserial:2 eventname:PROCESS_STATE_FATAL len:{}",
               "processname:poller groupname:poller from_state:BACKOFF")]
    stdin = io.StringIO("".join(header.format(len(payload)) + "\n" + payload for header, payload in events))
    stdout, stderr = io.StringIO(), io.StringIO()
    assert supervisor_watch.listen(stdin, stdout, stderr, lambda: stops.append(1)) == 0
    assert stops == [1]
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    assert "program poller is FATAL" in stderr.getvalue()


def _container_check(bridge) -> int:
    code = json.loads(re.search(r'CMD (\["python".*\])', (ROOT / "Dockerfile").read_text()).group(1))[2]
    return subprocess.run([sys.executable, "-c", code], env=bridge.env, cwd=APP_DIR, timeout=10).returncode


def test_a_stopped_poller_turns_health_503_and_the_container_check_fails_until_it_runs_again(bridge):
    bridge.env.update(BRIDGE_HEARTBEAT_SECONDS="0.3", BRIDGE_POLLER_STALE_SECONDS="2")
    bridge.supervisord()
    # /health is 200 before the poller's first beat too (it has a grace period): wait for the beat.
    wait_until(lambda: Database(bridge.env["DATABASE_PATH"]).jobs.heartbeat(), 30, what="the poller's heartbeat")
    wait_until(lambda: bridge.health().status_code == 200, 30, what="/health 200")
    assert _container_check(bridge) == 0
    pid = Database(bridge.env["DATABASE_PATH"]).jobs.heartbeat()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: bridge.health().status_code == 503, 15, 0.2, what="/health 503")
        report = bridge.health().json()
        assert report["failing"] == ["poller"] and report["checks"]["poller"]["error"].startswith("poller stopped")
        assert _container_check(bridge) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: bridge.health().status_code == 200, 15, 0.2, what="/health back to 200")
    assert _container_check(bridge) == 0


def test_a_poller_that_keeps_failing_at_start_takes_supervisord_down(bridge):
    bridge.env["BRIDGE_CRASH_AT"] = "poller_started"
    log_path = LOG_DIR / f"{bridge.tmp.name}-supervisord-{len(bridge.procs)}.log"
    sup = bridge.supervisord()
    started = time.monotonic()
    sup.wait(timeout=60)
    text = log_path.read_text()
    assert "gave up: poller entered FATAL state" in text
    assert "supervisor_watch: program poller is FATAL" in text
    assert time.monotonic() - started < 60
