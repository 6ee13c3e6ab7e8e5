"""The `meli:` source ids: the one place that builds and reads them.

Every Chatwoot message, note and contact the bridge creates carries one. It makes creation
idempotent (a crash between "create" and "record" is healed by finding the id first) and it
is the listener's echo guard: a message_created webhook whose source id is ours was written
by the bridge, never by an agent, and must not go back to Mercado Livre.
"""

from __future__ import annotations

import hashlib

PREFIX = "meli:"


def is_ours(source_id) -> bool:
    """The echo guard: anything the bridge created (webhook payloads are untrusted: any type)."""
    return isinstance(source_id, str) and source_id.startswith(PREFIX)


def parse(source_id) -> list[str] | None:
    """meli:note:reply:7 -> ["note", "reply", "7"]; None for an id that is not ours."""
    return source_id[len(PREFIX):].split(":") if is_ours(source_id) else None


def _build(*parts) -> str:
    return PREFIX + ":".join(str(part) for part in parts)


def _digest(key: str) -> str:
    # Claim messages have no id of their own: their key is long and holds a date, so it is hashed.
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def buyer(buyer_id) -> str:
    """The buyer's contact identifier, and their usual source id in every inbox."""
    return _build("buyer", buyer_id)


def buyer_for_contact(buyer_id, contact_id) -> str:
    """The buyer's source id in an inbox where their usual one belongs to another contact."""
    return _build("buyer", buyer_id, contact_id)


def question(question_id) -> str:
    return _build("question", question_id)


def answer(question_id) -> str:
    return _build("answer", question_id)


def message(message_id) -> str:
    return _build("message", message_id)


def claim_event(claim_id, event) -> str:
    return _build("claim", claim_id, event)


def claim_message(key: str) -> str:
    return _build("claim_message", _digest(key))


def note(*about) -> str:
    """A private note's id: what it is about, e.g. note("question", 5, "closed")."""
    return _build("note", *about)


def claim_moderation_note(key: str) -> str:
    return note("claim_moderation", _digest(key))
