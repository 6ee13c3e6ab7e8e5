"""Refresh is single-flight across the threads of one process and across processes.

Mercado Livre's refresh tokens are single use: two refreshes with the same token leave
one `invalid_grant`, and if that refusal ends the authorization the seller is locked out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs

import pytest
import requests
import responses

from bridge.http import TransientError
from bridge.store.auth import auth_decision
from mercado_livre_api import REFRESH_LEASE, REFRESH_PAUSE, MeliClient, ReauthorizationRequired
from tests.e2e import APP_DIR

API = "https://api.meli.test"


def store(db, clock, access="AT-1", refresh="RT-1", expires_in=21600.0, user_id=555):
    db.auth.store_authorized(user_id, "LOJA", access, refresh, clock() + expires_in, clock())


def token_answer(n, user_id=555):
    return 200, {}, json.dumps({"access_token": f"AT-{n}", "token_type": "Bearer", "expires_in": 21600,
                                "user_id": user_id, "refresh_token": f"RT-{n}"})


INVALID_GRANT = (400, {}, json.dumps({"error": "invalid_grant", "error_description": "already used",
                                      "status": 400, "cause": []}))


class SingleUseTokens:
    """A token endpoint for `responses`: each refresh token works once, like Mercado Livre's."""

    def __init__(self, live="RT-1", delay=0.0):
        self.live = {live}
        self.delay = delay
        self.issued = 0
        self.refused = 0
        self.lock = threading.Lock()
        self.entered = threading.Event()

    def __call__(self, request):
        self.entered.set()
        if self.delay:
            time.sleep(self.delay)
        used = parse_qs(request.body)["refresh_token"][0]
        with self.lock:
            if used not in self.live:
                self.refused += 1
                return INVALID_GRANT
            self.live.discard(used)
            self.issued += 1
            n = self.issued + 1
            self.live.add(f"RT-{n}")
        return token_answer(n)


def run_threads(count, target):
    results, errors = [None] * count, []
    start = threading.Barrier(count)

    def work(i):
        start.wait()
        try:
            results[i] = target()
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


@pytest.fixture
def meli(settings, db, clock):
    return MeliClient(settings, db, clock=clock, sleep=lambda s: None)


@pytest.mark.parametrize("threads", [2, 16])
@responses.activate
def test_threads_of_one_client_at_expiry_make_one_refresh_and_share_its_token(meli, db, clock, threads):
    store(db, clock, expires_in=10)
    endpoint = SingleUseTokens(delay=0.2)
    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=endpoint)
    results, errors = run_threads(threads, meli.access_token)
    assert errors == []
    assert results == ["AT-2"] * threads
    assert (endpoint.issued, endpoint.refused) == (1, 0)
    row = db.auth.current()
    assert (row["status"], row["refresh_token"], row["refresh_lease_owner"]) == ("active", "RT-2", None)


@responses.activate
def test_two_clients_of_one_process_make_one_refresh(settings, db, clock):
    store(db, clock, expires_in=10)
    endpoint = SingleUseTokens(delay=0.2)
    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=endpoint)
    clients = iter([MeliClient(settings, db, clock=clock), MeliClient(settings, db, clock=clock)])
    results, errors = run_threads(2, lambda: next(clients).access_token())
    assert errors == [] and results == ["AT-2", "AT-2"]
    assert (endpoint.issued, endpoint.refused) == (1, 0)


@responses.activate
def test_a_cold_start_with_only_a_refresh_token_refreshes_once(make_settings, db, clock):
    meli = MeliClient(make_settings(MELI_REFRESH_TOKEN="RT-1"), db, clock=clock)
    meli.seed_tokens()
    endpoint = SingleUseTokens(delay=0.2)
    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=endpoint)
    results, errors = run_threads(8, meli.access_token)
    assert errors == [] and results == ["AT-2"] * 8
    assert (endpoint.issued, endpoint.refused) == (1, 0)


# ---- a refused refresh ends the authorization only when nothing newer can exist ---------------------

@responses.activate
def test_invalid_grant_after_another_process_stored_a_newer_pair_uses_that_pair(meli, db, clock):
    store(db, clock, expires_in=10)

    def other_process_won(_request):
        # Another process spent RT-1 first (our lease had run out) and stored its pair.
        db.auth.store_refreshed("RT-1", "AT-other", "RT-other", clock() + 21600, 555, clock())
        return INVALID_GRANT

    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=other_process_won)
    assert meli.access_token() == "AT-other"
    row = db.auth.current()
    assert (row["status"], row["refresh_token"]) == ("active", "RT-other")
    assert len(responses.calls) == 1


@responses.activate
def test_invalid_grant_while_another_refresh_is_in_flight_waits_for_its_pair(meli, db, clock):
    store(db, clock, expires_in=10)

    def other_process_refreshing(_request):
        # Our lease ran out; another process claimed it and its call spent RT-1 first.
        assert db.auth.claim_refresh("other", clock() + REFRESH_LEASE + 1, 300, REFRESH_LEASE)[0] == "refresh"
        return INVALID_GRANT

    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=other_process_refreshing)
    clock.advance(REFRESH_LEASE + 1)
    with pytest.raises(TransientError):
        meli.access_token(wait_seconds=0)
    assert db.auth.current()["status"] == "active"
    db.auth.store_refreshed("RT-1", "AT-other", "RT-other", clock() + 21600, 555, clock())
    assert meli.access_token() == "AT-other"
    assert len(responses.calls) == 1


@responses.activate
def test_invalid_grant_with_the_stored_token_and_no_refresh_in_flight_requires_reauthorization(meli, db, clock):
    store(db, clock, expires_in=10)
    responses.add(responses.POST, f"{API}/oauth/token", status=400, body=INVALID_GRANT[2])
    with pytest.raises(ReauthorizationRequired):
        meli.access_token()
    with pytest.raises(ReauthorizationRequired):
        meli.access_token()
    assert db.auth.current()["status"] == "reauth_required"
    assert len(responses.calls) == 1


# ---- a pair Mercado Livre issued is never dropped -------------------------------------------------

@responses.activate
def test_a_pair_issued_after_our_lease_ran_out_is_still_stored(meli, db, clock):
    store(db, clock, expires_in=10)

    def slow_answer(_request):
        # Our lease ran out while Mercado Livre was answering; another caller holds it now.
        db.auth.claim_refresh("other", clock() + REFRESH_LEASE + 1, 300, REFRESH_LEASE)
        return token_answer(2)

    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=slow_answer)
    assert meli.access_token() == "AT-2"
    row = db.auth.current()
    assert (row["status"], row["access_token"], row["refresh_token"]) == ("active", "AT-2", "RT-2")


@responses.activate
def test_a_pair_issued_after_a_loser_ended_the_authorization_revives_it(meli, db, clock):
    store(db, clock, expires_in=10)

    def loser_gave_up(_request):
        # The other caller's refresh with RT-1 was refused (ours spent it) and it found no live lease.
        assert db.auth.require_reauthorization("refused", clock() + REFRESH_LEASE + 1, used_refresh_token="RT-1",
                                               owner="other")
        return token_answer(2)

    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=loser_gave_up)
    assert meli.access_token() == "AT-2"
    row = db.auth.current()
    assert (row["status"], row["refresh_token"], row["status_reason"]) == ("active", "RT-2", None)


@responses.activate
def test_a_pair_issued_after_a_new_authorization_keeps_the_authorization(meli, db, clock):
    store(db, clock, expires_in=10)

    def authorized_meanwhile(_request):
        db.auth.store_authorized(555, "LOJA", "AT-auth", "RT-auth", clock() + 21600, clock())
        return token_answer(2)

    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=authorized_meanwhile)
    assert meli.access_token() == "AT-2"
    row = db.auth.current()
    assert (row["status"], row["refresh_token"]) == ("active", "RT-auth")


# ---- a refresh whose answer was lost --------------------------------------------------------------

@responses.activate
def test_a_lost_refresh_answer_pauses_then_retries_the_same_token(meli, db, clock):
    store(db, clock, expires_in=10)
    responses.add(responses.POST, f"{API}/oauth/token", body=requests.exceptions.ReadTimeout("lost"))
    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=lambda _r: token_answer(2))
    with pytest.raises(TransientError):
        meli.access_token()
    row = db.auth.current()
    assert (row["status"], row["refresh_token"]) == ("active", "RT-1")
    # No loop: callers during the pause do not spend the token again.
    with pytest.raises(TransientError):
        meli.access_token(wait_seconds=0)
    assert len(responses.calls) == 1
    clock.advance(REFRESH_PAUSE)
    assert meli.access_token() == "AT-2"
    assert [parse_qs(c.request.body)["refresh_token"] for c in responses.calls] == [["RT-1"], ["RT-1"]]


@responses.activate
def test_a_lost_answer_whose_retry_is_refused_requires_reauthorization_once(meli, db, clock):
    store(db, clock, expires_in=10)
    responses.add(responses.POST, f"{API}/oauth/token", body=requests.exceptions.ReadTimeout("lost"))
    responses.add(responses.POST, f"{API}/oauth/token", status=400, body=INVALID_GRANT[2])
    with pytest.raises(TransientError):
        meli.access_token()
    assert db.auth.current()["status"] == "active"
    clock.advance(REFRESH_PAUSE)
    with pytest.raises(ReauthorizationRequired):
        meli.access_token()
    with pytest.raises(ReauthorizationRequired):
        meli.access_token()
    assert db.auth.current()["status"] == "reauth_required"
    assert len(responses.calls) == 2


# ---- the decision -----------------------------------------------------------------------------------

def test_the_decision_waits_for_any_live_lease_unless_it_is_our_own():
    row = {"status": "active", "refresh_token": "RT", "access_token": "AT", "expires_at": 100.0,
           "refresh_lease_owner": "a", "refresh_lease_until": 200.0}
    assert auth_decision(row, now=10, margin=5) == "fresh"
    assert auth_decision(row, now=96, margin=5) == "wait"
    assert auth_decision(row, now=96, margin=5, owner="b") == "wait"
    assert auth_decision(row, now=96, margin=5, owner="a") == "refresh"
    assert auth_decision(dict(row, refresh_lease_until=0), now=96, margin=5, owner="b") == "refresh"
    assert auth_decision(dict(row, status="reauth_required"), now=10, margin=5) == "reauth"
    # A pause after a failed refresh has no owner: nobody refreshes before it ends.
    assert auth_decision(dict(row, refresh_lease_owner=None), now=96, margin=5, owner="b") == "wait"


# ---- the test: OS processes against the fake's single-use refresh tokens ------------------

def test_two_processes_of_sixteen_threads_through_token_expiries_never_lose_the_authorization():
    from tests.token_race import run_race
    figures = run_race(seconds=10, processes=2, threads=16, access_ttl=2.0)
    assert figures["invalid_grant"] == 0, figures
    assert (figures["status"], figures["reauth_seen"]) == ("active", 0), figures
    assert figures["errors"] == {}, figures
    # The race was real: the tokens expired and were refreshed while the threads ran.
    assert figures["refreshes"] >= 2, figures
    assert figures["refreshes"] == sum(figures["client_refreshes"]), figures


def test_cold_starts_of_the_poller_seeded_with_a_refresh_token_only_keep_the_authorization(fakes, tmp_path):
    from tests.token_race import cold_start
    starts = [cold_start(fakes, tmp_path / f"start-{n}") for n in range(5)]
    assert [s["status"] for s in starts] == ["active"] * 5, starts
    assert [s["invalid_grant"] for s in starts] == [0] * 5, starts
    assert [s["refreshes"] for s in starts] == [1] * 5, starts
    assert [s["poller_rc"] for s in starts] == [0] * 5, starts


def test_a_lease_whose_process_is_gone_is_not_waited_for():
    """A poller killed (kill -9) while refreshing left its lease: the next caller refreshes at once
    instead of every job stalling for REFRESH_LEASE."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"], cwd=APP_DIR)
    gone.wait()
    row = {"status": "active", "refresh_token": "RT", "access_token": "AT", "expires_at": 100.0,
           "refresh_lease_until": 200.0, "refresh_lease_owner": f"{gone.pid}-1-abcd"}
    assert auth_decision(row, now=96, margin=5, owner="b") == "refresh"
    assert auth_decision(dict(row, refresh_lease_owner=f"{os.getpid()}-1-abcd"), now=96, margin=5, owner="b") == "wait"
    # An ownerless pause (after a lost answer) is always waited out.
    assert auth_decision(dict(row, refresh_lease_owner=None), now=96, margin=5, owner="b") == "wait"
