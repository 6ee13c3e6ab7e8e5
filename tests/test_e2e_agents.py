"""What agents do in Chatwoot (delete, merge, resolve) never stops the sync: end to end."""

from tests.test_e2e_postsale import sale, sales_conversations
from tests.test_e2e_questions import question_conversations, seed_backlog


def conversation_of_question(chatwoot, qid):
    return chatwoot.find_conversation(meli_question_id=str(qid))


def test_a_deleted_contact_comes_back_new_and_later_questions_still_sync(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    first = seed_backlog(meli, questions=1, buyers=1, items=1)[0]
    assert bridge.once().returncode == 0
    old_contact = conversation_of_question(chatwoot, first["id"])["contact_id"]
    chatwoot.delete_contact(old_contact)  # also how a person's data is erased by hand
    meli.add_user(9100, "OUTRO")
    again = meli.add_question(item_id="MLB100", buyer_id=9000, text="E em verde?")
    other = meli.add_question(item_id="MLB100", buyer_id=9100, text="Entrega rápido?")
    assert bridge.once().returncode == 0
    conv = conversation_of_question(chatwoot, again["id"])
    contact = chatwoot.contacts[conv["contact_id"]]
    assert contact["id"] != old_contact and contact["identifier"] == "meli:buyer:9000"
    assert [m["source_id"] for m in chatwoot.messages_in(conv["id"])] == [f"meli:question:{again['id']}"]
    assert conversation_of_question(chatwoot, other["id"])
    # The erased question is not brought back: still unanswered, it can be answered on Mercado Livre.
    assert conversation_of_question(chatwoot, first["id"]) is None
    meli.answer_elsewhere(first["id"], "Respondido no site")
    assert bridge.once().returncode == 0
    assert conversation_of_question(chatwoot, first["id"]) is None
    assert len(question_conversations(chatwoot, bridge.fakes.questions_inbox)) == 2
    assert len([c for c in chatwoot.contacts.values() if c["identifier"] == "meli:buyer:9000"]) == 1


def test_after_a_merge_questions_and_sales_go_to_the_surviving_contact(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    first = seed_backlog(meli, questions=1, buyers=1, items=1)[0]
    assert bridge.once().returncode == 0
    conv = conversation_of_question(chatwoot, first["id"])
    base, _ = chatwoot.create_contact({"name": "Cliente da loja física", "email": "cliente@x.test"})
    chatwoot.merge_contacts(base["id"], conv["contact_id"])
    later = meli.add_question(item_id="MLB100", buyer_id=9000, text="Tem garantia?")
    pack = sale(meli, buyer_id=9000)
    meli.add_buyer_message(pack, "Comprei!")
    assert bridge.once().returncode == 0
    assert conversation_of_question(chatwoot, later["id"])["contact_id"] == base["id"]
    [sale_conv] = sales_conversations(bridge)
    assert sale_conv["contact_id"] == base["id"]
    assert [m["content"] for m in chatwoot.messages_in(sale_conv["id"])] == ["Comprei!"]
    assert len(chatwoot.contacts) == 1
    # The merged question's conversation moved with the contact and keeps working.
    meli.answer_elsewhere(first["id"], "Sim, 1 ano")
    assert bridge.once().returncode == 0
    assert [m["content"] for m in chatwoot.messages_in(conv["id"])][-1] == "Sim, 1 ano"


def test_two_buyers_merged_into_one_contact_both_keep_syncing(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    first_a, first_b = seed_backlog(meli, questions=2, buyers=2, items=1)
    assert bridge.once().returncode == 0
    contact_a = conversation_of_question(chatwoot, first_a["id"])["contact_id"]
    chatwoot.merge_contacts(contact_a, conversation_of_question(chatwoot, first_b["id"])["contact_id"])
    later_a = meli.add_question(item_id="MLB100", buyer_id=9000, text="Tem P?")
    later_b = meli.add_question(item_id="MLB100", buyer_id=9001, text="Tem G?")
    pack = sale(meli, buyer_id=9001)
    meli.add_buyer_message(pack, "Comprei")
    assert bridge.once().returncode == 0
    assert conversation_of_question(chatwoot, later_a["id"])["contact_id"] == contact_a
    # The merged-away buyer's identifier did not survive the merge: a contact of its own again.
    contact_b = conversation_of_question(chatwoot, later_b["id"])["contact_id"]
    assert chatwoot.contacts[contact_b]["identifier"] == "meli:buyer:9001"
    [sale_conv] = sales_conversations(bridge)
    assert sale_conv["contact_id"] == contact_b
    assert [m["content"] for m in chatwoot.messages_in(sale_conv["id"])] == ["Comprei"]
    assert bridge.once().returncode == 0
    assert len(question_conversations(chatwoot, bridge.fakes.questions_inbox)) == 4


def test_a_deleted_sale_conversation_continues_in_a_new_one_without_the_old_messages(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Olá")
    meli.add_buyer_message(pack, "Meu CPF é 123")
    bridge.listener()
    assert bridge.once().returncode == 0
    [old] = sales_conversations(bridge)
    # A reply accepted just before the agent deletes the conversation still reaches the buyer.
    reply = chatwoot.agent_reply(old["id"], "Já vamos ver")
    chatwoot.wait_webhooks_idle(10)
    chatwoot.delete_conversation(old["id"])
    assert bridge.once().returncode == 0
    assert [m["text"] for m in meli.sent_messages] == ["Já vamos ver"]
    assert reply["id"] not in chatwoot.messages
    assert sales_conversations(bridge) == []  # nothing new to show: nothing recreated
    meli.add_buyer_message(pack, "Chegou quebrado")
    assert bridge.once().returncode == 0
    [new] = sales_conversations(bridge)
    assert new["id"] != old["id"] and new["custom_attributes"]["meli_pack_id"] == pack
    messages = chatwoot.messages_in(new["id"])
    assert [m["private"] for m in messages] == [True, False]
    assert "apagada" in messages[0]["content"] and "mercadolivre.com.br/vendas/" in messages[0]["content"]
    assert messages[1]["content"] == "Chegou quebrado"
    assert not any("CPF" in (m["content"] or "") for m in messages)
    # Replies from the new conversation go to the sale.
    answer = chatwoot.agent_reply(new["id"], "Vamos trocar")
    chatwoot.wait_webhooks_idle(10)
    assert bridge.once().returncode == 0
    assert [m["text"] for m in meli.sent_messages] == ["Já vamos ver", "Vamos trocar"]
    assert chatwoot.message(answer["id"])["status"] == "delivered"
    assert bridge.once().returncode == 0
    assert len(chatwoot.messages_in(new["id"])) == 3


def test_a_deleted_contact_mid_sale_then_a_new_buyer_message(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Olá")
    assert bridge.once().returncode == 0
    [old] = sales_conversations(bridge)
    chatwoot.delete_contact(old["contact_id"])
    meli.add_buyer_message(pack, "Alguém aí?")
    assert bridge.once().returncode == 0
    [new] = sales_conversations(bridge)
    assert chatwoot.contacts[new["contact_id"]]["identifier"] == "meli:buyer:7001"
    assert [m["content"] for m in chatwoot.messages_in(new["id"]) if not m["private"]] == ["Alguém aí?"]


def test_an_answer_to_a_question_whose_conversation_was_deleted_still_goes_out(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    first = seed_backlog(meli, questions=1, buyers=1, items=1)[0]
    bridge.listener()
    assert bridge.once().returncode == 0
    conv = conversation_of_question(chatwoot, first["id"])
    chatwoot.agent_reply(conv["id"], "Temos sim")
    chatwoot.wait_webhooks_idle(10)
    chatwoot.delete_conversation(conv["id"])
    assert bridge.once().returncode == 0
    assert meli.answers_posted == [(first["id"], "Temos sim")]
    assert bridge.once().returncode == 0
    assert question_conversations(chatwoot, bridge.fakes.questions_inbox) == []


def test_a_question_answered_while_the_list_is_paged_gives_no_false_note(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    questions = seed_backlog(meli, questions=53, buyers=5, items=2)
    assert bridge.once().returncode == 0
    # The question that the shift pushes from the second page onto the first (already read).
    shifted = questions[50]
    conv = conversation_of_question(chatwoot, shifted["id"])
    chatwoot.resolve_conversation(conv["id"])
    before = len(chatwoot.messages_in(conv["id"]))
    search = meli.search_questions

    def answered_between_pages(args):
        if args.get("offset") == "50" and questions[0]["status"] == "UNANSWERED":
            meli.answer_elsewhere(questions[0]["id"], "Respondido no app")
        return search(args)

    meli.search_questions = answered_between_pages
    assert bridge.once().returncode == 0
    assert chatwoot.conversations[conv["id"]]["status"] == "resolved"
    assert len(chatwoot.messages_in(conv["id"])) == before
    # The answered question was in the first page read: the next cycle sees it has left.
    assert bridge.once().returncode == 0
    assert len(chatwoot.messages_in(conv["id"])) == before
    answered = conversation_of_question(chatwoot, questions[0]["id"])
    assert [m["content"] for m in chatwoot.messages_in(answered["id"])][-1] == "Respondido no app"
    assert answered["status"] == "resolved"
