"""Which question or sale an agent's reply goes to: the one the bridge itself showed in the conversation
(its row, else its own messages there, read from Chatwoot), never the one an agent typed into the
conversation's `meli_*_id` attribute (issue 18; soak seeds 53003 and 20261129)."""

from __future__ import annotations

import json
import re

import pytest
import responses
from hypothesis import given
from hypothesis import strategies as st

from bridge import source_ids
from bridge.replies import delivery
from bridge.replies.accept import accept_webhook
from bridge.rules.conversations import items_named, owner
from tests.fakes.fake_chatwoot import MESSAGE_TYPES, ChatwootState, rails_json
from tests.helpers import API, CW, authorized_services


@pytest.fixture
def s(settings, db, clock):
    return authorized_services(settings, db, clock)


@pytest.fixture
def cw():
    state = ChatwootState()
    assert state.add_inbox("Mercado Livre - Perguntas") == 1  # the settings' questions inbox
    assert state.add_inbox("Mercado Livre - Vendas") == 2
    yield state
    state.stop()


def served(cw: ChatwootState) -> None:
    """The fake Chatwoot's record of its conversations and their messages, through `responses`."""
    def conversation(request):
        conv = cw.conversations.get(int(request.url.split("?")[0].rsplit("/", 1)[-1]))
        if conv is None:
            return 404, {}, json.dumps({"error": "Resource could not be found"})
        return 200, {}, rails_json(cw.conversation_json(conv))

    def messages(request):
        conv = cw.conversations.get(int(re.search(r"/conversations/(\d+)/", request.url).group(1)))
        if conv is None:
            return 404, {}, json.dumps({"error": "Resource could not be found"})
        before = re.search(r"before=(\d+)", request.url)
        page = [m for m in conv["messages"] if before is None or m["id"] < int(before.group(1))][-20:]
        return 200, {}, rails_json({"meta": {}, "payload": [cw.api_message(m) for m in page]})

    responses.add_callback(responses.GET, re.compile(rf"{re.escape(CW)}/conversations/\d+$"), callback=conversation)
    responses.add_callback(responses.GET, re.compile(rf"{re.escape(CW)}/conversations/\d+/messages"),
                           callback=messages)


def bridge_conversation(cw: ChatwootState, inbox_id: int, buyer: int, attributes: dict,
                        first_source: str | None) -> int:
    """A conversation as the bridge makes one: the buyer's contact, the item's attributes, and (unless
    None) the bridge's first message carrying its source id."""
    contact, _ = cw.create_contact({"name": f"Comprador {buyer}", "identifier": source_ids.buyer(buyer),
                                    "inbox_id": inbox_id, "source_id": source_ids.buyer(buyer)})
    conv, _ = cw.create_conversation({"source_id": source_ids.buyer(buyer), "inbox_id": inbox_id,
                                      "contact_id": contact["id"], "custom_attributes": attributes})
    if first_source:
        cw._create_message(conv["id"], "Vocês têm em azul?", MESSAGE_TYPES["incoming"], source_id=first_source)
    return conv["id"]


def agent_edits(cw: ChatwootState, conversation_id: int, key: str, value: str) -> None:
    cw.conversations[conversation_id]["custom_attributes"][key] = value


def agent_replies(s, cw: ChatwootState, clock, conversation_id: int, content: str = "Temos sim!") -> dict:
    message = cw.agent_reply(conversation_id, content)
    status, _code, extra = accept_webhook(cw.webhook_payload(message), s.settings, s.db, clock())
    return dict(extra, status=status)


def answered_questions() -> list[int]:
    return [json.loads(c.request.body)["question_id"] for c in responses.calls
            if c.request.method == "POST" and c.request.url == f"{API}/answers"]


def two_questions(s, cw, clock) -> tuple[int, int]:
    """Question 120's conversation (the bridge's first message in it), its row lost: the database was
    put back from a backup older than it. Question 121 is in Chatwoot, its row naming its conversation."""
    c120 = bridge_conversation(cw, 1, 9, {"meli_question_id": "120"}, source_ids.question(120))
    c121 = bridge_conversation(cw, 1, 8, {"meli_question_id": "121"}, source_ids.question(121))
    s.db.links.mark_created("question", "121", clock(), conversation_id=c121, contact_id=5, message_id=1,
                            data={"state": "open"})
    return c120, c121


@responses.activate
def test_a_reply_where_an_agent_typed_another_question_goes_to_the_conversations_own_question(s, cw, clock):
    """Soak seed 53003, reply R00266: the answer typed in 120's conversation reached question 121."""
    c120, _ = two_questions(s, cw, clock)
    served(cw)
    responses.post(f"{API}/answers", json={"id": 120, "status": "ANSWERED"})
    agent_edits(cw, c120, "meli_question_id", "121")

    reply = agent_replies(s, cw, clock, c120)

    assert delivery.deliver(s, reply["reply_id"]) == "delivered"
    assert answered_questions() == [120]
    assert s.db.replies.get(reply["reply_id"])["target_id"] == "120"


@responses.activate
def test_a_second_answer_taken_for_the_conversations_own_question_is_refused_as_one_answer_per_question(
        s, cw, clock):
    c120, _ = two_questions(s, cw, clock)
    served(cw)
    agent_edits(cw, c120, "meli_question_id", "121")
    s.db.replies.accept(chatwoot_message_id=1, conversation_id=c120, kind="answer", target_id="120",
                        parts=[{"text": "Temos sim!", "attachments": []}], now=clock())

    reply = agent_replies(s, cw, clock, c120, "Temos em azul também.")

    assert delivery.deliver(s, reply["reply_id"]) == "failed"
    assert s.db.replies.get(reply["reply_id"])["error"] == "pergunta já tem resposta"
    assert answered_questions() == []


@responses.activate
def test_a_reply_where_an_agent_cleared_the_attribute_goes_to_the_question_the_bridge_showed_there(s, cw, clock):
    """Soak seed 20261129, reply R00069: refused 'conversa sem vínculo', though the bridge's own first
    message in the conversation says which question it is."""
    c120, _ = two_questions(s, cw, clock)
    served(cw)
    responses.post(f"{API}/answers", json={"id": 120, "status": "ANSWERED"})
    agent_edits(cw, c120, "meli_question_id", "")

    reply = agent_replies(s, cw, clock, c120)
    assert reply["status"] == "accepted"

    assert delivery.deliver(s, reply["reply_id"]) == "delivered"
    assert answered_questions() == [120]


@responses.activate
def test_a_reply_is_taken_for_the_question_whose_row_names_the_conversation_while_its_message_is_recorded(
        s, cw, clock):
    """The bridge found (or made) the conversation and wrote the question there; the create's answer was
    lost, so the row is still pending when the agent clears the attribute and answers: the row decides."""
    c120 = bridge_conversation(cw, 1, 9, {"meli_question_id": "120"}, source_ids.question(120))
    s.db.links.record_intent("question", "120", clock(), contact_id=5, conversation_id=c120)
    agent_edits(cw, c120, "meli_question_id", "")

    reply = agent_replies(s, cw, clock, c120)

    assert (reply["status"], reply["target"]) == ("accepted", "120")
    assert not responses.calls  # the listener decided with no network call


@responses.activate
def test_a_reply_where_an_agent_typed_another_question_is_refused_when_the_bridge_showed_nothing_there(
        s, cw, clock):
    """Question 120's create lost its answer before the bridge wrote anything in it, and the bridge has
    since shown 120 in a conversation of its own: 120's lost one now says 121 (an agent typed it), and 121
    has its own conversation. Nothing the bridge made says this one is 121's: nothing goes to 121."""
    lost = bridge_conversation(cw, 1, 7, {"meli_question_id": "120"}, None)
    _, c121 = two_questions(s, cw, clock)
    served(cw)
    responses.post(f"{API}/answers", json={"id": 121, "status": "ANSWERED"})
    agent_edits(cw, lost, "meli_question_id", "121")

    reply = agent_replies(s, cw, clock, lost)
    assert delivery.deliver(s, reply["reply_id"]) == "failed"

    assert answered_questions() == []
    assert "conversa" in s.db.replies.get(reply["reply_id"])["note"]
    assert c121 != lost


@responses.activate
def test_a_second_reply_after_an_agent_typed_another_question_into_an_adopted_conversation_reaches_nobody(
        s, cw, clock):
    """Question 120's create lost its answer; the agent's first answer in it adopted it as 120's candidate.
    Then an agent typed 121 (which has its own conversation) and answered again: that answer is not 121's."""
    lost = bridge_conversation(cw, 1, 7, {"meli_question_id": "120"}, None)
    two_questions(s, cw, clock)
    s.db.links.record_intent("question", "120", clock(), contact_id=5)
    assert agent_replies(s, cw, clock, lost, "Temos sim!").get("adopted_conversation") is True
    agent_edits(cw, lost, "meli_question_id", "121")
    served(cw)
    responses.post(f"{API}/answers", json={"id": 121, "status": "ANSWERED"})

    second = agent_replies(s, cw, clock, lost, "Temos em azul também.")
    assert delivery.deliver(s, second["reply_id"]) == "failed"

    assert 121 not in answered_questions()


@responses.activate
def test_a_reply_in_a_lost_create_the_bridge_wrote_nothing_in_still_goes_by_its_confirmed_attribute(s, cw, clock):
    """What adoption is for: the create's answer was lost, the conversation holds only the attribute the
    bridge set, and the agent answers there before the bridge finds it."""
    lost = bridge_conversation(cw, 1, 9, {"meli_question_id": "120"}, None)
    s.db.links.record_intent("question", "120", clock(), contact_id=5)
    served(cw)
    responses.post(f"{API}/answers", json={"id": 120, "status": "ANSWERED"})

    reply = agent_replies(s, cw, clock, lost)

    assert delivery.deliver(s, reply["reply_id"]) == "delivered"
    assert answered_questions() == [120]


@responses.activate
def test_a_sale_reply_where_an_agent_typed_another_sale_goes_to_the_sale_the_bridge_mirrored_there(s, cw, clock):
    """Sale 2000001's messages were mirrored into its conversation; its row went back to pending without
    it (Chatwoot did not answer for it). An agent typed sale 2000002 into the attribute and replied."""
    c1 = bridge_conversation(cw, 2, 9, {"meli_pack_id": "2000001"}, source_ids.message("m-1"))
    c2 = bridge_conversation(cw, 2, 8, {"meli_pack_id": "2000002"}, source_ids.message("m-2"))
    s.db.links.record_intent("pack", "2000001", clock(), contact_id=5)
    s.db.links.update("pack", "2000001", clock(), data={"buyer_id": 9, "blocked": False, "migrated": False})
    s.db.links.mark_created("message", "m-1", clock(), conversation_id=c1, data={"pack_id": "2000001"})
    s.db.links.mark_created("pack", "2000002", clock(), conversation_id=c2, contact_id=6,
                            data={"buyer_id": 8, "blocked": False, "migrated": False})
    agent_edits(cw, c1, "meli_pack_id", "2000002")

    reply = agent_replies(s, cw, clock, c1)

    assert reply["target"] == "2000001"
    assert not s.db.links.get("pack", "2000002")["data"].get("adopted")


@responses.activate
def test_a_reply_in_a_conversation_with_nothing_of_the_bridges_and_no_attribute_is_refused_unlinked(s, cw, clock):
    """A conversation an agent opened in the inbox: nothing says which question it is, nothing is sent."""
    contact, _ = cw.create_contact({"name": "Alguém", "inbox_id": 1, "source_id": "x-1"})
    conv, _ = cw.create_conversation({"source_id": "x-1", "inbox_id": 1, "contact_id": contact["id"]})
    served(cw)

    reply = agent_replies(s, cw, clock, conv["id"])
    assert delivery.deliver(s, reply["reply_id"]) == "failed"

    assert answered_questions() == []
    assert s.db.replies.get(reply["reply_id"])["error"] == "conversa sem vínculo com o Mercado Livre"


# ---- the rule, pure ------------------------------------------------------------------------------------

OTHER_SOURCES = st.sampled_from([None, "", "meli:note:reply:7", "meli:buyer:9", "meli:note:claim:5:removed:1",
                                 "abc", "meli:", "meli:question", "meli:note:moderation:m-9"])


@given(own=st.integers(1, 10**12), typed=st.one_of(st.none(), st.integers(1, 10**12).map(str)),
       noise=st.lists(OTHER_SOURCES, max_size=6), copies=st.integers(1, 3))
def test_the_bridges_own_messages_decide_a_questions_conversation_whatever_the_attribute_says(
        own, typed, noise, copies):
    sources = noise + [source_ids.question(own)] * copies + [source_ids.answer(own)]
    shown = items_named(sources, "question", {})
    assert shown == {str(own)}
    assert owner(typed, shown, attribute_confirmed=True, claimed_elsewhere=False) == (str(own), None)


@given(first=st.integers(1, 10**6), second=st.integers(10**6 + 1, 10**7), typed=st.integers(1, 10**7).map(str))
def test_a_conversation_showing_two_items_goes_to_neither(first, second, typed):
    shown = items_named([source_ids.question(first), source_ids.question(second)], "question", {})
    assert owner(typed, shown, attribute_confirmed=True, claimed_elsewhere=False)[0] is None


@given(typed=st.one_of(st.none(), st.integers(1, 10**7).map(str)), confirmed=st.booleans(), elsewhere=st.booleans())
def test_with_nothing_of_the_bridges_the_attribute_counts_only_confirmed_and_claimed_by_no_other(
        typed, confirmed, elsewhere):
    item, why = owner(typed, set(), attribute_confirmed=confirmed, claimed_elsewhere=elsewhere)
    if typed is not None and confirmed and not elsewhere:
        assert (item, why) == (typed, None)
    else:
        assert item is None and why


def test_a_sales_conversation_is_named_by_its_mirrored_messages_and_its_own_notes():
    sources = [source_ids.message("m-1"), source_ids.note("pack", "2000001", "removed", 88),
               source_ids.note("moderation", "m-1"), source_ids.question(5)]
    assert items_named(sources, "pack", {"m-1": "2000001"}) == {"2000001"}
    assert items_named(sources, "pack", {}) == {"2000001"}
    assert items_named([source_ids.message("m-1")], "pack", {}) == set()


@responses.activate
def test_a_conversation_showing_another_question_is_not_taken_for_a_lost_create_an_agent_typed_into_it(
        s, cw, clock):
    """Question 121's create lost its answer. In question 120's conversation (its row lost with a backup put
    back), an agent typed 121 and answered: the listener adopted it as 121's candidate. Chatwoot's record names
    121 now, but the bridge's own first message there is 120's: 121's buyer must not be mirrored into it."""
    from bridge.sync.contacts import ensure_conversation

    c120 = bridge_conversation(cw, 1, 9, {"meli_question_id": "120"}, source_ids.question(120))
    s.db.links.record_intent("question", "121", clock(), contact_id=5)
    agent_edits(cw, c120, "meli_question_id", "121")
    assert agent_replies(s, cw, clock, c120).get("adopted_conversation") is True
    served(cw)
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.get(re.compile(rf"{re.escape(CW)}/contacts/\d+/conversations"), json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert ensure_conversation(s, kind="question", external_id="121", inbox_id=1, contact_id=5,
                               source_id="meli:buyer:8", custom_attributes={"meli_question_id": "121"},
                               buyer_id=8) == (97, True)


@responses.activate
def test_a_sale_reply_moved_to_its_conversations_sale_at_delivery_never_interleaves_with_another_reply_to_it(
        s, cw, clock):
    """Reply A was written in sale 2000001's conversation while its row had lost it (a backup put back) and an
    agent had cleared the attribute: no target until the delivery reads the conversation. The sync then found
    the conversation again, and reply B there went to 2000001 from the start. Two groups in the outbox, two
    workers: B must not go out between A's parts (the buyer would read A's text cut by B), nor before A."""
    from tests.helpers import THREAD

    conv = bridge_conversation(cw, 2, 9, {"meli_pack_id": "2000001"}, None)
    cw._create_message(conv, "Sobre o pedido", MESSAGE_TYPES["activity"],
                       source_id=source_ids.note("pack", "2000001", "removed", 88))
    agent_edits(cw, conv, "meli_pack_id", "")
    served(cw)
    first = s.db.replies.accept(chatwoot_message_id=501, conversation_id=conv, kind="message", target_id=None,
                                parts=[{"text": "Parte um.", "attachments": []},
                                       {"text": "Parte dois.", "attachments": []}], now=clock())
    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=conv, contact_id=5,
                            data={"buyer_id": 9, "blocked": False, "migrated": False})
    second = agent_replies(s, cw, clock, conv, "Outra coisa.")
    assert second["target"] == "2000001"

    sent = []

    def send(request):
        sent.append(json.loads(request.body)["text"])
        if len(sent) == 1:
            delivery.deliver(s, second["reply_id"])  # the other group's worker, meanwhile
        return 200, {}, json.dumps({"id": f"m{len(sent)}"})

    responses.add_callback(responses.POST, THREAD, callback=send)

    assert delivery.deliver(s, first) == "delivered"
    delivery.deliver(s, second["reply_id"])

    assert sent == ["Parte um.", "Parte dois.", "Outra coisa."]


@responses.activate
def test_a_sale_reply_moved_at_delivery_waits_while_another_reply_to_that_sale_is_in_hand(s, cw, clock):
    from tests.helpers import THREAD

    conv = bridge_conversation(cw, 2, 9, {"meli_pack_id": ""}, None)
    cw._create_message(conv, "Sobre o pedido", MESSAGE_TYPES["activity"],
                       source_id=source_ids.note("pack", "2000001", "removed", 88))
    served(cw)
    first = s.db.replies.accept(chatwoot_message_id=501, conversation_id=conv, kind="message", target_id=None,
                                parts=[{"text": "Parte um.", "attachments": []}], now=clock())
    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=conv, contact_id=5,
                            data={"buyer_id": 9, "blocked": False, "migrated": False})
    second = agent_replies(s, cw, clock, conv, "Outra coisa.")
    assert s.db.replies.claim(second["reply_id"], clock(), delivery.LEASE_SECONDS)  # another worker's, mid-send
    responses.post(THREAD, json={"id": "m1"})

    assert delivery.deliver(s, first) == "retry"

    assert [c for c in responses.calls if c.request.method == "POST"] == []
    assert s.db.replies.get(first)["target_id"] is None


@responses.activate
def test_an_erased_buyers_reply_pending_under_another_questions_attribute_is_erased_and_never_answered(
        s, cw, clock):
    """An agent typed question 121 (buyer 8) into question 120's conversation (buyer 9) and answered there.
    The delivery would take it for 120, the question the bridge showed there: it is buyer 9's reply. Buyer 9
    is erased before it goes: the reply goes with them (its text too), and buyer 8's stays untouched."""
    c120, c121 = two_questions(s, cw, clock)
    s.db.links.mark_created("question", "120", clock(), conversation_id=c120, contact_id=4, message_id=2,
                            data={"state": "open", "buyer_id": 9})
    s.db.links.update("question", "121", clock(), data={"state": "open", "buyer_id": 8})
    served(cw)
    responses.post(f"{API}/answers", json={"id": 120, "status": "ANSWERED"})
    others = agent_replies(s, cw, clock, c121, "Chega amanhã.")
    theirs = s.db.replies.accept(chatwoot_message_id=601, conversation_id=c120, kind="answer", target_id="121",
                                 parts=[{"text": "Temos sim!", "attachments": []}], now=clock())

    untold: dict = {}
    s.db.privacy.forget_buyer("9", clock(), untold)

    assert s.db.replies.get(theirs) is None
    assert 601 in untold["pending"]
    assert delivery.deliver(s, theirs) is None
    assert answered_questions() == []
    assert s.db.replies.get(others["reply_id"])["status"] == "pending"
    s.db.privacy.forget_buyer("8", clock())
    assert s.db.replies.get(others["reply_id"]) is None


@responses.activate
def test_a_sale_reply_waiting_to_learn_its_sale_holds_back_the_later_replies_of_its_conversation(s, cw, clock):
    """Reply A had no sale when written (its conversation's row lost, the attribute cleared) and its first
    attempt met a Chatwoot outage reading the conversation: it waits to retry. Reply B, written after it in the
    same conversation once the sync found it again, went to the sale at once, and the buyer read B before A."""
    from tests.helpers import THREAD

    conv = bridge_conversation(cw, 2, 9, {"meli_pack_id": ""}, None)
    cw._create_message(conv, "Sobre o pedido", MESSAGE_TYPES["activity"],
                       source_id=source_ids.note("pack", "2000001", "removed", 88))
    first = s.db.replies.accept(chatwoot_message_id=501, conversation_id=conv, kind="message", target_id=None,
                                parts=[{"text": "Primeira.", "attachments": []}], now=clock())
    outage = responses.CallbackResponse(responses.GET, re.compile(rf"{re.escape(CW)}/conversations/\d+$"),
                                        callback=lambda _request: (503, {}, json.dumps({"error": "down"})))
    responses.add(outage)
    assert delivery.deliver(s, first) == "retry"
    assert s.db.replies.get(first)["target_id"] is None
    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=conv, contact_id=5,
                            data={"buyer_id": 9, "blocked": False, "migrated": False})
    second = agent_replies(s, cw, clock, conv, "Segunda.")
    sent = []
    responses.add_callback(responses.POST, THREAD, callback=lambda request: (
        sent.append(json.loads(request.body)["text"]) or (200, {}, json.dumps({"id": f"m{len(sent)}"}))))

    assert [row["id"] for row in s.db.replies.due(clock())] == []
    assert delivery.deliver(s, second["reply_id"]) is None

    responses.remove(outage)
    served(cw)
    clock.advance(3600)
    # Both due now: one worker takes them, in the order written.
    assert list(delivery._in_order_groups(s.db.replies.due(clock())).values()) == [[first, second["reply_id"]]]
    assert delivery.deliver(s, first) == "delivered"
    assert delivery.deliver(s, second["reply_id"]) == "delivered"
    assert sent == ["Primeira.", "Segunda."]


def test_replies_sharing_a_sale_or_a_conversation_go_to_one_worker_in_the_order_written():
    due = [{"id": 1, "kind": "message", "target_id": None, "conversation_id": 10},
           {"id": 2, "kind": "message", "target_id": "2000001", "conversation_id": 11},
           {"id": 3, "kind": "message", "target_id": "2000001", "conversation_id": 10},
           {"id": 4, "kind": "message", "target_id": "2000002", "conversation_id": 12},
           {"id": 5, "kind": "answer", "target_id": "120", "conversation_id": 10}]
    assert sorted(delivery._in_order_groups(due).values()) == [[1, 2, 3], [4], [5]]


@responses.activate
def test_a_reply_put_in_doubt_by_a_restore_before_any_part_left_is_still_checked_for_its_addressee(s, cw, clock):
    """A conversation with nothing of the bridge's, where an agent typed sale 2000002 (another buyer's, in its
    own conversation) and replied: refused once its conversation is read. A backup put back before its delivery
    leaves every part in doubt ('sending'): that is no part having left, and the check still runs (it was taken
    as done, and the reply went to sale 2000002's buyer)."""
    from tests.helpers import API, SELLER

    c1 = bridge_conversation(cw, 2, 9, {"meli_pack_id": "2000002"}, None)
    c2 = bridge_conversation(cw, 2, 8, {"meli_pack_id": "2000002"}, source_ids.note("pack", "2000002", "x", 1))
    s.db.links.mark_created("pack", "2000002", clock(), conversation_id=c2, contact_id=6,
                            data={"buyer_id": 8, "blocked": False, "migrated": False})
    served(cw)
    reply = agent_replies(s, cw, clock, c1)
    assert reply["target"] == "2000002"
    other_thread = f"{API}/messages/packs/2000002/sellers/{SELLER}"
    responses.get(other_thread, json={"paging": {"total": 0}, "messages": [],
                                      "conversation_status": {"status": "active"}})
    responses.post(other_thread, json={"id": "m-1"})

    s.db.replies.put_in_doubt()
    clock.advance(3600)

    assert delivery.deliver(s, reply["reply_id"]) == "failed"
    assert [c.request.url for c in responses.calls if c.request.method == "POST"] == []
    assert s.db.replies.get(reply["reply_id"])["error"] == "conversa não é a deste item"
