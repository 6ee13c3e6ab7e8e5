"""Agent replies, the outcome: what became of each reply is shown to the agent in Chatwoot.

The message's status mark, a private note when it did not go (or went only in part) and
resolving; each report is retried until it is shown, and given up on, loudly, after a day.
"""

from __future__ import annotations

import logging

from bridge import failures, source_ids
from bridge.backoff import retry_delay
from bridge.http import ApiError, PermanentError
from bridge.replies.accept import LINK_KIND
from bridge.replies.refusal import receiver_name
from bridge.rules.conversations import confirmed_conversation, knows_conversation
from bridge.services import Services
from db_manager import crashpoint

log = logging.getLogger("bridge.outbox")

GIVE_UP_AFTER = 24 * 3600.0  # a reply is delivered, or its outcome shown, within a day or given up on


def report_outcomes(s: Services) -> int:
    """Outcomes not shown yet: refused at acceptance, or a Chatwoot call that failed before."""
    reported = 0
    for reply in s.db.replies.unreported(s.clock()):
        if s.stopping.is_set():
            break
        reported += report_reply(s, reply)
    return reported


def report_reply(s: Services, reply: dict) -> int:
    """Show one finished reply's outcome in Chatwoot. Returns 1 when done (or given up), 0 to retry later."""
    try:
        _report(s, reply)
        crashpoint("reply_reported")
    except Untold:
        return _told_later(s, reply)
    except ApiError as exc:
        if exc.transient:
            delay = retry_delay(max(1, int(s.clock() - reply["updated_at"]) // 10 + 1), exc.retry_after)
            s.db.replies.report_later(reply["id"], s.clock() + delay, s.clock())
            log.warning("reply outcome not shown yet reply=%s message=%s conversation=%s error=%r",
                        reply["id"], reply["chatwoot_message_id"], reply["conversation_id"], exc.short())
            return 0
        log.error("reply outcome could not be shown reply=%s message=%s conversation=%s error=%r",
                  reply["id"], reply["chatwoot_message_id"], reply["conversation_id"], exc.short())
    except Exception as exc:  # noqa: BLE001 — one reply's report must not hold up the others'
        return _report_crashed(s, reply, exc)
    s.db.replies.mark_reported(reply["id"], s.clock())
    return 1


class Untold(Exception):
    """A failure whose every conversation is deleted: told once its item has a conversation again."""


def _told_later(s: Services, reply: dict) -> int:
    """Kept pending, as a moderation's untold note is: a sale goes on in a new conversation at its buyer's
    next message, and the agent must learn there that this reply did not go. After a day, given up on."""
    now = s.clock()
    since = reply["finished_at"] or reply["created_at"]
    if now - since > GIVE_UP_AFTER:
        log.warning("reply outcome never shown: its conversations were deleted reply=%s message=%s conversation=%s",
                    reply["id"], reply["chatwoot_message_id"], reply["conversation_id"])
        s.db.replies.mark_reported(reply["id"], now)
        return 1
    s.db.replies.report_later(reply["id"], now + retry_delay(max(1, int(now - since) // 10 + 1)), now)
    return 0


def _report_crashed(s: Services, reply: dict, exc: Exception) -> int:
    """Try again with backoff; after a day the outcome is given up on, loudly (log, /health)."""
    now, error = s.clock(), failures.describe(exc)
    if now - (reply["finished_at"] or reply["created_at"]) > GIVE_UP_AFTER:
        failures.gave_up(s, "reply", reply["id"], error)
        s.db.replies.mark_reported(reply["id"], now)
        return 1
    # Counted from when the reply finished: updated_at moves with every postponement.
    delay = retry_delay(max(1, int(now - (reply["finished_at"] or reply["created_at"])) // 10 + 1))
    s.db.replies.report_later(reply["id"], now + delay, now)
    log.warning("reply outcome not shown yet reply=%s message=%s conversation=%s error=%s",
                reply["id"], reply["chatwoot_message_id"], reply["conversation_id"], error)
    return 0


def _report(s: Services, reply: dict) -> None:
    try:
        _report_in(s, reply)
    except PermanentError as exc:
        if exc.status != 404:
            raise
        # An agent deleted the conversation (or the message) after replying. Success needs no
        # word; a failure is still told, in the conversation that replaced it if there is one
        # (a sale continues in a new conversation).
        kind = LINK_KIND.get(reply["kind"], "pack")
        link = s.db.links.get(kind, reply["target_id"])
        # Only one confirmed as the item's: a candidate an agent's reply merely named may be another buyer's.
        # And only when the reply's own conversation was the item's (the item continues in a new one): one the
        # bridge never showed the item in was named by its attribute alone, maybe typed into another
        # buyer's conversation, and the item's conversation holds nothing of this reply.
        its_own = reply["target_id"] is not None and (
            knows_conversation(link, reply["conversation_id"])
            or s.db.links.bridge_used(kind, reply["target_id"], reply["conversation_id"]))
        current = confirmed_conversation(link) if its_own else None
        log.warning("reply outcome for a deleted conversation or message reply=%s message=%s conversation=%s "
                    "status=%s now_in=%s", reply["id"], reply["chatwoot_message_id"], reply["conversation_id"],
                    reply["status"], current)
        if reply["status"] == "delivered" or not reply["note"]:
            return
        for conversation_id in dict.fromkeys(c for c in (reply["conversation_id"], current) if c):
            try:
                s.chatwoot.note(conversation_id, f"{_header(s, reply)}: {reply['error']}.\n\n{reply['note']}",
                                source_id=source_ids.note("reply", reply["id"]))
                return
            except PermanentError as gone:
                if gone.status != 404:
                    raise
        if its_own and reply["kind"] in ("message", "claim"):  # a question's never continues once answered
            raise Untold from None  # the item may go on in a new conversation (a sale does, at its buyer's word)


def _report_in(s: Services, reply: dict) -> None:
    conversation_id, message_id = reply["conversation_id"], reply["chatwoot_message_id"]
    if reply["status"] == "delivered":
        # A part moderated while the next still waited to go is shown failed by the moderation's
        # report: the buyer never got it, and "delivered" over that mark would say they did.
        if not s.db.replies.moderation_told(reply["id"]):
            s.chatwoot.set_message_status(conversation_id, message_id, "delivered")
        if reply["kind"] == "answer":
            s.chatwoot.set_status(conversation_id, "resolved")
        redirected = redirect_note(reply)
        source_id = source_ids.note("reply", reply["id"])
        if redirected and not _recent_source(s, conversation_id, source_id):
            s.chatwoot.note(conversation_id, redirected, source_id=source_id)
        return
    s.chatwoot.set_message_status(conversation_id, message_id, "failed", reply["error"] or "não enviada")
    source_id = source_ids.note("reply", reply["id"])
    if reply["note"] and not _recent_source(s, conversation_id, source_id):
        s.chatwoot.note(conversation_id, f"{_header(s, reply)}: {reply['error']}.\n\n{reply['note']}",
                        source_id=source_id)


def redirect_note(reply: dict) -> str | None:
    """Pure: a claim reply delivered to someone other than the one the agent addressed says who got it."""
    if reply["kind"] != "claim" or not reply.get("addressed") or reply.get("receiver") == reply["addressed"]:
        return None
    got, meant = receiver_name(reply), receiver_name(dict(reply, receiver=reply["addressed"]))
    return (f"Resposta entregue ao {got}, não ao {meant}: quando ela foi escrita, o Mercado Livre só aceitava "
            f"mensagens do vendedor para o {got} nesta reclamação. O {meant} não a recebeu.")


def _header(s: Services, reply: dict) -> str:
    # "Not sent" over a reply that went in part would have the agent send it all again.
    partly = any(p["status"] == "sent" for p in s.db.replies.parts(reply["id"]))
    return "Resposta enviada só em parte ao Mercado Livre" if partly else "Resposta não enviada ao Mercado Livre"


def _recent_source(s: Services, conversation_id: int, source_id: str) -> bool:
    """A note posted before a crash is in the latest page of messages."""
    return any(m.get("source_id") == source_id for m in s.chatwoot.messages(conversation_id))
