"""Claims end to end: the real poller and listener against the fakes."""

import pytest
import requests

from bridge.sync.sales import parse_date
from bridge.text import local_time
from tests.e2e import Bridge, wait_until

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n% nota fiscal\n"
CLAIM = 5000001
ORDER = 2000001
BUYER = 7001


@pytest.fixture
def claims_bridge(tmp_path, fakes):
    fakes.claims_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Reclamações")
    installation = Bridge(tmp_path, fakes, CHATWOOT_CLAIMS_INBOX_ID=str(fakes.claims_inbox))
    yield installation
    installation.close()


def open_claim(meli, claim_id=CLAIM, order_id=ORDER, buyer_id=BUYER, due_in_hours=72.0):
    meli.add_user(buyer_id, f"COMPRADOR{buyer_id}")
    meli.add_order(order_id, buyer_id, f"COMPRADOR{buyer_id}", items=[("MLB100", "Caneca azul", 2, 25.0)])
    return meli.add_claim(claim_id, order_id, due_in_hours=due_in_hours)


def claim_conversations(bridge):
    chatwoot = bridge.fakes.chatwoot.state
    return [c for c in chatwoot.conversations.values() if c["inbox_id"] == bridge.fakes.claims_inbox]


def contents(bridge, conversation_id, private=None):
    return [m["content"] for m in bridge.fakes.chatwoot.state.messages_in(conversation_id)
            if private is None or m["private"] == private]


def test_an_opened_claim_becomes_one_conversation_with_its_attributes_label_and_summary(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.add_claim_message(CLAIM, "complainant", "A caneca chegou quebrada",
                           attachments=[("foto.png", PNG, "image/png")])
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    attrs = conv["custom_attributes"]
    assert attrs["meli_claim_id"] == str(CLAIM) and attrs["meli_order_id"] == str(ORDER)
    assert attrs["meli_pack_id"] == str(ORDER) and attrs["meli_claim_stage"] == "claim"
    assert attrs["meli_claim_next_action"] == "send_message_to_complainant" and attrs["meli_claim_due_date"]
    assert attrs["meli_claim_affects_reputation"] == "not_affected"
    assert attrs["meli_claim_reason"] == "O comprador se arrependeu da compra (PDD9939)"
    assert attrs["meli_claim_due_date"].endswith("(horário de Brasília)")
    assert conv["labels"] == ["reclamacao"]
    assert chatwoot.contacts[conv["meta"]["sender"]["id"]]["identifier"] == f"meli:buyer:{BUYER}"
    messages = chatwoot.messages_in(conv["id"])
    assert "2 x Caneca azul" in messages[0]["content"] and f"vendas/{ORDER}/detalhe" in messages[0]["content"]
    # The bridge's own summary is a private note, never a message from the buyer.
    assert messages[0]["private"] and messages[0]["message_type"] == 1
    assert "Motivo: O comprador se arrependeu da compra (PDD9939)" in messages[0]["content"]
    assert messages[1]["content"] == "A caneca chegou quebrada" and messages[1]["message_type"] == 0
    assert len(messages[1]["attachments"]) == 1
    assert all(m["source_id"].startswith("meli:") for m in messages)
    # Nothing changed: one search call, no Chatwoot call.
    meli_before, cw_before = meli.count(None, "/post-purchase"), len(chatwoot.calls)
    assert bridge.once().returncode == 0
    assert meli.count(None, "/post-purchase") - meli_before == 1
    assert len(chatwoot.calls) == cw_before
    assert len(chatwoot.messages_in(conv["id"])) == 2


def test_a_claim_the_seller_opened_on_its_own_purchase_never_shows_as_a_claim_against_the_store(claims_bridge):
    bridge = claims_bridge
    meli = bridge.fakes.meli.state
    open_claim(meli)
    meli.add_purchase_claim(5000002, 3000001)
    meli.add_claim_message(5000002, "complainant", "Meu pedido não chegou")
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    assert conv["custom_attributes"]["meli_claim_id"] == str(CLAIM)
    assert not any("Meu pedido não chegou" in (m["content"] or "")
                   for m in bridge.fakes.chatwoot.state.messages.values())


def test_the_sale_conversation_gets_a_note_pointing_to_the_claim(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.add_buyer_message(ORDER, "Oi, a caneca veio quebrada")
    assert bridge.once().returncode == 0
    [sale] = [c for c in chatwoot.conversations.values() if c["inbox_id"] == bridge.fakes.messages_inbox]
    [claim_conv] = claim_conversations(bridge)
    notes = contents(bridge, sale["id"], private=True)
    assert len(notes) == 1 and f"/conversations/{claim_conv['id']}" in notes[0]
    assert bridge.once().returncode == 0
    assert len(contents(bridge, sale["id"], private=True)) == 1


def test_a_sale_conversation_made_after_the_claim_still_gets_the_note(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    [claim_conv] = claim_conversations(bridge)
    meli.add_buyer_message(ORDER, "Alguém pode me responder?")
    assert bridge.once().returncode == 0
    [sale] = [c for c in chatwoot.conversations.values() if c["inbox_id"] == bridge.fakes.messages_inbox]
    notes = contents(bridge, sale["id"], private=True)
    assert len(notes) == 1 and f"/conversations/{claim_conv['id']}" in notes[0]
    calls = len(chatwoot.calls)
    assert bridge.once().returncode == 0
    assert len(contents(bridge, sale["id"], private=True)) == 1 and len(chatwoot.calls) == calls


def test_a_buyer_message_then_an_agent_reply_reaches_the_complainant_once(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    bridge.listener()
    bridge.poller()
    conv = wait_until(lambda: claim_conversations(bridge), 30, what="the claim conversation")[0]
    meli.add_claim_message(CLAIM, "complainant", "Quero meu dinheiro de volta")
    wait_until(lambda: "Quero meu dinheiro de volta" in contents(bridge, conv["id"]), 20, what="buyer message")
    reply = chatwoot.agent_reply(conv["id"], "Sinto muito! Vamos resolver.")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    assert meli.claim_sent == [{"receiver_role": "complainant", "message": "Sinto muito! Vamos resolver.",
                                "claim_id": CLAIM}]
    # The sent message comes back in the claim: it is the agent's own message, not mirrored again.
    meli.add_claim_message(CLAIM, "complainant", "Obrigado")
    wait_until(lambda: "Obrigado" in contents(bridge, conv["id"]), 20, what="second buyer message")
    texts = contents(bridge, conv["id"], private=False)
    assert texts.count("Sinto muito! Vamos resolver.") == 1
    assert texts.count("Quero meu dinheiro de volta") == 1 and len(meli.claim_sent) == 1


def test_in_dispute_the_mediator_is_shown_and_a_reply_to_the_mediator_reaches_it(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    meli.open_dispute(CLAIM)
    meli.add_claim_message(CLAIM, "mediator", "Vendedor, envie a nota fiscal")
    assert bridge.once().returncode == 0
    messages = chatwoot.messages_in(conv["id"])
    mediator = [m for m in messages if "nota fiscal" in (m["content"] or "")]
    assert len(mediator) == 1 and mediator[0]["content"].startswith("Mediação do Mercado Livre:")
    assert mediator[0]["message_type"] == 0
    assert any(m["private"] and "mediação" in m["content"] for m in messages)
    assert chatwoot.conversations[conv["id"]]["custom_attributes"]["meli_claim_stage"] == "dispute"
    # The agent sets the sidebar attribute; the bridge keeps it when it updates its own attributes.
    chatwoot.conversations[conv["id"]]["custom_attributes"]["meli_claim_reply_to"] = "mediador"
    bridge.listener()
    bridge.poller()
    reply = chatwoot.agent_reply(conv["id"], "Segue a nota fiscal")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    assert meli.claim_sent[-1]["receiver_role"] == "mediator"
    meli.set_claim_due(CLAIM, 30)
    due = next(a["due_date"] for a in meli.claims[CLAIM]["players"][1]["available_actions"])
    shown = local_time(parse_date(due), "America/Sao_Paulo")
    wait_until(lambda: chatwoot.conversations[conv["id"]]["custom_attributes"].get("meli_claim_due_date") == shown,
               20, what="attributes updated")
    assert chatwoot.conversations[conv["id"]]["custom_attributes"]["meli_claim_reply_to"] == "mediador"


def test_a_reply_to_the_buyer_during_dispute_goes_to_the_mediator_the_only_receiver_allowed(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.open_dispute(CLAIM)
    bridge.listener()
    bridge.poller()
    conv = wait_until(lambda: claim_conversations(bridge), 30, what="the claim conversation")[0]
    reply = chatwoot.agent_reply(conv["id"], "Estamos verificando")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    assert meli.claim_sent[-1]["receiver_role"] == "mediator"
    # Not a plain "delivered": the agent learns who got it.
    wait_until(lambda: any(n.startswith("Resposta entregue ao mediador do Mercado Livre, não ao comprador")
                           for n in contents(bridge, conv["id"], private=True)), 20, what="the receiver's note")


def test_a_near_deadline_gives_one_note_and_urgent_priority(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli, due_in_hours=72)
    meli.add_claim_message(CLAIM, "complainant", "Alô?")
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    assert not [n for n in contents(bridge, conv["id"], private=True) if "Prazo" in n]
    meli.set_claim_due(CLAIM, 10)
    assert bridge.once().returncode == 0
    assert bridge.once().returncode == 0
    notes = [n for n in contents(bridge, conv["id"], private=True) if n.startswith("Prazo perto do fim")]
    assert len(notes) == 1
    assert chatwoot.conversations[conv["id"]]["priority"] == "urgent"


def test_a_closed_claim_resolves_the_conversation_and_a_reply_after_it_fails_with_a_note(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    meli.close_claim(CLAIM, reason="payment_refunded", benefited="complainant")
    assert bridge.once().returncode == 0
    assert chatwoot.conversations[conv["id"]]["status"] == "resolved"
    closed = [n for n in contents(bridge, conv["id"], private=True) if "encerrada" in n]
    assert len(closed) == 1 and "payment refunded" in closed[0] and "o comprador" in closed[0]
    assert chatwoot.conversations[conv["id"]]["custom_attributes"]["meli_claim_status"] == "closed"
    assert bridge.once().returncode == 0
    assert chatwoot.conversations[conv["id"]]["status"] == "resolved"
    assert len([n for n in contents(bridge, conv["id"], private=True) if "encerrada" in n]) == 1
    bridge.listener()
    bridge.poller()
    reply = chatwoot.agent_reply(conv["id"], "Ainda posso ajudar?")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "failed", 20, what="failed mark")
    wait_until(lambda: any("reclamação já foi encerrada" in n for n in contents(bridge, conv["id"], private=True)),
               20, what="failure note")
    assert meli.claim_sent == []


def test_a_reply_to_the_mediator_before_the_dispute_fails_and_says_what_to_do(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    chatwoot.conversations[conv["id"]]["custom_attributes"]["meli_claim_reply_to"] = "mediador"
    bridge.listener()
    bridge.poller()
    reply = chatwoot.agent_reply(conv["id"], "Para a mediação")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "failed", 20, what="failed mark")
    wait_until(lambda: any("meli_claim_reply_to" in n for n in contents(bridge, conv["id"], private=True)),
               20, what="failure note")
    assert meli.claim_sent == []


@pytest.mark.parametrize("window", ["claim_message_created", "claim_event_shown", "conversation_created"])
def test_a_kill_in_a_claim_sync_window_leaves_no_duplicates(claims_bridge, window):
    bridge = claims_bridge
    meli = bridge.fakes.meli.state
    open_claim(meli)
    meli.add_claim_message(CLAIM, "complainant", "Primeira")
    meli.add_claim_message(CLAIM, "complainant", "Segunda")
    bridge.env["BRIDGE_CRASH_AT"] = window
    assert bridge.once().returncode != 0  # killed in the window
    del bridge.env["BRIDGE_CRASH_AT"]
    assert bridge.once().returncode == 0
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    texts = contents(bridge, conv["id"])
    assert texts.count("Primeira") == 1 and texts.count("Segunda") == 1
    assert sum("Caneca azul" in (t or "") for t in texts) == 1


def test_a_kill_after_sending_a_claim_reply_sends_it_once(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    bridge.env["BRIDGE_HTTP_READ_TIMEOUT"] = "2"  # the resend check waits 2 x this for the send to settle
    bridge.env["BRIDGE_CRASH_AT"] = "claim_message_sent"
    bridge.listener()
    poller = bridge.poller()
    reply = chatwoot.agent_reply(conv["id"], "Já enviamos outra caneca")
    poller.wait(timeout=30)
    assert len(meli.claim_sent) == 1
    del bridge.env["BRIDGE_CRASH_AT"]
    bridge.poller()
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 30, what="delivered")
    assert bridge.once().returncode == 0
    assert len(meli.claim_sent) == 1
    assert contents(bridge, conv["id"], private=False).count("Já enviamos outra caneca") == 1


def test_a_claims_notification_brings_the_claim_in(claims_bridge):
    bridge = claims_bridge
    meli = bridge.fakes.meli.state
    open_claim(meli)
    bridge.listener()
    body = meli.notification("claims", f"/post-purchase/v1/claims/{CLAIM}")
    assert requests.post(f"{bridge.url}/notifications", json=body, timeout=5).status_code == 200
    bridge.poller()
    wait_until(lambda: claim_conversations(bridge), 30, what="the claim conversation")


def test_without_a_claims_inbox_claims_cost_nothing(bridge):
    meli = bridge.fakes.meli.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    assert meli.count(None, "/post-purchase") == 0


def test_a_reply_moderated_after_acceptance_is_marked_failed_with_a_note(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    bridge.listener()
    bridge.poller()
    conv = wait_until(lambda: claim_conversations(bridge), 30, what="the claim conversation")[0]
    reply = chatwoot.agent_reply(conv["id"], "Me chama no zap 11 99999-0000")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    meli.moderate_claim_message(CLAIM, len(meli.claim_messages[CLAIM]) - 1, reason="PERSONAL_DATA")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "failed", 20, what="failed mark")
    assert "dados pessoais" in chatwoot.message(reply["id"])["external_error"]
    wait_until(lambda: any("bloqueou sua mensagem" in n for n in contents(bridge, conv["id"], private=True)), 20,
               what="moderation note")
    meli.add_claim_message(CLAIM, "complainant", "Não recebi nada")
    wait_until(lambda: "Não recebi nada" in contents(bridge, conv["id"]), 20, what="next buyer message")
    notes = [n for n in contents(bridge, conv["id"], private=True) if "bloqueou sua mensagem" in n]
    assert len(notes) == 1
    assert contents(bridge, conv["id"]).count("Me chama no zap 11 99999-0000") == 1


def test_a_deleted_claim_conversation_continues_in_a_new_one(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.add_claim_message(CLAIM, "complainant", "Primeira")
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    chatwoot.delete_conversation(conv["id"])
    meli.add_claim_message(CLAIM, "complainant", "Depois de apagada")
    assert bridge.once().returncode == 0
    [new] = claim_conversations(bridge)
    assert new["id"] != conv["id"] and new["custom_attributes"]["meli_claim_id"] == str(CLAIM)
    assert contents(bridge, new["id"], private=False) == ["Depois de apagada"]
    assert bridge.once().returncode == 0
    assert contents(bridge, new["id"], private=False) == ["Depois de apagada"]


def test_a_claim_continued_in_a_new_conversation_tells_the_agent_why_its_history_is_not_there(claims_bridge):
    # The sale's twin already said so; the claim's own copy started the new one without a word.
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.add_claim_message(CLAIM, "complainant", "Primeira")
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    chatwoot.delete_conversation(conv["id"])
    meli.add_claim_message(CLAIM, "complainant", "Depois de apagada")
    assert bridge.once().returncode == 0
    assert bridge.once().returncode == 0
    [new] = claim_conversations(bridge)
    [note] = [n for n in contents(bridge, new["id"], private=True) if "foi apagada no Chatwoot" in n]
    assert note.startswith("A conversa anterior desta reclamação") and f"reclamacoes/{CLAIM}/detalhe" in note


def test_a_message_the_seller_wrote_on_the_site_is_mirrored_as_outgoing_once(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.add_claim_message(CLAIM, "respondent", "Respondi pelo site")
    assert bridge.once().returncode == 0
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    mirrored = [m for m in chatwoot.messages_in(conv["id"]) if "Respondi pelo site" in (m["content"] or "")]
    assert len(mirrored) == 1 and mirrored[0]["message_type"] == 1 and not mirrored[0]["private"]
    assert "fora do Chatwoot" in mirrored[0]["content"]


def test_a_reply_with_a_pdf_goes_as_a_claim_attachment_uploaded_once(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    bridge.listener()
    bridge.poller()
    conv = wait_until(lambda: claim_conversations(bridge), 30, what="the claim conversation")[0]
    reply = chatwoot.agent_reply(conv["id"], "Segue a nota fiscal", attachments=[("nota.pdf", PDF, "application/pdf")])
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    assert len(meli.claim_uploads) == 1 and meli.claim_uploads[0]["original_filename"] == "nota.pdf"
    assert meli.claim_sent[-1]["attachments"] == [meli.claim_uploads[0]["filename"]]
    # The message comes back with its file; it is the agent's own, never mirrored.
    wait_until(lambda: bridge.once().returncode == 0, 30, what="a clean --once")
    assert contents(bridge, conv["id"], private=False).count("Segue a nota fiscal") == 1


def test_a_new_message_reopens_a_conversation_an_agent_resolved(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    assert bridge.once().returncode == 0
    [conv] = claim_conversations(bridge)
    chatwoot.resolve_conversation(conv["id"])
    meli.add_claim_message(CLAIM, "complainant", "Ainda estou esperando")
    assert bridge.once().returncode == 0
    assert chatwoot.conversations[conv["id"]]["status"] == "open"
    assert contents(bridge, conv["id"]).count("Ainda estou esperando") == 1


def test_a_kill_while_reporting_a_moderated_claim_reply_reports_it_once(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    bridge.listener()
    poller = bridge.poller()
    conv = wait_until(lambda: claim_conversations(bridge), 30, what="the claim conversation")[0]
    reply = chatwoot.agent_reply(conv["id"], "Meu email é loja@example.com")
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 20, what="delivered")
    # The reply comes back in the claim and is adopted before the poller stops.
    wait_until(lambda: bridge.once().returncode == 0, 30, what="a clean --once")
    assert bridge.stop(poller) == 0
    meli.moderate_claim_message(CLAIM, len(meli.claim_messages[CLAIM]) - 1, reason="PERSONAL_DATA")
    bridge.env["BRIDGE_CRASH_AT"] = "claim_moderation_reported"
    assert bridge.once().returncode != 0
    del bridge.env["BRIDGE_CRASH_AT"]
    assert bridge.once().returncode == 0
    assert bridge.once().returncode == 0
    assert chatwoot.message(reply["id"])["status"] == "failed"
    assert len([n for n in contents(bridge, conv["id"], private=True) if "bloqueou sua mensagem" in n]) == 1


def test_a_claim_conversation_deleted_before_the_claim_was_fully_shown_continues_in_a_new_one(claims_bridge):
    """Killed after the conversation was made but before the claim was recorded as shown; an agent
    deletes that conversation meanwhile. The next sync must not fail on it at every poll."""
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    open_claim(meli)
    meli.add_claim_message(CLAIM, "complainant", "Primeira")
    bridge.env["BRIDGE_CRASH_AT"] = "claim_event_shown"
    assert bridge.once().returncode != 0
    del bridge.env["BRIDGE_CRASH_AT"]
    [conv] = claim_conversations(bridge)
    chatwoot.delete_conversation(conv["id"])
    assert bridge.once().returncode == 0
    [new] = claim_conversations(bridge)
    assert new["id"] != conv["id"] and new["custom_attributes"]["meli_claim_id"] == str(CLAIM)
    assert contents(bridge, new["id"]).count("Primeira") == 1
    assert bridge.once().returncode == 0
    assert contents(bridge, new["id"]).count("Primeira") == 1
