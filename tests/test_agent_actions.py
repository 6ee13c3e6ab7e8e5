"""Deleted and merged contacts and conversations, and listings read while they change."""

import json
import time

import pytest
import responses

from bridge.replies import accept, delivery
from bridge.sync import questions as sync_questions
from bridge.sync.contacts import open_conversation
from bridge.sync.questions import change_for
from tests.helpers import authorized_services, chatwoot_sets_status
from tests.payloads import message_created

API = "https://api.meli.test"
CW = "https://chat.example.test/api/v1/accounts/1"
NOT_FOUND = {"error": "Resource could not be found"}


@pytest.fixture
def s(settings, db):
    services = authorized_services(settings, db)
    return services


def calls(method, url_part):
    return [c for c in responses.calls if c.request.method == method and url_part in c.request.url]


def search(*questions, total=None):
    return {"total": len(questions) if total is None else total, "limit": 50, "questions": list(questions)}


# ---- pure decisions ---------------------------------------------------------------------------------

def test_still_unanswered_while_shown_open_is_no_change():
    assert change_for({"status": "UNANSWERED"}, answer_known=False, state="open") == ("none", None)


def test_unanswered_again_after_a_note_reopens():
    assert change_for({"status": "UNANSWERED"}, answer_known=False, state="watch",
                      known_status="UNDER_REVIEW") == ("reopen", None)


def test_a_watched_question_in_the_same_state_is_no_change_but_a_new_state_is_noted():
    assert change_for({"status": "UNDER_REVIEW"}, answer_known=False, state="watch",
                      known_status="UNDER_REVIEW") == ("none", None)
    action, note = change_for({"status": "DELETED"}, answer_known=False, state="watch", known_status="UNDER_REVIEW")
    assert action == "note" and "apagada" in note


# ---- questions -----------------------------------------------------------------------------------------

@responses.activate
def test_an_open_question_missing_from_a_listing_is_fetched_and_left_alone(s):
    s.db.links.mark_created("question", "2", 1.0, conversation_id=77, contact_id=5, data={"state": "open"})
    responses.get(f"{API}/questions/search", json=search({"id": 1, "status": "UNANSWERED"}, total=1))
    s.db.links.mark_created("question", "1", 1.0, conversation_id=76, contact_id=5, data={"state": "open"})
    responses.get(f"{API}/questions/2", json={"id": 2, "status": "UNANSWERED", "answer": None})
    counts = sync_questions.sync_questions(s)
    assert counts["changed"] == 0
    assert not calls("POST", CW) and not calls("GET", CW)  # no note, no reopen
    assert s.db.links.get("question", "2")["data"]["state"] == "open"


@responses.activate
def test_a_watched_question_the_listing_shows_is_back_only_when_it_says_so_itself(s):
    s.db.links.mark_created("question", "3", 1.0, conversation_id=78, contact_id=5,
                            data={"state": "watch", "ml_status": "UNDER_REVIEW"})
    responses.get(f"{API}/questions/search", json=search({"id": 3, "status": "UNANSWERED"}))
    responses.get(f"{API}/questions/3", json={"id": 3, "status": "UNDER_REVIEW", "answer": None})
    assert sync_questions.sync_questions(s)["changed"] == 0
    assert not calls("POST", CW)
    responses.replace(responses.GET, f"{API}/questions/3", json={"id": 3, "status": "UNANSWERED", "answer": None})
    responses.get(f"{CW}/conversations/78/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/78/messages", json={"id": 1})
    responses.post(f"{CW}/conversations/78/toggle_status", json={"payload": {"success": True}})
    assert sync_questions.sync_questions(s)["changed"] == 1
    assert json.loads(calls("POST", "/toggle_status")[0].request.body) == {"status": "open"}
    assert s.db.links.get("question", "3")["data"]["state"] == "open"


@responses.activate
def test_a_deleted_question_conversation_is_left_deleted_and_not_followed_again(s):
    s.db.links.mark_created("question", "4", 1.0, conversation_id=79, contact_id=5, data={"state": "open"})
    responses.get(f"{API}/questions/search", json=search())
    responses.get(f"{API}/questions/4", json={"id": 4, "status": "ANSWERED", "answer": {"text": "Sim"}})
    responses.post(f"{CW}/conversations/79/messages", status=404, json=NOT_FOUND)
    sync_questions.sync_questions(s)
    assert s.db.links.get("question", "4")["data"]["state"] == "removed"
    sync_questions.sync_questions(s)
    assert len(calls("GET", "/questions/4")) == 1
    assert sync_questions.sync_one_question(s, "4") == "conversation deleted in chatwoot"


@responses.activate
def test_one_refused_question_does_not_hold_back_the_later_ones(s):
    chatwoot_sets_status()
    s.db.links.mark_created("buyer", "9", 1.0, contact_id=5, data={"inboxes": [1]})
    s.db.cache.put_many("user", {"9": "COMPRADOR"}, time.time())
    s.db.cache.put_many("item", {"MLB1": {"id": "MLB1", "title": "Caneca"}}, time.time())
    question = {"item_id": "MLB1", "from": {"id": 9}, "status": "UNANSWERED", "text": "?"}
    responses.get(f"{API}/questions/search", json=search(dict(question, id=10), dict(question, id=11)))
    responses.post(f"{CW}/conversations", json={"id": 90})
    responses.post(f"{CW}/conversations", json={"id": 91})
    responses.post(f"{CW}/conversations/90/messages", status=422, json={"message": "refused"})
    responses.post(f"{CW}/conversations/91/messages", json={"id": 910})
    counts = sync_questions.sync_questions(s)
    assert counts["item_errors"] == 1 and counts["created"] == 1
    assert s.db.links.get("question", "11")["status"] == "created"
    assert s.db.links.get("question", "10")["status"] == "pending"  # tried again next cycle


@responses.activate
def test_a_question_whose_new_conversation_went_with_its_contact_before_its_message_is_shown_at_once(s):
    """The question's conversation was made, then an agent deleted the buyer's contact (and the
    conversation with it) before the question went in: it was never shown, so it is shown now in a
    new contact's conversation, not left failing until its backoff (soak seed 20261129: still
    missing after the 150 s drain)."""
    chatwoot_sets_status()
    s.db.links.mark_created("buyer", "9", 1.0, contact_id=5, data={"inboxes": [1]})
    responses.post(f"{CW}/conversations", json={"id": 90})
    responses.post(f"{CW}/conversations/90/messages", status=404, json=NOT_FOUND)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", status=404, json={"error": "Contact not found"})
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/conversations", json={"id": 91})
    responses.post(f"{CW}/conversations/91/messages", json={"id": 910})
    question = {"id": 12, "item_id": "MLB1", "from": {"id": 9}, "status": "UNANSWERED", "text": "Tem azul?"}

    sync_questions.create_question(s, question, None, "COMPRADOR")
    link = s.db.links.get("question", "12")
    assert (link["status"], link["contact_id"], link["conversation_id"], link["message_id"]) == ("created", 6, 91, 910)
    assert s.db.links.get("buyer", "9")["contact_id"] == 6


# ---- contacts -------------------------------------------------------------------------------------------

@responses.activate
def test_a_deleted_contact_is_created_again_when_its_conversation_cannot_be_made(s):
    s.db.links.mark_created("buyer", "9", 1.0, contact_id=5, data={"inboxes": [1]})
    responses.post(f"{CW}/conversations", status=404, json={"error": "Contact not found"})
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 91})
    contact_id, conversation_id, fresh = open_conversation(
        s, kind="question", external_id="12", inbox_id=1, buyer_id=9, nickname="COMPRADOR", custom_attributes={})
    assert (contact_id, conversation_id, fresh) == (6, 91, True)
    creates = [c for c in calls("POST", "/conversations") if c.request.url.endswith("/conversations")]
    assert json.loads(creates[1].request.body)["contact_id"] == 6
    assert s.db.links.get("buyer", "9")["contact_id"] == 6


@responses.activate
def test_a_contact_merged_away_is_found_again_by_its_identifier(s):
    s.db.links.mark_created("buyer", "9", 1.0, contact_id=5, data={"inboxes": [1]})
    responses.post(f"{CW}/contacts/5/contact_inboxes", status=404, json=NOT_FOUND)
    responses.post(f"{CW}/contacts", status=422, json={"message": "Identifier has already been taken"})
    responses.post(f"{CW}/contacts/filter", json={"payload": [{"id": 8, "identifier": "meli:buyer:9"}]})
    responses.post(f"{CW}/contacts/8/contact_inboxes", json={"source_id": "meli:buyer:9"})
    responses.post(f"{CW}/conversations", json={"id": 92})
    contact_id, conversation_id, _fresh = open_conversation(
        s, kind="pack", external_id="2000001", inbox_id=2, buyer_id=9, nickname="COMPRADOR", custom_attributes={})
    assert (contact_id, conversation_id) == (8, 92)
    sent = json.loads(calls("POST", "/contacts/filter")[0].request.body)["payload"][0]
    assert sent["filter_operator"] == "equal_to" and sent["values"] == ["meli:buyer:9"]
    assert s.db.links.get("buyer", "9")["contact_id"] == 8


# ---- replies to a deleted conversation -------------------------------------------------------------------

@responses.activate
def test_a_failed_reply_from_a_deleted_conversation_is_told_in_the_sales_new_one(s):
    s.db.links.mark_created("pack", "2000001", 1.0, conversation_id=77, contact_id=5, data={"buyer_id": 9})
    status, _code, extra = accept.accept_webhook(
        message_created(message_id=9300, conversation_id=77, inbox_id=2, content="Obrigado 😀"),
        s.settings, s.db, time.time())
    assert status == "refused"
    # The agent deletes the conversation; the next buyer message moved the sale to conversation 88 (the sync
    # remembers 77 as the one deleted: contacts.continue_in_new_conversation).
    s.db.links.update("pack", "2000001", time.time(), conversation_id=88,
                      data={"buyer_id": 9, "removed_conversation": 77})
    responses.patch(f"{CW}/conversations/77/messages/9300", status=404, json=NOT_FOUND)
    responses.post(f"{CW}/conversations/77/messages", status=404, json=NOT_FOUND)
    responses.post(f"{CW}/conversations/88/messages", json={"id": 1})
    assert delivery.run_outbox(s)["reported"] == 1
    [note] = calls("POST", "/conversations/88/messages")
    body = json.loads(note.request.body)
    assert body["private"] is True and "U+1F600" in body["content"]
    assert body["source_id"] == f"meli:note:reply:{extra['reply_id']}"
    assert s.db.replies.get(extra["reply_id"])["reported_at"]
