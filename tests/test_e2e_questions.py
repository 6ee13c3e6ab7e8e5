"""Pre-sale questions end to end: the real poller and listener against the fakes."""

import signal
import time

from tests.e2e import wait_until

SELLER_URL = "https://produto.mercadolivre.com.br/"


def seed_backlog(meli, questions=120, buyers=40, items=10):
    for b in range(buyers):
        meli.add_user(9000 + b, f"COMPRADOR{b}")
    for i in range(items):
        meli.add_item(f"MLB{100 + i}", f"Produto {i}")
    return [meli.add_question(item_id=f"MLB{100 + (n % items)}", buyer_id=9000 + (n % buyers),
                              text=f"Pergunta número {n}?") for n in range(questions)]


def run_until_question_in_chatwoot(bridge) -> int:
    """Start the listener and the poller; return the first question's conversation id once it has its message."""
    chatwoot = bridge.fakes.chatwoot.state
    bridge.listener()
    bridge.poller()
    wait_until(lambda: chatwoot.conversations and chatwoot.messages_in(next(iter(chatwoot.conversations))), 30,
               what="question in chatwoot")
    return next(iter(chatwoot.conversations))


def question_conversations(chatwoot, inbox):
    return [c for c in chatwoot.conversations.values() if c["inbox_id"] == inbox]


def test_120_questions_become_120_conversations_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    seed_backlog(meli)
    assert bridge.once().returncode == 0
    convs = question_conversations(chatwoot, bridge.fakes.questions_inbox)
    assert len(convs) == 120
    assert len({c["meta"]["sender"]["id"] for c in convs}) == 40
    assert len(chatwoot.contacts) == 40
    assert all(c["identifier"].startswith("meli:buyer:9") for c in chatwoot.contacts.values())
    for conv in convs:
        attrs = conv["custom_attributes"]
        qid = attrs["meli_question_id"]
        question = meli.questions[int(qid)]
        assert attrs["meli_item_id"] == question["item_id"]
        assert attrs["meli_item_title"].startswith("Produto ")
        assert attrs["meli_item_url"].startswith("http")
        messages = chatwoot.messages_in(conv["id"])
        assert len(messages) == 1
        first = messages[0]
        assert first["message_type"] == 0 and first["source_id"] == f"meli:question:{qid}"
        assert question["text"] in first["content"] and attrs["meli_item_title"] in first["content"]
    # Three search pages, one multiget for 10 items, one nickname per buyer.
    assert meli.count("GET", "/questions/search") == 3
    assert meli.count("GET", "/items") == 1
    assert bridge.once().returncode == 0
    assert len(question_conversations(chatwoot, bridge.fakes.questions_inbox)) == 120
    assert sum(len(chatwoot.messages_in(c["id"])) for c in convs) == 120


def test_kill_9_mid_sync_then_once_leaves_no_duplicate_and_nothing_missing(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    seed_backlog(meli, questions=30, buyers=10, items=3)
    chatwoot.delay("/api/v1/accounts/1/conversations", 0.15)
    # Killed with a create in flight, the next run rightly waits for it to settle (twice the read
    # timeout) before making it again: a short timeout, and the run comes after that wait.
    bridge.env["BRIDGE_HTTP_READ_TIMEOUT"] = "1"
    poller = bridge.poller()
    wait_until(lambda: len(chatwoot.conversations) >= 8, 60, what="some conversations")
    bridge.stop(poller, signal.SIGKILL)
    chatwoot.delay("/api/v1/accounts/1/conversations", 0)
    time.sleep(2 * 1 + 0.5)
    once = bridge.once()
    assert once.returncode == 0, [line for line in once.stderr.decode().splitlines()
                                  if " ERROR " in line or " WARNING " in line]
    convs = question_conversations(chatwoot, bridge.fakes.questions_inbox)
    qids = [c["custom_attributes"]["meli_question_id"] for c in convs]
    assert len(qids) == 30 and len(set(qids)) == 30
    for conv in convs:
        assert len(chatwoot.messages_in(conv["id"])) == 1
    assert len(chatwoot.contacts) == 10


def test_an_agent_reply_is_answered_once_and_the_conversation_resolved(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    seed_backlog(meli, questions=2, buyers=1, items=1)
    bridge.listener()
    bridge.poller()
    wait_until(lambda: len(chatwoot.conversations) == 2 and all(
        chatwoot.messages_in(c) for c in chatwoot.conversations), 30, what="questions in chatwoot")
    conv = next(iter(chatwoot.conversations.values()))
    qid = int(conv["custom_attributes"]["meli_question_id"])
    reply = chatwoot.agent_reply(conv["id"], "Temos **sim**, pode comprar!")
    wait_until(lambda: meli.answers_posted, 20, what="the answer on mercado livre")
    wait_until(lambda: chatwoot.conversations[conv["id"]]["status"] == "resolved", 20, what="resolved")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered mark")
    assert meli.answers_posted == [(qid, "Temos sim, pode comprar!")]
    assert meli.questions[qid]["status"] == "ANSWERED"
    # The bridge's own messages echo back as webhooks and are ignored: still one answer.
    chatwoot.wait_webhooks_idle(10)
    assert len(meli.answers_posted) == 1
    # The question left the unanswered list: the poller must not mirror our own answer again.
    wait_until(lambda: meli.count("GET", f"/questions/{qid}") >= 1, 20, what="the follow-up fetch")
    texts = [m["content"] for m in chatwoot.messages_in(conv["id"])]
    assert texts.count("Temos **sim**, pode comprar!") == 1
    assert not [m for m in chatwoot.messages_in(conv["id"]) if (m.get("source_id") or "").startswith("meli:answer")]


def test_private_notes_incoming_and_echoes_send_nothing(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    seed_backlog(meli, questions=1, buyers=1, items=1)
    bridge.listener()
    assert bridge.once().returncode == 0
    conv = next(iter(chatwoot.conversations.values()))
    chatwoot.agent_reply(conv["id"], "nota interna", private=True)
    chatwoot.contact_message(conv["id"], "mensagem do contato")
    chatwoot.wait_webhooks_idle(10)
    assert bridge.once().returncode == 0
    assert meli.answers_posted == []
    # Every webhook (the bridge's echo included) was answered 200.
    assert chatwoot.webhook_deliveries and all(d["status"] == 200 for d in chatwoot.webhook_deliveries)


def test_an_answer_given_on_the_meli_site_is_mirrored_and_resolved(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = seed_backlog(meli, questions=1, buyers=1, items=1)[0]["id"]
    assert bridge.once().returncode == 0
    meli.answer_elsewhere(qid, "Respondido pelo app")
    assert bridge.once().returncode == 0
    conv = next(iter(chatwoot.conversations.values()))
    mirrored = [m for m in chatwoot.messages_in(conv["id"]) if m["source_id"] == f"meli:answer:{qid}"]
    assert len(mirrored) == 1 and mirrored[0]["content"] == "Respondido pelo app" and mirrored[0]["message_type"] == 1
    assert conv["status"] == "resolved"
    calls = meli.count("GET", f"/questions/{qid}")
    assert bridge.once().returncode == 0
    assert meli.count("GET", f"/questions/{qid}") == calls  # an idle cycle fetches nothing more


def test_a_deleted_question_gets_a_private_note(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    qid = seed_backlog(meli, questions=1, buyers=1, items=1)[0]["id"]
    assert bridge.once().returncode == 0
    meli.set_question_status(qid, "DELETED")
    assert bridge.once().returncode == 0
    conv = next(iter(chatwoot.conversations.values()))
    notes = [m for m in chatwoot.messages_in(conv["id"]) if m["private"]]
    assert len(notes) == 1 and "apagada" in notes[0]["content"]
    assert conv["status"] == "resolved"


def test_meli_failing_three_times_still_delivers_exactly_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    seed_backlog(meli, questions=1, buyers=1, items=1)
    conv_id = run_until_question_in_chatwoot(bridge)
    meli.fail_next("POST", "/answers", 500, times=3)
    reply = chatwoot.agent_reply(conv_id, "Sim!")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 40, what="delivered")
    assert len(meli.answers_posted) == 1
    assert meli.count("POST", "/answers") == 4


def test_a_2500_character_reply_fails_with_a_note(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    seed_backlog(meli, questions=1, buyers=1, items=1)
    conv_id = run_until_question_in_chatwoot(bridge)
    reply = chatwoot.agent_reply(conv_id, "a" * 2500)
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "failed", 20, what="failed mark")
    assert "2500" in chatwoot.message(reply["id"])["external_error"]
    wait_until(lambda: [m for m in chatwoot.messages_in(conv_id) if m["private"]], 20, what="the note")
    assert meli.answers_posted == []
