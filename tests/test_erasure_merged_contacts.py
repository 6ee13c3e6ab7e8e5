"""`forget-buyer --chatwoot` after agents merged contacts: one buyer erased, every other one intact.

The bridge's rows name contacts as they were before a merge; what is deleted is decided from the
conversations' attributes as the fake Chatwoot stores them after the merge.
"""

from __future__ import annotations

from tests.test_privacy import BUYER, OTHER, contents, conversations, two_buyers


def contact_of(chatwoot, buyer):
    return next(c["id"] for c in chatwoot.contacts.values() if c["identifier"] == f"meli:buyer:{buyer}")


def buyer_conversations(bridge, buyer_id):
    """The conversations (any contact) of this buyer's questions, and of its sale 3100001 (two_buyers)."""
    chatwoot = bridge.fakes.chatwoot.state
    found = []
    for conv in chatwoot.conversations.values():
        attrs = conv["custom_attributes"]
        question = bridge.fakes.meli.state.questions.get(int(attrs.get("meli_question_id") or 0))
        sale = buyer_id == BUYER and attrs.get("meli_pack_id") == "3100001"
        if sale or (question and question["from"]["id"] == buyer_id):
            found.append(conv["id"])
    return sorted(found)


def test_a_contact_that_gained_another_buyers_conversation_in_a_merge_is_kept_with_that_conversation(bridge):
    chatwoot = bridge.fakes.chatwoot.state
    two_buyers(bridge)
    assert bridge.once().returncode == 0
    mine, theirs = contact_of(chatwoot, BUYER), contact_of(chatwoot, OTHER)
    others = buyer_conversations(bridge, OTHER)
    assert len(others) == 1 and len(buyer_conversations(bridge, BUYER)) == 2
    chatwoot.merge_contacts(mine, theirs)  # an agent merged the other buyer into this one's contact

    result = bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"contact {mine} is kept: its conversation {others[0]} is question" in result.stdout
    assert buyer_conversations(bridge, OTHER) == others and contents(bridge, chatwoot.conversations[others[0]])
    assert buyer_conversations(bridge, BUYER) == []
    assert mine in chatwoot.contacts


def test_the_buyers_conversations_a_merge_carried_into_another_buyers_contact_are_deleted_there(bridge):
    chatwoot = bridge.fakes.chatwoot.state
    two_buyers(bridge)
    assert bridge.once().returncode == 0
    mine, theirs = contact_of(chatwoot, BUYER), contact_of(chatwoot, OTHER)
    others = buyer_conversations(bridge, OTHER)
    chatwoot.merge_contacts(theirs, mine)  # this buyer's contact merged into the other buyer's

    result = bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes")
    assert result.returncode == 0, result.stderr
    assert buyer_conversations(bridge, BUYER) == []
    assert buyer_conversations(bridge, OTHER) == others and theirs in chatwoot.contacts
    assert all(c["contact_id"] == theirs for c in chatwoot.conversations.values())


def test_a_conversation_made_by_hand_in_the_buyers_contact_is_not_deleted(bridge):
    chatwoot = bridge.fakes.chatwoot.state
    two_buyers(bridge)
    assert bridge.once().returncode == 0
    mine = contact_of(chatwoot, BUYER)
    contact_inbox = next(ci for ci in chatwoot.contact_inboxes if ci["contact_id"] == mine)
    by_hand, _ = chatwoot.create_conversation({"inbox_id": contact_inbox["inbox_id"], "contact_id": mine,
                                               "source_id": contact_inbox["source_id"],
                                               "message": {"content": "combinado por telefone",
                                                           "message_type": "outgoing"}})

    result = bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"its conversation {by_hand['id']} has no Mercado Livre attribute (made by hand)" in result.stdout
    assert by_hand["id"] in chatwoot.conversations and mine in chatwoot.contacts
    assert buyer_conversations(bridge, BUYER) == []
    assert len(conversations(bridge, bridge.fakes.questions_inbox)) + len(
        conversations(bridge, bridge.fakes.messages_inbox)) == 2  # the other buyer's question and the hand-made one


def test_a_claims_conversation_is_the_buyers_by_its_claim_id_not_by_the_sale_it_also_names():
    from bridge.admin.erasure import plan
    mine = {"id": 1, "custom_attributes": {"meli_claim_id": "5", "meli_pack_id": "77"}}
    theirs = {"id": 2, "custom_attributes": {"meli_claim_id": "6", "meli_pack_id": "70"}}
    decided = plan({("claim", "5"), ("pack", "70")}, {1: mine, 2: theirs}, {}, set())
    assert decided.conversations == {1}
    assert decided.kept == ["conversation 2 is kept: it is claim 6's, which the bridge does not keep for this buyer"]
