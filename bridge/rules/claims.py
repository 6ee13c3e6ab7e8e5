"""What both sides of the claims flow know of a claim: who may be written to, and how a claim
message (it has no id) is told apart, our own sent parts included. Pure."""

from __future__ import annotations

import re
import unicodedata

from bridge.rules.dates import parse_date
from bridge.text import text_hash

REPLY_TO_ATTRIBUTE = "meli_claim_reply_to"
CLAIM_URL = "https://www.mercadolivre.com.br/vendas/reclamacoes/{claim_id}/detalhe"


def respondent(claim: dict) -> dict:
    return next((p for p in claim.get("players") or [] if isinstance(p, dict) and p.get("role") == "respondent"), {})


def seller_actions(claim: dict) -> list[dict]:
    return [a for a in respondent(claim).get("available_actions") or [] if isinstance(a, dict) and a.get("action")]


def allowed_receivers(claim: dict) -> set[str]:
    names = {a["action"] for a in seller_actions(claim)}
    return {role for role in ("complainant", "mediator") if f"send_message_to_{role}" in names}


def against_seller(claim: dict, seller_id) -> bool:
    """The seller is the claim's respondent: a claim it opened on its own purchase is not the store's."""
    return str(respondent(claim).get("user_id")) == str(seller_id)


# What agents type in `meli_claim_reply_to` (setup offers `comprador` / `mediador` as a list; older
# installs have a text field). Compared without case, accents or punctuation; the words below are
# fillers ("para o", "do") and Mercado Livre's own names ("mediação do ML"), which alone name nobody.
BUYER_WORDS = frozenset({"comprador", "compradora", "cliente", "buyer", "complainant", "reclamante"})
MEDIATOR_WORDS = frozenset({"mediador", "mediadora", "mediator", "mediacao", "mediation", "mediadores"})
FILLER_WORDS = frozenset({"o", "a", "os", "as", "ao", "para", "pra", "pro", "p", "do", "da", "de", "no", "na", "to",
                          "the"})
MELI_WORDS = frozenset({"ml", "meli", "mercado", "livre", "mercadolivre", "mercadolibre", "libre"})
REPLY_TO_VALUES = "comprador (ou vazio) para o comprador; mediador para a mediação do Mercado Livre"


def parse_reply_to(value) -> str | None:
    """`complainant`, `mediator`, or None when the value is not recognized (never guessed as the buyer:
    a reply meant for the mediator that reached the buyer cannot be taken back). Absent or blank: the buyer."""
    if value is None:
        return "complainant"
    if not isinstance(value, str):
        return None
    if not value.strip():
        return "complainant"
    plain = "".join(c for c in unicodedata.normalize("NFKD", value.casefold()) if not unicodedata.combining(c))
    words = [w for w in re.split(r"[\W_]+", plain) if w]
    if not words:
        return None
    meant = [w for w in words if w not in FILLER_WORDS]
    core = {w for w in meant if w not in MELI_WORDS}
    if not core:
        # "ML", "Mercado Livre" alone: the mediation, or the buyer reached through the site? Not guessed.
        return None
    if len(core) == 1 and core <= MEDIATOR_WORDS:
        return "mediator"
    if len(core) == 1 and core <= BUYER_WORDS:
        return "complainant"
    return None


def resolve_receiver(wanted: str, allowed: list[str] | set[str] | None) -> str | None:
    """Who a reply goes to, decided once (every part then goes there): the one the agent addressed,
    or the mediator when the buyer was addressed and the mediator is the only one the seller may
    write to. `allowed` None: not known yet (a claim not synced in full), and None returned when
    that matters: the delivery decides, from the claim it reads, before the first part leaves."""
    if wanted != "complainant":
        return wanted
    if allowed is None:
        return None
    return "mediator" if set(allowed) == {"mediator"} else "complainant"


def message_key(claim_id: str, message: dict) -> str:
    """A claim message's identity: it has no id (links key, never text)."""
    text = message.get("message") or ""
    return f"{claim_id}:{message.get('sender_role')}:{message.get('date_created')}:{text_hash(text)}"


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


def adopted_parts(links) -> set[tuple[int, int]]:
    """(Chatwoot message id, part) of the sent parts already matched to a claim message.

    By part, not by count: replies are pruned after a while, and a count would then let a
    new reply with an old reply's text go unmatched and be mirrored back. Not by reply id
    either: SQLite gives a pruned highest id to the next reply.
    """
    return {(link["message_id"], link["data"].get("seq", 0)) for link in links
            if link["status"] == "created" and link["data"].get("by") == "bridge"}
