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

import hashlib
import logging
import os
import time
from datetime import datetime, timezone

from bridge import failures, source_ids
from bridge.http import PermanentError
from bridge.paging import Pages
from bridge.services import Services
from bridge.sync import moderation
from bridge.sync.contacts import NOT_CLOSED, forget_conversation, is_gone, mark_conversation_created, open_conversation
from bridge.sync.ensure import ensure_linked_message, ensure_message, ensure_note, fetch_files, mirror_with_files
from bridge.sync.sales import SALE_URL, parse_date
from db_manager import crashpoint
from mercado_livre_api import ReauthorizationRequired

log = logging.getLogger("bridge.claims")

SEARCH_PAGE = 50
MAX_SEARCH_PAGES = 40
DUE_SOON = 24 * 3600.0
# Moderation usually acts within minutes of a message being accepted (as for post-sale replies).
MODERATION_CHECK_AFTER = 120.0
MODERATION_CHECK_UNTIL = 1800.0
LABEL = "reclamacao"
REPLY_TO_ATTRIBUTE = "meli_claim_reply_to"
MEDIATOR_PREFIX = "Mediação do Mercado Livre"
CLAIM_URL = "https://www.mercadolivre.com.br/vendas/reclamacoes/{claim_id}/detalhe"
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

def text_of(message: dict) -> str:
    text = message.get("message")
    if isinstance(text, dict):  # accepted in the older {"plain": ...} shape too
        text = text.get("plain")
    if not isinstance(text, str) or not text:
        text = message.get("translated_message") if isinstance(message.get("translated_message"), str) else ""
    return text or ""


def extension(name) -> str:
    """What a log line may say of a file: its extension, never its name."""
    return os.path.splitext(str(name))[1].lstrip(".").lower()[:10] or "-"


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


def message_key(claim_id: str, message: dict) -> str:
    """A claim message's identity: it has no id (links key, never text)."""
    return f"{claim_id}:{message.get('sender_role')}:{message.get('date_created')}:{text_hash(text_of(message))}"


def message_keys(claim_id: str, messages: list[dict]) -> list[tuple[str, dict]]:
    """(key, message) in order. A repeat with the same role, date and text (a double "ok") is a
    message of its own: its key gets its rank, the first keeps the plain key."""
    seen: dict[str, int] = {}
    keyed = []
    for message in in_order(messages):
        key = message_key(claim_id, message)
        seen[key] = seen.get(key, 0) + 1
        keyed.append((key if seen[key] == 1 else f"{key}#{seen[key]}", message))
    return keyed


def sent_key(claim_id: str, text: str) -> str:
    """What a sent claim reply part records as its remote id: the claim and its text's hash."""
    return f"claim:{claim_id}:{text_hash(text)}"


def in_order(messages: list[dict]) -> list[dict]:
    """By moment first, not by text alone: dates may carry different UTC offsets."""
    def moment(message: dict) -> tuple[float, str]:
        date = message.get("date_created") or message.get("message_date")
        return parse_date(date) or 0.0, str(date or "")
    return sorted(messages, key=moment)


def is_rejected(message: dict) -> bool:
    return moderation.is_rejected(message, "moderation")


def moderation_reason(message: dict) -> str:
    return moderation.reason(message, "moderation")


def respondent(claim: dict) -> dict:
    return next((p for p in claim.get("players") or [] if isinstance(p, dict) and p.get("role") == "respondent"), {})


def complainant_id(claim: dict):
    player = next((p for p in claim.get("players") or [] if isinstance(p, dict) and p.get("role") == "complainant"),
                  {})
    return player.get("user_id")


def seller_actions(claim: dict) -> list[dict]:
    return [a for a in respondent(claim).get("available_actions") or [] if isinstance(a, dict) and a.get("action")]


def allowed_receivers(claim: dict) -> set[str]:
    names = {a["action"] for a in seller_actions(claim)}
    return {role for role in ("complainant", "mediator") if f"send_message_to_{role}" in names}


def choose_receiver(wanted: str | None, claim: dict) -> str | None:
    """Who a reply goes to: the buyer unless the agent asked for the mediator, or the mediator is
    the only one the seller may address now. None: nobody can be written to."""
    allowed = allowed_receivers(claim)
    target = "mediator" if wanted == "mediator" else "complainant"
    if target in allowed:
        return target
    if target == "complainant" and allowed == {"mediator"}:
        return "mediator"
    return None


def next_action(claim: dict) -> tuple[str | None, str | None]:
    """(action, due date) the seller must act on first: mandatory ones, then the earliest due."""
    actions = seller_actions(claim)
    if not actions:
        return None, None
    best = sorted(actions, key=lambda a: (not a.get("mandatory"), parse_date(a.get("due_date")) or float("inf")))[0]
    return best["action"], best.get("due_date") if isinstance(best.get("due_date"), str) else None


def action_name(action: str | None) -> str:
    return ACTIONS.get(action, action.replace("_", " ") if action else "nenhuma")


def when(date: str | None) -> str:
    moment = parse_date(date)
    if moment is None:
        return "sem prazo"
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%d/%m/%Y %H:%M UTC")


def claim_attributes(claim: dict, order: dict | None, affects: str | None) -> dict:
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
        "meli_claim_reason": str(claim.get("reason_id") or ""),
        "meli_claim_next_action": action or "",
        "meli_claim_due_date": due or "",
        "meli_claim_affects_reputation": affects or "",
        "meli_claim_url": CLAIM_URL.format(claim_id=claim.get("id")),
        "meli_sale_url": SALE_URL.format(order_id=order_id) if order_id else "",
    }


def summary_message(claim: dict, order: dict | None) -> str:
    kind = TYPES.get(claim.get("type"), str(claim.get("type") or "reclamação"))
    lines = [f"O comprador abriu uma {kind} no Mercado Livre (reclamação {claim.get('id')})."]
    for line in (order or {}).get("order_items") or []:
        title = (line.get("item") or {}).get("title") or (line.get("item") or {}).get("id") or "item"
        lines.append(f"- {line.get('quantity') or 1} x {title}")
    lines.append(f"Motivo: {claim.get('reason_id') or 'não informado'}")
    action, due = next_action(claim)
    if action:
        lines.append(f"Próxima ação do vendedor: {action_name(action)} ({when(due)})")
    order_id = (order or {}).get("id") or (claim.get("resource_id") if claim.get("resource") == "order" else None)
    if order_id:
        lines.append(f"Venda: {SALE_URL.format(order_id=order_id)}")
    lines.append(f"Reclamação: {CLAIM_URL.format(claim_id=claim.get('id'))}")
    return "\n".join(lines)


def message_content(message: dict, direction: str) -> str:
    role = message.get("sender_role")
    body = text_of(message)
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


def state_events(old: dict, claim: dict) -> list[tuple[str, str]]:
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
        events.append((f"due:{due}", f"O prazo do vendedor mudou: {action_name(action)} até {when(due)}."))
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
    if complete:
        # Gone from the open list: closed (or out of reach). Read once more to learn how.
        due += [cid for cid in open_links if cid not in listed]
        batch.keep_only(set(due))
    for claim_id in batch.due(due):
        ok, _ = batch.run(claim_id, sync_claim, s, claim_id)
        counts["synced"] += ok
    counts["deadlines"] = check_deadlines(s)
    counts["sales_pointed"] = point_sales(s)
    counts["moderation_checks"] = check_recent_replies(s, skip=set(due))
    counts["item_errors"] = batch.failed
    return counts


def _open_claims(s: Services) -> tuple[dict[str, dict], bool]:
    listed: dict[str, dict] = {}
    pages = Pages(lambda offset: s.meli.claims_search("opened", offset=offset, limit=SEARCH_PAGE),
                  items=lambda page: [c for c in page.get("data") or []
                                      if isinstance(c, dict) and str(c.get("id") or "").isdigit()],
                  max_pages=MAX_SEARCH_PAGES)
    for _page, data in pages:
        for claim in data:
            listed[str(claim["id"])] = claim
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
    try:
        created, conversation_id = _apply(s, claim_id, claim, messages, link, fresh, mark_seen)
    except PermanentError as exc:
        # The conversation as the row has it now: one made before a crash, not yet recorded as
        # shown, may have been deleted too.
        link = s.db.links.get("claim", claim_id)
        if not is_gone(exc) or not link or link["conversation_id"] is None:
            raise
        # An agent deleted the conversation (or its contact): continue in a new one.
        log.warning("claim conversation deleted in chatwoot claim=%s conversation=%s: continuing in a new one",
                    claim_id, link["conversation_id"])
        forget_conversation(s, "claim", claim_id, link["conversation_id"], removed=link["conversation_id"])
        created, conversation_id = _apply(s, claim_id, claim, messages, s.db.links.get("claim", claim_id), fresh,
                                          mark_seen)
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
    created, deferred = _mirror_messages(s, claim_id, conversation_id, to_mirror, reopen=old is not None or found)
    # A conversation made again after an agent deleted it compares with what the claim was then.
    before = old or (data if data.get("stage") else {"stage": claim.get("stage"), "due": None})
    for event, note in state_events(before, claim):
        _event(s, claim_id, event, conversation_id, note, resolve=event == "closed")
    attributes = claim_attributes(claim, order, affects)
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
    data.update(last_updated=None if deferred else claim.get("last_updated"), stage=claim.get("stage"),
                status=claim.get("status"), due=due, next_action=action, affects=affects,
                awaiting_seller=awaiting_seller(messages),
                last_message_at=max((parse_date(m.get("date_created")) or 0.0 for m in messages), default=0.0),
                attributes=attributes)
    s.db.links.update("claim", claim_id, s.clock(), data=data)
    _deadline(s, s.db.links.get("claim", claim_id))
    return created, conversation_id


def _affects_reputation(s: Services, claim_id: str, known: str | None = None) -> str | None:
    """Shown as an attribute; its absence never holds up the claim's messages."""
    try:
        return s.meli.claim_affects_reputation(claim_id) or known
    except PermanentError as exc:
        log.warning("claim reputation effect unknown claim=%s error=%r", claim_id, exc.short())
        return known


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
    attributes = claim_attributes(claim, order, affects)
    contact_id, conversation_id, fresh = open_conversation(
        s, kind="claim", external_id=claim_id, inbox_id=s.settings.chatwoot_claims_inbox_id, buyer_id=buyer_id,
        nickname=buyer.get("nickname"), custom_attributes=attributes, mark_seen=mark_seen)
    s.chatwoot.set_labels(conversation_id, [LABEL])
    if not fresh and (s.db.links.get("claim_event", f"{claim_id}:opened") or {}).get("status") != "created":
        # Found, and maybe resolved by an agent while it was empty: the claim itself is the buyer's
        # first word. Before its summary goes in: once recorded, nothing would say it must reopen.
        s.chatwoot.set_status(conversation_id, "open")
    _event(s, claim_id, "opened", conversation_id, summary_message(claim, order), incoming=True)
    order_id, pack_id = attributes["meli_order_id"], attributes["meli_pack_id"]
    sale_noted = _point_sale_to_claim(s, claim_id, conversation_id, pack_id, order_id)
    action, due = next_action(claim)
    mark_conversation_created(s, "claim", claim_id, contact_id=contact_id, conversation_id=conversation_id,
                              data=dict(data or {}, buyer_id=buyer_id, order_id=order_id, pack_id=pack_id,
                                        sale_noted=sale_noted or bool((data or {}).get("sale_noted")),
                                        stage=claim.get("stage"), status="opened", due=due, affects=affects,
                                        attributes=attributes))
    log.info("claim in chatwoot claim=%s buyer=%s order=%s conversation=%s", claim_id, buyer_id, order_id,
             conversation_id)
    return order, conversation_id, affects, not fresh


def _point_sale_to_claim(s: Services, claim_id: str, conversation_id: int, pack_id: str, order_id: str) -> bool:
    """The sale's own conversation learns where the talk went on. False while the sale has none
    (the buyer may write there later: each sync of the claim tries again, at no call until then)."""
    sale = next((link for key in dict.fromkeys(k for k in (pack_id, order_id) if k)
                 if (link := s.db.links.get("pack", key)) and link.get("conversation_id")), None)
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


def _event(s: Services, claim_id: str, event: str, conversation_id: int, content: str, *, incoming: bool = False,
           resolve: bool = False, priority: str | None = None) -> None:
    """One message or private note per claim event, whatever crashes in between."""
    key = f"{claim_id}:{event}"
    link, fresh = s.db.links.record_intent("claim_event", key, s.clock(), conversation_id=conversation_id)
    if link["status"] == "created":
        return
    source = source_ids.claim_event(claim_id, event)

    def create() -> dict:
        if incoming:
            return s.chatwoot.create_message(conversation_id, content, message_type="incoming", source_id=source)
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
                     reopen: bool) -> tuple[int, bool]:
    """(messages mirrored, whether one was left for a later sync)."""
    # In this order: a part the outbox records as sent between the two reads is then among the sent ones.
    in_doubt = {" ".join(t.split()) for t in s.db.replies.claim_texts_in_doubt(claim_id)}
    links = {link["external_id"]: link for link in s.db.links.with_prefix("claim_message", f"{claim_id}:")}
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
            remote = sent_key(claim_id, text_of(message))
            part = next((p for p in s.db.replies.claim_parts_sent(remote)
                         if (p["chatwoot_message_id"], p["seq"]) not in adopted), None)
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
            if " ".join(text_of(message).split()) in in_doubt:
                deferred = True  # may be a reply part in flight: the next sync decides
                continue
            plan.append((key, message, "outgoing"))
        else:
            plan.append((key, message, "incoming"))
    if reopen and any(direction == "incoming" for _k, _m, direction in plan):
        # Before mirroring: once the messages are recorded, nothing would say it must reopen.
        s.chatwoot.set_status(conversation_id, "open")
    for key, message, direction in plan:
        _mirror(s, claim_id, conversation_id, key, message, direction)
    return len(plan), deferred


def adopted_parts(links) -> set[tuple[int, int]]:
    """(Chatwoot message id, part) of the sent parts already matched to a claim message.

    By part, not by count: replies are pruned after a while, and a count would then let a
    new reply with an old reply's text go unmatched and be mirrored back. Not by reply id
    either: SQLite gives a pruned highest id to the next reply.
    """
    return {(link["message_id"], link["data"].get("seq", 0)) for link in links
            if link["status"] == "created" and link["data"].get("by") == "bridge"}


def _mirror(s: Services, claim_id: str, conversation_id: int, key: str, message: dict, direction: str) -> None:
    started = time.monotonic()
    source = source_ids.claim_message(key)
    files: list = []

    def create() -> dict:
        downloaded, skipped = _download_files(s, claim_id, message)
        files.extend(downloaded)  # the log line below counts them
        return mirror_with_files(s, conversation_id, source, message_content(message, direction), direction,
                                 files, skipped)

    existing, fresh = ensure_linked_message(s, "claim_message", key, conversation_id, source, create,
                                            crash="claim_message_created")
    s.db.links.mark_created("claim_message", key, s.clock(), conversation_id=conversation_id, message_id=existing["id"],
                            data={"role": str(message.get("sender_role")), "direction": direction,
                                  "at": parse_date(message.get("date_created"))})
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
    """A reply Mercado Livre accepted, then moderated: the agent must learn it never arrived."""
    mark, fresh = s.db.links.record_intent("claim_moderation", key, s.clock())
    if mark["status"] == "created":
        return
    # By Chatwoot message id: a pruned reply's id may belong to a newer reply now.
    reply = s.db.replies.by_message(link["message_id"]) if link["message_id"] else None
    if reply:
        reason = moderation_reason(message)
        moderation.mark_reply_blocked(s, reply, reason)
        ensure_note(s, conversation_id, moderation.blocked_reply_note(reason, "O destinatário"),
                    source_ids.claim_moderation_note(key), look_first=not fresh)
        crashpoint("claim_moderation_reported")
        log.warning("claim reply moderated claim=%s reply=%s conversation=%s reason=%s", claim_id, reply["id"],
                    reply["conversation_id"], reason)
    s.db.links.mark_created("claim_moderation", key, s.clock())


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
            f"{when(data['due'])} e nada foi enviado desde a última mensagem. Sem resposta no prazo, o Mercado Livre "
            "pode decidir a reclamação a favor do comprador.")
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
        try:
            # Under the claim's lock, as it stands now: a notification may be syncing this claim.
            with s.locks.hold(f"claim:{link['external_id']}"):
                noted += _deadline(s, s.db.links.get("claim", link["external_id"]))
        except ReauthorizationRequired:
            raise
        except PermanentError as exc:
            if not is_gone(exc):
                raise
    return noted


def point_sales(s: Services) -> int:
    """Open claims whose sale had no conversation yet: local reads only, a note once the sale has one."""
    pointed = 0
    for link in s.db.links.by_status("claim", "created"):
        data = link["data"]
        if s.stopping.is_set():
            break
        if data.get("sale_noted") or data.get("status") != "opened":
            continue
        with s.locks.hold(f"claim:{link['external_id']}"):
            if _point_sale_to_claim(s, link["external_id"], link["conversation_id"], data.get("pack_id") or "",
                                    data.get("order_id") or ""):
                current = s.db.links.get("claim", link["external_id"]) or link
                s.db.links.update("claim", link["external_id"], s.clock(), data=dict(current["data"], sale_noted=True))
                pointed += 1
    return pointed


def check_recent_replies(s: Services, skip: set[str]) -> int:
    """Re-read, once, the claim of each reply delivered a few minutes ago: moderation acts after acceptance."""
    now = s.clock()
    checked = 0
    for reply in s.db.replies.delivered_between("claim", now - MODERATION_CHECK_UNTIL, now - MODERATION_CHECK_AFTER):
        if s.stopping.is_set():
            break
        link, _fresh = s.db.links.record_intent("moderation_check", f"claim:{reply['id']}", now)
        if link["status"] == "created":
            continue
        if reply["target_id"] not in skip:
            try:
                sync_claim(s, reply["target_id"])
            except PermanentError as exc:
                log.error("claim not checked for moderation claim=%s reply=%s error=%r", reply["target_id"],
                          reply["id"], exc.short())
                continue
            skip.add(reply["target_id"])
            checked += 1
        s.db.links.mark_created("moderation_check", f"claim:{reply['id']}", s.clock())
    return checked
