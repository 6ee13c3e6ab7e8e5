"""Mercado Livre tokens: expiry margin, single refresh, 401 retry, invalid_grant, seeding, OAuth."""

from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from bridge.admin import health
from bridge.http import TransientError
from mercado_livre_api import AuthorizationRefused, MeliClient, ReauthorizationRequired
from webhook_server import create_app

API = "https://api.meli.test"


@pytest.fixture
def meli(settings, db, clock):
    return MeliClient(settings, db, clock=clock, sleep=lambda s: None)


def store(db, clock, access="AT-1", refresh="RT-1", expires_in=21600.0, user_id=555):
    db.auth.store_authorized(user_id, "LOJA", access, refresh, clock() + expires_in, clock())


def token_body(access="AT-2", refresh="RT-2", user_id=555):
    return {"access_token": access, "token_type": "Bearer", "expires_in": 21600, "scope": "offline_access read write",
            "user_id": user_id, "refresh_token": refresh}


@responses.activate
def test_a_fresh_access_token_is_used_without_refreshing(meli, db, clock):
    store(db, clock)
    responses.get(f"{API}/users/me", json={"id": 555, "nickname": "LOJA"})
    meli.me()
    assert responses.calls[0].request.headers["Authorization"] == "Bearer AT-1"
    assert len(responses.calls) == 1


@responses.activate
def test_the_token_is_refreshed_five_minutes_before_it_expires(meli, db, clock):
    store(db, clock, expires_in=299)
    responses.post(f"{API}/oauth/token", json=token_body())
    responses.get(f"{API}/users/me", json={"id": 555})
    meli.me()
    form = parse_qs(responses.calls[0].request.body)
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["RT-1"]
    assert form["client_id"] == ["123456"]
    assert responses.calls[1].request.headers["Authorization"] == "Bearer AT-2"
    row = db.auth.current()
    assert (row["access_token"], row["refresh_token"]) == ("AT-2", "RT-2")
    assert row["expires_at"] == pytest.approx(clock() + 21600)


@responses.activate
def test_a_401_triggers_one_refresh_and_one_retry(meli, db, clock):
    store(db, clock)
    responses.get(f"{API}/users/me", status=401, json={"message": "invalid_token", "status": 401})
    responses.post(f"{API}/oauth/token", json=token_body())
    responses.get(f"{API}/users/me", json={"id": 555})
    assert meli.me() == {"id": 555}
    assert [c.request.url.split("?")[0] for c in responses.calls] == [
        f"{API}/users/me", f"{API}/oauth/token", f"{API}/users/me"]


@responses.activate
def test_a_second_401_is_not_retried_again(meli, db, clock):
    store(db, clock)
    responses.get(f"{API}/users/me", status=401, json={"message": "invalid_token"})
    responses.post(f"{API}/oauth/token", json=token_body())
    with pytest.raises(Exception) as err:
        meli.me()
    assert getattr(err.value, "status", None) == 401
    assert len(responses.calls) == 3
    # Refused again right after a refresh: tokens racing, not the request. Retried later,
    # never shown to the agent as Mercado Livre refusing the reply (soak seed 3003 did).
    assert isinstance(err.value, TransientError) and err.value.transient


@responses.activate
def test_an_answer_whose_token_is_refused_twice_is_retried_not_failed(meli, db, clock, settings):
    from bridge.replies import accept, delivery
    from tests.helpers import authorized_services
    from tests.payloads import message_created
    services = authorized_services(settings, db, clock)
    db.links.mark_created("question", "77", 1.0, conversation_id=12, contact_id=5, data={"state": "open"})
    status, _code, extra = accept.accept_webhook(
        message_created(message_id=501, conversation_id=12, inbox_id=1, content="Temos sim"), settings, db, clock())
    assert status == "accepted"
    responses.post(f"{API}/answers", status=401, json={"message": "invalid_token"})
    responses.post(f"{API}/oauth/token", json=token_body())
    assert delivery.run_outbox(services)["retry"] == 1
    assert db.replies.get(extra["reply_id"])["status"] == "pending"


@responses.activate
def test_invalid_grant_requires_reauthorization(meli, db, clock, settings):
    store(db, clock, expires_in=10)
    responses.post(f"{API}/oauth/token", status=400, json={
        "error": "invalid_grant", "error_description": "refresh token already used", "status": 400, "cause": []})
    with pytest.raises(ReauthorizationRequired):
        meli.me()
    assert db.auth.current()["status"] == "reauth_required"
    # No loop: the next call does not hit Mercado Livre again.
    with pytest.raises(ReauthorizationRequired):
        meli.me()
    assert len(responses.calls) == 1
    report = health.build_status(db, settings, clock())
    assert not report["ok"] and "authorization" in report["failing"]
    assert "reauthorization required" in report["checks"]["authorization"]["error"]


@responses.activate
def test_health_answers_503_naming_reauthorization(db, clock, make_client):
    store(db, clock)
    db.auth.require_reauthorization("refused", clock())
    client = make_client(clock=clock)
    resp = client.get("/health")
    assert resp.status_code == 503
    assert "reauthorization required" in resp.json["checks"]["authorization"]["error"]


@responses.activate
def test_a_refresh_that_fails_transiently_keeps_the_tokens(meli, db, clock):
    store(db, clock, expires_in=10)
    responses.post(f"{API}/oauth/token", status=503, json={"message": "down"})
    with pytest.raises(Exception) as err:
        meli.me()
    assert getattr(err.value, "transient", False)
    row = db.auth.current()
    assert row["status"] == "active" and row["refresh_token"] == "RT-1" and row["refresh_lease_owner"] is None


@responses.activate
def test_a_refreshed_token_of_another_user_is_refused(make_settings, db, clock):
    meli = MeliClient(make_settings(MELI_USER_ID="555"), db, clock=clock)
    store(db, clock, expires_in=10)
    responses.post(f"{API}/oauth/token", json=token_body(user_id=999))
    with pytest.raises(ReauthorizationRequired):
        meli.access_token()
    assert db.auth.current()["status"] == "reauth_required"


def test_env_tokens_seed_only_an_empty_store(make_settings, db, clock):
    seeded = MeliClient(make_settings(MELI_REFRESH_TOKEN="RT-env"), db, clock=clock)
    seeded.seed_tokens()
    assert db.auth.current()["refresh_token"] == "RT-env"
    db.auth.store_authorized(555, "LOJA", "AT-9", "RT-9", clock() + 100, clock())
    MeliClient(make_settings(MELI_REFRESH_TOKEN="RT-other"), db, clock=clock).seed_tokens()
    assert db.auth.current()["refresh_token"] == "RT-9"


def test_a_live_lease_of_another_process_makes_us_wait(db, clock):
    store(db, clock, expires_in=10)
    assert db.auth.claim_refresh("A", clock(), 300, 120)[0] == "refresh"
    assert db.auth.claim_refresh("B", clock(), 300, 120)[0] == "wait"
    # The holder died: after the lease, someone else may refresh.
    assert db.auth.claim_refresh("B", clock() + 121, 300, 120)[0] == "refresh"


def test_a_stale_refresh_never_overwrites_a_newer_pair(db, clock):
    store(db, clock, expires_in=10)
    db.auth.claim_refresh("A", clock(), 300, 120)
    db.auth.store_authorized(555, "LOJA", "AT-new", "RT-new", clock() + 21600, clock())
    assert not db.auth.store_refreshed("RT-1", "AT-old", "RT-old", clock() + 21600, 555, clock())
    assert db.auth.current()["refresh_token"] == "RT-new"


# ---- OAuth -----------------------------------------------------------------------------------

def test_the_authorization_url_carries_a_stored_single_use_state(meli, db):
    url = meli.authorization_url()
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.netloc == "auth.meli.test" and parts.path == "/authorization"
    assert query["response_type"] == ["code"] and query["client_id"] == ["123456"]
    assert query["redirect_uri"] == ["https://bridge.example.com/oauth/callback"]
    assert "code_challenge" not in query
    state = query["state"][0]
    assert db.one("SELECT * FROM oauth_states WHERE state = ?", (state,))["expires_at"] > 0


def test_pkce_adds_an_s256_challenge(make_settings, db):
    meli = MeliClient(make_settings(MELI_USE_PKCE="true"), db)
    query = parse_qs(urlsplit(meli.authorization_url()).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43


@pytest.fixture
def callback(settings, db, clock):
    app = create_app(settings, db=db, clock=clock)
    return app.test_client(), app.extensions["bridge"]["meli"]


@responses.activate
def test_the_callback_stores_tokens_and_names_the_seller(callback, db):
    client, meli = callback
    state = parse_qs(urlsplit(meli.authorization_url()).query)["state"][0]
    responses.post(f"{API}/oauth/token", json=token_body(access="AT-c", refresh="RT-c"))
    responses.get(f"{API}/users/me", json={"id": 555, "nickname": "LOJA_TESTE"})
    resp = client.get(f"/oauth/callback?code=TG-abc&state={state}")
    assert resp.status_code == 200 and b"LOJA_TESTE" in resp.data
    form = parse_qs(responses.calls[0].request.body)
    assert form["grant_type"] == ["authorization_code"] and form["code"] == ["TG-abc"]
    row = db.auth.current()
    assert (row["user_id"], row["access_token"], row["refresh_token"], row["status"]) == (
        555, "AT-c", "RT-c", "active")
    # The state is spent: the same link cannot be replayed.
    assert client.get(f"/oauth/callback?code=TG-abc&state={state}").status_code == 400
    assert len(responses.calls) == 2


@responses.activate
def test_the_callback_refuses_an_unknown_or_expired_state(callback, clock):
    client, meli = callback
    assert client.get("/oauth/callback?code=TG-abc&state=made-up").status_code == 400
    state = parse_qs(urlsplit(meli.authorization_url()).query)["state"][0]
    clock.advance(601)
    assert client.get(f"/oauth/callback?code=TG-abc&state={state}").status_code == 400
    assert len(responses.calls) == 0


@responses.activate
def test_the_callback_refuses_another_seller_once_one_is_stored(callback, db, clock):
    client, meli = callback
    store(db, clock, user_id=555)
    state = parse_qs(urlsplit(meli.authorization_url()).query)["state"][0]
    responses.post(f"{API}/oauth/token", json=token_body(user_id=999, access="AT-x", refresh="RT-x"))
    resp = client.get(f"/oauth/callback?code=TG-abc&state={state}")
    assert resp.status_code == 400 and b"555" in resp.data
    assert db.auth.current()["access_token"] == "AT-1"


@responses.activate
def test_exchange_refuses_a_user_other_than_meli_user_id(make_settings, db, clock):
    meli = MeliClient(make_settings(MELI_USER_ID="555"), db, clock=clock)
    responses.post(f"{API}/oauth/token", json=token_body(user_id=999))
    with pytest.raises(AuthorizationRefused):
        meli.exchange_code("TG-x", None, require_state=False)
    assert db.auth.current()["status"] == "missing"


def test_a_denied_authorization_shows_a_page(callback):
    client, _ = callback
    assert client.get("/oauth/callback?error=access_denied").status_code == 400


@responses.activate
def test_a_seller_seeded_from_the_environment_gets_its_nickname_in_the_status(make_settings, db, clock):
    settings = make_settings(MELI_USER_ID="555", MELI_REFRESH_TOKEN="TG-seed")
    meli = MeliClient(settings, db, clock=clock, sleep=lambda s: None)
    meli.seed_tokens()
    responses.post(f"{API}/oauth/token", json=token_body())
    responses.get(f"{API}/users/me", json={"id": 555, "nickname": "LOJA"})
    assert meli.seller_id() == 555
    assert meli.seller_id() == 555
    assert len([c for c in responses.calls if c.request.url.endswith("/users/me")]) == 1
    auth = health.build_status(db, settings, clock())["checks"]["authorization"]
    assert (auth["seller_id"], auth["nickname"]) == (555, "LOJA")


@responses.activate
def test_a_failing_nickname_lookup_never_holds_up_a_known_seller(make_settings, db, clock):
    meli = MeliClient(make_settings(MELI_USER_ID="555"), db, clock=clock, sleep=lambda s: None)
    store(db, clock, user_id=555)
    db.auth.set_identity(555, None)
    responses.get(f"{API}/users/me", status=503, json={"message": "down"})
    assert meli.seller_id() == 555
