"""A conversation the sync has just made shows in Chatwoot empty until the buyer's words go in: an
agent may resolve it then (issue 18). Once they are in, it is in the open list again, or the agent
never sees them. Against the fakes, in this process."""

from __future__ import annotations

import pytest

from bridge.sync import claims as sync_claims
from bridge.sync import questions as sync_questions
from tests.helpers import services_on_fakes

BUYER = 7001


@pytest.fixture
def s(make_settings, db, fakes):
    fakes.claims_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Reclamações")
    return services_on_fakes(make_settings, db, fakes, CHATWOOT_CLAIMS_INBOX_ID=str(fakes.claims_inbox))


def resolved_as_soon_as_made(s, fakes):
    """An agent resolves each conversation the sync makes before anything goes into it."""
    create = s.chatwoot.create_conversation

    def made_then_resolved(**kwargs):
        conversation = create(**kwargs)
        fakes.chatwoot.state.resolve_conversation(conversation["id"])
        return conversation

    s.chatwoot.create_conversation = made_then_resolved


def in_inbox(fakes, inbox_id):
    return [c for c in fakes.chatwoot.state.conversations.values() if c["inbox_id"] == inbox_id]


def buyer_words(fakes, conversation):
    return [m["content"] for m in fakes.chatwoot.state.messages.values()
            if m["conversation_id"] == conversation["id"] and m["message_type"] == 0 and not m["private"]]


def test_a_new_question_whose_conversation_an_agent_resolved_while_empty_is_in_the_open_list(s, fakes):
    meli = fakes.meli.state
    meli.add_user(BUYER, "COMPRADOR")
    meli.add_item("MLB100", "Caneca azul")
    meli.add_question(item_id="MLB100", buyer_id=BUYER, text="Tem azul?")
    resolved_as_soon_as_made(s, fakes)

    assert sync_questions.sync_questions(s)["created"] == 1
    [conversation] = in_inbox(fakes, fakes.questions_inbox)
    assert buyer_words(fakes, conversation)[0].startswith("Tem azul?")
    assert conversation["status"] == "open"


def test_a_new_claim_whose_conversation_an_agent_resolved_while_empty_is_in_the_open_list(s, fakes):
    meli = fakes.meli.state
    meli.add_user(BUYER, "COMPRADOR")
    meli.add_order(2000001, BUYER, "COMPRADOR", items=[("MLB100", "Caneca azul", 1, 25.0)])
    meli.add_claim(5000001, 2000001)
    meli.add_claim_message(5000001, "complainant", "A caneca chegou quebrada")
    resolved_as_soon_as_made(s, fakes)

    assert sync_claims.sync_claim(s, "5000001") == 1
    [conversation] = in_inbox(fakes, fakes.claims_inbox)
    assert buyer_words(fakes, conversation) == ["A caneca chegou quebrada"]
    assert conversation["status"] == "open"


def test_a_new_claim_without_messages_yet_is_in_the_open_list_once_its_summary_is_in(s, fakes):
    meli = fakes.meli.state
    meli.add_user(BUYER, "COMPRADOR")
    meli.add_order(2000001, BUYER, "COMPRADOR", items=[("MLB100", "Caneca azul", 1, 25.0)])
    meli.add_claim(5000001, 2000001)
    resolved_as_soon_as_made(s, fakes)

    sync_claims.sync_claim(s, "5000001")
    [conversation] = in_inbox(fakes, fakes.claims_inbox)
    assert conversation["status"] == "open"
