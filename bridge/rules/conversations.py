"""What a Chatwoot conversation or its absence says, read the same way by every flow. Pure."""

from __future__ import annotations

from bridge.http import PermanentError


def is_gone(exc: BaseException) -> bool:
    """Chatwoot's answer for a contact or conversation an agent deleted (or merged away)."""
    # Only Chatwoot's 404: the same flows fetch Mercado Livre files, whose 404 says nothing about Chatwoot.
    return isinstance(exc, PermanentError) and exc.status == 404 and exc.service in ("chatwoot", None)


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
