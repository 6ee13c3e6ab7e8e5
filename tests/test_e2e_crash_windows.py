"""kill -9 in each window between a remote call and the commit that records it.

The poller is started with BRIDGE_CRASH_AT=<window>: it kills itself (SIGKILL) right
after that remote call. A poller without the hook then runs, and the fakes' records say
whether anything was duplicated or lost. The windows are listed in db_manager's docstring.
"""

import signal
import time

import pytest

from bridge.admin.setup import CONVERSATION_ATTRIBUTES
from db_manager import Database
from tests.e2e import wait_until
from tests.test_e2e_postsale import PDF, sale, sales_conversations


def crashing_poller(bridge, window: str):
    """A poller that dies like kill -9 in `window`; the processes started later run without the hook.

    A send cut short is looked for only once settled, twice the read timeout: 4 s here, not 60.
    """
    bridge.env["BRIDGE_HTTP_READ_TIMEOUT"] = "2"
    bridge.env["BRIDGE_CRASH_AT"] = window
    try:
        return bridge.poller()
    finally:
        del bridge.env["BRIDGE_CRASH_AT"]


def assert_killed(poller, timeout: float = 30) -> None:
    assert poller.wait(timeout) == -signal.SIGKILL


def question(meli, buyer_id=9000, text="Tem em azul?"):
    meli.add_user(buyer_id, f"COMPRADOR{buyer_id}")
    meli.add_item("MLB100", "Caneca")
    return meli.add_question(item_id="MLB100", buyer_id=buyer_id, text=text)["id"]


def only_conversation(chatwoot, inbox):
    convs = [c for c in chatwoot.conversations.values() if c["inbox_id"] == inbox]
    assert len(convs) == 1
    return convs[0]


def notes(chatwoot, conversation_id):
    return [m for m in chatwoot.messages_in(conversation_id) if m["private"]]


# ---- item 12: the answer reached Mercado Livre, the poller died before recording it ----------------

def test_an_answer_posted_before_a_crash_is_not_mirrored_back_and_is_delivered_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = question(meli)
    bridge.listener()
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    poller = crashing_poller(bridge, "answer_posted")
    reply = chatwoot.agent_reply(conv["id"], "Temos **sim**!")
    assert_killed(poller)
    assert meli.answers_posted == [(qid, "Temos sim!")]
    # The questions sync runs first and finds the question answered on Mercado Livre.
    assert bridge.once().returncode == 0
    messages = chatwoot.messages_in(conv["id"])
    assert not [m for m in messages if (m["source_id"] or "").startswith("meli:answer")]
    assert [m["content"] for m in messages if m["message_type"] == 1] == ["Temos **sim**!"]
    assert meli.count("POST", "/answers") == 1
    assert chatwoot.message(reply["id"])["status"] == "delivered"
    assert chatwoot.conversations[conv["id"]]["status"] == "resolved"
    assert bridge.once().returncode == 0
    assert len(chatwoot.messages_in(conv["id"])) == len(messages)


def test_an_answer_posted_before_a_crash_is_finished_by_a_restarted_poller(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = question(meli)
    bridge.listener()
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    poller = crashing_poller(bridge, "answer_posted")
    reply = chatwoot.agent_reply(conv["id"], "Temos sim!")
    assert_killed(poller)
    # Questions sync and outbox start together: whichever sees the answer first, it is ours.
    bridge.poller()
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered mark")
    wait_until(lambda: meli.count("GET", f"/questions/{qid}") >= 1, 20, what="the questions sync's look")
    wait_until(lambda: chatwoot.conversations[conv["id"]]["status"] == "resolved", 20, what="resolved")
    assert meli.answers_posted == [(qid, "Temos sim!")]
    assert not [m for m in chatwoot.messages_in(conv["id"]) if (m["source_id"] or "").startswith("meli:answer")]


# ---- Chatwoot objects created before their link row was committed ---------------------------------

@pytest.mark.parametrize("window", ["contact_created", "conversation_created", "question_message_created"])
def test_a_question_killed_after_a_chatwoot_create_arrives_once(bridge, window):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = question(meli)
    assert_killed(crashing_poller(bridge, window))
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    assert len(chatwoot.contacts) == 1
    assert [m["source_id"] for m in chatwoot.messages_in(conv["id"])] == [f"meli:question:{qid}"]
    assert bridge.once().returncode == 0
    assert len(chatwoot.conversations) == 1 and len(chatwoot.messages_in(conv["id"])) == 1


def test_a_question_conversation_a_merge_carried_off_before_it_was_recorded_is_found_not_made_again(bridge):
    """Killed after the create; an agent then merges the buyer's contact into another buyer's. With the
    conversation attributes defined (as `main.py setup` does), the filter finds it under that contact."""
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    for key, name, display_type, values in CONVERSATION_ATTRIBUTES:
        chatwoot.define_attribute(key, display_type, values=values, name=name)
    qid = question(meli)
    assert_killed(crashing_poller(bridge, "conversation_created"))
    [made] = chatwoot.conversations.values()
    other, _ = chatwoot.create_contact({"name": "OUTRO", "identifier": "meli:buyer:9001"})
    chatwoot.merge_contacts(other["id"], made["contact_id"])

    assert bridge.once().returncode == 0
    time.sleep(5)  # past the settle of the create in doubt: a second one would be made by now
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    assert conv["id"] == made["id"] and conv["contact_id"] == other["id"]
    assert [m["source_id"] for m in chatwoot.messages_in(conv["id"])] == [f"meli:question:{qid}"]


@pytest.mark.parametrize("window", ["contact_created", "conversation_created", "sale_message_created"])
def test_a_buyer_message_killed_after_a_chatwoot_create_arrives_once(bridge, window):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Chegou quebrado")
    assert_killed(crashing_poller(bridge, window))
    assert bridge.once().returncode == 0
    [conv] = sales_conversations(bridge)
    assert len(chatwoot.contacts) == 1
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])] == ["Chegou quebrado"]
    assert meli.mark_read_events


def test_a_resolved_sale_is_reopened_even_when_the_first_try_to_reopen_fails(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    assert bridge.once().returncode == 0
    [conv] = sales_conversations(bridge)
    conv["status"] = "resolved"
    meli.add_buyer_message(pack, "Ainda não chegou")
    # Reopening fails (or the process dies) after the new message was recorded: nothing
    # would ever reopen the conversation, and the agent would not see the buyer wrote.
    chatwoot.fail_next("POST", f"/api/v1/accounts/1/conversations/{conv['id']}/toggle_status", 422)
    bridge.once()
    # The failed sale waits out its backoff; an operator's retry makes it due now.
    assert bridge.cli("retry", "pack").returncode == 0
    assert bridge.once().returncode == 0
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])] == ["Oi", "Ainda não chegou"]
    assert chatwoot.conversations[conv["id"]]["status"] == "open"


def test_a_contact_inbox_added_before_a_crash_is_not_added_twice(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    question(meli, buyer_id=7001)
    # The question first, alone: killed beside it, its own create in flight would rightly be
    # waited for (settled) by the next run, and this test is about the inbox only.
    assert bridge.once().returncode == 0
    pack = sale(meli, buyer_id=7001)
    meli.add_buyer_message(pack, "Oi")
    assert_killed(crashing_poller(bridge, "contact_inbox_added"))
    assert bridge.once().returncode == 0
    assert len(chatwoot.contacts) == 1
    contact_id = next(iter(chatwoot.contacts))
    inboxes = sorted(ci["inbox_id"] for ci in chatwoot.contact_inboxes if ci["contact_id"] == contact_id)
    assert inboxes == sorted([bridge.fakes.questions_inbox, bridge.fakes.messages_inbox])
    assert len(chatwoot.conversations) == 2
    assert all(len(chatwoot.messages_in(c)) == 1 for c in chatwoot.conversations)


def test_an_answer_mirrored_before_a_crash_is_mirrored_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = question(meli)
    assert bridge.once().returncode == 0
    meli.answer_elsewhere(qid, "Respondido pelo app")
    assert_killed(crashing_poller(bridge, "answer_mirrored"))
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    mirrored = [m for m in chatwoot.messages_in(conv["id"]) if m["source_id"] == f"meli:answer:{qid}"]
    assert [m["content"] for m in mirrored] == ["Respondido pelo app"]
    assert conv["status"] == "resolved"


def test_a_reopening_noted_before_a_crash_is_noted_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = question(meli)
    assert bridge.once().returncode == 0
    meli.set_question_status(qid, "UNDER_REVIEW")
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    assert len(notes(chatwoot, conv["id"])) == 1
    meli.set_question_status(qid, "UNANSWERED")
    assert_killed(crashing_poller(bridge, "question_followed"))
    assert bridge.once().returncode == 0
    reopened = [m for m in notes(chatwoot, conv["id"]) if "voltou a aceitar" in m["content"]]
    assert len(reopened) == 1
    assert chatwoot.conversations[conv["id"]]["status"] == "open"


def test_a_failed_reply_reported_before_a_crash_gets_one_note(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    question(meli)
    bridge.listener()
    assert bridge.once().returncode == 0
    conv = only_conversation(chatwoot, bridge.fakes.questions_inbox)
    poller = crashing_poller(bridge, "reply_reported")
    reply = chatwoot.agent_reply(conv["id"], "a" * 2500)
    assert_killed(poller)
    assert bridge.once().returncode == 0
    assert chatwoot.message(reply["id"])["status"] == "failed"
    assert len(notes(chatwoot, conv["id"])) == 1
    assert meli.answers_posted == []


# ---- post-sale replies ------------------------------------------------------------------------------

def sale_in_chatwoot(bridge):
    meli = bridge.fakes.meli.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Quando chega?")
    bridge.listener()
    assert bridge.once().returncode == 0
    [conv] = sales_conversations(bridge)
    return pack, conv


def test_a_message_sent_before_a_crash_is_not_mirrored_back_nor_sent_again(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack, conv = sale_in_chatwoot(bridge)
    poller = crashing_poller(bridge, "message_sent")
    reply = chatwoot.agent_reply(conv["id"], "Chega amanhã!")
    assert_killed(poller)
    assert [m["text"] for m in meli.sent_messages] == ["Chega amanhã!"]
    # The buyer writes again: the thread is read before the outbox takes the reply back.
    meli.add_buyer_message(pack, "Obrigado")
    assert bridge.once().returncode == 0
    assert [m["text"] for m in meli.sent_messages] == ["Chega amanhã!"]
    contents = [m["content"] for m in chatwoot.messages_in(conv["id"])]
    assert contents == ["Quando chega?", "Chega amanhã!", "Obrigado"]
    # Once the send has settled, the outbox finds it in the thread instead of sending again.
    wait_until(lambda: bridge.once().returncode == 0 and chatwoot.message(reply["id"])["status"] == "delivered",
               30, interval=0.5, what="delivered once settled")
    assert [m["text"] for m in meli.sent_messages] == ["Chega amanhã!"]
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])] == contents


def test_a_message_sent_before_a_crash_is_found_by_the_restarted_outbox(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    _pack, conv = sale_in_chatwoot(bridge)
    poller = crashing_poller(bridge, "message_sent")
    reply = chatwoot.agent_reply(conv["id"], "Chega amanhã!")
    assert_killed(poller)
    bridge.poller()
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered mark")
    assert [m["text"] for m in meli.sent_messages] == ["Chega amanhã!"]


def test_a_file_uploaded_before_a_crash_goes_out_in_one_message(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    _pack, conv = sale_in_chatwoot(bridge)
    poller = crashing_poller(bridge, "attachment_uploaded")
    reply = chatwoot.agent_reply(conv["id"], "Segue a nota", attachments=[("nota.pdf", PDF, "application/pdf")])
    assert_killed(poller)
    assert meli.sent_messages == []
    # Nothing tells a crash before the send from one after it: the part waits to settle, then goes.
    wait_until(lambda: bridge.once().returncode == 0 and meli.sent_messages, 30, interval=0.5,
               what="sent once settled")
    [sent] = meli.sent_messages
    assert sent["text"] == "Segue a nota" and len(sent["attachments"]) == 1
    # The first upload was never used: it expires on Mercado Livre unseen.
    assert sent["attachments"] == [meli.uploads[-1]["id"]]
    assert chatwoot.message(reply["id"])["status"] == "delivered"


def test_a_moderation_half_reported_before_a_crash_still_reaches_the_agent(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack, conv = sale_in_chatwoot(bridge)
    reply = chatwoot.agent_reply(conv["id"], "Me liga no 11 99999-9999")
    chatwoot.wait_webhooks_idle(10)
    assert bridge.once().returncode == 0
    assert chatwoot.message(reply["id"])["status"] == "delivered"
    meli.moderate(meli.sent_messages[-1]["message_id"], "PERSONAL_DATA")
    meli.add_buyer_message(pack, "Não recebi")
    assert_killed(crashing_poller(bridge, "moderation_reported"))
    assert bridge.once().returncode == 0
    assert "moderação" in chatwoot.message(reply["id"])["external_error"]
    moderation_notes = [m for m in notes(chatwoot, conv["id"]) if "dados pessoais" in m["content"]]
    assert len(moderation_notes) == 1


# ---- Mercado Livre tokens ------------------------------------------------------------------------------

def test_a_token_refreshed_before_a_crash_asks_for_reauthorization_once(bridge):
    meli = bridge.fakes.meli.state
    question(meli)
    assert bridge.once().returncode == 0
    meli.expire_access_tokens()
    assert_killed(crashing_poller(bridge, "token_refreshed"))
    assert meli.refresh_count == 1
    db = Database(bridge.env["DATABASE_PATH"])
    # Two minutes later the dead process's refresh lease has run out.
    db.auth.release_lease(db.auth.current()["refresh_lease_owner"])
    # The new pair died with the process and the old refresh token is spent: a person must authorize.
    assert bridge.once().returncode != 0
    auth = db.auth.current()
    assert auth["status"] == "reauth_required"
    assert bridge.once().returncode != 0
    assert meli.invalid_grant_count == 1
