"""Recovering from the crash windows: matching in-flight replies, the poller lock, one refresh per process."""

import json
import threading
import time

import pytest
import responses

from bridge.replies import accept, delivery
from bridge.sync import questions as sync_questions
from db_manager import Database
from mercado_livre_api import MeliClient
from tests.helpers import authorized_services
from tests.payloads import message_created

SELLER = 555000111
API = "https://api.meli.test"


def seller_message(mid, text, sender=SELLER, created="2026-11-20T10:00:00.000-03:00"):
    return {"id": mid, "from": {"user_id": sender}, "text": text, "message_date": {"created": created}}


def test_only_one_poller_holds_the_poller_lock(settings):
    first = Database(settings.database_path).open()
    second = Database(settings.database_path).open()
    assert first.hold_poller_lock()
    assert first.hold_poller_lock()
    assert not second.hold_poller_lock()


def test_replies_left_sending_by_a_dead_poller_are_due_at_once(db):
    reply_id = db.replies.accept(chatwoot_message_id=1, conversation_id=2, kind="answer", target_id="3",
                                 parts=[{"text": "Sim"}], now=1000.0)
    assert db.replies.claim(reply_id, 1000.0, 300.0)
    assert db.replies.due(1001.0) == []
    assert db.replies.release_leases(1001.0) == 1
    assert [r["id"] for r in db.replies.due(1001.0)] == [reply_id]


@responses.activate
def test_two_threads_needing_a_refresh_at_once_spend_the_refresh_token_once(settings, db):
    db.auth.store_authorized(555, "LOJA", "AT-1", "RT-1", 0.0, 0.0)
    meli = MeliClient(settings, db, sleep=lambda s: None)
    in_call, release = threading.Event(), threading.Event()
    bodies = []

    def token(request):
        bodies.append(request.body)
        if len(bodies) > 1:  # the same refresh token a second time: dead
            return 400, {}, json.dumps({"error": "invalid_grant", "status": 400})
        in_call.set()
        release.wait(10)
        return 200, {}, json.dumps({"access_token": "AT-2", "refresh_token": "RT-2", "expires_in": 21600,
                                    "user_id": 555})

    responses.add_callback(responses.POST, f"{API}/oauth/token", callback=token)
    results = []
    first = threading.Thread(target=lambda: results.append(meli.access_token()))
    first.start()
    assert in_call.wait(10)
    second = threading.Thread(target=lambda: results.append(meli.access_token()))
    second.start()
    second.join(0.5)  # a second refresh, if any, happens now
    release.set()
    first.join(10)
    second.join(10)
    assert len(bodies) == 1
    assert results == ["AT-2", "AT-2"]
    assert db.auth.current()["status"] == "active" and db.auth.current()["refresh_token"] == "RT-2"


# ---- the questions sync meets an answer whose delivery was not recorded ------------------------------

CW = "https://chat.example.test/api/v1/accounts/1"


@pytest.fixture
def s(settings, db):
    services = authorized_services(settings, db)
    db.links.mark_created("question", "321", 1.0, conversation_id=77, contact_id=5, message_id=1,
                          data={"state": "open"})
    return services


def answer_in_flight(s, content):
    """An accepted reply whose POST /answers went out, the poller dying before recording it."""
    accept.accept_webhook(message_created(message_id=9123, content=content), s.settings, s.db, time.time())
    reply = s.db.replies.by_message(9123)
    s.db.replies.claim(reply["id"], time.time(), delivery.LEASE_SECONDS)
    s.db.replies.mark_part_sending(reply["id"], 0)
    return reply["id"]


def chatwoot_calls(method, part):
    return [c for c in responses.calls if c.request.method == method and part in c.request.url]


@responses.activate
def test_an_answered_question_with_our_in_flight_text_is_resolved_not_mirrored(s):
    reply_id = answer_in_flight(s, "Temos **sim**, pode comprar!")
    responses.post(f"{CW}/conversations/77/toggle_status", json={"payload": {"success": True}})
    link = s.db.links.get("question", "321")
    sync_questions.follow_question(s, link, {"status": "ANSWERED", "answer": {"text": "Temos sim,  pode comprar!"}})
    assert chatwoot_calls("POST", "/conversations/77/messages") == []
    assert (s.db.links.get("answer", "321")["status"] == "created"
            and s.db.links.get("answer", "321")["data"] == {"by": "bridge"})
    assert s.db.replies.parts(reply_id)[0]["status"] == "sent"
    # The outbox, taking the reply back, finishes it without posting again.
    s.db.replies.release_leases(time.time())
    responses.patch(f"{CW}/conversations/77/messages/9123", json={"id": 9123})
    assert delivery.run_outbox(s)["delivered"] == 1
    assert not [c for c in responses.calls if "/answers" in c.request.url]


@responses.activate
def test_an_answer_given_elsewhere_while_ours_is_in_flight_is_still_mirrored(s):
    reply_id = answer_in_flight(s, "Temos sim!")
    responses.get(f"{CW}/conversations/77/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/77/messages", json={"id": 555})
    responses.post(f"{CW}/conversations/77/toggle_status", json={"payload": {"success": True}})
    link = s.db.links.get("question", "321")
    sync_questions.follow_question(s, link, {"status": "ANSWERED", "answer": {"text": "Acabou o estoque."}})
    [mirror] = chatwoot_calls("POST", "/conversations/77/messages")
    assert json.loads(mirror.request.body)["source_id"] == "meli:answer:321"
    assert s.db.links.get("answer", "321")["data"] == {"by": "mercadolivre"}
    assert s.db.replies.parts(reply_id)[0]["status"] == "sending"


@responses.activate
def test_a_question_answered_before_its_message_was_made_is_still_shown_in_its_conversation(settings, db):
    s = authorized_services(settings, db)
    # Killed in `question_message_created`'s window before it: the conversation exists, the
    # question's message does not. An agent answered from it (the conversation carries
    # meli_question_id), and the answer reached Mercado Livre before the poller came back.
    s.db.links.mark_created("buyer", "9", time.time(), contact_id=5,
                            data={"inboxes": [s.settings.chatwoot_questions_inbox_id]})
    s.db.links.record_intent("question", "322", time.time(), contact_id=5, conversation_id=78)
    question = {"id": 322, "seller_id": SELLER, "item_id": "MLB1", "status": "ANSWERED", "text": "Tem azul?",
                "date_created": "2026-11-20T10:00:00.000-03:00", "from": {"id": 9},
                "answer": {"text": "Temos sim!", "status": "ACTIVE"}}
    responses.get(f"{API}/questions/search", json={"total": 0, "limit": 50, "questions": []})
    responses.get(f"{API}/questions/322", json=question)
    responses.get(f"{API}/items", json=[{"code": 200, "body": {"id": "MLB1", "title": "Caneca"}}])
    responses.get(f"{API}/items/MLB1", json={"id": "MLB1", "title": "Caneca"})
    responses.get(f"{API}/users/9", json={"id": 9, "nickname": "COMPRADOR"})
    responses.get(f"{CW}/conversations/78", json={"id": 78, "inbox_id": s.settings.chatwoot_questions_inbox_id})
    responses.get(f"{CW}/conversations/78/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/78/messages", json={"id": 600})
    responses.post(f"{CW}/conversations/78/toggle_status", json={"payload": {"success": True}})

    sync_questions.sync_questions(s)

    posted = [json.loads(c.request.body) for c in responses.calls
              if c.request.method == "POST" and c.request.url == f"{CW}/conversations/78/messages"]
    assert [p.get("source_id") for p in posted][:1] == ["meli:question:322"]
