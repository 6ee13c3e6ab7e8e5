"""Buyers' contacts and their conversations in Chatwoot, shared by the questions and sales flows."""

from __future__ import annotations

import logging

from bridge import source_ids
from bridge.http import PermanentError, TransientError
from bridge.rules.conversations import (  # noqa: F401 — the flows' names too
    bridge_items,
    chatwoot_record,
    is_gone,
    item_attribute,
    made_for_another,
    names_buyer,
    names_item,
    owner,
)
from bridge.services import Services
from bridge.store.links import ADOPTED, Link
from bridge.sync.ensure import ensure_note, settle, stamped_create
from chatwoot_api import FILTER_PAGE
from db_manager import crashpoint

log = logging.getLogger("bridge.contacts")

TRIED = "conversation_tried_at"  # link data: when its conversation's create last went out
REMOVED = "removed_conversation"  # link data: the conversation an agent deleted, said in the next one
CONTINUED_AT_MOST = 3  # new conversations one sync makes for an item whose conversations agents keep deleting
REMOVED_NOTE = ("A conversa anterior {of} foi apagada no Chatwoot. As mensagens que já estavam nela não "
                "foram trazidas de novo; esta conversa continua com as novas. O histórico completo está no "
                "Mercado Livre: {url}")


def buyer_lock(buyer_id) -> str:
    """The key (s.locks) under which one worker at a time finds, makes or forgets the buyer's contact.

    The poller's jobs run in parallel threads: the questions, messages and claims jobs (and a
    notification) may all need one buyer's contact at once, e.g. made again after an agent deleted
    or merged it. Unlocked, each reads the buyer's row as the other leaves it half done, and one
    fails on the contact the other just made (422), or records its inboxes over the other's.
    Lock order: an item's lock (question:/pack:/claim:) first, this one inside it; nothing is
    locked while this one is held, so no two workers can wait for each other."""
    return f"buyer:{buyer_id}"


def ensure_contact(s: Services, buyer_id, nickname: str | None, inbox_id: int) -> tuple[int, str]:
    """The buyer's contact, with a contact_inbox in `inbox_id`. Returns (contact id, inbox source id).

    Create first and look up on 422: a new buyer then costs one call. The identifier is
    unique per account, so a 422 means someone (a crashed earlier run, the other inbox,
    a person) created it: find it by exact filter, never by substring search. A remembered
    contact that answers 404 (deleted, or merged away) is forgotten and found or made again.
    Nothing is made or found for a buyer an erasure is deleting in Chatwoot right now
    (db.privacy.being_erased).
    Under the buyer's lock (buyer_lock).
    """
    with s.locks.hold(buyer_lock(buyer_id)):
        return _ensure_contact(s, buyer_id, nickname, inbox_id)


def _ensure_contact(s: Services, buyer_id, nickname: str | None, inbox_id: int) -> tuple[int, str]:
    key = str(buyer_id)
    if s.db.privacy.being_erased(key, s.clock()):
        # Made now, it would outlive the erasure in Chatwoot, remembered by nobody: after it, the item starts fresh.
        raise TransientError("its buyer is being erased (forget-buyer --chatwoot)")  # no id: it outlives the erasure
    source_id = source_ids.buyer(buyer_id)
    link = s.db.links.get("buyer", key)
    if link and link["status"] == "created":
        inboxes = link["data"].get("inboxes", [])
        if inbox_id not in inboxes:
            try:
                _add_inbox(s, link["contact_id"], inbox_id, source_id)
            except PermanentError as exc:
                if not is_gone(exc):
                    raise
                _forget_contact(s, buyer_id, link["contact_id"])
                return _ensure_contact(s, buyer_id, nickname, inbox_id)
            s.db.links.update("buyer", key, s.clock(), data=dict(link["data"], inboxes=sorted(inboxes + [inbox_id])))
        return link["contact_id"], (link["data"].get("sources") or {}).get(str(inbox_id), source_id)

    s.db.links.record_intent("buyer", key, s.clock())
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
            # The identifier is free, so the inbox source id was refused: a merge of two buyers'
            # contacts left it on the surviving one. This buyer gets a contact of its own, and
            # open_conversation then a source id of its own.
            contact = s.chatwoot.create_contact(name, source_id, None, None, additional_attributes={
                "meli_buyer_id": key, "meli_nickname": name})
        contact_id = contact["id"]
        _add_inbox(s, contact_id, inbox_id, source_id)
        log.info("contact found buyer=%s contact=%s", buyer_id, contact_id)
    if not s.db.links.complete("buyer", key, s.clock(), contact_id=contact_id, data={"inboxes": [inbox_id]}):
        # Erased while the contact was made or found: left in Chatwoot (found again by its identifier
        # if the buyer comes back), not recorded here.
        raise erased_meanwhile("buyer", key)
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
                        source_id: str, custom_attributes: dict, buyer_id,
                        mark_seen: float | None = None) -> tuple[int, bool]:
    """The conversation for `kind/external_id` (a question or a pack). Returns (id, created now).

    The intent is recorded first, with the time of each create attempt (`TRIED`, set as it
    leaves). An intent left by a crash or a lost answer is reconciled by the custom attribute
    `meli_<kind>_id` wherever a merge carried it (find_conversation), unless an agent's answer there already
    named it (accept adopts it, and it is kept over one made while that answer arrived); not
    found, it is created again only once that earlier create has settled: a create Chatwoot
    still held would otherwise be applied after the search, and the buyer would have two
    conversations. A conversation a pending row remembers is used once Chatwoot shows it (and, one
    adopted from a webhook, names this item: _check_remembered). A new row for an item with a closed
    watermark (pruned by retention, or erased) is looked for the same way first, once: its old
    conversation may still be live in Chatwoot.
    `mark_seen`: see open_conversation.
    """
    # The buyer id from the start: an erasure finds the row by it even when its contact is gone
    # and the buyer's own row, being made again, names none.
    link, fresh = s.db.links.record_intent(kind, external_id, s.clock(), mark_seen=mark_seen, contact_id=contact_id,
                                           data={"buyer_id": buyer_id})
    if link is None:
        raise erased_meanwhile(kind, external_id)
    # A conversation remembered by a row not finished yet (made before a crash or a failure, or
    # adopted at an agent's reply) may have been deleted since: checked before anything goes there.
    if not fresh and link["status"] == "pending" and link["conversation_id"] is not None:
        link = _check_remembered(s, link, inbox_id)
    if link["conversation_id"] is not None:
        return link["conversation_id"], False
    # The attempt's time only tells a pending row's next attempt to wait: dropped once settled.
    data = {key: value for key, value in link["data"].items() if key != TRIED}
    # An item known before and pruned by retention (or erased without --chatwoot) still has its
    # conversation in Chatwoot: what comes now continues there, not in a second one beside it.
    if not fresh or (s.db.watermarks.get(kind, external_id) or {}).get("closed_at") is not None:
        found = find_conversation(s, kind, external_id, inbox_id, contact_id, buyer_id)
        if found is not None:
            s.db.links.update(kind, external_id, s.clock(), conversation_id=found, data=data)
            return found, False
        if link["data"].get(TRIED) is not None:
            settle(s, link["data"][TRIED], f"{kind} {external_id}'s conversation")
    # Refused: a contact deleted or merged away (404/422), which open_conversation handles.
    conversation = stamped_create(s, kind, external_id, TRIED, data, lambda: s.chatwoot.create_conversation(
        source_id=source_id, inbox_id=inbox_id, contact_id=contact_id, custom_attributes=custom_attributes,
        # Agents cannot edit these: whose it is, and which item, once no row of the bridge's says so (pruned).
        additional_attributes={"meli_buyer_id": str(buyer_id), item_attribute(kind): str(external_id)}))
    crashpoint("conversation_created")
    if not s.db.links.set_conversation(kind, external_id, conversation["id"], data, s.clock()):
        link = s.db.links.get(kind, external_id)
        if link is None:
            raise erased_meanwhile(kind, external_id)
        # An agent answered in another conversation of this item while the create was in flight:
        # the buyer's messages go where the agent is, the one made now stays empty.
        link = _check_remembered(s, link, inbox_id)
        if link["conversation_id"] is not None:
            log.warning("conversation made while an agent answered in another %s=%s conversation=%s unused=%s",
                        kind, external_id, link["conversation_id"], conversation["id"])
            return link["conversation_id"], False
        s.db.links.update(kind, external_id, s.clock(), conversation_id=conversation["id"], data=data)
    return conversation["id"], True


FILTER_PAGES = 4  # pages of Chatwoot's conversation filter read for one item (its matches are few)


def find_conversation(s: Services, kind: str, external_id: str, inbox_id: int, contact_id: int,
                      buyer_id=None) -> int | None:
    """The conversation Chatwoot holds for `kind/external_id` (a create whose answer was lost), or None.

    1. Chatwoot's conversation filter on `meli_<kind>_id`, across all contacts: an agent may
       have merged the buyer's contact into another, carrying the conversation along.
    2. Each result is checked again (inbox and attribute, names_item; no other row using it):
       for a key the account has not defined (`setup` defines them) Chatwoot drops the
       condition and answers every conversation.
    3. When that happened (a result not naming the item), or the filter is refused, the
       contact's own conversations are searched instead: all that can be found without it.
    The oldest match wins; a match another row of this kind uses, or made for another buyer than
    `buyer_id` (names_buyer) or for another item (made_for_another: the same buyer's other sale, pruned),
    where an agent typed this item's id into its sidebar, is nobody's to take.
    """
    attribute = item_attribute(kind)
    filtered = True
    matches: list[dict] = []
    try:
        for page in range(1, FILTER_PAGES + 1):
            results = s.chatwoot.filter_conversations(attribute, str(external_id), page)
            named = [c for c in results if names_item(c, kind, external_id, inbox_id)]
            matches += named
            if any(str((c.get("custom_attributes") or {}).get(attribute) or "").strip().lower()
                   != str(external_id).lower() for c in results):
                filtered = False  # the condition was dropped: every conversation came back
                break
            if len(results) < FILTER_PAGE:
                break
    except PermanentError as exc:
        log.warning("conversation filter refused %s=%s: %s", kind, external_id, exc.short())
        filtered = False
    if not filtered:
        log.info("conversation filter cannot find %s=%s (attribute %s not defined in chatwoot?): searching the "
                 "contact's conversations", kind, external_id, attribute)
        matches += [c for c in s.chatwoot.contact_conversations(contact_id)
                    if names_item(c, kind, external_id, inbox_id)]
    for conversation in sorted(matches, key=lambda c: c.get("id") or 0):
        if _valid_id(conversation.get("id")) and names_buyer(conversation, buyer_id) \
                and not made_for_another(conversation, kind, external_id) \
                and not s.db.links.others_using(kind, external_id, conversation["id"]):
            return conversation["id"]
    return None


def _valid_id(value) -> bool:
    return type(value) is int and value > 0


NOT_CLOSED = 0.0  # `mark_seen` of an item read without a watermark (or, for a question, without a closed one)


def erased_meanwhile(kind: str, external_id: str) -> TransientError:
    """The item's row went (forget-buyer, retention) while its Chatwoot side was being made:
    nothing of it may be recorded again from what the sync holds in memory."""
    return TransientError(f"{kind} {external_id} was erased while it was being made in Chatwoot")


def mark_conversation_created(s: Services, kind: str, external_id: str, **fields) -> None:
    """The last step of showing a question, sale or claim: its row, recorded as an intent before
    any Chatwoot call, becomes `created`. Raises (erased_meanwhile) when that row is gone."""
    if not s.db.links.complete(kind, external_id, s.clock(), **fields):
        raise erased_meanwhile(kind, external_id)


def _check_remembered(s: Services, link: Link, inbox_id: int) -> Link:
    """The conversation of a row not finished yet, kept only if Chatwoot has it in this inbox: an
    agent may have deleted it since it was made, or an agent's reply that named it (accept adopted
    it) came late, from a conversation deleted since. Mirroring there would fail on every poll.

    An adopted one (ADOPTED) came from a webhook's attributes, not Chatwoot's: kept only when
    Chatwoot's own record of it names this item and no other row uses it (and, named by the attribute
    alone, was not made for another buyer: names_buyer), or this buyer's messages would go into another
    buyer's conversation and that buyer's replies to this one."""
    kind, external_id, conversation_id = link["kind"], link["external_id"], link["conversation_id"]
    data = dict(link["data"])
    adopted = data.pop(ADOPTED, None) is not None
    found = chatwoot_record(s, conversation_id)
    usable = found is not None and found.get("inbox_id") == inbox_id
    if usable and adopted:
        # The bridge's own messages there decide over the attribute an agent may have typed (issue 18).
        shown = bridge_items(s, kind, conversation_id, found)
        usable = shown is not None and owner(
            external_id, shown, attribute_confirmed=names_item(found, kind, external_id, inbox_id),
            claimed_elsewhere=s.db.links.others_using(kind, external_id, conversation_id))[0] == external_id \
            and (bool(shown) or names_buyer(found, data.get("buyer_id")))  # the attribute alone: this buyer's?
    if usable:
        if data.pop(TRIED, None) is not None or adopted:  # its create is no longer waited for: this is the one
            s.db.links.update(kind, external_id, s.clock(), data=data)
        return dict(link, data=data)
    log.warning("remembered conversation not usable %s=%s conversation=%s: %s", kind, external_id, conversation_id,
                "gone" if found is None else "in another inbox" if found.get("inbox_id") != inbox_id
                else "another item's in chatwoot")
    # The create's time stays: a create Chatwoot still holds is waited for before another is made.
    s.db.links.update(kind, external_id, s.clock(), conversation_id=None, data=data)
    return dict(link, conversation_id=None, data=data)


def forget_contact(s: Services, buyer_id, contact_id: int) -> None:
    """The remembered contact is gone (deleted, or merged into another): the next
    ensure_contact finds the buyer again by identifier (a merge's surviving contact
    inherits it) or creates a new contact."""
    with s.locks.hold(buyer_lock(buyer_id)):
        _forget_contact(s, buyer_id, contact_id)


def _forget_contact(s: Services, buyer_id, contact_id: int) -> None:
    key = str(buyer_id)
    link = s.db.links.get("buyer", key)
    if link and link["contact_id"] == contact_id:
        s.db.links.update("buyer", key, s.clock(), status="pending", contact_id=None, data={})
        log.warning("contact gone in chatwoot buyer=%s contact=%s: finding or creating it again", buyer_id, contact_id)


def open_conversation(s: Services, *, kind: str, external_id: str, inbox_id: int, buyer_id, nickname: str | None,
                      custom_attributes: dict, mark_seen: float | None = None) -> tuple[int, int, bool]:
    """The buyer's contact and the conversation for `kind/external_id`. Returns (contact id,
    conversation id, created now).

    `mark_seen`: the item's watermark as the caller read it with the item (its `updated_at`, or
    NOT_CLOSED). An erasure (forget-buyer) or a prune since then, which writes a closed mark, leaves
    the caller holding an old copy of the item in memory: nothing is made or recorded from it
    (erased_meanwhile). Checked before the contact, and again as the row's intent is recorded.

    A remembered contact an agent deleted or merged away answers 404 when a conversation
    is created for it (422 when a merge moved its contact_inbox to the surviving contact):
    the contact is then found again by identifier, or created, once.
    """
    for attempt in range(3):
        if mark_seen is not None and s.db.links.closed_since(kind, external_id, mark_seen):
            raise erased_meanwhile(kind, external_id)
        contact_id, source_id = ensure_contact(s, buyer_id, nickname, inbox_id)
        try:
            conversation_id, fresh = ensure_conversation(
                s, kind=kind, external_id=external_id, inbox_id=inbox_id, contact_id=contact_id,
                source_id=source_id, custom_attributes=custom_attributes, buyer_id=buyer_id, mark_seen=mark_seen)
            return contact_id, conversation_id, fresh
        except PermanentError as exc:
            if attempt == 2 or exc.status not in (404, 422):
                raise
            if exc.status == 422 and source_id == source_ids.buyer(buyer_id):
                _own_source(s, buyer_id, contact_id, inbox_id)
            else:
                forget_contact(s, buyer_id, contact_id)
    raise AssertionError("unreachable")


def _own_source(s: Services, buyer_id, contact_id: int, inbox_id: int) -> None:
    """The buyer's usual source id in this inbox belongs to another contact (a merge of two
    buyers' contacts moved it there): this contact gets one of its own, remembered per inbox."""
    with s.locks.hold(buyer_lock(buyer_id)):
        _own_source_locked(s, buyer_id, contact_id, inbox_id)


def _own_source_locked(s: Services, buyer_id, contact_id: int, inbox_id: int) -> None:
    source_id = source_ids.buyer_for_contact(buyer_id, contact_id)
    _add_inbox(s, contact_id, inbox_id, source_id)
    link = s.db.links.get("buyer", str(buyer_id))
    if link and link["contact_id"] == contact_id:
        sources = dict(link["data"].get("sources") or {}, **{str(inbox_id): source_id})
        s.db.links.update("buyer", str(buyer_id), s.clock(), data=dict(link["data"], sources=sources))
    log.warning("contact gets its own inbox source buyer=%s contact=%s inbox=%s", buyer_id, contact_id, inbox_id)


def open_with_buyer_words(s: Services, conversation_id: int) -> None:
    """Buyer's words this sync just put into the conversation (a question, a claim, a sale's messages)
    are in: it is set open, once they are in. One made by this sync showed in Chatwoot empty until
    then, and an agent may have resolved it; one already there may have been resolved while they
    were being mirrored. Either way they would wait unseen in a resolved conversation (issue 18;
    the chaos soak's seed 20261129, conversation 69). Chatwoot does not reopen a conversation for
    an incoming message the API creates."""
    s.chatwoot.set_status(conversation_id, "open")


def forget_conversation(s: Services, kind: str, external_id: str, conversation_id: int, **data) -> None:
    """An agent deleted the conversation: the link goes back to pending without it, so the
    next ensure_conversation creates a new one (`data` is merged into the link's data)."""
    link = s.db.links.get(kind, external_id)
    if link and link["conversation_id"] == conversation_id:
        s.db.links.update(kind, external_id, s.clock(), status="pending", conversation_id=None,
                          data=dict(link["data"], **data))


def continue_in_new_conversation(s: Services, kind: str, external_id: str, conversation_id: int,
                                 flow_log: logging.Logger) -> None:
    """An agent deleted the sale's or claim's conversation (or its contact): continue in a new one.

    1. The link forgets the conversation, remembering it as removed.
    2. The flow makes a new one as for any sale or claim not in Chatwoot yet (the caller's next step).
    3. In it, say_removed tells the agent why the messages already mirrored are not there, and
       where the whole history is. Those still to mirror go to the new one.
    """
    flow_log.warning("conversation deleted in chatwoot %s=%s conversation=%s: continuing in a new one", kind,
                     external_id, conversation_id)
    forget_conversation(s, kind, external_id, conversation_id, **{REMOVED: conversation_id})


def say_removed(s: Services, kind: str, external_id: str, conversation_id: int, of: str, url: str,
                fresh: bool) -> None:
    """Step 3 above, in the conversation just made (`fresh`) or found; nothing when none was removed.
    `of`: whose conversation it was ("desta venda")."""
    data = (s.db.links.get(kind, external_id) or {}).get("data") or {}
    removed = data.get(REMOVED) or data.get("removed")  # "removed": how claims kept it before
    if removed:
        ensure_note(s, conversation_id, REMOVED_NOTE.format(of=of, url=url),
                    source_ids.note(kind, external_id, "removed", removed), look_first=not fresh)
