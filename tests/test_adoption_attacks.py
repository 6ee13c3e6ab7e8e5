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


def reply_in(s, clock, message_id, pack_id, conversation_id=93):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created

    return accept_webhook(message_created(message_id=message_id, conversation_id=conversation_id, inbox_id=2,
                                          content="Enviado hoje", custom_attributes={"meli_pack_id": pack_id}),
                          s.settings, s.db, clock())[2]


def sale_93_first_named_for_another(s, clock):
    """Sale 2000001's create lost its answer (Chatwoot applied it as 93). An agent typed sale 2000002 into
    93's meli_pack_id and replied (2000002's row took 93 as its candidate), then corrected the attribute back
    to 2000001 and replied again. Chatwoot's record of 93 names 2000001."""
    s.db.links.record_intent("pack", "2000001", clock(), contact_id=5)
    s.db.links.update("pack", "2000001", clock(), data={"buyer_id": 9, "blocked": False, "migrated": False})
    s.db.links.record_intent("pack", "2000002", clock(), contact_id=6)
    first = reply_in(s, clock, 9301, "2000002")
    assert first.get("adopted_conversation") is True
    second = reply_in(s, clock, 9302, "2000001")
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 2,
                                                  "custom_attributes": {"meli_pack_id": "2000001"}})
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})  # nothing of the bridge's there
    return first["reply_id"], second["reply_id"]


@responses.activate
def test_a_reply_chatwoot_confirms_as_the_sales_is_not_refused_for_a_candidate_another_sale_only_claimed(s, clock):
    from bridge.replies import delivery
    from tests.helpers import THREAD

    wrong, right = sale_93_first_named_for_another(s, clock)
    responses.post(THREAD, json={"id": "m0"})

    assert delivery.deliver(s, wrong) == "failed"  # 93 is not 2000002's: nothing went to that buyer
    assert delivery.deliver(s, right) == "delivered"
    assert [c.request.url.split("?")[0] for c in responses.calls if c.request.method == "POST"] == [THREAD]


@responses.activate
def test_a_lost_create_is_found_though_another_sale_only_claimed_it_from_a_webhook(s, clock):
    """The sale's buyer messages go where the agent answers them (93), not into a second conversation."""
    from bridge.sync.contacts import ensure_conversation

    sale_93_first_named_for_another(s, clock)
    responses.post(f"{CW}/conversations/filter", json={"payload": [
        {"id": 93, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "2000001"}}]})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert ensure_conversation(s, kind="pack", external_id="2000001", inbox_id=2, contact_id=5,
                               source_id="meli:buyer:9", custom_attributes={"meli_pack_id": "2000001"},
                               buyer_id=9) == (93, False)


@responses.activate
def test_a_claims_conversation_moved_to_the_sales_inbox_is_not_taken_for_the_sale_it_also_names(s, clock):
    """A claim's conversation names its sale too (meli_pack_id). Moved by an agent into the sales inbox, it
    looks like the sale's own to Chatwoot's filter: the sale's lost create must not take it, or the sale's
    buyer messages and the replies to them would go through the claim's conversation."""
    from bridge.sync.contacts import ensure_conversation

    s.db.links.mark_created("claim", "5000001", clock(), conversation_id=88, contact_id=5, data={"pack_id": "2000001"})
    s.db.links.record_intent("pack", "2000001", clock(), contact_id=5)
    responses.post(f"{CW}/conversations/filter", json={"payload": [
        {"id": 88, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "2000001", "meli_claim_id": "5000001"}}]})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert ensure_conversation(s, kind="pack", external_id="2000001", inbox_id=2, contact_id=5,
                               source_id="meli:buyer:9", custom_attributes={"meli_pack_id": "2000001"},
                               buyer_id=9) == (97, True)


@responses.activate
def test_a_sale_reply_from_a_claims_conversation_moved_to_the_sales_inbox_reaches_nobody(s, clock):
    from bridge.replies import delivery
    from tests.helpers import THREAD

    s.db.links.mark_created("claim", "5000001", clock(), conversation_id=88, contact_id=5, data={"pack_id": "2000001"})
    s.db.links.mark_created("pack", "2000001", clock(), conversation_id=47, contact_id=5,
                            data={"buyer_id": 9, "blocked": False, "migrated": False})
    reply_id = reply_in(s, clock, 9401, "2000001", conversation_id=88)["reply_id"]
    responses.get(f"{CW}/conversations/88", json={"id": 88, "inbox_id": 2, "custom_attributes": {
        "meli_pack_id": "2000001", "meli_claim_id": "5000001"}})
    responses.post(THREAD, json={"id": "m0"})

    # Refused as it arrives (the claim's row names conversation 88): recorded failed, never taken by delivery.
    from bridge.replies.accept import CLAIM_MOVED
    assert s.db.replies.get(reply_id)["error"] == CLAIM_MOVED.error
    assert delivery.deliver(s, reply_id) is None
    assert not [c for c in responses.calls if c.request.method == "POST"]


@responses.activate
def test_only_the_exact_id_names_a_sale_whether_stored_as_text_or_number(s, clock):
    """Held: "02000001" (a leading zero) and "20000011" (the id as a prefix) are other sales; the id
    stored as a number is this one's."""
    from bridge.sync.contacts import find_conversation

    s.db.links.record_intent("pack", "2000001", clock(), contact_id=5)
    responses.post(f"{CW}/conversations/filter", json={"payload": [
        {"id": 90, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "02000001"}},
        {"id": 91, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "20000011"}},
        {"id": 95, "inbox_id": 2, "custom_attributes": {"meli_pack_id": 2000001}}]})
    responses.get(f"{CW}/contacts/5/conversations", json={"payload": []})

    assert find_conversation(s, "pack", "2000001", 2, 5) == 95


@responses.activate
def test_a_candidate_conversation_made_for_another_buyer_is_not_used_for_a_lost_create(s, clock):
    """Conversation 93 was made for buyer 77's sale (by a version that named only the buyer there), since
    pruned: no row of the bridge's holds it. An agent typed sale 2000001 (buyer 9, whose create lost its
    answer) into its sidebar and replied; the reply is refused, but the row kept 93 as its candidate, and
    buyer 9's messages went into buyer 77's conversation."""
    from bridge.sync.contacts import ensure_conversation

    s.db.links.record_intent("pack", "2000001", clock(), contact_id=5, data={"buyer_id": 9})
    assert s.db.links.adopt_conversation("pack", "2000001", 93, clock())
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 2, "custom_attributes": {
        "meli_pack_id": "2000001"}, "additional_attributes": {"meli_buyer_id": "77"}})
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})  # nothing of the bridge's named there
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 97})

    assert ensure_conversation(s, kind="pack", external_id="2000001", inbox_id=2, contact_id=5,
                               source_id="meli:buyer:9", custom_attributes={"meli_pack_id": "2000001"},
                               buyer_id=9)[0] != 93
