"""Delivering answers to questions: exactly once, every outcome shown to the agent."""

import json
import time

import pytest
import responses

from bridge.backoff import RETRY_MAX
from bridge.replies import delivery
from bridge.replies.accept import accept_webhook
from tests.helpers import authorized_services
from tests.payloads import message_created

API = "https://api.meli.test"
CW = "https://chat.example.test/api/v1/accounts/1"


@pytest.fixture
def s(settings, db, clock):
    services = authorized_services(settings, db, clock)
    db.links.mark_created("question", "321", 1.0, conversation_id=77, contact_id=5, message_id=1,
                          data={"state": "open"})
    return services


def accept(s, content="Temos sim, pode comprar!", message_id=9123):
    status, _code, extra = accept_webhook(message_created(message_id=message_id, content=content),
                                                 s.settings, s.db, s.clock())
    assert status in ("accepted", "refused")
    return extra["reply_id"]


def chatwoot_ok():
    responses.patch(f"{CW}/conversations/77/messages/9123", json={"id": 9123})
    responses.post(f"{CW}/conversations/77/toggle_status", json={"payload": {"success": True}})
    responses.get(f"{CW}/conversations/77/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/77/messages", json={"id": 1})


def calls(method, url_part):
    return [c for c in responses.calls if c.request.method == method and url_part in c.request.url]


def run(s):
    return delivery.run_outbox(s)


@responses.activate
def test_an_answer_is_posted_marked_delivered_and_the_conversation_resolved(s):
    reply_id = accept(s, content="**Temos** sim, [veja](https://x.test)")
    responses.post(f"{API}/answers", json={"id": 321, "status": "ANSWERED"})
    chatwoot_ok()
    counts = run(s)
    assert counts["delivered"] == 1 and counts["reported"] == 1
    posted = json.loads(calls("POST", "/answers")[0].request.body)
    assert posted == {"question_id": 321, "text": "Temos sim, veja (https://x.test)"}
    assert json.loads(calls("PATCH", "/messages/9123")[0].request.body) == {"status": "delivered"}
    assert json.loads(calls("POST", "/toggle_status")[0].request.body) == {"status": "resolved"}
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "delivered" and reply["reported_at"]
    assert s.db.replies.parts(reply_id)[0]["text"] is None  # the text is forgotten once delivered
    assert s.db.links.get("answer", "321")["message_id"] == 9123


@responses.activate
def test_it_retries_on_500_and_delivers_exactly_once(s):
    reply_id = accept(s)
    for _ in range(3):
        responses.post(f"{API}/answers", status=500, json={"message": "boom"})
    responses.post(f"{API}/answers", json={"id": 321})
    chatwoot_ok()
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "pending" and reply["next_attempt_at"] > s.clock()
    s.clock.advance(RETRY_MAX)
    run(s)
    assert s.db.replies.get(reply_id)["status"] == "delivered"
    assert len(calls("POST", "/answers")) == 4
    assert len([c for c in calls("POST", "/answers") if c.response is not None and c.response.status_code == 200]) == 1


@responses.activate
def test_a_lost_response_after_success_counts_as_delivered(s):
    """Our first POST reached ML but we crashed: the retry gets not_unanswered_question."""
    reply_id = accept(s, content="Temos sim")
    responses.post(f"{API}/answers", status=400, json={"error": "not_unanswered_question", "message": "x",
                                                        "status": 400, "cause": []})
    responses.get(f"{API}/questions/321", json={"id": 321, "status": "ANSWERED",
                                                "answer": {"text": "Temos  sim", "status": "ACTIVE"}})
    chatwoot_ok()
    run(s)
    assert s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_an_answer_given_elsewhere_fails_with_a_note_quoting_it(s):
    reply_id = accept(s)
    responses.post(f"{API}/answers", status=400, json={"error": "not_unanswered_question", "message": "x"})
    responses.get(f"{API}/questions/321", json={"id": 321, "status": "ANSWERED",
                                                "answer": {"text": "Respondido pelo app", "status": "ACTIVE"}})
    chatwoot_ok()
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "failed"
    patch = json.loads(calls("PATCH", "/messages/9123")[0].request.body)
    assert patch["status"] == "failed" and "já respondida" in patch["external_error"]
    note = json.loads(calls("POST", "/conversations/77/messages")[0].request.body)
    assert note["private"] is True and note["message_type"] == "outgoing"
    assert "Respondido pelo app" in note["content"] and note["source_id"].startswith("meli:")


@responses.activate
def test_a_deleted_question_fails_with_its_status(s):
    reply_id = accept(s)
    responses.post(f"{API}/answers", status=400, json={"error": "not_unanswered_question", "message": "x"})
    responses.get(f"{API}/questions/321", json={"id": 321, "status": "DELETED", "answer": None})
    chatwoot_ok()
    run(s)
    assert "DELETED" in s.db.replies.get(reply_id)["error"]


@responses.activate
def test_a_too_long_answer_reaches_the_agent_as_failed_without_calling_meli(s):
    reply_id = accept(s, content="a" * 2500)
    chatwoot_ok()
    run(s)
    assert not calls("POST", "/answers")
    patch = json.loads(calls("PATCH", "/messages/9123")[0].request.body)
    assert patch["status"] == "failed" and "2500" in patch["external_error"]
    note = json.loads(calls("POST", "/conversations/77/messages")[0].request.body)
    assert "2000" in note["content"] and note["private"] is True
    assert s.db.replies.get(reply_id)["reported_at"]


@responses.activate
def test_a_reply_waits_for_reauthorization_and_goes_out_after(s):
    reply_id = accept(s)
    s.db.auth.require_reauthorization("refused", time.time())
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "pending" and reply["attempts"] == 0
    assert not calls("POST", "/answers")
    s.db.auth.store_authorized(555, "LOJA", "AT-2", "RT-2", time.time() + 21600, time.time())
    s.clock.advance(delivery.REAUTH_RECHECK)
    responses.post(f"{API}/answers", json={"id": 321})
    chatwoot_ok()
    run(s)
    assert s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_a_rate_limit_honours_retry_after(s):
    reply_id = accept(s)
    responses.post(f"{API}/answers", status=429, json={"error": "too_many_requests"}, headers={"Retry-After": "120"})
    before = s.clock()
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "pending" and reply["next_attempt_at"] >= before + 120
    assert len(calls("POST", "/answers")) == 1  # 120 s is beyond in-process patience: handed to the schedule


@responses.activate
def test_a_permanent_refusal_is_shown_with_the_reason(s):
    reply_id = accept(s)
    responses.post(f"{API}/answers", status=400, json={"error": "bad_request", "message": "text has forbidden words"})
    chatwoot_ok()
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "failed" and "forbidden words" in reply["error"]


@responses.activate
def test_it_gives_up_after_24_hours_of_transient_errors(s):
    reply_id = accept(s)
    s.clock.advance(25 * 3600)
    for _ in range(3):
        responses.post(f"{API}/answers", status=503, json={"message": "down"})
    chatwoot_ok()
    run(s)
    assert s.db.replies.get(reply_id)["status"] == "failed"


@responses.activate
def test_a_chatwoot_outage_delays_the_report_but_keeps_it(s):
    reply_id = accept(s)
    responses.post(f"{API}/answers", json={"id": 321})
    for _ in range(3):
        responses.patch(f"{CW}/conversations/77/messages/9123", status=502)
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "delivered" and reply["reported_at"] is None
    s.clock.advance(RETRY_MAX)
    chatwoot_ok()
    run(s)
    assert s.db.replies.get(reply_id)["reported_at"]
    assert len(calls("POST", "/answers")) == 1


@responses.activate
def test_a_crashed_worker_reply_is_taken_again_after_its_lease(s):
    reply_id = accept(s)
    s.db.replies.claim(reply_id, s.clock(), 300)  # a worker took it, then died
    assert delivery.run_outbox(s)["delivered"] == 0
    s.clock.advance(301)
    responses.post(f"{API}/answers", json={"id": 321})
    chatwoot_ok()
    assert delivery.run_outbox(s)["delivered"] == 1


@responses.activate
def test_a_reply_waiting_for_reauthorization_gives_up_after_24_hours_with_a_note(s):
    reply_id = accept(s)
    s.clock.advance(25 * 3600)
    s.db.auth.require_reauthorization("refused", time.time())
    chatwoot_ok()
    run(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "failed" and "autorização" in reply["error"]
    assert not calls("POST", "/answers")
    patch = json.loads(calls("PATCH", "/messages/9123")[0].request.body)
    assert patch["status"] == "failed" and patch["external_error"] == reply["error"]
    note = json.loads(calls("POST", "/conversations/77/messages")[0].request.body)
    assert note["private"] is True and "./bridge.sh authorize" in note["content"]


@responses.activate
def test_an_answer_from_a_conversation_chatwoot_records_for_another_question_is_not_posted(s):
    """The webhook says conversation 88 is question 654's; Chatwoot's record of 88 says question 999's."""
    _status, _code, extra = accept_webhook(
        message_created(message_id=9124, conversation_id=88, content="Temos sim",
                        custom_attributes={"meli_question_id": "654"}), s.settings, s.db, s.clock())
    responses.get(f"{CW}/conversations/88", json={"id": 88, "inbox_id": s.settings.chatwoot_questions_inbox_id,
                                                  "custom_attributes": {"meli_question_id": "999"}})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{API}/answers", json={"id": 654, "status": "ANSWERED"})

    assert delivery.deliver(s, extra["reply_id"]) == "failed"
    assert calls("POST", "/answers") == []
