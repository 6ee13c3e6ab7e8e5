"""Post-sale messages: Mercado Livre → Chatwoot, one conversation per pack.

Threads are read with `mark_as_read=false`; buyer messages are marked read only after
every one of them is in Chatwoot, so the unread list itself is the retry queue: a crash
leaves the thread unread and the next cycle finishes it. Each message is preceded by an
intent row; a row still `pending` means "look for its source_id before creating".

Marking read re-reads pages of the thread, and Mercado Livre marks whatever is on them
now, including a message that arrived after our read: every such message is mirrored
from the mark-read answer itself, and a flag set before the mark-read (cleared after)
makes the next poll sync the thread again if we crash in between.

The unread list misses a message read on Mercado Livre's site or app before we saw
it. A sweep re-reads, a few per poll, the threads of recent sales (the orders search,
one page per poll) and of sales the bridge synced: one cheap read of the message count,
and a full read only when the count moved.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone

from bridge import failures, source_ids
from bridge.http import SETTLE, ApiError, PermanentError, TransientError
from bridge.paging import Pages
from bridge.rules import own_parts
from bridge.rules.dates import parse_date
from bridge.rules.sale import sale_context
from bridge.services import Services
from bridge.sync import moderation
from bridge.sync.contacts import (
    CONTINUED_AT_MOST,
    NOT_CLOSED,
    continue_in_new_conversation,
    is_gone,
    mark_conversation_created,
    open_conversation,
    open_with_buyer_words,
    say_removed,
)
from bridge.sync.ensure import fetch_files, mirror_message
from mercado_livre_api import MELI_AGENT_ID, ReauthorizationRequired

log = logging.getLogger("bridge.messages")

MODERATION_FIELD = "message_moderation"

PAGE = 10
MAX_PAGES = 100
# Moderation usually acts within minutes of a message being accepted.
MODERATION_CHECK_AFTER = 120.0
MODERATION_RECHECK_AFTER = 900.0  # a second read: moderation taking more than a few minutes is not rare
MODERATION_CHECK_UNTIL = 1800.0
# Sweep for messages read elsewhere: bounded per poll (1 orders search page + SWEEP_THREADS reads).
SWEEP_DAYS = 14.0  # a sale is swept this long after its last sign of life
SWEEP_THREADS = 20
SWEEP_RECHECK = 900.0  # seconds between two reads of the same quiet thread
ORDERS_PAGE = 50
ORDERS_CURSOR = "postsale_orders_search"
ORDERS_OVERLAP = 600.0  # seconds each pass re-covers: orders search indexing lags
PACK_RESOURCE = re.compile(r"^/packs/(\d+)/sellers/(\d+)")
SALE_URL = "https://www.mercadolivre.com.br/vendas/{order_id}/detalhe"


# ---- pure decisions -------------------------------------------------------------------------------

def pack_ids_from_unread(results: list[dict]) -> list[str]:
    ids = []
    for result in results:
        match = PACK_RESOURCE.match(str(result.get("resource") or ""))
        if match and match.group(1) not in ids:
            ids.append(match.group(1))
    return ids


def in_order(messages: list[dict]) -> list[dict]:
    """Chronological; Mercado Livre's page order is not relied on."""
    return sorted(messages, key=lambda m: (str((m.get("message_date") or {}).get("created") or ""), str(m["id"])))


def is_rejected(message: dict) -> bool:
    return moderation.is_rejected(message, MODERATION_FIELD)


def moderation_reason(message: dict) -> str:
    return moderation.reason(message, MODERATION_FIELD)


def messages_to_mirror(messages: list[dict], seller_id: int, known_ids: set[str],
                       bridge_ids: set[str], in_doubt: list[str] = ()) -> list[tuple[dict, str]]:
    """(message, 'incoming' | 'outgoing') for each message Chatwoot does not have yet.

    Buyer messages come in; seller messages sent outside Chatwoot go out as mirrors;
    messages the bridge itself sent are already there as the agent's own message.
    A seller message with the text of a reply part in flight waits: it may be that
    part, sent but not yet recorded.
    """
    plan = []
    for message in in_order(messages):
        mid = str(message["id"])
        if mid in known_ids or mid in bridge_ids or own_parts.sale_message_in_doubt(message, seller_id, in_doubt):
            continue
        sender = str((message.get("from") or {}).get("user_id"))
        plan.append((message, "outgoing" if sender == str(seller_id) else "incoming"))
    return plan


def covered_by_watermark(messages: list[dict], mark: dict | None) -> set[str]:
    """Ids of the messages a closed watermark stands for: handled before their rows were pruned
    or erased, never imported again. A message without a usable date is not covered."""
    if not mark or mark.get("closed_at") is None or mark.get("last_message_at") is None:
        return set()
    covered = set()
    for message in messages:
        created = parse_date((message.get("message_date") or {}).get("created"))
        if str(message["id"]) == mark.get("last_message_id") or (created is not None
                                                                  and created <= mark["last_message_at"]):
            covered.add(str(message["id"]))
    return covered


def last_handled(messages: list[dict]) -> tuple[str | None, float | None]:
    """(id, Mercado Livre date) of the newest message: the thread's watermark once it is handled."""
    if not messages:
        return None, None
    last = in_order(messages)[-1]
    return str(last["id"]), parse_date((last.get("message_date") or {}).get("created"))


def is_from_seller(message: dict, seller_id: int) -> bool:
    return str((message.get("from") or {}).get("user_id")) == str(seller_id)


def pages_to_mark(messages: list[dict], seller_id: int) -> list[int]:
    """Offsets of the PAGE-sized pages holding unread buyer messages (message i sat at offset i)."""
    return sorted({i // PAGE * PAGE for i, m in enumerate(messages)
                   if not is_from_seller(m, seller_id) and not (m.get("message_date") or {}).get("read")})


def marked_unmirrored(page: dict, seller_id: int, mirrored: set[str]) -> list[dict]:
    """Buyer messages a mark-read answer shows (so now read) that Chatwoot does not have."""
    return [m for m in page.get("messages") or []
            if not is_from_seller(m, seller_id) and str(m.get("id")) not in mirrored]


def next_orders_cursor(cursor: dict, got: int, total: int, now: float) -> dict:
    """After one page of the orders search: the next page, or a new pass from when this one began."""
    offset = cursor["offset"] + got
    if got and offset < total:
        return dict(cursor, offset=offset)
    return {"from": cursor["started"] - ORDERS_OVERLAP, "offset": 0, "started": None}


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000-00:00")


def message_content(message: dict, direction: str) -> str:
    body = message.get("text") or ""
    if is_rejected(message):
        who = "do comprador" if direction == "incoming" else "do vendedor"
        outcome = " O comprador não a recebeu." if direction == "outgoing" else ""
        body = moderation.blocked(who, moderation_reason(message), outcome, body)
    if direction == "outgoing":
        body = f"{body}\n\n(enviada pelo Mercado Livre, fora do Chatwoot)".strip()
    return body


def is_migrated(messages: list[dict]) -> bool:
    agent = str(MELI_AGENT_ID)
    return any(str((m.get(side) or {}).get("user_id")) == agent for m in messages for side in ("from", "to"))


def sale_attributes(pack_id: str, orders: list[dict]) -> dict:
    titles = []
    for order in orders:
        for line in order.get("order_items") or []:
            title = (line.get("item") or {}).get("title")
            if title and title not in titles:
                titles.append(title)
    total = round(sum(float(o.get("total_amount") or 0) for o in orders), 2)
    first = orders[0]["id"] if orders else pack_id
    return {
        "meli_pack_id": str(pack_id),
        "meli_order_ids": ",".join(str(o["id"]) for o in orders),
        "meli_item_titles": " | ".join(titles),
        "meli_total_amount": total,
        "meli_sale_url": SALE_URL.format(order_id=first),
    }


# ---- I/O -------------------------------------------------------------------------------------------

def sync_messages(s: Services) -> dict:
    """One poll of threads with unread buyer messages, then the sweep for messages read elsewhere."""
    seller_id = s.meli.seller_id()
    counts = {"resumed": resume_interrupted_marks(s, seller_id)}
    packs = pack_ids_from_unread(s.meli.unread_threads())
    counts.update(threads=len(packs), created=0)
    # A thread that keeps failing waits for its turn (it stays unread meanwhile); the others go on.
    batch = failures.Batch(s, "pack")
    batch.keep_only(set(packs))
    synced = set()
    for pack_id in batch.due(packs):
        ok, created = batch.run(pack_id, sync_pack, s, pack_id, seller_id)
        counts["created"] += created or 0
        if ok:
            synced.add(pack_id)
    # Only a thread read this poll stands for its replies' moderation check (not one that failed).
    counts["moderation_checks"] = check_recent_replies(s, seller_id, skip=synced)
    counts.update(sweep_threads(s, seller_id))
    counts["item_errors"] = batch.failed
    return counts


def resume_interrupted_marks(s: Services, seller_id: int) -> int:
    """A mark-read still flagged: we died between marking and mirroring what it marked, or its
    answer was lost.

    1. The thread is synced again (read without marking, what is new mirrored).
    2. A mark-read whose answer was lost may still be held by Mercado Livre and applied later,
       marking read a message written after step 1's read: until it has settled (SETTLE from
       when it was flagged) the thread stays flagged and is read again at the next poll.
    """
    resumed = 0
    for pack_id in s.db.threads.marking():
        if s.stopping.is_set():
            break
        with s.locks.hold(f"pack:{pack_id}"):
            # Another worker of this process may have just finished it.
            since = (s.db.threads.get(pack_id) or {}).get("marking_since")
            if since is None:
                continue
            log.warning("thread mark-read was interrupted, syncing again pack=%s", pack_id)
            try:
                _sync_pack(s, pack_id, seller_id, None)
            except ReauthorizationRequired:
                raise
            except Exception as exc:  # noqa: BLE001 — whatever it is, the unread list must still be polled
                # Still flagged: tried again next poll, without holding up the unread list.
                log.error("interrupted thread not synced yet pack=%s: %s", pack_id, failures.describe(exc))
                continue
            _keep_unsettled_mark(s, pack_id, since)
            resumed += 1
    return resumed


def sweep_threads(s: Services, seller_id: int) -> dict:
    """Find messages read on Mercado Livre's site before the bridge saw them, at a bounded cost per poll."""
    counts = {"sales_found": 0, "swept": 0, "swept_changed": 0}
    try:
        counts["sales_found"] = _discover_sales(s, seller_id)
    except ReauthorizationRequired:
        raise
    except ApiError as exc:
        log.warning("orders search failed, sweeping the sales already known: %s", exc.short())
    now = s.clock()
    for row in s.db.threads.due(now - SWEEP_DAYS * 86400, now - SWEEP_RECHECK, SWEEP_THREADS):
        if s.stopping.is_set():
            break
        counts["swept"] += 1
        try:
            counts["swept_changed"] += _sweep_one(s, row, seller_id)
        except ReauthorizationRequired:
            raise
        except ApiError as exc:
            # Back of the queue either way: a sale whose thread keeps failing, first in the
            # sweep's order, would otherwise stop every other sale from being swept.
            s.db.threads.mark_checked(row["pack_id"], s.clock())
            if exc.transient:
                # The unread poll already ran; the sweep carries on with the next sale next time.
                log.warning("thread sweep stopped pack=%s: %s", row["pack_id"], exc.short())
                break
            log.error("thread sweep skipped pack=%s until its next turn: %s", row["pack_id"], exc.short())
        except Exception as exc:  # noqa: BLE001 — a thread shaped like nothing we know must not stop the sweep
            s.db.threads.mark_checked(row["pack_id"], s.clock())
            log.error("thread sweep skipped pack=%s until its next turn: %s", row["pack_id"],
                      failures.describe(exc))
    return counts


def _discover_sales(s: Services, seller_id: int) -> int:
    """One page of the orders search: sales changed lately join the sweep."""
    now = s.clock()
    cursor = s.db.threads.cursor(ORDERS_CURSOR) or {"from": now - SWEEP_DAYS * 86400, "offset": 0, "started": None}
    if cursor.get("started") is None:
        cursor["started"] = now
    page = s.meli.orders_search(seller_id, iso_utc(cursor["from"]), offset=cursor["offset"], limit=ORDERS_PAGE)
    orders = page.get("results") or []
    found = {}
    for order in orders:
        if not isinstance(order, dict) or not order.get("id"):
            continue
        pack_id = str(order.get("pack_id") or order["id"])
        changed = parse_date(order.get("date_last_updated")) or now
        found[pack_id] = max(found.get(pack_id, 0.0), min(changed, now))
    s.db.threads.record_discovered(found)
    total = int((page.get("paging") or {}).get("total") or 0)
    following = next_orders_cursor(cursor, len(orders), total, now)
    if following["offset"] == 0:
        s.db.threads.prune(now - 2 * SWEEP_DAYS * 86400)
    s.db.threads.set_cursor(ORDERS_CURSOR, following, now)
    return len(found)


def _sweep_one(s: Services, row: dict, seller_id: int) -> int:
    """Read one thread's message count; sync it only when it moved. Returns 1 when synced."""
    pack_id = row["pack_id"]
    try:
        page = s.meli.thread_page(pack_id, seller_id, offset=0, limit=1)
    except PermanentError as exc:
        if exc.status not in (403, 404):
            raise
        s.db.threads.mark_checked(pack_id, s.clock())  # no thread for this sale (yet)
        return 0
    total = int((page.get("paging") or {}).get("total") or 0)
    if total == row["total"] or (total == 0 and row["total"] is None):
        # Only the time: this read holds no lock, and a sync of the same thread in another
        # worker may have a mark-read in flight whose flag must outlive a crash.
        s.db.threads.mark_checked(pack_id, s.clock())
        return 0
    log.info("thread changed outside the unread list pack=%s messages=%d (was %s)", pack_id, total, row["total"])
    sync_pack(s, pack_id, seller_id, require_buyer=True)
    return 1


def check_recent_replies(s: Services, seller_id: int, skip: set[str]) -> int:
    """The sale's adapter of moderation.check_recent_replies: its thread read a few minutes after a
    reply was delivered, and again a quarter of an hour later (moderation taking that long is not rare)."""
    return moderation.check_recent_replies(s, "message", lambda pack_id: sync_pack(s, pack_id, seller_id), skip,
                                           after=MODERATION_CHECK_AFTER, until=MODERATION_CHECK_UNTIL,
                                           again_after=MODERATION_RECHECK_AFTER, target_name="pack", log=log)


def sync_message_resource(s: Services, message_id: str) -> str:
    """A `messages` notification: find the message's pack and sync that thread."""
    message = s.meli.message(message_id)
    resources = {r.get("name"): str(r.get("id")) for r in message.get("message_resources") or []}
    pack_id = resources.get("packs") or resources.get("orders")
    if not pack_id:
        return "no pack"
    created = sync_pack(s, pack_id, s.meli.seller_id(), resource_kind="orders" if "packs" not in resources
                        else "packs")
    return f"pack {pack_id}: {created} new"


def read_thread(s: Services, pack_id: str, seller_id: int) -> tuple[list[dict], dict]:
    messages, first, seen = [], None, set()
    for page, batch in Pages(lambda offset: s.meli.thread_page(pack_id, seller_id, offset=offset, limit=PAGE),
                             items=lambda page: page.get("messages") or [], max_pages=MAX_PAGES):
        first = first or page
        # A message arriving between two page reads can push one onto the next page again:
        # counted twice, the thread's recorded size would hide the new message from the sweep.
        messages.extend(m for m in batch if str(m.get("id")) not in seen)
        seen.update(str(m.get("id")) for m in batch)
    return messages, first or {}


def sync_pack(s: Services, pack_id: str, seller_id: int, resource_kind: str | None = None,
              require_buyer: bool = False) -> int:
    """Bring one thread into Chatwoot; mark it read when everything is stored. Returns messages created.

    `require_buyer`: a sale not in Chatwoot yet gets a conversation only once the buyer wrote
    (the sweep must not open one for every sale the seller greeted on the site).
    """
    with s.locks.hold(f"pack:{pack_id}"):
        since = (s.db.threads.get(pack_id) or {}).get("marking_since")
        try:
            created = _sync_pack(s, pack_id, seller_id, resource_kind, require_buyer)
        except TransientError as exc:
            flagged = (s.db.threads.get(pack_id) or {}).get("marking_since")
            if since is not None or flagged is None:
                raise
            # This sync marked the thread read and then failed (the mark's answer lost, or what it marked
            # not stored): what the mark showed as read is the bridge's to show now. Left to the next poll's
            # resume_interrupted_marks, it waited for a whole poll of the unread list, or a restart.
            # Read without marking: a mark whose answer was lost is not repeated at once (mark_thread_read).
            log.warning("thread mark-read interrupted, reading it again now pack=%s: %s", pack_id,
                        failures.describe(exc))
            created = _sync_pack(s, pack_id, seller_id, resource_kind, require_buyer, marking=False)
            since = flagged
        # Whichever sync reads the thread first, a mark-read whose answer was lost is still to settle.
        _keep_unsettled_mark(s, pack_id, since)
        return created


def _keep_unsettled_mark(s: Services, pack_id: str, since: float | None) -> None:
    """After a sync that cleared it: the thread stays flagged while a mark-read flagged at `since` (its answer
    lost, or its sync dead) may still be applied, marking read a message written after this read."""
    if since is not None and s.clock() - since < SETTLE and s.db.threads.get(pack_id) is not None:
        s.db.threads.begin_marking(pack_id, since)


def _sync_pack(s: Services, pack_id: str, seller_id: int, resource_kind: str | None,
               require_buyer: bool = False, marking: bool = True) -> int:
    started, read_at = time.monotonic(), s.clock()
    messages, first = read_thread(s, pack_id, seller_id)
    blocked = (first.get("conversation_status") or {}).get("status") == "blocked"
    migrated = is_migrated(messages)
    link = s.db.links.get("pack", pack_id)
    last_id = str(in_order(messages)[-1]["id"]) if messages else None
    # Pruned by retention or erased: what the watermark covers stays out of Chatwoot.
    mark = s.db.watermarks.get("pack", pack_id)
    covered = covered_by_watermark(messages, mark)
    mark_seen = (mark or {}).get("updated_at") or NOT_CLOSED
    # Nor what is already in Chatwoot: mirrored by a sync an erasure overtook, after the erasure's mark.
    shown = s.db.links.created_among("message", [str(m["id"]) for m in messages]) if covered else set()
    # Nor a send of ours that landed with an id we never learnt (held past the settle, or erased in flight).
    strays = s.db.replies.strays("message", pack_id)
    stray_ids = {str(m["id"]) for m in messages if own_parts.sale_stray_copy(m, seller_id, strays)}
    new_messages = [m for m in messages if str(m["id"]) not in covered | shown | stray_ids]
    if (not link or link["status"] != "created") and (
            (covered and not new_messages)
            or (require_buyer and all(is_from_seller(m, seller_id) for m in new_messages))):
        s.db.threads.mark_synced(pack_id, s.clock(), len(messages), last_id, changed=False)
        return 0
    if not link or link["status"] != "created":
        # One found rather than made (a create whose answer was lost, adopted at an agent's reply)
        # may have been resolved by an agent since: a buyer message reopens it as usual.
        conversation_id, link, found = _ensure_pack_conversation(s, pack_id, messages, resource_kind, blocked,
                                                                 migrated, mark_seen)
        reopen = found
    else:
        conversation_id = link["conversation_id"]
        reopen = True
        data = link["data"]
        if data.get("blocked") != blocked or (migrated and not data.get("migrated")):
            s.db.links.update("pack", pack_id, s.clock(),
                              data=dict(data, blocked=blocked, migrated=bool(migrated or data.get("migrated"))))

    ids = [str(m["id"]) for m in messages]
    # In this order: a part the outbox records as sent between the two reads is then in bridge_ids.
    in_doubt = own_parts.texts_in_doubt(s, "message", pack_id)
    bridge_ids = s.db.replies.sent_ids(ids)
    own = bridge_ids | stray_ids

    def known_now() -> set[str]:
        rows = {i for i in ids if (s.db.links.get("message", i) or {}).get("status") == "created"}
        # A prune (the housekeeping thread) or an erasure since the thread was read deleted those rows and
        # wrote the closed mark in one commit: read after them, the mark stands for what they said, or
        # the whole thread would be taken for new (mirrored again, late from the mark-read's pages).
        return covered | rows | covered_by_watermark(messages, s.db.watermarks.get("pack", pack_id))

    known = known_now()
    plan = messages_to_mirror(messages, seller_id, known, own, in_doubt)
    deferred = any(own_parts.sale_message_in_doubt(m, seller_id, in_doubt) for m in messages
                   if str(m["id"]) not in known | own)
    incoming = any(direction == "incoming" for _m, direction in plan)
    reopened = reopen and incoming
    created = 0
    gone: int | None = None  # the conversation found deleted (0: the one being opened to continue in)
    for attempt in range(CONTINUED_AT_MOST + 1):
        try:
            if gone is not None:
                # An agent deleted the conversation (or its contact), maybe the one made a moment
                # ago to continue in: continued in a new one now, not after the sale's backoff.
                if gone:
                    continue_in_new_conversation(s, "pack", pack_id, gone, log)
                gone = 0
                conversation_id, link, reopen = _ensure_pack_conversation(s, pack_id, messages, resource_kind,
                                                                          blocked, migrated, mark_seen)
                gone = None
                plan = messages_to_mirror(messages, seller_id, known_now(), own, in_doubt)
                incoming = any(direction == "incoming" for _m, direction in plan)
                reopened = reopen and incoming
            if reopened:
                # Before mirroring: once the messages are recorded, a crash would leave nothing
                # saying the conversation still has to be reopened. (A found one too.)
                s.chatwoot.set_status(conversation_id, "open")
            for message, direction in plan:
                _mirror(s, conversation_id, pack_id, message, direction)
                created += 1
            break
        except PermanentError as exc:
            if not is_gone(exc) or attempt == CONTINUED_AT_MOST:
                raise
            # One being opened (its note refused) is remembered by the sale's row: checked as it reopens.
            gone = conversation_id if gone is None else 0
    _report_moderated_replies(s, messages, bridge_ids, conversation_id)
    unread = [m for m in messages if not is_from_seller(m, seller_id) and not (m.get("message_date") or {}).get("read")]
    late: list[dict] = []
    if unread and marking:
        # Everything is stored: now Mercado Livre may show the buyer's messages as read.
        # Read again: a message that went into a conversation deleted mid-sync is in no plan left, yet shown.
        late = _mark_read(s, pack_id, seller_id, messages, known_now() | own | {str(m["id"]) for m, _d in plan})
        if late and reopen and not reopened:
            s.chatwoot.set_status(conversation_id, "open")
        for message in late:
            _mirror(s, conversation_id, pack_id, message, "incoming")
            created += 1
    if incoming or late:
        open_with_buyer_words(s, conversation_id)  # once more now they are in
    # A deferred message leaves the count unrecorded: the sweep comes back for it.
    s.db.threads.mark_synced(pack_id, s.clock(), None if deferred else len(messages) + len(late), last_id,
                             changed=bool(plan or late))
    if not deferred:
        s.db.watermarks.record_thread(pack_id, *last_handled(messages + late), read_at)
    if plan or unread:
        log.info("thread synced pack=%s conversation=%s new=%d marked_read=%d late=%d deferred=%s blocked=%s "
                 "migrated=%s in %dms", pack_id, conversation_id, created, len(unread), len(late), deferred,
                 blocked, migrated, (time.monotonic() - started) * 1000)
    return created


def _mark_read(s: Services, pack_id: str, seller_id: int, messages: list[dict], mirrored: set[str]) -> list[dict]:
    """Mark the pages holding unread buyer messages; returns the buyer messages those pages
    marked that Chatwoot does not have yet (arrived since our read), oldest first."""
    s.db.threads.begin_marking(pack_id, s.clock())
    late: dict[str, dict] = {}
    for offset in pages_to_mark(messages, seller_id):
        page = s.meli.mark_thread_read(pack_id, seller_id, offset=offset, limit=PAGE)
        for message in marked_unmirrored(page, seller_id, mirrored):
            late.setdefault(str(message["id"]), message)
    if late:
        log.warning("buyer messages arrived during the sync and were marked read; mirroring them now pack=%s "
                    "ml_messages=%s", pack_id, ",".join(late))
    return in_order(list(late.values()))


def _ensure_pack_conversation(s: Services, pack_id: str, messages: list[dict], resource_kind: str | None,
                              blocked: bool, migrated: bool, mark_seen: float | None = None) -> tuple[int, dict, bool]:
    """(conversation id, link, found: an existing conversation rather than one made now)."""
    sale = sale_context(s, pack_id, messages, resource_kind)
    inbox_id = s.settings.chatwoot_messages_inbox_id
    attributes = sale_attributes(pack_id, sale["orders"])
    contact_id, conversation_id, fresh = open_conversation(
        s, kind="pack", external_id=str(pack_id), inbox_id=inbox_id, buyer_id=sale["buyer_id"],
        nickname=sale["nickname"], custom_attributes=attributes, mark_seen=mark_seen)
    say_removed(s, "pack", pack_id, conversation_id, "desta venda", attributes["meli_sale_url"], fresh)
    data = {"buyer_id": sale["buyer_id"], "blocked": blocked, "migrated": migrated,
            "order_ids": [str(o["id"]) for o in sale["orders"]]}
    mark_conversation_created(s, "pack", pack_id, contact_id=contact_id, conversation_id=conversation_id, data=data)
    log.info("sale in chatwoot pack=%s buyer=%s conversation=%s orders=%s", pack_id, sale["buyer_id"],
             conversation_id, ",".join(data["order_ids"]))
    return conversation_id, s.db.links.get("pack", pack_id), not fresh


def _mirror(s: Services, conversation_id: int, pack_id: str, message: dict, direction: str) -> None:
    started = time.monotonic()
    mid = str(message["id"])
    existing, fresh, _files = mirror_message(
        s, "message", mid, conversation_id, source_ids.message(mid), message_content(message, direction), direction,
        lambda: _download_files(s, message), {"pack_id": str(pack_id), "direction": direction,
         # `at`: its Mercado Livre date, which an erasure's watermark must cover (db.privacy).
         "at": parse_date((message.get("message_date") or {}).get("created"))},
        crash="sale_message_created")
    log.info("message in chatwoot ml_message=%s pack=%s conversation=%s message=%s direction=%s files=%d in %dms%s",
             mid, pack_id, conversation_id, existing["id"], direction, len(message.get("message_attachments") or []),
             (time.monotonic() - started) * 1000, "" if fresh else " (reconciled)")


def _download_files(s: Services, message: dict) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, str]]]:
    def unavailable(exc: PermanentError) -> str:
        # A file Mercado Livre refuses for good (removed, expired) must not hold back the
        # message's text, nor every later message of the sale.
        log.warning("buyer file unavailable ml_message=%s status=%s", message.get("id"), exc.status)
        return "indisponível no Mercado Livre"
    return fetch_files(((a.get("original_filename") or a.get("filename") or "anexo", int(a.get("size") or 0),
                         lambda a=a: s.meli.download_attachment(a["filename"]))
                        for a in message.get("message_attachments") or []), unavailable)


def _report_moderated_replies(s: Services, messages: list[dict], bridge_ids: set[str], conversation_id: int) -> None:
    """The sale's adapter of moderation.report_blocked_reply: a reply part is known by its message id."""
    for message in messages:
        mid = str(message["id"])
        if mid not in bridge_ids or not is_rejected(message):
            continue

        def find_reply(mid=mid):
            reply = s.db.replies.by_remote_id(mid)
            if not reply:
                return None
            return reply, next((p["seq"] for p in s.db.replies.parts(reply["id"]) if p["remote_id"] == mid), None)

        moderation.report_blocked_reply(s, "moderation", mid, find_reply, moderation_reason(message), "O comprador",
                                        conversation_id, source_ids.note("moderation", mid), "moderation_reported",
                                        f"ml_message={mid}", log)
