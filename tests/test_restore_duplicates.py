"""A restore puts back an older state while Chatwoot and Mercado Livre keep what happened since:
what the bridge brought into Chatwoot, and the replies it delivered, after the backup are found,
never made or sent a second time."""

from db_manager import Database
from tests.e2e import wait_until


def sale(meli, order_id=2000001, buyer_id=7001):
    meli.add_user(buyer_id, f"COMPRADOR{buyer_id}")
    meli.add_order(order_id, buyer_id, f"COMPRADOR{buyer_id}", items=[("MLB100", "Caneca azul", 2, 25.0)])
    return str(order_id)


def restore(bridge, copy):
    restored = bridge.cli("restore", copy, "--stopped")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    return restored.stdout


def test_a_question_and_a_buyer_message_synced_after_the_backup_are_not_duplicated_by_a_restore(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_item("MLB100", "Caneca azul")
    meli.add_buyer_message(pack, "Comprei a caneca")
    assert bridge.once().returncode == 0
    copy = str(bridge.tmp / "copy.db")
    assert bridge.cli("backup", copy).returncode == 0

    # After the backup: a new question, and a new buyer message in the sale, both brought in.
    meli.add_question(item_id="MLB100", buyer_id=7001, text="Tem na cor verde?")
    meli.add_buyer_message(pack, "Quando chega?")
    assert bridge.once().returncode == 0
    conversations = dict(chatwoot.conversations)
    assert len(conversations) == 2
    before = {cid: [m["source_id"] for m in chatwoot.messages_in(cid)] for cid in conversations}

    restore(bridge, copy)
    # The buyer writes again: the thread is read, with the message the restored state never saw.
    meli.add_buyer_message(pack, "Alô?")
    assert bridge.once().returncode == 0
    assert bridge.once().returncode == 0
    sale_conversation = next(cid for cid, c in conversations.items() if c["inbox_id"] == bridge.fakes.messages_inbox)
    before[sale_conversation].append(chatwoot.messages_in(sale_conversation)[-1]["source_id"])
    assert {cid: [m["source_id"] for m in chatwoot.messages_in(cid)] for cid in conversations} == before
    assert dict(chatwoot.conversations).keys() == conversations.keys()


def test_a_reply_delivered_after_the_backup_is_not_sent_again_after_a_restore(bridge):
    bridge.env["BRIDGE_HTTP_READ_TIMEOUT"] = "1"  # a part in doubt is looked for once 2 x this has passed
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Quando chega?")
    assert bridge.once().returncode == 0
    conversation = next(iter(chatwoot.conversations))
    listener = bridge.listener()
    reply = chatwoot.agent_reply(conversation, "Chega amanhã!")
    database = bridge.env["DATABASE_PATH"]
    db = Database(database).open()
    try:
        wait_until(lambda: db.replies.by_message(reply["id"]) is not None, 20, what="the reply accepted")
    finally:
        db.close()
    copy = str(bridge.tmp / "copy.db")
    assert bridge.cli("backup", copy).returncode == 0  # the reply in it is still pending

    assert bridge.once().returncode == 0
    assert [m["text"] for m in meli.sent_messages] == ["Chega amanhã!"]
    bridge.stop(listener)

    output = restore(bridge, copy)
    db = Database(database).open()
    try:
        def delivered():
            assert bridge.once().returncode == 0
            return db.replies.by_message(reply["id"])["status"] == "delivered"
        wait_until(delivered, 30, what="the restored reply found delivered")
    finally:
        db.close()
    assert [m["text"] for m in meli.sent_messages] == ["Chega amanhã!"]
    assert "1 reply part not known as sent is looked for on Mercado Livre before sending" in output


def test_a_new_row_is_looked_for_only_within_the_doubt_after_a_restore(db):
    from bridge.store.links import RESTORE_DOUBT

    assert db.links.record_intent("question", "1", 1000.0)[1] is True  # no restore: the normal path, no look-up
    db.links.mark_restored(2000.0)
    assert db.links.record_intent("question", "2", 2000.0 + RESTORE_DOUBT - 1)[1] is False
    assert db.links.record_intent("question", "3", 2000.0 + RESTORE_DOUBT + 1)[1] is True


def test_a_question_answered_from_chatwoot_after_the_backup_is_not_shown_answered_twice(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    meli.add_user(7001, "COMPRADOR7001")
    meli.add_item("MLB100", "Caneca azul")
    meli.add_question(item_id="MLB100", buyer_id=7001, text="Tem na cor verde?")
    assert bridge.once().returncode == 0
    conversation = next(iter(chatwoot.conversations))
    copy = str(bridge.tmp / "copy.db")
    assert bridge.cli("backup", copy).returncode == 0

    # After the backup: the agent answers, the bridge delivers it (the copy knows neither).
    listener = bridge.listener()
    reply = chatwoot.agent_reply(conversation, "Tem **sim**!")
    database = bridge.env["DATABASE_PATH"]
    db = Database(database).open()
    try:
        wait_until(lambda: db.replies.by_message(reply["id"]) is not None, 20, what="the reply accepted")
    finally:
        db.close()
    bridge.stop(listener)
    assert bridge.once().returncode == 0
    shown = [m["id"] for m in chatwoot.messages_in(conversation)]

    restore(bridge, copy)
    assert bridge.once().returncode == 0
    assert [m["id"] for m in chatwoot.messages_in(conversation)] == shown
    assert chatwoot.conversations[conversation]["status"] == "resolved"


def test_an_agents_answer_is_told_by_its_text_as_sent_never_by_a_note_or_a_mirrored_message():
    from bridge.sync.questions import is_agents_answer

    agent = {"message_type": 1, "private": False, "content": "Tem  **sim**!", "source_id": None}
    assert is_agents_answer(agent, "Tem sim!")
    assert not is_agents_answer(dict(agent, private=True), "Tem sim!")
    assert not is_agents_answer(dict(agent, source_id="meli:answer:1"), "Tem sim!")
    assert not is_agents_answer(dict(agent, message_type=0), "Tem sim!")
    assert not is_agents_answer(agent, "Tem não!")
