"""Is this Mercado Livre message our own reply part, sent but not recorded as sent yet?

One answer for every flow (questions, sales, claims) and for both sides: the sync deciding
what to mirror, and the outbox looking for a send whose answer was lost.

- The same text: compared with runs of whitespace collapsed.
- In doubt: a part left `sending` by an unfinished reply may have reached Mercado Livre. A
  message from the seller with its text may be that part: the sync leaves it for later
  instead of mirroring it as typed on the site (a finished reply settles nothing any more).
- A stray send: a part sent again after a look that found nothing, or erased with its reply
  while in flight, may still land later, with an id the bridge never learns. Its text's hash
  is kept (db.replies.strays): a message from the seller with that text, created at or after
  the part's first attempt (and within a day of it), is the bridge's own, whenever it lands.
- A lost send: a message from the seller with the part's text, created at or after the part's
  first attempt (less the clocks' skew), not already accounted for. When in doubt the part is
  sent again: a repeated line beats a reply that shows delivered and never arrived.

Each flow has a small adapter below: what "from the seller" and "its text" are in its messages.
"""

from __future__ import annotations

import logging

from bridge.rules.dates import parse_date
from bridge.services import Services
from bridge.store.replies import STRAY_LANDS_WITHIN
from bridge.text import text_hash

log = logging.getLogger("bridge.outbox")

SEND_CLOCK_SKEW = 60.0  # seconds our clock may run ahead of Mercado Livre's


# ---- the rule (pure) ----------------------------------------------------------------------------------

def same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def may_be_part_in_flight(text: str, in_doubt: list[str]) -> bool:
    """A seller's message with this text may be one of these parts in flight."""
    return any(same_text(text, doubt) for doubt in in_doubt)


def sent_since(created: float | None, since: float) -> bool:
    """Created at or after a first attempt at `since` (by Mercado Livre's clock, which may lag ours)."""
    return created is not None and created >= since - SEND_CLOCK_SKEW


def may_be_copy_of(created: str | None, first_attempt_at: float | None) -> bool:
    """Could a message created at `created` (Mercado Livre's date) be a part first tried at
    `first_attempt_at`? Not when it is older (less the clocks' skew); unknown dates do not rule it out."""
    moment = parse_date(created)
    return first_attempt_at is None or moment is None or sent_since(moment, first_attempt_at)


# ---- adapters ---------------------------------------------------------------------------------------

def _from_seller(message: dict, seller_id: int) -> bool:
    return str((message.get("from") or {}).get("user_id")) == str(seller_id)


def sale_message_in_doubt(message: dict, seller_id: int, in_doubt: list[str]) -> bool:
    """Post-sale: the seller's message may be a reply part in flight."""
    return _from_seller(message, seller_id) and may_be_part_in_flight(message.get("text") or "", in_doubt)


def sale_stray_copy(message: dict, seller_id: int, strays: dict[str, list[float]]) -> bool:
    """Post-sale: the seller's message is a stray send of ours (`strays`: text hash -> each send's first
    attempt; a single float is one send)."""
    if not strays or not _from_seller(message, seller_id):
        return False
    sends = strays.get(text_hash(message.get("text") or ""))
    return sends is not None and may_be_stray(message, [sends] if isinstance(sends, (int, float)) else sends)


def claim_stray_copy(message: dict, strays: dict[str, list[float]]) -> bool:
    """Claim: the respondent's (the seller's) message is a stray send of ours (`strays` as for a sale)."""
    if not strays or message.get("sender_role") != "respondent":
        return False
    sends = strays.get(text_hash(message.get("message") or ""))
    return bool(sends) and _lands_within(parse_date(message.get("date_created")), sends)


def may_be_stray(message: dict, sends: list[float]) -> bool:
    """Post-sale: could this copy of a text be one of these stray sends of it (their first attempts)?"""
    return _lands_within(parse_date((message.get("message_date") or {}).get("created")), sends)


def _lands_within(created: float | None, sends: list[float]) -> bool:
    """A stray send lands, if ever, from its first attempt (less the clocks' skew) to a day after it."""
    return bool(sends) and (created is None or any(since - SEND_CLOCK_SKEW <= created <= since + STRAY_LANDS_WITHIN
                                                   for since in sends))


def lost_send_among(ambiguous: list[str], others: list[float]) -> str | None:
    """Post-sale: the copies a part's lost send may be, each also possibly a stray send of another part with
    the same text (`others`): each of those sends may account for one copy, so only a copy beyond them is
    this part's. When in doubt, none (the part goes again: a repeated line beats a reply shown delivered that
    never arrived)."""
    return ambiguous[-1] if len(ambiguous) > len(others) else None


def claim_message_in_doubt(message: dict, in_doubt: list[str]) -> bool:
    """Claim: the respondent's (the seller's) message may be a reply part in flight."""
    return message.get("sender_role") == "respondent" and may_be_part_in_flight(message.get("message") or "",
                                                                                 in_doubt)


def is_lost_send(message: dict, seller_id: int, part: dict, since: float, taken: set[str]) -> bool:
    """Post-sale: could this thread message be `part`, sent at or after `since` (epoch seconds)?"""
    if not _from_seller(message, seller_id) or str(message.get("id")) in taken:
        return False
    if not same_text(message.get("text") or "", part.get("text") or ""):
        return False
    if bool(message.get("message_attachments")) != bool(part.get("attachments")):
        return False
    return sent_since(parse_date((message.get("message_date") or {}).get("created")), since)


def is_claim_copy_since(message: dict, since: float) -> bool:
    """Claim: a respondent message created since a first attempt at `since` (its text is matched by key)."""
    return message.get("sender_role") == "respondent" and sent_since(parse_date(message.get("date_created")), since)


# ---- I/O ------------------------------------------------------------------------------------------------

def texts_in_doubt(s: Services, kind: str, target_id: str) -> list[str]:
    """Texts of the parts of `kind` ('message' | 'claim') replies to this sale or claim still in flight."""
    return s.db.replies.texts_in_doubt(kind, target_id)


def adopt_answer_in_flight(s: Services, question_id: str, published: str) -> bool:
    """The question is answered on Mercado Livre with this text: is it our reply, sent before a crash?

    A reply whose POST may have gone out (its part `sending`) and whose text is the one
    published is ours: record it as sent, so the questions sync resolves the conversation
    instead of mirroring the agent's answer a second time; the outbox then finishes the
    reply without posting again.
    """
    reply = s.db.replies.answer_in_flight(question_id)
    if reply is None or not published or not same_text(published, reply["text"] or ""):
        return False
    if not s.db.replies.mark_answer_sent(reply["id"], question_id, reply["conversation_id"],
                                         reply["chatwoot_message_id"], s.clock()):
        return False  # erased since it was read
    log.info("answer found on mercado livre before its delivery was recorded reply=%s question=%s conversation=%s",
             reply["id"], question_id, reply["conversation_id"])
    return True
