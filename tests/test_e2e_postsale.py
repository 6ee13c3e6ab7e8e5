"""Post-sale threads end to end: the real poller and listener against the fakes."""

from db_manager import Database
from mercado_livre_api import MELI_AGENT_ID
from tests.e2e import wait_until

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n% nota fiscal\n"


def sale(meli, order_id=2000001, buyer_id=7001, pack_id=None):
    meli.add_user(buyer_id, f"COMPRADOR{buyer_id}")
    meli.add_order(order_id, buyer_id, f"COMPRADOR{buyer_id}", items=[("MLB100", "Caneca azul", 2, 25.0)],
                   pack_id=pack_id)
    return str(pack_id or order_id)


def sales_conversations(bridge):
    chatwoot = bridge.fakes.chatwoot.state
    return [c for c in chatwoot.conversations.values() if c["inbox_id"] == bridge.fakes.messages_inbox]


def run_until_sale_in_chatwoot(bridge) -> dict:
    """Start the listener and the poller; return the sale's conversation once it exists."""
    bridge.listener()
    bridge.poller()
    wait_until(lambda: sales_conversations(bridge), 30, what="the sale conversation")
    return sales_conversations(bridge)[0]


def test_three_buyer_messages_arrive_in_order_with_the_file_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Olá, comprei a caneca")
    meli.add_buyer_message(pack, "Segue a foto do defeito", attachments=[("defeito.png", PNG, "image/png")])
    meli.add_buyer_message(pack, "Podem trocar?")
    assert bridge.once().returncode == 0
    convs = sales_conversations(bridge)
    assert len(convs) == 1
    conv = convs[0]
    attrs = conv["custom_attributes"]
    assert attrs["meli_pack_id"] == pack and attrs["meli_order_ids"] == "2000001"
    assert "Caneca azul" in attrs["meli_item_titles"] and attrs["meli_total_amount"] == 50.0
    contact = chatwoot.contacts[conv["meta"]["sender"]["id"]]
    assert contact["identifier"] == "meli:buyer:7001"
    messages = chatwoot.messages_in(conv["id"])
    assert [m["content"] for m in messages] == ["Olá, comprei a caneca", "Segue a foto do defeito", "Podem trocar?"]
    assert all(m["message_type"] == 0 and m["source_id"].startswith("meli:message:") for m in messages)
    assert len(messages[1]["attachments"]) == 1 and messages[1]["attachments"][0]["file_size"] == len(PNG)
    # Read with mark_as_read=false; marked read only after the three are stored.
    assert meli.mark_read_events and all(t >= max(m["t_created"] for m in messages)
                                         for _pack, _ids, t in meli.mark_read_events)
    assert bridge.once().returncode == 0
    assert len(chatwoot.messages_in(conv["id"])) == 3


def test_an_idle_cycle_costs_one_meli_call_and_no_chatwoot_call(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    assert bridge.once().returncode == 0
    meli_before, cw_before = meli.count("GET", "/messages"), len(chatwoot.calls)
    assert bridge.once().returncode == 0
    assert meli.count("GET", "/messages") - meli_before == 1
    assert len(chatwoot.calls) == cw_before


def test_a_migrated_thread_is_the_real_buyers_and_replies_go_to_the_agent(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli, buyer_id=7002)
    meli.add_buyer_message(pack, "Quando chega?", migrated=True)
    conv = run_until_sale_in_chatwoot(bridge)
    assert chatwoot.contacts[conv["meta"]["sender"]["id"]]["identifier"] == "meli:buyer:7002"
    reply = chatwoot.agent_reply(conv["id"], "Chega amanhã!")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    sent = meli.sent_messages[-1]
    assert sent["to"]["user_id"] == MELI_AGENT_ID and sent["text"] == "Chega amanhã!"


def test_a_reply_with_a_pdf_uploads_once_and_sends_its_id(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Manda a nota?")
    conv = run_until_sale_in_chatwoot(bridge)
    reply = chatwoot.agent_reply(conv["id"], "Segue a nota", attachments=[("nota.pdf", PDF, "application/pdf")])
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    assert len(meli.uploads) == 1
    sent = meli.sent_messages[-1]
    assert sent["text"] == "Segue a nota" and sent["attachments"] == [meli.uploads[0]["id"]]


def test_a_900_character_reply_arrives_as_3_parts_in_order(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Dúvida")
    conv = run_until_sale_in_chatwoot(bridge)
    text = ("Seu pedido foi enviado hoje pela transportadora e chega em breve. " * 14)[:900]
    reply = chatwoot.agent_reply(conv["id"], text)
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    parts = [m["text"] for m in meli.sent_messages]
    assert len(parts) == 3 and all(len(p) <= 350 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_a_blocked_thread_and_a_foreign_file_fail_with_notes(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    conv = run_until_sale_in_chatwoot(bridge)
    meli.block_thread(pack)
    blocked = chatwoot.agent_reply(conv["id"], "Olá")
    wait_until(lambda: chatwoot.message(blocked["id"])["status"] == "failed", 20, what="failed")
    assert "bloqueada" in chatwoot.message(blocked["id"])["external_error"]
    emoji = chatwoot.agent_reply(conv["id"], "Obrigado 😀")
    wait_until(lambda: chatwoot.message(emoji["id"])["status"] == "failed", 20, what="failed")
    def notes():
        return [m["content"] for m in chatwoot.messages_in(conv["id"]) if m["private"]]
    wait_until(lambda: len(notes()) == 2, 20, what="both notes")
    assert any("mediação" in n for n in notes()) and any("U+1F600" in n for n in notes())
    assert meli.sent_messages == []


def test_a_429_with_retry_after_delays_but_delivers(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    conv = run_until_sale_in_chatwoot(bridge)
    meli.fail_next("POST", f"/messages/packs/{pack}", 429, times=1, headers={"Retry-After": "1"})
    reply = chatwoot.agent_reply(conv["id"], "Olá!")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 30, what="delivered")
    assert [m["text"] for m in meli.sent_messages] == ["Olá!"]


def test_a_new_buyer_message_reopens_a_resolved_conversation(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    assert bridge.once().returncode == 0
    conv = sales_conversations(bridge)[0]
    conv["status"] = "resolved"
    meli.add_buyer_message(pack, "Mais uma dúvida")
    assert bridge.once().returncode == 0
    assert chatwoot.conversations[conv["id"]]["status"] == "open"
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])][-1] == "Mais uma dúvida"


def test_a_reply_moderated_after_acceptance_is_shown_failed_to_the_agent(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Qual seu telefone?")
    conv = run_until_sale_in_chatwoot(bridge)
    reply = chatwoot.agent_reply(conv["id"], "Me liga no 11 99999-9999")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    meli.moderate(meli.sent_messages[-1]["message_id"], "PERSONAL_DATA")
    # Three minutes later, the poller reads the thread once more.
    db = Database(bridge.env["DATABASE_PATH"])
    delivered = db.replies.by_message(reply["id"])
    with db.write() as conn:  # delivered three minutes earlier
        conn.execute("UPDATE replies SET finished_at = finished_at - 180 WHERE id = ?", (delivered["id"],))
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "failed", 20, what="failed mark")
    assert "moderação" in chatwoot.message(reply["id"])["external_error"]
    wait_until(lambda: [m for m in chatwoot.messages_in(conv["id"]) if m["private"]], 20, what="note")
    note = [m for m in chatwoot.messages_in(conv["id"]) if m["private"]][0]["content"]
    assert "dados pessoais" in note
    # The moderated reply is not mirrored back as a second outgoing message.
    outgoing = [m for m in chatwoot.messages_in(conv["id"]) if m["message_type"] == 1 and not m["private"]]
    assert len(outgoing) == 1


def test_a_buyer_file_over_chatwoots_limit_arrives_as_its_name(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    message = meli.add_buyer_message(pack, "Vídeo do defeito", attachments=[("video.png", PNG, "image/png")])
    message["message_attachments"][0]["size"] = 60 * 1024 * 1024  # as Mercado Livre would describe a big file
    assert bridge.once().returncode == 0
    [stored] = chatwoot.messages_in(sales_conversations(bridge)[0]["id"])
    assert not stored.get("attachments")
    assert "Vídeo do defeito" in stored["content"] and "video.png" in stored["content"]
    assert meli.count("GET", "/messages/attachments") == 0


def test_a_buyer_message_arriving_while_the_thread_is_marked_read_still_reaches_chatwoot(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    written = []

    def buyer_writes_again(key):
        # Between the bridge's read and its mark-read: the mark-read page will hold this one too.
        if not written:
            written.append(meli.add_buyer_message(key, "Ainda aí?"))

    meli.before_mark_read = buyer_writes_again
    assert bridge.once().returncode == 0
    assert written and meli.unread_results() == []
    conv = sales_conversations(bridge)[0]
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])] == ["Oi", "Ainda aí?"]
    assert bridge.once().returncode == 0
    assert len(chatwoot.messages_in(conv["id"])) == 2


def test_a_message_read_on_the_site_before_the_bridge_saw_it_reaches_chatwoot(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    assert bridge.once().returncode == 0
    conv = sales_conversations(bridge)[0]
    # The buyer writes and the seller opens the thread in the app: it never shows as unread.
    meli.add_buyer_message(pack, "Lida no app")
    meli.read_elsewhere(pack)
    assert meli.unread_results() == []
    # Fifteen minutes later the sweep reads the thread's count again.
    db = Database(bridge.env["DATABASE_PATH"])
    db.threads.mark_checked(pack, db.threads.get(pack)["checked_at"] - 3600)
    assert bridge.once().returncode == 0
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])] == ["Oi", "Lida no app"]
    assert chatwoot.messages_in(conv["id"])[-1]["message_type"] == 0


def test_a_new_sale_read_on_the_site_gets_its_conversation_but_a_seller_greeting_alone_does_not(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    read = sale(meli, order_id=2000011, buyer_id=7011)
    meli.add_buyer_message(read, "Comprei, quando envia?")
    meli.read_elsewhere(read)
    greeted = sale(meli, order_id=2000012, buyer_id=7012)
    meli.add_seller_message(greeted, "Obrigado pela compra!")
    assert bridge.once().returncode == 0
    convs = sales_conversations(bridge)
    assert [c["custom_attributes"]["meli_pack_id"] for c in convs] == [read]
    assert [m["content"] for m in chatwoot.messages_in(convs[0]["id"])] == ["Comprei, quando envia?"]


def test_a_moderation_note_that_chatwoot_refused_once_is_posted_on_the_next_poll(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Qual seu telefone?")
    conv = run_until_sale_in_chatwoot(bridge)
    reply = chatwoot.agent_reply(conv["id"], "Me liga no 11 99999-9999")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    meli.moderate(meli.sent_messages[-1]["message_id"], "PERSONAL_DATA")
    # The note is refused once: the moderation was recorded first and must not be forgotten.
    chatwoot.fail_next("POST", f"/api/v1/accounts/{chatwoot.account_id}/conversations/{conv['id']}"
                                    "/messages", 422)
    db = Database(bridge.env["DATABASE_PATH"])
    delivered = db.replies.by_message(reply["id"])
    with db.write() as conn:  # delivered three minutes earlier
        conn.execute("UPDATE replies SET finished_at = finished_at - 180 WHERE id = ?", (delivered["id"],))
    wait_until(lambda: [m for m in chatwoot.messages_in(conv["id"]) if m["private"]], 20, what="note")
    assert chatwoot.count("POST", f"/api/v1/accounts/{chatwoot.account_id}/conversations/"
                                       f"{conv['id']}/messages") >= 2
    assert chatwoot.message(reply["id"])["status"] == "failed"
    wait_until(lambda: db.links.get("moderation", meli.sent_messages[-1]["message_id"]) is not None
               and db.links.get("moderation", meli.sent_messages[-1]["message_id"])["status"] == "created", 20,
               what="moderation recorded as reported")
    assert len([m for m in chatwoot.messages_in(conv["id"]) if m["private"]]) == 1
