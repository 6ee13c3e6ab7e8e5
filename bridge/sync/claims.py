"""Claims (reclamações): Mercado Livre → Chatwoot, one conversation per claim.

A claim's messages have no id: each is known by (sender_role, date_created, a hash of its
text). Every Chatwoot object is preceded by an intent row in `links` — `claim` for the
conversation, `claim_message` for each mirrored message, `claim_event` for each state
note — so a row still `pending` means "look for its source_id before creating".

A claim's `last_updated` is stored last, after everything it showed is in Chatwoot: a
crash half way leaves the old value, and the next poll syncs the claim again. An idle
poll is one search page of open claims: a claim is read only when its `last_updated`
moved, and a claim that left the open list is read once more to learn how it closed.

Messages the bridge sent come back in the claim's list with no id to match: a reply
part records a key made of the claim and a hash of its text, and each such message is
adopted by the first sent part with that key not adopted yet; a respondent message equal
to a part still in flight waits (it may be that part, sent but not recorded yet).
"""

from __future__ import annotations

import logging
import os
import time

from bridge import failures, source_ids, text
from bridge.http import ApiError, PermanentError
from bridge.paging import Pages
from bridge.rules import own_parts
from bridge.rules.claims import (  # noqa: F401 — also this flow's names, as before the move
    CLAIM_URL,
    REPLY_TO_ATTRIBUTE,
    adopted_parts,
    against_seller,
    allowed_receivers,
    in_order,
    message_key,
    message_keys,
    respondent,
    seller_actions,
    sent_key,
    text_hash,
)
from bridge.rules.conversations import confirmed_conversation
from bridge.rules.dates import parse_date
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
from bridge.sync.ensure import ensure_message, fetch_files, mirror_message
from bridge.sync.sales import SALE_URL
from db_manager import crashpoint
from mercado_livre_api import ReauthorizationRequired

log = logging.getLogger("bridge.claims")

SEARCH_PAGE = 50
MAX_SEARCH_PAGES = 40
DUE_SOON = 24 * 3600.0
# An optional fact (does the claim affect the reputation?) whose lookup failed is asked again this often.
FACT_RETRY = 600.0
# A closed claim with a message left for later (a translation pending) is read again this often.
LEFT_UNREAD_RETRY = 120.0
REASON_MAX_AGE = 7 * 86400.0  # the cache's own lifetime (Database.prune)
# Moderation usually acts within minutes of a message being accepted (as for post-sale replies).
MODERATION_CHECK_AFTER = 120.0
MODERATION_CHECK_UNTIL = 1800.0
LABEL = "reclamacao"
MEDIATOR_PREFIX = "Mediação do Mercado Livre"
TYPES = {"mediations": "reclamação", "return": "devolução", "cancel_purchase": "cancelamento da compra",
         "change": "troca", "service": "serviço"}
STAGES = {"claim": "reclamação (comprador e vendedor)", "dispute": "mediação do Mercado Livre",
          "recontact": "recontato", "none": "sem etapa"}
ACTIONS = {
    "send_message_to_complainant": "responder ao comprador",
    "send_message_to_mediator": "responder à mediação",
    "open_dispute": "pedir mediação do Mercado Livre",
    "refund": "devolver o dinheiro",
    "allow_partial_refund": "oferecer reembolso parcial",
    "allow_return": "aceitar a devolução",
    "return_review": "revisar a devolução recebida",
    "send_tracking_number": "informar o código de rastreio",
}
AFFECTS = {"affected": "sim", "not_affected": "não", "not_applies": "não se aplica"}
BENEFITED = {"complainant": "o comprador", "respondent": "o vendedor (você)", "both": "os dois"}


# ---- pure decisions -------------------------------------------------------------------------------

def extension(name) -> str:
    """What a log line may say of a file: its extension, never its name."""
    return os.path.splitext(str(name))[1].lstrip(".").lower()[:10] or "-"


def is_rejected(message: dict) -> bool:
    return moderation.is_rejected(message, "moderation")


def moderation_reason(message: dict) -> str:
    return moderation.reason(message, "moderation")


def complainant_id(claim: dict):
    player = next((p for p in claim.get("players") or [] if isinstance(p, dict) and p.get("role") == "complainant"),
                  {})
    return player.get("user_id")


def next_action(claim: dict) -> tuple[str | None, str | None]:
    """(action, due date) the seller must act on first: mandatory ones, then the earliest due."""
    actions = seller_actions(claim)
    if not actions:
        return None, None
    best = sorted(actions, key=lambda a: (not a.get("mandatory"), parse_date(a.get("due_date")) or float("inf")))[0]
    return best["action"], best.get("due_date") if isinstance(best.get("due_date"), str) else None


def action_name(action: str | None) -> str:
    return ACTIONS.get(action, action.replace("_", " ") if action else "nenhuma")


def when(date: str | None, zone: str) -> str:
    """A Mercado Livre date (UTC) as agents read it: local time, in `zone` (DISPLAY_TIMEZONE)."""
    return text.local_time(parse_date(date), zone) or "sem prazo"


def reason_label(reason_id, detail: str | None) -> str:
    """The claim's reason as agents read it: Mercado Livre's sentence, its id kept beside it (or alone,
    while the sentence is unknown)."""
    reason_id = str(reason_id or "")
    if detail and reason_id:
        return f"{detail} ({reason_id})"
    return detail or reason_id or "não informado"


def claim_attributes(claim: dict, order: dict | None, affects: str | None, *, zone: str,
                     reason: str | None = None) -> dict:
    """`reason`: the reason's readable sentence, when known."""
    action, due = next_action(claim)
    order_id = str(claim.get("resource_id") or "") if claim.get("resource") == "order" else ""
    if order:
        order_id = str(order.get("id") or order_id)
    pack_id = str((order or {}).get("pack_id") or order_id or "")
    return {
        "meli_claim_id": str(claim.get("id")),
        "meli_order_id": order_id,
        "meli_pack_id": pack_id,
        "meli_claim_type": str(claim.get("type") or ""),
        "meli_claim_stage": str(claim.get("stage") or ""),
        "meli_claim_status": str(claim.get("status") or ""),
        "meli_claim_reason": reason_label(claim.get("reason_id"), reason) if claim.get("reason_id") or reason else "",
        "meli_claim_next_action": action or "",
        "meli_claim_due_date": when(due, zone) if due else "",
        "meli_claim_affects_reputation": affects or "",
        "meli_claim_url": CLAIM_URL.format(claim_id=claim.get("id")),
        "meli_sale_url": SALE_URL.format(order_id=order_id) if order_id else "",
    }


def summary_message(claim: dict, order: dict | None, *, zone: str, reason: str | None = None) -> str:
    """The bridge's own account of the claim: a private note, never written as the buyer."""
    kind = TYPES.get(claim.get("type"), str(claim.get("type") or "reclamação"))
    lines = [f"O comprador abriu uma {kind} no Mercado Livre (reclamação {claim.get('id')})."]
    for line in (order or {}).get("order_items") or []:
        title = (line.get("item") or {}).get("title") or (line.get("item") or {}).get("id") or "item"
        lines.append(f"- {line.get('quantity') or 1} x {title}")
    lines.append(f"Motivo: {reason_label(claim.get('reason_id'), reason)}")
    action, due = next_action(claim)
    if action:
        lines.append(f"Próxima ação do vendedor: {action_name(action)} ({when(due, zone)})")
    order_id = (order or {}).get("id") or (claim.get("resource_id") if claim.get("resource") == "order" else None)
    if order_id:
        lines.append(f"Venda: {SALE_URL.format(order_id=order_id)}")
    lines.append(f"Reclamação: {CLAIM_URL.format(claim_id=claim.get('id'))}")
    return "\n".join(lines)


def message_content(message: dict, direction: str) -> str:
    role = message.get("sender_role")
    body = message.get("message") or ""
    if is_rejected(message):
        who = {"complainant": "do comprador", "mediator": "da mediação"}.get(role, "do vendedor")
        outcome = " O destinatário não a recebeu." if role == "respondent" else ""
        body = moderation.blocked(who, moderation_reason(message), outcome, body)
    if role == "mediator":
        body = f"{MEDIATOR_PREFIX}: {body}"
    if direction == "outgoing":
        to = " para a mediação" if message.get("receiver_role") == "mediator" else ""
        body = f"{body}\n\n(enviada{to} pelo Mercado Livre, fora do Chatwoot)".strip()
    return body


def state_events(old: dict, claim: dict, zone: str) -> list[tuple[str, str]]:
    """(event key, private note) for each change since `old` (the claim's link data)."""
    events = []
    stage, status = claim.get("stage"), claim.get("status")
    if stage != old.get("stage") and status != "closed":
        if stage == "dispute":
            text = ("O Mercado Livre abriu a mediação desta reclamação: um mediador entrou na conversa. "
                    f"Para responder à mediação, defina o atributo {REPLY_TO_ATTRIBUTE} = mediador nesta conversa.")
        else:
            text = f"A reclamação mudou de etapa: {STAGES.get(stage, stage)}."
        events.append((f"stage:{stage}", text))
    action, due = next_action(claim)
    if status != "closed" and due and old.get("due") and due != old.get("due"):
        events.append((f"due:{due}", f"O prazo do vendedor mudou: {action_name(action)} até {when(due, zone)}."))
    if status == "closed" and old.get("status") != "closed":
        events.append(("closed", closed_note(claim)))
    return events


def closed_note(claim: dict) -> str:
    resolution = claim.get("resolution") or {}
    benefited = resolution.get("benefited") or []
    if isinstance(benefited, str):
        benefited = [benefited]
    who = ", ".join(BENEFITED.get(str(b), str(b)) for b in benefited) or "não informado"
    reason = str(resolution.get("reason") or "não informado").replace("_", " ")
    return f"A reclamação foi encerrada no Mercado Livre. Resolução: {reason}. A favor de: {who}."


def after_watermark(messages: list[dict], mark: dict | None) -> list[dict]:
    """The messages a closed watermark does not stand for: those of a pruned or erased claim up
    to its last mirrored message's date are never imported again. A message without a usable
    date is not covered."""
    if not mark or mark.get("closed_at") is None or mark.get("last_message_at") is None:
        return messages
    return [m for m in messages if (parse_date(m.get("date_created")) or float("inf")) > mark["last_message_at"]]


def seen_since_pruned(mark: dict | None, summary: dict) -> bool:
    """A pruned or erased claim already read again at this `last_updated`: nothing to read."""
    return bool(mark and mark.get("closed_at") is not None and summary.get("last_updated")
                and mark.get("last_message_id") == summary.get("last_updated"))


def awaiting_seller(messages: list[dict]) -> bool:
    """The buyer or the mediator spoke last (or nobody yet): the seller owes an answer."""
    ordered = in_order(messages)
    return not ordered or ordered[-1].get("sender_role") != "respondent"


def left_unread(data: dict, updated_at: float, now: float) -> bool:
    """A closed claim whose last read left a message for later, last read LEFT_UNREAD_RETRY ago or more."""
    return data.get("status") == "closed" and bool(data.get("deferred")) and now - updated_at >= LEFT_UNREAD_RETRY


def due_soon(data: dict, now: float) -> bool:
    due = parse_date(data.get("due"))
    return (data.get("status") == "opened" and due is not None and due - now <= DUE_SOON
            and bool(data.get("awaiting_seller")))


# ---- I/O -------------------------------------------------------------------------------------------

def enabled(s: Services) -> bool:
    return bool(s.settings.chatwoot_claims_inbox_id)


def sync_claims(s: Services) -> dict:
    """One poll: a page of open claims; read only those that changed, and those that left the list."""
    if not enabled(s):
        return {}
    listed, complete = _open_claims(s)
    counts = {"claims": len(listed), "synced": 0}
    batch = failures.Batch(s, "claim")
    open_links = {link["external_id"]: link for link in s.db.links.by_status("claim", "created")
                  if link["data"].get("status") == "opened"}
    due = [cid for cid, summary in listed.items() if _changed(s, cid, summary)]
    # Closed with a message left for a later read (still being translated, or maybe our own part in
    # flight): no search lists it any more, so it is read again here until that message came in.
    due += [link["external_id"] for link in s.db.links.by_status("claim", "created")
            if left_unread(link["data"], link["updated_at"], s.clock()) and link["external_id"] not in listed]
    if complete:
        # Gone from the open list: closed (or out of reach). Read once more to learn how.
        due += [cid for cid in open_links if cid not in listed and cid not in due]
        batch.keep_only(set(due))
    synced = set()
    for claim_id in batch.due(due):
        ok, _ = batch.run(claim_id, sync_claim, s, claim_id)
        counts["synced"] += ok
        if ok:
            synced.add(claim_id)
    counts["deadlines"] = check_deadlines(s)
    counts["sales_pointed"] = point_sales(s)
    counts["facts_completed"] = retry_optional_facts(s)
    # Only a claim read this poll stands for its replies' moderation check: one that failed, or
    # waits in backoff, has not been read, and its check would be recorded done unread.
    counts["moderation_checks"] = check_recent_replies(s, skip=synced)
    counts["item_errors"] = batch.failed
    return counts


def _open_claims(s: Services) -> tuple[dict[str, dict], bool]:
    listed: dict[str, dict] = {}
    pages = Pages(lambda offset: s.meli.claims_search("opened", offset=offset, limit=SEARCH_PAGE),
                  items=lambda page: [c for c in page.get("data") or []
                                      if isinstance(c, dict) and str(c.get("id") or "").isdigit()],
                  max_pages=MAX_SEARCH_PAGES)
    seller_id = s.meli.seller_id()
    for _page, data in pages:
        for claim in data:
            if against_seller(claim, seller_id):
                listed[str(claim["id"])] = claim
            else:
                log.info("claim skipped: the seller is not its respondent claim=%s", claim["id"])
    return listed, pages.complete


def _changed(s: Services, claim_id: str, summary: dict) -> bool:
    link = s.db.links.get("claim", claim_id)
    if not link:
        return not seen_since_pruned(s.db.watermarks.get("claim", claim_id), summary)
    return link["status"] != "created" or link["data"].get("last_updated") != summary.get("last_updated")


def sync_claim_resource(s: Services, claim_id: str) -> str:
    """A `claims` notification."""
    if not enabled(s):
        return "claims off"
    created = sync_claim(s, claim_id)
    return f"claim {claim_id}: {created} new"


def sync_claim(s: Services, claim_id: str) -> int:
    with s.locks.hold(f"claim:{claim_id}"):
        return _sync_claim(s, str(claim_id))


def _sync_claim(s: Services, claim_id: str) -> int:
    started = time.monotonic()
    link = s.db.links.get("claim", claim_id)
    try:
        claim = s.meli.claim(claim_id)
    except PermanentError as exc:
        if exc.status not in (403, 404) or not link:
            raise
        # Out of reach now (another account's, or removed): stop following it.
        s.db.links.update("claim", claim_id, s.clock(), data=dict(link["data"], status="unavailable"))
        log.warning("claim no longer readable claim=%s status=%s", claim_id, exc.status)
        return 0
    if not against_seller(claim, s.meli.seller_id()):
        # Its own purchase's claim (or a claim id typed in a conversation): not one to answer as the store.
        if link:
            s.db.links.update("claim", claim_id, s.clock(), data=dict(link["data"], status="not_respondent"))
        log.warning("claim skipped: the seller is not its respondent claim=%s", claim_id)
        return 0
    messages = s.meli.claim_messages(claim_id)
    # Pruned by retention or erased: what the watermark covers stays out of Chatwoot, and a
    # new message starts a new conversation.
    mark = s.db.watermarks.get("claim", claim_id)
    fresh = after_watermark(messages, mark)
    if not link and mark and mark.get("closed_at") is not None and fresh:
        # Nor what is already in Chatwoot: mirrored by a sync an erasure overtook, after the erasure's mark.
        keyed = message_keys(claim_id, messages)
        shown = s.db.links.created_among("claim_message", [key for key, _m in keyed])
        already = {id(m) for key, m in keyed if key in shown}
        fresh = [m for m in fresh if id(m) not in already]
    mark_seen = (mark or {}).get("updated_at") or NOT_CLOSED
    if not link and mark and mark.get("closed_at") is not None and not fresh:
        s.db.watermarks.record_claim_seen(claim_id, claim.get("last_updated"), s.clock())
        log.info("claim pruned or erased before, nothing new claim=%s messages=%d", claim_id, len(messages))
        return 0
    for attempt in range(CONTINUED_AT_MOST + 1):
        try:
            created, conversation_id = _apply(s, claim_id, claim, messages, link, fresh, mark_seen)
            break
        except PermanentError as exc:
            # The conversation as the row has it now: one made before a crash, not yet recorded as
            # shown, may have been deleted too; so may the one made a moment ago to continue in.
            link = s.db.links.get("claim", claim_id)
            if not is_gone(exc) or not link or link["conversation_id"] is None or attempt == CONTINUED_AT_MOST:
                raise
            continue_in_new_conversation(s, "claim", claim_id, link["conversation_id"], log)
            link = s.db.links.get("claim", claim_id)
    log.info("claim synced claim=%s conversation=%s stage=%s status=%s new=%d in %dms", claim_id, conversation_id,
             claim.get("stage"), claim.get("status"), created, (time.monotonic() - started) * 1000)
    return created


def _apply(s: Services, claim_id: str, claim: dict, messages: list[dict], link: dict | None,
           to_mirror: list[dict], mark_seen: float | None = None) -> tuple[int, int]:
    """`to_mirror`: the messages not covered by a closed watermark (all of them, usually)."""
    old = link["data"] if link and link["status"] == "created" else None
    order = None
    found = False
    if old is None:
        order, conversation_id, affects, found = _ensure_claim_conversation(s, claim_id, claim,
                                                                            (link or {}).get("data"), mark_seen)
    else:
        conversation_id = link["conversation_id"]
        affects = old.get("affects")
        if not old.get("sale_noted") and _point_sale_to_claim(s, claim_id, conversation_id, old.get("pack_id") or "",
                                                              old.get("order_id") or ""):
            old = dict(old, sale_noted=True)
        if claim.get("stage") != old.get("stage") or claim.get("status") != old.get("status"):
            affects = _affects_reputation(s, claim_id, affects)
    data = dict(old or (s.db.links.get("claim", claim_id) or {}).get("data") or {})
    # One found rather than made (a create whose answer was lost, adopted at an agent's reply) may
    # have been resolved by an agent since: a buyer message reopens it as usual.
    created, deferred, incoming = _mirror_messages(s, claim_id, conversation_id, to_mirror,
                                                   reopen=old is not None or found)
    if old is None or incoming:
        # The claim itself (its summary, put in just now) is the buyer's first word.
        open_with_buyer_words(s, conversation_id)
    # A conversation made again after an agent deleted it compares with what the claim was then.
    before = old or (data if data.get("stage") else {"stage": claim.get("stage"), "due": None})
    for event, note in state_events(before, claim, s.settings.display_timezone):
        _event(s, claim_id, event, conversation_id, note, resolve=event == "closed")
    # A name that could not be had is left to retry_optional_facts (at most every FACT_RETRY), not
    # asked again at every change of the claim.
    reason = _reason_detail(s, claim.get("reason_id")) if (old or {}).get("reason_named", True) else None
    attributes = claim_attributes(claim, order, affects, zone=s.settings.display_timezone, reason=reason)
    if old is not None and not order:
        # The order was read when the conversation was made: keep its ids.
        attributes.update(meli_order_id=old.get("order_id") or attributes["meli_order_id"],
                          meli_pack_id=old.get("pack_id") or attributes["meli_pack_id"])
        if attributes["meli_order_id"]:
            attributes["meli_sale_url"] = SALE_URL.format(order_id=attributes["meli_order_id"])
    if old is not None and attributes != old.get("attributes"):
        _update_attributes(s, conversation_id, attributes)
    action, due = next_action(claim)
    # A message left for later must not wait for the claim's next change: the next poll reads it again.
    # `receivers`: whom the seller may write to now, for the listener to resolve a reply's receiver.
    data.update(last_updated=None if deferred else claim.get("last_updated"), deferred=deferred,
                stage=claim.get("stage"),
                receivers=sorted(allowed_receivers(claim)),
                status=claim.get("status"), due=due, next_action=action, affects=affects,
                awaiting_seller=awaiting_seller(messages),
                reason_named=bool(reason) or not claim.get("reason_id") or _alnum_free(claim.get("reason_id")),
                last_message_at=max((parse_date(m.get("date_created")) or 0.0 for m in messages), default=0.0),
                attributes=attributes)
    s.db.links.update("claim", claim_id, s.clock(), data=data)
    _deadline(s, s.db.links.get("claim", claim_id))
    return created, conversation_id


def _affects_reputation(s: Services, claim_id: str, known: str | None = None) -> str | None:
    """Shown as an attribute; its absence never holds up the claim's messages. Unknown (None) after
    any failure, transient ones included: `retry_optional_facts` asks again on a later poll."""
    try:
        return s.meli.claim_affects_reputation(claim_id) or known
    except ReauthorizationRequired:
        raise
    except ApiError as exc:
        log.warning("claim reputation effect unknown claim=%s error=%r", claim_id, exc.short())
        return known


def _alnum_free(reason_id) -> bool:
    """A reason id never asked for (not a plain code): nothing to retry."""
    return not str(reason_id or "").isalnum()


def _reason_detail(s: Services, reason_id) -> str | None:
    """Mercado Livre's sentence for a claim reason (cached: reasons change rarely); None when unknown
    or the lookup failed, and the id is shown instead: never a reason to hold the claim up."""
    reason_id = str(reason_id or "")
    if not reason_id or not reason_id.isalnum():
        return None
    cached = s.db.cache.get_many("claim_reason", [reason_id], REASON_MAX_AGE, s.clock())
    if reason_id in cached:
        return cached[reason_id]
    try:
        detail = s.meli.claim_reason(reason_id)
    except ReauthorizationRequired:
        raise
    except ApiError as exc:
        log.warning("claim reason name unknown reason=%s error=%r", reason_id, exc.short())
        return None
    if detail:
        s.db.cache.put_many("claim_reason", {reason_id: detail}, s.clock())
    return detail


def retry_optional_facts(s: Services) -> int:
    """Open claims shown without an optional fact (a lookup failed: the reputation effect, the reason's
    name): asked again, at most once per FACT_RETRY each, and shown once known. Returns the claims completed."""
    completed = 0
    for link in s.db.links.by_status("claim", "created"):
        if s.stopping.is_set():
            break
        data = link["data"]
        if data.get("status") != "opened" or (data.get("affects") is not None and data.get("reason_named", True)) \
                or s.clock() - (data.get("facts_tried_at") or 0.0) < FACT_RETRY:
            continue
        claim_id = link["external_id"]
        try:
            completed += _retry_facts(s, claim_id, link)
        except ReauthorizationRequired:
            raise
        except Exception as exc:  # noqa: BLE001 — one claim's failure must not stop the others, nor the checks after
            log.error("optional facts not shown claim=%s error=%s", claim_id, failures.describe(exc))
            with s.locks.hold(f"claim:{claim_id}"):
                current = s.db.links.get("claim", claim_id)
                if current:  # asked again after FACT_RETRY, not at every poll
                    s.db.links.update("claim", claim_id, s.clock(),
                                      data=dict(current["data"], facts_tried_at=s.clock()))
    return completed


def _retry_facts(s: Services, claim_id: str, link: dict) -> int:
    """One claim's missing facts asked again, and shown once known. Returns 1 when shown."""
    with s.locks.hold(f"claim:{claim_id}"):
        current = s.db.links.get("claim", claim_id) or link
        data = dict(current["data"], facts_tried_at=s.clock())
        attributes = dict(data.get("attributes") or {})
        if data.get("affects") is None:
            data["affects"] = _affects_reputation(s, claim_id)
            attributes["meli_claim_affects_reputation"] = data["affects"] or ""
        if not data.get("reason_named", True):
            reason_id = attributes.get("meli_claim_reason") or ""
            detail = _reason_detail(s, reason_id)
            data["reason_named"] = bool(detail)
            attributes["meli_claim_reason"] = reason_label(reason_id, detail)
        shown = 0
        if attributes != data.get("attributes"):
            try:
                _update_attributes(s, current["conversation_id"], attributes)
            except PermanentError as exc:
                if not is_gone(exc):
                    raise
            data["attributes"] = attributes
            shown = 1
        s.db.links.update("claim", claim_id, s.clock(), data=data)
    return shown


def _ensure_claim_conversation(s: Services, claim_id: str, claim: dict, data: dict | None,
                               mark_seen: float | None = None) -> tuple[dict | None, int, str | None, bool]:
    """(order, conversation id, affects, found: an existing conversation rather than one made now)."""
    order = None
    if claim.get("resource") == "order" and str(claim.get("resource_id") or "").isdigit():
        try:
            order = s.meli.order(str(claim["resource_id"]))
        except PermanentError as exc:
            if exc.status not in (403, 404):
                raise
    buyer = (order or {}).get("buyer") or {}
    buyer_id = buyer.get("id") or complainant_id(claim)
    affects = _affects_reputation(s, claim_id)
    reason = _reason_detail(s, claim.get("reason_id"))
    attributes = claim_attributes(claim, order, affects, zone=s.settings.display_timezone, reason=reason)
    contact_id, conversation_id, fresh = open_conversation(
        s, kind="claim", external_id=claim_id, inbox_id=s.settings.chatwoot_claims_inbox_id, buyer_id=buyer_id,
        nickname=buyer.get("nickname"), custom_attributes=attributes, mark_seen=mark_seen)
    s.chatwoot.set_labels(conversation_id, [LABEL])
    if not fresh and (s.db.links.get("claim_event", f"{claim_id}:opened") or {}).get("status") != "created":
        # Found, and maybe resolved by an agent while it was empty: the claim itself is the buyer's
        # first word. Before its summary goes in: once recorded, nothing would say it must reopen.
        s.chatwoot.set_status(conversation_id, "open")
    _event(s, claim_id, "opened", conversation_id,
           summary_message(claim, order, zone=s.settings.display_timezone, reason=reason))
    say_removed(s, "claim", claim_id, conversation_id, "desta reclamação", CLAIM_URL.format(claim_id=claim_id), fresh)
    order_id, pack_id = attributes["meli_order_id"], attributes["meli_pack_id"]
    sale_noted = _point_sale_to_claim(s, claim_id, conversation_id, pack_id, order_id)
    action, due = next_action(claim)
    mark_conversation_created(s, "claim", claim_id, contact_id=contact_id, conversation_id=conversation_id,
                              data=dict(data or {}, buyer_id=buyer_id, order_id=order_id, pack_id=pack_id,
                                        sale_noted=sale_noted or bool((data or {}).get("sale_noted")),
                                        stage=claim.get("stage"), status="opened", due=due, affects=affects,
                                        receivers=sorted(allowed_receivers(claim)),
                                        attributes=attributes))
    log.info("claim in chatwoot claim=%s buyer=%s order=%s conversation=%s", claim_id, buyer_id, order_id,
             conversation_id)
    return order, conversation_id, affects, not fresh


def _point_sale_to_claim(s: Services, claim_id: str, conversation_id: int, pack_id: str, order_id: str) -> bool:
    """The sale's own conversation learns where the talk went on. False while the sale has none
    (the buyer may write there later: each sync of the claim tries again, at no call until then)."""
    # Only a conversation confirmed as the sale's: one an agent's reply merely named may be another buyer's.
    sale = next((link for key in dict.fromkeys(k for k in (pack_id, order_id) if k)
                 if confirmed_conversation(link := s.db.links.get("pack", key))), None)
    if not sale:
        return False
    url = f"{s.settings.chatwoot_url}/app/accounts/{s.settings.chatwoot_account_id}/conversations/{conversation_id}"
    note = (f"O comprador abriu uma reclamação no Mercado Livre sobre esta venda (reclamação {claim_id}). Enquanto "
            f"ela estiver aberta, as mensagens desta venda podem ficar bloqueadas: a conversa continua na caixa "
            f"Mercado Livre - Reclamações: {url}")
    try:
        _event(s, claim_id, "sale_note", sale["conversation_id"], note)
    except PermanentError as exc:
        if not is_gone(exc):
            raise
    return True


def _event(s: Services, claim_id: str, event: str, conversation_id: int, content: str, *,
           resolve: bool = False, priority: str | None = None) -> None:
    """One private note per claim event, whatever crashes in between (the bridge's own words: never
    posted as an incoming message, which would read as the buyer's)."""
    key = f"{claim_id}:{event}"
    link, fresh = s.db.links.record_intent("claim_event", key, s.clock(), conversation_id=conversation_id)
    if link["status"] == "created":
        return
    source = source_ids.claim_event(claim_id, event)

    def create() -> dict:
        return s.chatwoot.note(conversation_id, content, source_id=source)

    ensure_message(s, "claim_event", key, conversation_id, source, create, crash=None,
                   earlier=None if fresh else link)
    if priority:
        s.chatwoot.set_priority(conversation_id, priority)
    if resolve:
        s.chatwoot.set_status(conversation_id, "resolved")
    crashpoint("claim_event_shown")
    s.db.links.mark_created("claim_event", key, s.clock(), conversation_id=conversation_id)


def _update_attributes(s: Services, conversation_id: int, attributes: dict) -> None:
    """POST replaces the whole hash: keep what agents set (meli_claim_reply_to) and update ours."""
    current = (s.chatwoot.conversation(conversation_id) or {}).get("custom_attributes") or {}
    s.chatwoot.set_custom_attributes(conversation_id, dict(current, **attributes))


def _mirror_messages(s: Services, claim_id: str, conversation_id: int, messages: list[dict],
                     reopen: bool) -> tuple[int, bool, bool]:
    """(messages mirrored, whether one was left for a later sync, whether a buyer's was among them)."""
    # In this order: a part the outbox records as sent between the two reads is then among the sent ones.
    in_doubt = own_parts.texts_in_doubt(s, "claim", claim_id)
    strays = s.db.replies.strays("claim", claim_id)
    links = {link["external_id"]: link for link in s.db.links.with_prefix("claim_message", f"{claim_id}:")}
    # A prune (the housekeeping thread) or an erasure since the claim's mark was read deleted those rows and
    # wrote the closed mark in one commit: read after them, the mark stands for what they said, or the
    # claim's whole history would be taken for new.
    messages = after_watermark(messages, s.db.watermarks.get("claim", claim_id))
    adopted = adopted_parts(links.values())
    plan = []
    deferred = False
    for key, message in message_keys(claim_id, messages):
        link = links.get(key)
        if message.get("status") == "pending_translation" and not (link and link["status"] == "created"):
            deferred = True  # its text may still change, and with it its key: mirrored once final
            continue
        if link and link["status"] == "created":
            if link["data"].get("by") == "bridge" and is_rejected(message):
                _report_moderated_reply(s, claim_id, key, link, message, conversation_id)
            continue
        if message.get("sender_role") == "respondent":
            remote = sent_key(claim_id, message.get("message") or "")
            # Never a message older than the part's first attempt: that one was typed on the site.
            part = next((p for p in s.db.replies.claim_parts_sent(remote)
                         if (p["chatwoot_message_id"], p["seq"]) not in adopted
                         and own_parts.may_be_copy_of(message.get("date_created"), p["first_attempt_at"])), None)
            if part:
                adopted.add((part["chatwoot_message_id"], part["seq"]))
                s.db.links.mark_created("claim_message", key, s.clock(), conversation_id=part["conversation_id"],
                                        message_id=part["chatwoot_message_id"],
                                        data={"by": "bridge", "remote": remote, "reply_id": part["id"],
                                              "seq": part["seq"], "at": parse_date(message.get("date_created"))})
                if is_rejected(message):
                    _report_moderated_reply(s, claim_id, key, s.db.links.get("claim_message", key), message,
                                            conversation_id)
                continue
            if own_parts.claim_message_in_doubt(message, in_doubt):
                deferred = True  # may be a reply part in flight: the next sync decides
                continue
            if own_parts.claim_stray_copy(message, strays):
                continue  # a send of ours applied after it was sent again, or erased in flight
            plan.append((key, message, "outgoing"))
        else:
            plan.append((key, message, "incoming"))
    incoming = any(direction == "incoming" for _k, _m, direction in plan)
    if reopen and incoming:
        # Before mirroring: once the messages are recorded, nothing would say it must reopen.
        s.chatwoot.set_status(conversation_id, "open")
    for key, message, direction in plan:
        _mirror(s, claim_id, conversation_id, key, message, direction)
    return len(plan), deferred, incoming


def _mirror(s: Services, claim_id: str, conversation_id: int, key: str, message: dict, direction: str) -> None:
    started = time.monotonic()
    existing, fresh, files = mirror_message(
        s, "claim_message", key, conversation_id, source_ids.claim_message(key), message_content(message, direction),
        direction, lambda: _download_files(s, claim_id, message),
        {"role": str(message.get("sender_role")), "direction": direction,
         "at": parse_date(message.get("date_created"))}, crash="claim_message_created")
    # A file name can name the buyer: extension and size only.
    log.info("claim message in chatwoot claim=%s role=%s conversation=%s message=%s files=%d ext=%s bytes=%d"
             " in %dms%s", claim_id, message.get("sender_role"), conversation_id, existing["id"],
             len(message.get("attachments") or []), ",".join(extension(name) for name, _c, _t in files) or "-",
             sum(len(content) for _n, content, _t in files), (time.monotonic() - started) * 1000,
             "" if fresh else " (reconciled)")


def _download_files(s: Services, claim_id: str, message: dict) -> tuple[list, list]:
    # A file Mercado Livre refuses: the message still comes in, saying so (is_gone never takes
    # this 404, Mercado Livre's, for a deleted Chatwoot conversation; the message must not wait either).
    return fetch_files(((a.get("original_filename") or a["filename"], int(a.get("size") or 0),
                         lambda a=a: s.meli.download_claim_attachment(claim_id, a["filename"]))
                        for a in message.get("attachments") or [] if isinstance(a, dict) and a.get("filename")),
                       lambda exc: f"não disponível no Mercado Livre: erro {exc.status}")


def _report_moderated_reply(s: Services, claim_id: str, key: str, link: dict, message: dict,
                            conversation_id: int) -> None:
    """The claim's adapter of moderation.report_blocked_reply: a reply part is known by the claim message
    it was matched to (by Chatwoot message id: a pruned reply's id may belong to a newer reply now)."""
    def find_reply():
        reply = s.db.replies.by_message(link["message_id"]) if link["message_id"] else None
        return (reply, link["data"].get("seq")) if reply else None

    moderation.report_blocked_reply(s, "claim_moderation", key, find_reply, moderation_reason(message),
                                    "O destinatário", conversation_id, source_ids.claim_moderation_note(key),
                                    "claim_moderation_reported", f"claim={claim_id}", log)


def _deadline(s: Services, link: dict | None) -> int:
    """One note (and urgent priority) per due date, when the seller's action is near and unanswered."""
    if not link or link["status"] != "created" or not due_soon(link["data"], s.clock()):
        return 0
    data = link["data"]
    if data.get("due_noted") == data["due"]:
        return 0
    replies = s.db.replies.active_for_target("claim", link["external_id"])
    if any(r["created_at"] >= (data.get("last_message_at") or 0.0) for r in replies):
        return 0  # an agent answered since: the reply is on its way
    note = (f"Prazo perto do fim: o vendedor precisa {action_name(data.get('next_action'))} até "
            f"{when(data['due'], s.settings.display_timezone)} e nada foi enviado desde a última mensagem. Sem "
            "resposta no prazo, o Mercado Livre pode decidir a reclamação a favor do comprador.")
    _event(s, link["external_id"], f"due_soon:{data['due']}", link["conversation_id"], note, priority="urgent")
    s.db.links.update("claim", link["external_id"], s.clock(), data=dict(data, due_noted=data["due"]))
    log.warning("claim deadline near claim=%s conversation=%s due=%s", link["external_id"], link["conversation_id"],
                data["due"])
    return 1


def check_deadlines(s: Services) -> int:
    """Local only: no call unless a note is due."""
    noted = 0
    for link in s.db.links.by_status("claim", "created"):
        if s.stopping.is_set():
            break
        noted += _one_claim(link["external_id"], "deadline note", _deadline_now, s, link["external_id"])
    return noted


def _deadline_now(s: Services, claim_id: str) -> int:
    try:
        # Under the claim's lock, as it stands now: a notification may be syncing this claim.
        with s.locks.hold(f"claim:{claim_id}"):
            return _deadline(s, s.db.links.get("claim", claim_id))
    except PermanentError as exc:
        if not is_gone(exc):
            raise
        return 0


def _one_claim(claim_id: str, what: str, func, *args) -> int:
    """One claim's share of a pass over every claim: its failure is logged and the pass goes on, and
    so do the passes after it (only a lost authorization stops them)."""
    try:
        return func(*args)
    except ReauthorizationRequired:
        raise
    except Exception as exc:  # noqa: BLE001 — one claim must not hold up the others
        log.error("%s failed claim=%s error=%s", what, claim_id, failures.describe(exc))
        return 0


def point_sales(s: Services) -> int:
    """Open claims whose sale had no conversation yet: local reads only, a note once the sale has one."""
    pointed = 0
    for link in s.db.links.by_status("claim", "created"):
        data = link["data"]
        if s.stopping.is_set():
            break
        if data.get("sale_noted") or data.get("status") != "opened":
            continue
        pointed += _one_claim(link["external_id"], "sale note", _point_sale, s, link)
    return pointed


def _point_sale(s: Services, link: dict) -> int:
    data = link["data"]
    with s.locks.hold(f"claim:{link['external_id']}"):
        if not _point_sale_to_claim(s, link["external_id"], link["conversation_id"], data.get("pack_id") or "",
                                    data.get("order_id") or ""):
            return 0
        current = s.db.links.get("claim", link["external_id"]) or link
        s.db.links.update("claim", link["external_id"], s.clock(), data=dict(current["data"], sale_noted=True))
        return 1


def check_recent_replies(s: Services, skip: set[str]) -> int:
    """The claim's adapter of moderation.check_recent_replies: the claim read once, a few minutes
    after a reply was delivered."""
    return moderation.check_recent_replies(s, "claim", lambda claim_id: sync_claim(s, claim_id), skip,
                                           after=MODERATION_CHECK_AFTER, until=MODERATION_CHECK_UNTIL,
                                           key_prefix="claim:", target_name="claim", log=log)
