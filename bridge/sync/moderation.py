"""Mercado Livre's moderation of a post-sale or claim message: blocked or not, why, and the agent told so."""

from __future__ import annotations

import logging
from typing import Callable

from bridge import failures
from bridge.http import PermanentError
from bridge.services import Services
from bridge.sync.contacts import is_gone
from db_manager import crashpoint
from mercado_livre_api import ReauthorizationRequired

REASONS = {
    "OUT_OF_PLACE_LANGUAGE": "linguagem imprópria",
    "SOCIAL_NETWORK_LINK": "link de rede social",
    "LINK_SHORT_URL": "link encurtado",
    "AUTOMATIC_MESSAGE": "mensagem automática",
    "PERSONAL_DATA": "dados pessoais (telefone, e-mail ou endereço)",
    "EVASION_CLAIM_SELLER": "tentativa de negociar fora do Mercado Livre",
}


def is_rejected(message: dict, field: str) -> bool:
    """`field` names the message's moderation object: post-sale and claim messages differ."""
    moderation = message.get(field) or {}
    return message.get("status") in ("rejected", "moderated") or moderation.get("status") == "rejected"


def reason(message: dict, field: str) -> str:
    code = (message.get(field) or {}).get("reason") or ""
    return REASONS.get(code, code.lower().replace("_", " ") or "motivo não informado")


def blocked(who: str, why: str, outcome: str, body: str) -> str:
    """A mirrored message's content when moderation blocked it: the agent sees it and why."""
    return f"[Mensagem {who} bloqueada pela moderação do Mercado Livre: {why}.{outcome}]\n\n{body}".strip()


def mark_reply_blocked(s: Services, reply: dict, why: str, part: str | None = None) -> None:
    """The agent's message shows failed, with the reason; idempotent, and a deleted conversation counts as done.

    `part` ("parte 2 de 3") when the reply went in parts and only that one was blocked.
    """
    try:
        s.chatwoot.set_message_status(reply["conversation_id"], reply["chatwoot_message_id"], "failed",
                                      f"{part + ' ' if part else ''}bloqueada pela moderação: {why}"[:200])
    except PermanentError as exc:
        if not is_gone(exc):
            raise


def blocked_reply_note(why: str, receiver: str, part: str | None = None) -> str:
    """The private note for a reply Mercado Livre accepted, then blocked: `receiver` never got it
    (only that `part` of it, when it went in parts: the others must not be sent again)."""
    if part:
        return (f"O Mercado Livre aceitou e depois bloqueou na moderação a {part} da sua mensagem ({why}). "
                f"{receiver} não recebeu essa parte; esta moderação não bloqueou as outras. Reescreva essa parte "
                "sem links, telefones, e-mails ou endereços e envie somente ela.")
    return (f"O Mercado Livre aceitou e depois bloqueou sua mensagem na moderação ({why}). {receiver} não a "
            "recebeu. Reescreva sem links, telefones, e-mails ou endereços e envie de novo.")


def report_blocked_reply(s: Services, intent_kind: str, key: str,
                         find_reply: Callable[[], tuple[dict, int | None] | None], why: str, receiver: str,
                         conversation_id: int, note_source: str, crash: str, ids: str, log: logging.Logger) -> None:
    """A reply Mercado Livre accepted, then blocked: the agent must learn `receiver` never got it.

    1. One intent row (`intent_kind`, `key`) per blocked message; done once. A row left pending
       by a crash or a failed call is reported again: the failed mark is idempotent, the note is
       looked up before it is posted again.
    2. The reply it was (`find_reply()` → (reply, part seq) or None: pruned) is marked failed
       with the reason, naming the part when the reply went in parts (the others must not be sent
       again).
    3. A private note, in the reply's conversation, or when an agent deleted that one in the
       flow's current one (`conversation_id`).
    4. The row is recorded done, once the note is in: with every conversation named gone, it stays
       pending and is told at a later read, in the one the flow continues in by then. `ids` names
       the message in the flow's `log`.
    """
    link, fresh = s.db.links.record_intent(intent_kind, key, s.clock())
    if link["status"] == "created":
        return
    found = find_reply()
    if found:
        reply, seq = found
        count = len(s.db.replies.parts(reply["id"]))
        part = f"parte {seq + 1} de {count}" if count > 1 and seq is not None else None
        mark_reply_blocked(s, reply, why, part)
        # A report still waiting (Chatwoot was down) goes on: it never sets a delivered mark over this one
        # (db.replies.moderation_told), and what else it says still counts: a partial reply's failure note,
        # a claim reply's note saying the mediator, not the buyer addressed, got it.
        crashpoint(crash)
        if not note_first_present(s, [reply["conversation_id"], conversation_id],
                                  blocked_reply_note(why, receiver, part), note_source, look_first=not fresh):
            # Left pending: told at a later read, in the conversation the flow continues in by then.
            log.warning("moderation not shown yet: conversations deleted %s reply=%s", ids, reply["id"])
            return
        log.warning("reply moderated %s reply=%s conversation=%s reason=%s", ids, reply["id"],
                    reply["conversation_id"], why)
    s.db.links.mark_created(intent_kind, key, s.clock())


def note_first_present(s: Services, conversation_ids: list[int], note: str, source_id: str,
                       look_first: bool = False) -> bool:
    """Post the note in the first of these conversations that still exists.

    `look_first`: an earlier attempt may have posted it before failing half way.
    """
    for conversation_id in dict.fromkeys(conversation_ids):
        try:
            if look_first and s.chatwoot.find_message_by_source(conversation_id, source_id) is not None:
                return True
            s.chatwoot.note(conversation_id, note, source_id=source_id)
            return True
        except PermanentError as exc:
            if not is_gone(exc):
                raise
    return False


def check_recent_replies(s: Services, kind: str, sync_target: Callable[[str], object], skip: set[str], *,
                         after: float, until: float, again_after: float | None = None, key_prefix: str = "",
                         target_name: str, log: logging.Logger) -> int:
    """Re-read the sale or claim of each reply of `kind` delivered a few minutes ago (and once more
    `again_after` seconds after delivery, when given): Mercado Livre may moderate a message after
    accepting it, and without new activity nothing else would make us read it again.

    1. For each reply delivered between `until` and `after` seconds ago, its check of this round
       (the first, or the later one) is an intent row; a check already done is skipped.
    2. Its target is synced (`sync_target(target id)`), unless this poll already did (`skip`).
    3. A failure leaves the row pending: checked again next poll, while the reply is in the window,
       and the checks after it go on. Only a lost authorization stops them.
    4. The check is recorded done. Returns the targets synced.
    """
    now = s.clock()
    checked = 0
    for reply in s.db.replies.delivered_between(kind, now - until, now - after):
        if s.stopping.is_set():
            break
        # The first round's key is the reply id alone (with the flow's prefix), as it always was.
        late = again_after is not None and now - reply["finished_at"] >= again_after
        check_id = f"{key_prefix}{reply['id']}:late" if late else f"{key_prefix}{reply['id']}"
        link, _fresh = s.db.links.record_intent("moderation_check", check_id, now)
        if link["status"] == "created":
            continue
        if reply["target_id"] not in skip:
            try:
                sync_target(reply["target_id"])
            except ReauthorizationRequired:
                raise
            except Exception as exc:  # noqa: BLE001 — one failing target must not stop the checks after it
                log.error("not checked for moderation %s=%s reply=%s error=%s", target_name, reply["target_id"],
                          reply["id"], failures.describe(exc))
                continue
            skip.add(reply["target_id"])
            checked += 1
        s.db.links.mark_created("moderation_check", check_id, s.clock())
    return checked
