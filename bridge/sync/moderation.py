"""Mercado Livre's moderation of a post-sale or claim message: blocked or not, why, and the agent told so."""

from __future__ import annotations

from bridge.http import PermanentError
from bridge.services import Services
from bridge.sync.contacts import is_gone

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
