"""`main.py forget-buyer --chatwoot`: the buyer's contact and conversations in Chatwoot, and nobody else's.

Agents merge contacts in Chatwoot. A contact the bridge made for this buyer may then hold another
buyer's conversations (deleting it deletes them), and this buyer's conversations may sit in
another buyer's contact. The bridge's rows still name the contacts as they were before the
merge, so they only say where to look: what is deleted is decided from the conversations'
attributes as Chatwoot stores them now (plan, pure), the buyer the bridge made each for included
(a sale retention pruned has no row left to name its conversation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.http import PermanentError
from bridge.rules.conversations import is_gone, made_for
from bridge.services import Services
from bridge.source_ids import buyer as buyer_identifier

# The conversation attribute that names the Mercado Livre item of each kind the bridge makes, as
# the sync flows write it. A claim's conversation also names its sale: the claim comes first.
ITEM_ATTRIBUTES = (("claim", "meli_claim_id"), ("pack", "meli_pack_id"), ("question", "meli_question_id"))
ITEM_NAMES = {"claim": "claim", "pack": "sale", "question": "question"}
# GET /contacts/{id}/conversations answers a contact's latest 20 conversations, without paging: a
# full answer may hide older ones, so that contact cannot be shown to hold only this buyer's.
CONTACT_CONVERSATIONS_SHOWN = 20


@dataclass
class Plan:
    conversations: set[int] = field(default_factory=set)  # this buyer's, wherever they are now
    contacts: set[int] = field(default_factory=set)       # holding nothing but this buyer's conversations
    kept: list[str] = field(default_factory=list)         # one line per contact or conversation left, and why


def item_named(conversation: dict) -> tuple[str, str] | None:
    """(kind, id) of the item a conversation's attributes name; None when it has no bridge attribute."""
    attributes = conversation.get("custom_attributes") or {}
    for kind, key in ITEM_ATTRIBUTES:
        value = attributes.get(key)
        if value not in (None, "", []):
            return kind, str(value)
    return None


def _not_this_buyers(named: tuple[str, str] | None) -> str:
    if named is None:
        return "has no Mercado Livre attribute (made by hand)"
    return f"is {ITEM_NAMES[named[0]]} {named[1]}'s, which the bridge does not keep for this buyer"


def plan(items: set[tuple[str, str]], remembered: dict[int, dict | None], contacts: dict[int, list[dict] | None],
         shared: set[int], buyer_id: str | None = None, kept_for_others: frozenset = frozenset()) -> Plan:
    """Pure: what to delete for a buyer whose items (kind, id) are `items`.

    `remembered`: the conversations the bridge keeps for the buyer, as Chatwoot shows them now
    (None: gone). `contacts`: each contact to consider, with its conversations (None: gone).
    `shared`: contacts another buyer's rows in the bridge also name. A conversation is deleted
    only when its attributes name one of `items`, or the bridge made it for `buyer_id` (its additional
    attributes, which agents cannot edit: an item retention pruned has no row left to name it) and its
    attributes name no item the bridge keeps for another buyer (`kept_for_others`); a contact only when
    every conversation it holds is deleted, Chatwoot showed them all, and no other buyer's row names it.
    """
    result = Plan()

    def mine(conversation: dict, named: tuple[str, str] | None) -> bool:
        return named in items or (buyer_id is not None and made_for(conversation) == str(buyer_id)
                                  and named not in kept_for_others)

    for conversation_id, conversation in sorted(remembered.items()):
        if conversation is None:
            continue
        named = item_named(conversation)
        if mine(conversation, named):
            result.conversations.add(conversation_id)
        else:
            result.kept.append(f"conversation {conversation_id} is kept: it {_not_this_buyers(named)}")
    for contact_id, conversations in sorted(contacts.items()):
        if conversations is None:
            continue
        reasons = []
        for conversation in conversations:
            named = item_named(conversation)
            if mine(conversation, named):
                result.conversations.add(int(conversation["id"]))
            else:
                reasons.append(f"its conversation {conversation['id']} {_not_this_buyers(named)}")
        if len(conversations) >= CONTACT_CONVERSATIONS_SHOWN:
            reasons.append(f"Chatwoot shows only its latest {CONTACT_CONVERSATIONS_SHOWN} conversations")
        if contact_id in shared:
            reasons.append("another buyer's rows in the bridge name it (contacts merged)")
        if reasons:
            result.kept.append(f"contact {contact_id} is kept: {'; '.join(reasons)}; edit it by hand")
        else:
            result.contacts.add(contact_id)
    return result


def _or_gone(read, object_id: int):
    try:
        return read(object_id)
    except PermanentError as exc:
        if is_gone(exc):
            return None
        raise


def read_plan(s: Services, buyer_id: str) -> Plan:
    """What to delete in Chatwoot for this buyer. Raises ApiError: then nothing may be deleted.

    1. From the bridge's rows: the buyer's items, and the contacts and conversations kept for them.
    2. Each of those conversations read from Chatwoot (GET /conversations/{id}): wherever a merge
       carried it, it is the buyer's only if its attributes still name one of the buyer's items.
    3. The buyer's contact (found by its identifier) and each contact the rows name, with its
       conversations (GET /contacts/{id}/conversations): the buyer's are deleted too; anything
       else keeps the contact.
    4. plan() decides.
    """
    items = set(s.db.privacy.buyer_conversations(buyer_id))
    contact_ids, conversation_ids = s.db.privacy.buyer_chatwoot_ids(buyer_id)
    found = s.chatwoot.find_contact(buyer_identifier(buyer_id))
    if found:
        contact_ids.add(int(found["id"]))
    remembered = {i: _or_gone(s.chatwoot.conversation, i) for i in sorted(conversation_ids)}
    contacts = {i: _or_gone(s.chatwoot.contact_conversations, i) for i in sorted(contact_ids)}
    seen = [c for c in remembered.values() if c] + [c for cs in contacts.values() if cs for c in cs]
    return plan(items, remembered, contacts, s.db.privacy.contacts_of_other_buyers(buyer_id, contact_ids),
                str(buyer_id), _kept_for_others(s, items, seen))


def _kept_for_others(s: Services, items: set[tuple[str, str]], conversations: list[dict]) -> frozenset:
    """The items these conversations' attributes name that the bridge keeps, not for this buyer."""
    named = {item_named(c) for c in conversations} - {None} - items
    return frozenset(item for item in named if s.db.links.get(*item) is not None)


def still_only_this_buyers(s: Services, buyer_id: str, contact_id: int) -> str | None:
    """Right before a contact is deleted: None when it still holds nothing but the buyer's
    conversations (a conversation may have landed in it since the plan); else why it is kept."""
    conversations = _or_gone(s.chatwoot.contact_conversations, contact_id)
    if conversations is None:
        return None
    items = set(s.db.privacy.buyer_conversations(buyer_id))
    again = plan(items, {}, {contact_id: conversations}, set(), str(buyer_id),
                 _kept_for_others(s, items, conversations))
    return None if contact_id in again.contacts else again.kept[0]
