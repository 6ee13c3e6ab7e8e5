"""Buyers' contacts and their conversations in Chatwoot, shared by the questions and sales flows."""

from __future__ import annotations

import logging

from db_manager import crashpoint
from http_client import PermanentError
from services import Services

log = logging.getLogger("bridge.contacts")


def identifier(buyer_id) -> str:
    return f"meli:buyer:{buyer_id}"


def ensure_contact(s: Services, buyer_id, nickname: str | None, inbox_id: int) -> tuple[int, str]:
    """The buyer's contact, with a contact_inbox in `inbox_id`. Returns (contact id, inbox source id).

    Create first and look up on 422: a new buyer then costs one call. The identifier is
    unique per account, so a 422 means someone (a crashed earlier run, the other inbox,
    a person) created it: find it by exact filter, never by substring search.
    """
    key = str(buyer_id)
    source_id = identifier(buyer_id)
    link = s.db.link("buyer", key)
    if link and link["status"] == "created":
        inboxes = link["data"].get("inboxes", [])
        if inbox_id not in inboxes:
            _add_inbox(s, link["contact_id"], inbox_id, source_id)
            s.db.link_update("buyer", key, s.clock(), data=dict(link["data"], inboxes=sorted(inboxes + [inbox_id])))
        return link["contact_id"], source_id

    s.db.link_intent("buyer", key, s.clock())
    name = nickname or f"Comprador {buyer_id}"
    try:
        contact = s.chatwoot.create_contact(name, source_id, inbox_id, source_id,
                                            additional_attributes={"meli_buyer_id": key, "meli_nickname": name})
        contact_id = contact["id"]
        crashpoint("contact_created")
        log.info("contact created buyer=%s contact=%s", buyer_id, contact_id)
    except PermanentError as exc:
        if exc.status != 422:
            raise
        contact = s.chatwoot.find_contact(source_id)
        if contact is None:
            raise
        contact_id = contact["id"]
        _add_inbox(s, contact_id, inbox_id, source_id)
        log.info("contact found buyer=%s contact=%s", buyer_id, contact_id)
    s.db.link_created("buyer", key, s.clock(), contact_id=contact_id, data={"inboxes": [inbox_id]})
    return contact_id, source_id


def _add_inbox(s: Services, contact_id: int, inbox_id: int, source_id: str) -> None:
    try:
        s.chatwoot.create_contact_inbox(contact_id, inbox_id, source_id)
        crashpoint("contact_inbox_added")
    except PermanentError as exc:
        # Already there (a crash after creating it): Chatwoot refuses a second one.
        if exc.status != 422:
            raise


def ensure_conversation(s: Services, *, kind: str, external_id: str, inbox_id: int, contact_id: int,
                        source_id: str, custom_attributes: dict, buyer_id) -> tuple[int, bool]:
    """The conversation for `kind/external_id` (a question or a pack). Returns (id, created now).

    The intent is recorded first; an intent left by a crash is reconciled through the
    contact's conversations (custom attribute `meli_<kind>_id`) before creating again.
    """
    link, fresh = s.db.link_intent(kind, external_id, s.clock(), contact_id=contact_id)
    if link["conversation_id"] is not None:
        return link["conversation_id"], False
    if not fresh:
        attribute = f"meli_{kind}_id"
        for conversation in s.chatwoot.contact_conversations(contact_id):
            if conversation.get("inbox_id") == inbox_id \
                    and str((conversation.get("custom_attributes") or {}).get(attribute)) == str(external_id):
                s.db.link_update(kind, external_id, s.clock(), conversation_id=conversation["id"])
                return conversation["id"], False
    conversation = s.chatwoot.create_conversation(
        source_id=source_id, inbox_id=inbox_id, contact_id=contact_id, custom_attributes=custom_attributes,
        additional_attributes={"meli_buyer_id": str(buyer_id)})
    crashpoint("conversation_created")
    s.db.link_update(kind, external_id, s.clock(), conversation_id=conversation["id"])
    return conversation["id"], True
