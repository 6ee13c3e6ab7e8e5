"""Adoption and conversation look-ups tried as an attacker would: a conversation only a webhook named
for an item is never used for that item until Chatwoot's own record confirms it."""

import pytest
import responses

from bridge.sync import claims as sync_claims
from tests.helpers import CW, authorized_services


@pytest.fixture
def s(settings, db, clock):
    return authorized_services(settings, db, clock)


def adopted_candidate(s, clock, pack_id="2000001", conversation_id=93):
    """The sale's create lost its answer; an agent's reply from `conversation_id` named the sale in its
    webhook, so the row holds that conversation as a candidate not yet checked with Chatwoot."""
    s.db.links.record_intent("pack", pack_id, clock(), contact_id=5)
    assert s.db.links.adopt_conversation("pack", pack_id, conversation_id, clock())


@responses.activate
def test_a_claim_is_not_pointed_to_from_a_sale_conversation_chatwoot_has_not_confirmed(s, clock):
    """Conversation 93 may be another buyer's (the webhook's attributes are not Chatwoot's record): the
    note about this buyer's claim must not go there, and the sale's real conversation must still get it."""
    adopted_candidate(s, clock)
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/93/messages", json={"id": 9001})

    assert sync_claims._point_sale_to_claim(s, "5000001", 88, "2000001", "2000001") is False
    assert not [c for c in responses.calls if c.request.method == "POST"]


@responses.activate
def test_a_failed_replys_note_does_not_go_to_a_conversation_only_a_webhook_named_for_the_sale(s, clock):
    """The agent deleted conversation 77 after replying there (the reply failed); the sale's row now holds
    only a candidate, 93, an agent's reply named: the note saying the reply did not go stays out of 93."""
    from bridge.replies import report

    reply_id = s.db.replies.accept(chatwoot_message_id=701, conversation_id=77, kind="message", target_id="2000001",
                                   parts=[{"text": "Enviado hoje", "attachments": []}], now=clock())
    s.db.replies.claim(reply_id, clock(), 300)
    s.db.replies.mark_failed(reply_id, "venda bloqueada", "A mensagem não foi enviada.", clock())
    adopted_candidate(s, clock)
    gone = {"status": 404, "json": {"error": "Resource could not be found"}}
    responses.patch(f"{CW}/conversations/77/messages/701", **gone)
    responses.post(f"{CW}/conversations/77/messages", **gone)
    responses.post(f"{CW}/conversations/93/messages", json={"id": 9002})

    assert report.report_reply(s, s.db.replies.get(reply_id)) == 1
    assert not [c for c in responses.calls if "/conversations/93/" in c.request.url]
