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
