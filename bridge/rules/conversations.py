"""What a Chatwoot conversation or its absence says, read the same way by every flow (pure but for
`chatwoot_record` and `bridge_items`, the reads of it)."""

from __future__ import annotations

from bridge import source_ids
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


def bridge_items(s: Services, kind: str, conversation_id: int, record: dict | None = None) -> set[str] | None:
    """The `kind` items the bridge itself showed in a conversation: its rows' (links.shown_in), those
    its own messages there name, as Chatwoot stores them (items_named), and the one it made the
    conversation for (made_for_item of Chatwoot's `record` of it, when given); None when an agent
    deleted the conversation."""
    try:
        sources = [message.get("source_id") for message in s.chatwoot.all_messages(conversation_id)
                   if isinstance(message, dict)]
    except PermanentError as exc:
        if not is_gone(exc):
            raise
        return None
    packs = s.db.links.items_of_messages(message_ids_named(sources)) if kind == "pack" else {}
    made = made_for_item(record, kind) if record is not None else None
    return s.db.links.shown_in(kind, conversation_id) | items_named(sources, kind, packs) | ({made} if made else set())


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
    stored = made_for(conversation)
    return stored is None or buyer_id in (None, "") or stored == str(buyer_id).strip()


def made_for(conversation: dict) -> str | None:
    """Pure: the buyer the bridge made this conversation for (`meli_buyer_id`), None when not said."""
    extra = conversation.get("additional_attributes")
    stored = extra.get("meli_buyer_id") if isinstance(extra, dict) else None
    return None if stored in (None, "") else str(stored).strip()


def made_for_item(conversation: dict, kind: str) -> str | None:
    """Pure: the item the bridge made this conversation for (`meli_<kind>_id` in its additional attributes,
    which agents cannot edit, unlike the sidebar's), None when not said (made by hand, or by an older
    version). A buyer's other sale, pruned, leaves nothing else to tell its conversation from this one's."""
    extra = conversation.get("additional_attributes")
    stored = extra.get(item_attribute(kind)) if isinstance(extra, dict) else None
    return None if stored in (None, "") else str(stored).strip()


def made_for_another(conversation: dict, kind: str, external_id) -> bool:
    """Pure: does Chatwoot's record say the bridge made this conversation for another `kind` item?"""
    made = made_for_item(conversation, kind)
    return made is not None and made.lower() != str(external_id).strip().lower()


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


# ---- whose conversation it is: what the bridge itself put there, never what an agent typed -------------

def message_ids_named(sources) -> set[str]:
    """Pure: the Mercado Livre message ids the bridge's own messages and notes here carry (a sale's are
    named by its messages' ids only: which sale each is, the bridge's rows say)."""
    found = set()
    for parts in map(source_ids.parse, sources):
        if parts and len(parts) >= 2 and parts[0] == "message":
            found.add(parts[1])
        elif parts and len(parts) >= 3 and parts[:2] == ["note", "moderation"]:
            found.add(parts[2])
    return {mid for mid in found if mid}


def items_named(sources, kind: str, message_items: dict[str, str]) -> set[str]:
    """Pure: the `kind` items (question, pack or claim ids) that the bridge's own messages in a
    conversation name, from their source ids (`sources`: every message's, anyone's, any type).

    A question's: the question and its answer as mirrored, and its notes; a sale's: its mirrored messages
    (`message_items`: message id -> sale, from the bridge's rows) and its notes; a claim's: its events and
    notes. An agent's messages carry none of these, so nothing an agent can edit or type counts."""
    found = set()
    for parts in map(source_ids.parse, sources):
        if not parts:
            continue
        if parts[0] == "note" and len(parts) >= 4 and parts[1] == "failing":
            parts = parts[2:]  # the note about an item the bridge gave up on names that item
        elif parts[0] == "note" and len(parts) >= 3:
            parts = parts[1:]
            if parts[0] == "moderation":
                found.add(message_items.get(parts[1], "") if kind == "pack" else "")
                continue
        elif parts[0] == "message" and len(parts) >= 2:
            found.add(message_items.get(parts[1], "") if kind == "pack" else "")
            continue
        own_kinds = {"question": ("question", "answer"), "pack": ("pack",), "claim": ("claim",)}.get(kind, ())
        if len(parts) >= 2 and parts[0] in own_kinds:
            found.add(parts[1])
    return {item for item in found if item}


def owner(typed: str | None, shown: set[str], *, attribute_confirmed: bool,
          claimed_elsewhere: bool) -> tuple[str | None, str | None]:
    """Pure: the item an agent's reply in a conversation goes to, or why it goes nowhere: (item, None)
    or (None, "several" | "unlinked" | "unconfirmed" | "elsewhere").

    `shown`: the items the bridge itself showed there (its rows, its own messages' source ids). One
    decides, whatever the conversation's attribute (`typed`) says now: agents edit attributes (a typo,
    another sale's id, cleared), and a reply typed under a buyer's question is that question's answer.
    With none of the bridge's, the attribute is all there is: a create whose answer was lost leaves
    the bridge's conversation with nothing but the attribute the bridge set, and the agent's answer
    there must not be lost. It counts only as Chatwoot stores it (`attribute_confirmed`, not as a
    webhook said) and when no other conversation of the bridge's holds that item (`claimed_elsewhere`:
    another item's row uses this conversation, or the item's own row names another one), since then
    the attribute can only be an agent's edit.
    """
    if len(shown) == 1:
        return next(iter(shown)), None
    if shown:
        return None, "several"
    if typed is None:
        return None, "unlinked"
    if not attribute_confirmed:
        return None, "unconfirmed"
    if claimed_elsewhere:
        return None, "elsewhere"
    return typed, None
