"""What a Chatwoot conversation or its absence says, read the same way by every flow (pure but for
`chatwoot_record`, the one read of it)."""

from __future__ import annotations

from bridge.http import PermanentError
from bridge.services import Services
from bridge.store.links import ADOPTED


def is_gone(exc: BaseException) -> bool:
    """Chatwoot's answer for a contact or conversation an agent deleted (or merged away)."""
    # Only Chatwoot's 404: the same flows fetch Mercado Livre files, whose 404 says nothing about Chatwoot.
    return isinstance(exc, PermanentError) and exc.status == 404 and exc.service in ("chatwoot", None)


def chatwoot_record(s: Services, conversation_id: int) -> dict | None:
    """Chatwoot's own record of a conversation (its attributes as stored, not as a webhook said);
    None when an agent deleted it, or merged it away."""
    try:
        found = s.chatwoot.conversation(conversation_id)
    except PermanentError as exc:
        if not is_gone(exc):
            raise
        return None
    return found if isinstance(found, dict) else None


def item_attribute(kind: str) -> str:
    """The conversation custom attribute naming a question, pack or claim: `meli_<kind>_id`."""
    return f"meli_{kind}_id"


def names_item(conversation: dict, kind: str, external_id: str, inbox_id: int) -> bool:
    """Pure: does this conversation, as Chatwoot returned it, belong to `kind/external_id`: in
    its inbox, its custom attribute naming it (compared as text, as Chatwoot's filter does)?"""
    value = (conversation.get("custom_attributes") or {}).get(item_attribute(kind)) \
        if isinstance(conversation.get("custom_attributes") or {}, dict) else None
    return conversation.get("inbox_id") == inbox_id and value is not None \
        and str(value).strip().lower() == str(external_id).strip().lower()


def names_buyer(conversation: dict, buyer_id) -> bool:
    """Pure: does nothing Chatwoot stores say this conversation is another buyer's? The bridge writes
    `meli_buyer_id` in the additional attributes of every conversation it makes, and agents cannot edit
    those in Chatwoot, unlike the sidebar's `meli_<kind>_id`. Without either (made by hand, or by an
    older version; a buyer not known) nothing contradicts it."""
    extra = conversation.get("additional_attributes")
    stored = extra.get("meli_buyer_id") if isinstance(extra, dict) else None
    return stored in (None, "") or buyer_id in (None, "") or str(stored).strip() == str(buyer_id).strip()


def confirmed_conversation(link: dict | None) -> int | None:
    """Pure: the conversation a row names as its own: made by the bridge, or found or checked in
    Chatwoot's own record. None while it is only a candidate an agent's reply adopted (ADOPTED: the
    webhook's attributes, which may name this item for another buyer's conversation)."""
    if link is None or (link.get("data") or {}).get(ADOPTED):
        return None
    return link.get("conversation_id")


def knows_conversation(link: dict | None, conversation_id: int) -> bool:
    """Pure: the item's row names this conversation as its own (confirmed_conversation), or as the
    one an agent deleted since."""
    if link is None:
        return False
    data = link.get("data") or {}
    return confirmed_conversation(link) == conversation_id \
        or conversation_id in (data.get("removed_conversation"), data.get("removed"))
