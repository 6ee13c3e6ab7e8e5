"""A Chatwoot create whose answer was lost may still be held by Chatwoot and applied after the
next attempt looked for it: whatever it creates, the bridge waits for it to settle before
creating again, and the buyer never sees a question, answer, message or conversation twice."""

import json

import pytest
import requests
import responses

from bridge import source_ids
from bridge.http import PermanentError, TransientError
from bridge.sync import claims as sync_claims
from bridge.sync import ensure
from bridge.sync import questions as sync_questions
from bridge.sync.contacts import ensure_conversation
from tests.helpers import CW, Killed, PausedBudget, authorized_services, chatwoot_sets_status

HELD = requests.exceptions.ReadTimeout("held")


@pytest.fixture
def s(settings, db, clock):
    return authorized_services(settings, db, clock)


ANSWERED = {"id": 12, "status": "ANSWERED", "answer": {"text": "Sim, temos"}}
UNANSWERED = {"id": 12, "status": "UNANSWERED", "item_id": "MLB1", "text": "Tem azul?", "from": {"id": 9}}


def known_buyer(s, clock) -> int:
    """Buyer 9 is already contact 5 in the questions inbox; returns that inbox."""
    inbox = s.settings.chatwoot_questions_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=5, data={"inboxes": [inbox]})
    return inbox


def posts_to(path):
    return [c for c in responses.calls if c.request.method == "POST" and c.request.url == f"{CW}{path}"]


def held_then_applied(conversation_id, source_id, message_id):
    """The create times out; Chatwoot applies it only after the next poll's look."""
    responses.post(f"{CW}/conversations/{conversation_id}/messages", body=HELD)
    responses.get(f"{CW}/conversations/{conversation_id}/messages", json={"payload": []})
    responses.get(f"{CW}/conversations/{conversation_id}/messages",
                  json={"payload": [{"id": message_id, "source_id": source_id}]})


# ---- a question's answer given on the Mercado Livre site --------------------------------------------------

@responses.activate
def test_an_answer_whose_creation_is_still_held_by_chatwoot_is_not_mirrored_again(s, clock):
    held_then_applied(77, "meli:answer:12", 701)
    question = ANSWERED

    with pytest.raises(TransientError):
        sync_questions._mirror_answer(s, "12", 77, question)
    clock.advance(1)
    with pytest.raises(TransientError):
        sync_questions._mirror_answer(s, "12", 77, question)  # the next poll: too soon to tell
    assert len(posts_to("/conversations/77/messages")) == 1

    clock.advance(ensure.CREATE_SETTLE)
    sync_questions._mirror_answer(s, "12", 77, question)
    assert len(posts_to("/conversations/77/messages")) == 1
    assert s.db.links.get("answer", "12")["message_id"] == 701


@responses.activate
def test_an_answer_whose_held_creation_never_arrived_is_made_once_it_has_settled(s, clock):
    responses.post(f"{CW}/conversations/77/messages", body=HELD)
    responses.get(f"{CW}/conversations/77/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/77/messages", json={"id": 702})
    question = ANSWERED

    with pytest.raises(TransientError):
        sync_questions._mirror_answer(s, "12", 77, question)
    clock.advance(ensure.CREATE_SETTLE + 1)
    sync_questions._mirror_answer(s, "12", 77, question)
    assert len(posts_to("/conversations/77/messages")) == 2
    assert s.db.links.get("answer", "12")["message_id"] == 702


# ---- a new question's first message ------------------------------------------------------------------------

@responses.activate
def test_a_question_whose_message_creation_is_still_held_by_chatwoot_is_not_created_again(s, clock):
    chatwoot_sets_status()
    inbox = known_buyer(s, clock)
    responses.post(f"{CW}/conversations", json={"id": 91})
    responses.get(f"{CW}/conversations/91", json={"id": 91, "inbox_id": inbox})  # still there when retried
    held_then_applied(91, "meli:question:12", 703)
    question = UNANSWERED

    with pytest.raises(TransientError):
        sync_questions.create_question(s, question, None, "COMPRADOR")
    clock.advance(1)
    with pytest.raises(TransientError):
        sync_questions.create_question(s, question, None, "COMPRADOR")
    assert len(posts_to("/conversations/91/messages")) == 1

    clock.advance(ensure.CREATE_SETTLE)
    sync_questions.create_question(s, question, None, "COMPRADOR")
    assert len(posts_to("/conversations/91/messages")) == 1
    assert len(posts_to("/conversations")) == 1
    link = s.db.links.get("question", "12")
    assert (link["status"], link["conversation_id"], link["message_id"]) == ("created", 91, 703)


@responses.activate
def test_a_question_whose_conversation_was_found_again_does_not_wait_for_a_message_never_sent(s, clock):
    chatwoot_sets_status()
    inbox = known_buyer(s, clock)
    # The conversation was made, then the process died before recording it: no message went out.
    responses.post(f"{CW}/conversations", body=HELD)
    responses.post(f"{CW}/conversations/filter",
                   json={"payload": [{"id": 91, "inbox_id": inbox, "custom_attributes": {"meli_question_id": "12"}}]})
    responses.get(f"{CW}/conversations/91/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/91/messages", json={"id": 704})
    question = UNANSWERED

    with pytest.raises(TransientError):
        sync_questions.create_question(s, question, None, "COMPRADOR")
    clock.advance(ensure.CREATE_SETTLE + 1)
    sync_questions.create_question(s, question, None, "COMPRADOR")
    assert len(posts_to("/conversations/91/messages")) == 1
    assert s.db.links.get("question", "12")["message_id"] == 704


# ---- a claim's messages ------------------------------------------------------------------------------------

CLAIM_KEY = "5000:complainant:2026-11-29T10:00:00:abc"


def mirror_claim_message(s):
    """The buyer's claim message, mirrored into claim 5000's conversation 66."""
    message = {"sender_role": "complainant", "receiver_role": "respondent", "message": "Veio errado",
               "date_created": "2026-11-29T10:00:00.000Z", "attachments": []}
    sync_claims._mirror(s, "5000", 66, CLAIM_KEY, message, "incoming")


@responses.activate
def test_a_claim_message_whose_creation_is_still_held_by_chatwoot_is_not_created_again(s, clock):
    held_then_applied(66, source_ids.claim_message(CLAIM_KEY), 705)

    with pytest.raises(TransientError):
        mirror_claim_message(s)
    clock.advance(1)
    with pytest.raises(TransientError):
        mirror_claim_message(s)
    assert len(posts_to("/conversations/66/messages")) == 1

    clock.advance(ensure.CREATE_SETTLE)
    mirror_claim_message(s)
    assert len(posts_to("/conversations/66/messages")) == 1
    assert s.db.links.get("claim_message", CLAIM_KEY)["message_id"] == 705


@responses.activate
def test_a_claim_message_held_in_a_new_conversation_is_looked_for_there(s, clock):
    # Left pending for a conversation an agent deleted since: its row says nothing about the new one.
    s.db.links.record_intent("claim_message", CLAIM_KEY, clock(), conversation_id=60)
    clock.advance(ensure.CREATE_SETTLE + 1)
    held_then_applied(66, source_ids.claim_message(CLAIM_KEY), 706)

    with pytest.raises(TransientError):
        mirror_claim_message(s)
    clock.advance(1)
    with pytest.raises(TransientError):
        mirror_claim_message(s)
    clock.advance(ensure.CREATE_SETTLE)
    mirror_claim_message(s)
    assert len(posts_to("/conversations/66/messages")) == 1
    assert s.db.links.get("claim_message", CLAIM_KEY)["message_id"] == 706


# ---- conversations -----------------------------------------------------------------------------------------

def open_pack(s):
    return ensure_conversation(s, kind="pack", external_id="2000001", inbox_id=2, contact_id=5,
                               source_id="meli:buyer:9", custom_attributes={"meli_pack_id": "2000001"}, buyer_id=9)


@responses.activate
def test_a_conversation_whose_creation_is_still_held_by_chatwoot_is_not_created_again(s, clock):
    responses.post(f"{CW}/conversations", body=HELD)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations/filter",
                   json={"payload": [{"id": 93, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "2000001"}}]})

    with pytest.raises(TransientError):
        open_pack(s)
    clock.advance(1)
    with pytest.raises(TransientError):
        open_pack(s)  # the next poll: too soon to tell
    assert len(posts_to("/conversations")) == 1

    clock.advance(ensure.CREATE_SETTLE)
    assert open_pack(s) == (93, False)
    assert len(posts_to("/conversations")) == 1
    link = s.db.links.get("pack", "2000001")
    assert link["conversation_id"] == 93 and link["data"] == {"buyer_id": 9}  # the create's stamp is gone


@responses.activate
def test_a_conversation_whose_held_creation_never_arrived_is_made_once_it_has_settled(s, clock):
    responses.post(f"{CW}/conversations", body=HELD)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 94})

    with pytest.raises(TransientError):
        open_pack(s)
    clock.advance(ensure.CREATE_SETTLE + 1)
    assert open_pack(s) == (94, True)
    assert len(posts_to("/conversations")) == 2


@responses.activate
def test_a_refused_conversation_create_is_not_waited_for(s, clock):
    responses.post(f"{CW}/conversations", status=404, json={"error": "Contact not found"})
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 95})

    with pytest.raises(PermanentError):
        open_pack(s)
    assert open_pack(s) == (95, True)  # at once: a refused create is held by nobody
    assert json.loads(posts_to("/conversations")[1].request.body)["contact_id"] == 5


@responses.activate
def test_a_claim_summary_whose_creation_is_still_held_by_chatwoot_is_not_shown_again(s, clock):
    held_then_applied(66, source_ids.claim_event("5000", "opened"), 707)

    with pytest.raises(TransientError):
        sync_claims._event(s, "5000", "opened", 66, "Reclamação aberta")
    clock.advance(1)
    with pytest.raises(TransientError):
        sync_claims._event(s, "5000", "opened", 66, "Reclamação aberta")
    assert len(posts_to("/conversations/66/messages")) == 1

    clock.advance(ensure.CREATE_SETTLE)
    sync_claims._event(s, "5000", "opened", 66, "Reclamação aberta")
    assert len(posts_to("/conversations/66/messages")) == 1
    assert s.db.links.get("claim_event", "5000:opened")["status"] == "created"


@responses.activate
def test_a_refused_message_create_is_not_waited_for(s, clock):
    responses.post(f"{CW}/conversations/77/messages", status=422, json={"error": "invalid"})
    responses.get(f"{CW}/conversations/77/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/77/messages", json={"id": 708})
    question = ANSWERED

    with pytest.raises(PermanentError):
        sync_questions._mirror_answer(s, "12", 77, question)
    sync_questions._mirror_answer(s, "12", 77, question)  # at once: a refused create is held by nobody
    assert s.db.links.get("answer", "12")["message_id"] == 708


@responses.activate
def test_a_create_that_waited_before_timing_out_settles_from_when_the_wait_ended(s, clock):
    known_buyer(s, clock)
    responses.post(f"{CW}/conversations", json={"id": 91})

    def held(_request):
        clock.advance(30)  # a rate-budget pause, then Chatwoot holding the create
        raise requests.exceptions.ReadTimeout("read timed out")

    responses.add_callback(responses.POST, f"{CW}/conversations/91/messages", callback=held)
    question = UNANSWERED
    with pytest.raises(TransientError):
        sync_questions.create_question(s, question, None, "COMPRADOR")
    assert s.db.links.get("question", "12")["data"][ensure.TRIED] == clock()


@responses.activate
def test_a_conversation_create_that_waited_before_timing_out_settles_from_when_the_wait_ended(s, clock):
    def held(_request):
        clock.advance(30)  # a rate-budget pause, then Chatwoot holding the create
        raise requests.exceptions.ReadTimeout("read timed out")

    responses.add_callback(responses.POST, f"{CW}/conversations", callback=held)
    with pytest.raises(TransientError):
        open_pack(s)
    assert s.db.links.get("pack", "2000001")["data"]["conversation_tried_at"] == clock()


@responses.activate
def test_a_held_conversation_an_agent_answered_in_is_used_even_after_its_contact_was_merged_away(s, clock):
    """The create's answer is lost, Chatwoot applies it, an agent answers there, then merges the buyer's
    contact into another's: the bridge can no longer find it under the buyer, but the answer told it."""
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created

    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)

    body = message_created(message_id=501, conversation_id=93, inbox_id=s.settings.chatwoot_messages_inbox_id,
                           custom_attributes={"meli_pack_id": "2000001"})
    status, _code, extra = accept_webhook(body, s.settings, s.db, clock())
    assert status == "accepted" and extra["target"] == "2000001" and extra["adopted_conversation"] is True

    clock.advance(ensure.CREATE_SETTLE + 1)
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 2,
                                                  "custom_attributes": {"meli_pack_id": "2000001"}})
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})  # nothing of the bridge's there
    assert open_pack(s) == (93, False)  # no look under the (merged away) contact, no second create
    assert len(posts_to("/conversations")) == 1
    assert s.db.links.get("pack", "2000001")["data"] == {"buyer_id": 9}
    # A later delivery in another conversation carrying the same attribute changes nothing.
    again = message_created(message_id=502, conversation_id=94, inbox_id=s.settings.chatwoot_messages_inbox_id,
                            custom_attributes={"meli_pack_id": "2000001"})
    assert "adopted_conversation" not in accept_webhook(again, s.settings, s.db, clock())[2]
    assert s.db.links.get("pack", "2000001")["conversation_id"] == 93


@responses.activate
def test_a_conversation_create_killed_in_flight_after_a_budget_pause_settles_from_when_it_left(s, clock):
    s.chatwoot.budgets = {"*": PausedBudget(clock, 30)}

    def in_flight(_request):
        raise Killed()

    responses.add_callback(responses.POST, f"{CW}/conversations", callback=in_flight)
    with pytest.raises(Killed):
        open_pack(s)
    assert s.db.links.get("pack", "2000001")["data"]["conversation_tried_at"] == clock()

    s.chatwoot.budgets = {}
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    clock.advance(ensure.CREATE_SETTLE - 1)  # settled if counted from the record before the pause
    with pytest.raises(TransientError):
        open_pack(s)
    assert len(posts_to("/conversations")) == 1


def agent_reply_in(s, clock, conversation_id, message_id, conversation_inbox_id=None):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created

    body = message_created(message_id=message_id, conversation_id=conversation_id,
                           inbox_id=s.settings.chatwoot_messages_inbox_id,
                           custom_attributes={"meli_pack_id": "2000001"})
    if conversation_inbox_id is not None:
        body["conversation"]["inbox_id"] = conversation_inbox_id
    return accept_webhook(body, s.settings, s.db, clock())


@responses.activate
def test_a_late_reply_from_a_deleted_conversation_does_not_bring_the_sale_back_into_it(s, clock):
    """The agent deleted the sale's conversation 77 (the bridge forgot it and is making a new one, whose
    answer was lost); a reply written there before the delete is delivered only now. Adopting 77 would
    send every later buyer message into a conversation that no longer exists."""
    from bridge.sync.contacts import forget_conversation

    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=77, contact_id=5, data={"buyer_id": 9})
    forget_conversation(s, "pack", "2000001", 77, removed_conversation=77)
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)

    assert agent_reply_in(s, clock, 77, 601)[0] == "accepted"  # the reply itself still goes to the buyer
    responses.get(f"{CW}/conversations/77", status=404, json={"error": "Resource could not be found"})
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    clock.advance(1)
    with pytest.raises(TransientError):
        open_pack(s)  # not 77; and the create still held may yet be applied: not made again so soon
    assert len(posts_to("/conversations")) == 1

    responses.post(f"{CW}/conversations", json={"id": 96})
    clock.advance(ensure.CREATE_SETTLE)
    assert open_pack(s) == (96, True)
    link = s.db.links.get("pack", "2000001")
    assert link["conversation_id"] == 96 and link["data"]["removed_conversation"] == 77


@responses.activate
def test_a_conversation_of_another_inbox_is_not_adopted_for_a_sale(s, clock):
    """A delivery whose inbox fields disagree (the messages inbox, a conversation in inbox 7): what
    Chatwoot itself says of the conversation decides."""
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    assert agent_reply_in(s, clock, 93, 501, conversation_inbox_id=7)[2].get("adopted_conversation") is True
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 7,
                                                  "custom_attributes": {"meli_pack_id": "2000001"}})
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 97})
    clock.advance(ensure.CREATE_SETTLE + 1)
    assert open_pack(s) == (97, True)


@responses.activate
def test_a_conversation_chatwoot_records_as_another_sale_is_not_adopted_whatever_the_webhook_says(s, clock):
    """A delivery from conversation 93 names sale 2000001 (whose create lost its answer), but Chatwoot's own
    record of 93 names sale 2000002, another buyer's: this buyer's messages must not go there."""
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    agent_reply_in(s, clock, 93, 501)
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 2,
                                                  "custom_attributes": {"meli_pack_id": "2000002"}})
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})  # nothing of the bridge's there
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 97})
    clock.advance(ensure.CREATE_SETTLE + 1)

    assert open_pack(s) == (97, True)
    assert s.db.links.get("pack", "2000001")["conversation_id"] == 97


def test_a_conversation_another_sale_uses_is_not_adopted(s, clock):
    """Sale 2000002's conversation 93 (made, its row not finished yet) named by a delivery as sale 2000001's."""
    s.db.links.record_intent("pack", "2000001", clock())
    s.db.links.record_intent("pack", "2000002", clock(), conversation_id=93)

    assert "adopted_conversation" not in agent_reply_in(s, clock, 93, 501)[2]
    assert s.db.links.get("pack", "2000001")["conversation_id"] is None


@responses.activate
def test_a_conversation_an_agent_answered_in_while_the_next_create_was_in_flight_stays_the_sales(s, clock):
    """The first create's answer was lost (Chatwoot applied it as 93, then a merge carried it off); the
    settled retry is in flight when the agent's reply in 93 arrives: the buyer's messages must go where
    the agent is answering, not into the empty conversation the retry makes."""
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    clock.advance(ensure.CREATE_SETTLE + 1)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})

    def listener_adopts_meanwhile(_request):
        assert agent_reply_in(s, clock, 93, 501)[2].get("adopted_conversation") is True
        return 200, {}, json.dumps({"id": 98})

    responses.add_callback(responses.POST, f"{CW}/conversations", callback=listener_adopts_meanwhile)
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 2,
                                                  "custom_attributes": {"meli_pack_id": "2000001"}})
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})  # nothing of the bridge's there
    assert open_pack(s) == (93, False)
    assert s.db.links.get("pack", "2000001")["conversation_id"] == 93


@responses.activate
def test_an_adoption_while_the_next_create_is_in_flight_is_still_checked_when_that_create_is_lost(s, clock):
    """The create's stamp at departure must not hide that 77, adopted just before, is yet to be checked."""
    from bridge.sync.contacts import forget_conversation

    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=77, contact_id=5, data={"buyer_id": 9})
    forget_conversation(s, "pack", "2000001", 77, removed_conversation=77)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    s.chatwoot.budgets = {"POST": LateReply(lambda: agent_reply_in(s, clock, 77, 601))}
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    s.chatwoot.budgets = {}
    assert s.db.links.get("pack", "2000001")["conversation_id"] == 77  # adopted from the late reply

    responses.get(f"{CW}/conversations/77", status=404, json={"error": "Resource could not be found"})
    responses.post(f"{CW}/conversations", json={"id": 96})
    clock.advance(ensure.CREATE_SETTLE + 1)
    assert open_pack(s) == (96, True)


class LateReply:
    """A rate budget whose pause lets the listener accept a reply before the create leaves."""

    def __init__(self, meanwhile):
        self.meanwhile = meanwhile

    def acquire(self, level=None):
        self.meanwhile()

    def pause(self, seconds):
        pass


@responses.activate
def test_a_conversation_made_before_a_crash_and_deleted_since_is_made_again_not_written_to(s, clock):
    """The sale's conversation was made, then the poller died before the sale was recorded as shown
    (or its note failed); an agent deleted that conversation. The next sync must not fail on it forever."""
    s.db.links.record_intent("pack", "2000001", clock(), contact_id=5, conversation_id=47)
    responses.get(f"{CW}/conversations/47", status=404, json={"error": "Resource could not be found"})
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 94})

    assert open_pack(s) == (94, True)
    assert s.db.links.get("pack", "2000001")["conversation_id"] == 94


@responses.activate
def test_an_item_erased_while_its_conversation_was_made_is_not_recorded_again(s, clock):
    def erased_in_flight(_request):
        with s.db.write() as conn:  # `forget-buyer`, run beside the poller
            conn.execute("DELETE FROM links WHERE kind = 'pack' AND external_id = '2000001'")
        return 200, {}, json.dumps({"id": 95})

    responses.add_callback(responses.POST, f"{CW}/conversations", callback=erased_in_flight)
    with pytest.raises(TransientError):
        open_pack(s)
    assert s.db.links.get("pack", "2000001") is None


# ---- a conversation found wherever a merge carried it ------------------------------------------------------

def filters():
    return [c for c in responses.calls if c.request.url.startswith(f"{CW}/conversations/filter?")]


def conversation(conversation_id, pack_id, inbox_id=2, contact_id=5):
    return {"id": conversation_id, "inbox_id": inbox_id, "custom_attributes": {"meli_pack_id": pack_id},
            "meta": {"sender": {"id": contact_id}}}


@responses.activate
def test_a_lost_create_carried_to_another_buyers_contact_by_a_merge_is_found_and_used(s, clock):
    """The create's answer was lost; Chatwoot applied it as 93, then an agent merged the buyer's contact
    into another buyer's (contact 6): the contact's own conversations no longer show it, the filter does."""
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    responses.get(f"{CW}/contacts/5/conversations", json={"payload": []})
    responses.post(f"{CW}/conversations/filter", json={"payload": [conversation(93, "2000001", contact_id=6)]})
    clock.advance(ensure.CREATE_SETTLE + 1)

    assert open_pack(s) == (93, False)
    assert len(posts_to("/conversations")) == 1
    assert json.loads(filters()[0].request.body)["payload"] == [
        {"attribute_key": "meli_pack_id", "filter_operator": "equal_to", "values": ["2000001"],
         "query_operator": None}]


@responses.activate
def test_without_the_attribute_defined_the_filter_answering_everything_is_not_trusted(s, clock):
    """Chatwoot drops the condition on an undefined attribute and answers every conversation: none of
    them is taken for the sale's, and the contact's own conversations are searched instead."""
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    responses.post(f"{CW}/conversations/filter", json={"payload": [
        conversation(50, "2000002"), conversation(51, "2000001", inbox_id=1), {"id": 52, "inbox_id": 2}]})
    responses.get(f"{CW}/contacts/5/conversations", json={"payload": [conversation(50, "2000002")]})
    responses.post(f"{CW}/conversations", json={"id": 97})
    clock.advance(ensure.CREATE_SETTLE + 1)

    assert open_pack(s) == (97, True)
    assert len(filters()) == 1  # no paging through every conversation


@responses.activate
def test_without_the_attribute_defined_the_contacts_own_conversation_is_still_found(s, clock):
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    responses.post(f"{CW}/conversations/filter", json={"payload": [conversation(50, "2000002")]})
    responses.get(f"{CW}/contacts/5/conversations", json={"payload": [conversation(50, "2000002"),
                                                                      conversation(93, "2000001")]})
    clock.advance(ensure.CREATE_SETTLE + 1)

    assert open_pack(s) == (93, False)
    assert len(posts_to("/conversations")) == 1


@responses.activate
def test_a_found_conversation_another_sale_already_uses_is_not_taken(s, clock):
    """An agent copied sale 2000001's attribute onto sale 2000002's conversation 93."""
    s.db.links.mark_created("pack", "2000002", clock(), conversation_id=93, contact_id=5)
    responses.post(f"{CW}/conversations", body=HELD)
    with pytest.raises(TransientError):
        open_pack(s)
    responses.post(f"{CW}/conversations/filter", json={"payload": [conversation(93, "2000001")]})
    responses.post(f"{CW}/conversations", json={"id": 97})
    clock.advance(ensure.CREATE_SETTLE + 1)

    assert open_pack(s) == (97, True)


# ---- an item pruned by retention (or erased) that comes back ------------------------------------------------

def pruned(s, clock):
    """Sale 2000001 was shown in conversation 93, then pruned by retention: only its closed watermark is left."""
    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=93, contact_id=5, data={"buyer_id": 9})
    s.db.privacy.apply_retention(clock() + 91 * 86400, 90)
    assert s.db.links.get("pack", "2000001") is None and s.db.watermarks.get("pack", "2000001")["closed_at"]


@responses.activate
def test_a_pruned_sale_continues_in_its_conversation_still_in_chatwoot(s, clock):
    """A buyer message (or the bridge's own reply) after retention: the sale's conversation is still live
    in Chatwoot, and a second one for the same sale would split it (soak: one live conversation per sale)."""
    pruned(s, clock)
    responses.post(f"{CW}/conversations/filter", json={"payload": [conversation(93, "2000001")]})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert open_pack(s) == (93, False)
    assert posts_to("/conversations") == []


@responses.activate
def test_a_pruned_sale_whose_conversation_is_gone_gets_a_new_one(s, clock):
    pruned(s, clock)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert open_pack(s) == (97, True)
    assert len(filters()) == 1


@responses.activate
def test_a_sale_never_seen_before_is_made_without_searching_for_it(s, clock):
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert open_pack(s) == (97, True)
    assert filters() == []


@responses.activate
def test_a_pruned_sale_does_not_continue_in_another_buyers_conversation_an_agent_gave_its_id(s, clock):
    pruned(s, clock)
    taken = dict(conversation(93, "2000001"), additional_attributes={"meli_buyer_id": "77"})
    responses.post(f"{CW}/conversations/filter", json={"payload": [taken]})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert open_pack(s) == (97, True)


@responses.activate
def test_a_pruned_sale_does_not_continue_in_its_buyers_other_sale_conversation_an_agent_gave_its_id(s, clock):
    """Conversation 90 was made for the same buyer's sale 2000005 (pruned too, so no row claims it); an agent
    typed 2000001 into its sidebar. The buyer is the same, so only the sale the bridge made 90 for tells them
    apart: the buyer's new message on 2000001 belongs in 93, not in 2000005's history."""
    pruned(s, clock)
    typed = dict(conversation(90, "2000001"), additional_attributes={"meli_buyer_id": "9", "meli_pack_id": "2000005"})
    own = dict(conversation(93, "2000001"), additional_attributes={"meli_buyer_id": "9", "meli_pack_id": "2000001"})
    responses.post(f"{CW}/conversations/filter", json={"payload": [typed, own]})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert open_pack(s) == (93, False)


@responses.activate
def test_a_conversation_is_made_naming_its_item_where_agents_cannot_edit_it(s, clock):
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert open_pack(s) == (97, True)
    body = json.loads(posts_to("/conversations")[0].request.body)
    assert body["additional_attributes"] == {"meli_buyer_id": "9", "meli_pack_id": "2000001"}
