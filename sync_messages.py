"""Post-sale messages: Mercado Livre → Chatwoot, one conversation per pack.

Threads are read with `mark_as_read=false`; buyer messages are marked read only after
every one of them is in Chatwoot, so the unread list itself is the retry queue: a crash
leaves the thread unread and the next cycle finishes it. Each message is preceded by an
intent row; a row still `pending` means "look for its source_id before creating".
"""

from __future__ import annotations

import logging
import re
import time

from contacts import ensure_contact, ensure_conversation
from db_manager import crashpoint
from http_client import PermanentError
from mercado_livre_api import MELI_AGENT_ID
from services import Services

log = logging.getLogger("bridge.messages")

PAGE = 10
MAX_PAGES = 100
CHATWOOT_MAX_FILE = 40 * 1024 * 1024  # Chatwoot's default attachment limit
CHATWOOT_MAX_FILES = 15
# Moderation usually acts within minutes of a message being accepted.
MODERATION_CHECK_AFTER = 120.0
MODERATION_CHECK_UNTIL = 1800.0
PACK_RESOURCE = re.compile(r"^/packs/(\d+)/sellers/(\d+)")
SALE_URL = "https://www.mercadolivre.com.br/vendas/{order_id}/detalhe"
MODERATION_REASONS = {
    "OUT_OF_PLACE_LANGUAGE": "linguagem imprópria",
    "SOCIAL_NETWORK_LINK": "link de rede social",
    "LINK_SHORT_URL": "link encurtado",
    "AUTOMATIC_MESSAGE": "mensagem automática",
    "PERSONAL_DATA": "dados pessoais (telefone, e-mail ou endereço)",
    "EVASION_CLAIM_SELLER": "tentativa de negociar fora do Mercado Livre",
}


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
    moderation = message.get("message_moderation") or {}
    return message.get("status") in ("rejected", "moderated") or moderation.get("status") == "rejected"


def moderation_reason(message: dict) -> str:
    reason = (message.get("message_moderation") or {}).get("reason") or ""
    return MODERATION_REASONS.get(reason, reason.lower().replace("_", " ") or "motivo não informado")


def messages_to_mirror(messages: list[dict], seller_id: int, known_ids: set[str],
                       bridge_ids: set[str]) -> list[tuple[dict, str]]:
    """(message, 'incoming' | 'outgoing') for each message Chatwoot does not have yet.

    Buyer messages come in; seller messages sent outside Chatwoot go out as mirrors;
    messages the bridge itself sent are already there as the agent's own message.
    """
    plan = []
    for message in in_order(messages):
        mid = str(message["id"])
        if mid in known_ids or mid in bridge_ids:
            continue
        sender = str((message.get("from") or {}).get("user_id"))
        plan.append((message, "outgoing" if sender == str(seller_id) else "incoming"))
    return plan


def message_content(message: dict, direction: str) -> str:
    body = message.get("text") or ""
    if is_rejected(message):
        who = "do comprador" if direction == "incoming" else "do vendedor"
        outcome = " O comprador não a recebeu." if direction == "outgoing" else ""
        body = (f"[Mensagem {who} bloqueada pela moderação do Mercado Livre: {moderation_reason(message)}."
                f"{outcome}]\n\n{body}").strip()
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
    """One poll of threads with unread buyer messages."""
    seller_id = s.meli.seller_id()
    packs = pack_ids_from_unread(s.meli.unread_threads())
    counts = {"threads": len(packs), "created": 0}
    for pack_id in packs:
        if s.stopping.is_set():
            break
        counts["created"] += sync_pack(s, pack_id, seller_id)
    counts["moderation_checks"] = check_recent_replies(s, seller_id, skip=set(packs))
    return counts


def check_recent_replies(s: Services, seller_id: int, skip: set[str]) -> int:
    """Re-read, once, the thread of each reply delivered a few minutes ago.

    Mercado Livre may moderate a message after accepting it; without buyer activity
    nothing else would make us read that thread again.
    """
    now = s.clock()
    checked = 0
    for reply in s.db.replies_delivered_between("message", now - MODERATION_CHECK_UNTIL, now - MODERATION_CHECK_AFTER):
        if s.stopping.is_set():
            break
        link, _fresh = s.db.link_intent("moderation_check", reply["id"], now)
        if link["status"] == "created":
            continue
        if reply["target_id"] not in skip:
            sync_pack(s, reply["target_id"], seller_id)
            skip.add(reply["target_id"])
            checked += 1
        s.db.link_created("moderation_check", reply["id"], s.clock())
    return checked


def sync_message_resource(s: Services, message_id: str) -> str:
    """A `messages` notification: find the message's pack and sync that thread."""
    message = s.meli.message(message_id)
    if isinstance(message.get("messages"), list) and message["messages"]:
        message = message["messages"][0]
    resources = {r.get("name"): str(r.get("id")) for r in message.get("message_resources") or []}
    pack_id = resources.get("packs") or resources.get("orders")
    if not pack_id:
        return "no pack"
    created = sync_pack(s, pack_id, s.meli.seller_id(), resource_kind="orders" if "packs" not in resources
                        else "packs")
    return f"pack {pack_id}: {created} new"


def read_thread(s: Services, pack_id: str, seller_id: int) -> tuple[list[dict], dict]:
    messages, offset, first = [], 0, None
    for _ in range(MAX_PAGES):
        page = s.meli.thread_page(pack_id, seller_id, offset=offset, limit=PAGE)
        first = first or page
        batch = page.get("messages") or []
        messages.extend(batch)
        offset += len(batch)
        if not batch or offset >= int((page.get("paging") or {}).get("total") or 0):
            break
    return messages, first or {}


def sale_context(s: Services, pack_id: str, messages: list[dict], resource_kind: str | None = None) -> dict:
    """Orders, buyer and items of a pack (an order without pack uses its order id)."""
    if resource_kind is None:
        names = {r.get("name") for m in messages for r in m.get("message_resources") or []}
        resource_kind = "packs" if "packs" in names else "orders" if "orders" in names else None
    orders: list[dict] = []
    if resource_kind != "orders":
        try:
            pack = s.meli.pack(pack_id)
            orders = [s.meli.order(str(o["id"])) for o in pack.get("orders") or []]
        except PermanentError as exc:
            if exc.status != 404:
                raise
    if not orders:
        orders = [s.meli.order(pack_id)]
    buyer = orders[0].get("buyer") or {}
    return {"orders": orders, "buyer_id": buyer.get("id"), "nickname": buyer.get("nickname")}


def sync_pack(s: Services, pack_id: str, seller_id: int, resource_kind: str | None = None) -> int:
    """Bring one thread into Chatwoot; mark it read when everything is stored. Returns messages created."""
    with s.locks.hold(f"pack:{pack_id}"):
        return _sync_pack(s, pack_id, seller_id, resource_kind)


def _sync_pack(s: Services, pack_id: str, seller_id: int, resource_kind: str | None) -> int:
    started = time.monotonic()
    messages, first = read_thread(s, pack_id, seller_id)
    blocked = (first.get("conversation_status") or {}).get("status") == "blocked"
    migrated = is_migrated(messages)
    link = s.db.link("pack", pack_id)
    if not link or link["status"] != "created":
        conversation_id, link = _ensure_pack_conversation(s, pack_id, messages, resource_kind, blocked, migrated)
        reopen = False
    else:
        conversation_id = link["conversation_id"]
        reopen = True
        data = link["data"]
        if data.get("blocked") != blocked or (migrated and not data.get("migrated")):
            s.db.link_update("pack", pack_id, s.clock(),
                             data=dict(data, blocked=blocked, migrated=bool(migrated or data.get("migrated"))))

    ids = [str(m["id"]) for m in messages]
    known = {i for i in ids if (s.db.link("message", i) or {}).get("status") == "created"}
    _adopt_parts_in_flight(s, pack_id, messages, seller_id, known | s.db.bridge_sent_ids(ids))
    # Read after adopting: a part the outbox recorded meanwhile is no longer in flight, but here.
    bridge_ids = s.db.bridge_sent_ids(ids)
    plan = messages_to_mirror(messages, seller_id, known, bridge_ids)
    if reopen and any(direction == "incoming" for _m, direction in plan):
        # Before mirroring: once the messages are recorded, a crash would leave nothing
        # saying the conversation still has to be reopened.
        s.chatwoot.set_status(conversation_id, "open")
    created = 0
    for message, direction in plan:
        _mirror(s, conversation_id, pack_id, message, direction)
        created += 1
    _report_moderated_replies(s, messages, bridge_ids)
    unread = [m for m in messages if str((m.get("from") or {}).get("user_id")) != str(seller_id)
              and not (m.get("message_date") or {}).get("read")]
    if unread:
        # Everything is stored: now Mercado Livre may show the buyer's messages as read.
        s.meli.mark_thread_read(pack_id, seller_id, limit=max(PAGE, len(messages)))
    if plan or unread:
        log.info("thread synced pack=%s conversation=%s new=%d marked_read=%d blocked=%s migrated=%s in %dms",
                 pack_id, conversation_id, created, len(unread), blocked, migrated,
                 (time.monotonic() - started) * 1000)
    return created


def parts_on_meli(messages: list[dict], seller_id: int, skip: set[str],
                  parts: list[dict]) -> list[tuple[dict, str]]:
    """Pure: (part, message id) for each in-flight part whose text is a seller message not accounted for.

    The newest such message is taken (a crash just after sending leaves it last), and each
    message serves one part: the same short text ("Ok") sent twice is two messages.
    """
    free = [m for m in in_order(messages) if str(m["id"]) not in skip
            and str((m.get("from") or {}).get("user_id")) == str(seller_id)]
    found = []
    for part in parts:
        for message in reversed(free):
            if " ".join((message.get("text") or "").split()) == " ".join((part.get("text") or "").split()):
                found.append((part, str(message["id"])))
                free.remove(message)
                break
    return found


def _adopt_parts_in_flight(s: Services, pack_id: str, messages: list[dict], seller_id: int,
                           skip: set[str]) -> None:
    """A reply part sent just before a crash is the agent's own message, not one sent outside Chatwoot.

    Without this, a thread read before the outbox retries would mirror the agent's reply
    a second time as "enviada pelo Mercado Livre".
    """
    for part, remote_id in parts_on_meli(messages, seller_id, skip, s.db.message_parts_in_flight(pack_id)):
        s.db.part_sent(part["reply_id"], part["seq"], remote_id, s.clock())
        log.info("reply part found on mercado livre before its delivery was recorded reply=%s part=%d pack=%s "
                 "ml_message=%s", part["reply_id"], part["seq"], pack_id, remote_id)


def _ensure_pack_conversation(s: Services, pack_id: str, messages: list[dict], resource_kind: str | None,
                              blocked: bool, migrated: bool) -> tuple[int, dict]:
    sale = sale_context(s, pack_id, messages, resource_kind)
    inbox_id = s.settings.chatwoot_messages_inbox_id
    contact_id, source_id = ensure_contact(s, sale["buyer_id"], sale["nickname"], inbox_id)
    conversation_id, _created = ensure_conversation(
        s, kind="pack", external_id=str(pack_id), inbox_id=inbox_id, contact_id=contact_id, source_id=source_id,
        custom_attributes=sale_attributes(pack_id, sale["orders"]), buyer_id=sale["buyer_id"])
    data = {"buyer_id": sale["buyer_id"], "blocked": blocked, "migrated": migrated,
            "order_ids": [str(o["id"]) for o in sale["orders"]]}
    s.db.link_created("pack", pack_id, s.clock(), contact_id=contact_id, conversation_id=conversation_id, data=data)
    log.info("sale in chatwoot pack=%s buyer=%s conversation=%s orders=%s", pack_id, sale["buyer_id"],
             conversation_id, ",".join(data["order_ids"]))
    return conversation_id, s.db.link("pack", pack_id)


def _mirror(s: Services, conversation_id: int, pack_id: str, message: dict, direction: str) -> None:
    started = time.monotonic()
    mid = str(message["id"])
    source = f"meli:message:{mid}"
    _link, fresh = s.db.link_intent("message", mid, s.clock(), conversation_id=conversation_id)
    existing = None if fresh else s.chatwoot.find_message_by_source(conversation_id, source)
    if existing is None:
        files, skipped = _download_files(s, message)
        content = message_content(message, direction)
        if skipped:
            content += "\n\n" + "\n".join(f"[Anexo não trazido para o Chatwoot: {name} ({why})]"
                                         for name, why in skipped)
        existing = s.chatwoot.create_message(conversation_id, content.strip() or None, message_type=direction,
                                             source_id=source, files=files)
        crashpoint("sale_message_created")
    s.db.link_created("message", mid, s.clock(), conversation_id=conversation_id, message_id=existing["id"],
                      data={"pack_id": str(pack_id), "direction": direction})
    log.info("message in chatwoot ml_message=%s pack=%s conversation=%s message=%s direction=%s files=%d in %dms%s",
             mid, pack_id, conversation_id, existing["id"], direction, len(message.get("message_attachments") or []),
             (time.monotonic() - started) * 1000, "" if fresh else " (reconciled)")


def _download_files(s: Services, message: dict) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, str]]]:
    files, skipped = [], []
    for attachment in message.get("message_attachments") or []:
        name = attachment.get("original_filename") or attachment.get("filename") or "anexo"
        size = int(attachment.get("size") or 0)
        if size > CHATWOOT_MAX_FILE or len(files) >= CHATWOOT_MAX_FILES:
            skipped.append((name, "acima do limite do Chatwoot"))
            continue
        content, ctype = s.meli.download_attachment(attachment["filename"])
        if len(content) > CHATWOOT_MAX_FILE:
            skipped.append((name, "acima do limite do Chatwoot"))
            continue
        files.append((name, content, ctype))
    return files, skipped


def _report_moderated_replies(s: Services, messages: list[dict], bridge_ids: set[str]) -> None:
    """A reply Mercado Livre accepted, then moderated: the agent must learn it never reached the buyer."""
    for message in messages:
        mid = str(message["id"])
        if mid not in bridge_ids or not is_rejected(message):
            continue
        link, fresh = s.db.link_intent("moderation", mid, s.clock())
        if link["status"] == "created":
            continue
        # A row left pending by a crash or a failed call is reported again: the agent must learn.
        reply = s.db.reply_for_remote_id(mid)
        if reply:
            reason = moderation_reason(message)
            s.chatwoot.set_message_status(reply["conversation_id"], reply["chatwoot_message_id"], "failed",
                                          f"bloqueada pela moderação: {reason}"[:200])
            crashpoint("moderation_reported")
            note_source = f"meli:note:moderation:{mid}"
            if fresh or s.chatwoot.find_message_by_source(reply["conversation_id"], note_source) is None:
                s.chatwoot.note(reply["conversation_id"],
                                f"O Mercado Livre aceitou e depois bloqueou sua mensagem na moderação ({reason}). "
                                "O comprador não a recebeu. Reescreva sem links, telefones, e-mails ou endereços "
                                "e envie de novo.", source_id=note_source)
            log.warning("reply moderated ml_message=%s reply=%s conversation=%s reason=%s", mid, reply["id"],
                        reply["conversation_id"], reason)
        s.db.link_created("moderation", mid, s.clock())
