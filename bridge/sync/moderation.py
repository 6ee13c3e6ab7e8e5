"""Mercado Livre's moderation of a post-sale or claim message: blocked or not, and why in the agent's words."""

from __future__ import annotations

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
