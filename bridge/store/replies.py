"""The outbox: agent replies accepted from Chatwoot and their Mercado Livre parts.

A reply is recorded with its parts before the webhook is acknowledged (accept), taken by one
poller at a time under a lease (claim), and finished delivered or failed, its text cleared
(LGPD). A reply id is never used again once deleted (AUTOINCREMENT): an erasure or a prune may
delete a reply while its part is in flight, and the send's bookkeeping must then find nothing
rather than another buyer's reply. So every command that follows a remote call names the reply
by that id, touches it only while it is unfinished (or, for its report, finished), and returns
whether it found it: False means the reply is gone, and the caller drops what the call returned.
The parts' remote ids and in-flight texts are what tell the bridge's own messages in a thread
from the seller's others.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypedDict

from bridge.store.links import insert_pending, update_fields
from bridge.text import text_hash

if TYPE_CHECKING:
    from db_manager import Database


# A post-sale or claim reply `r` behind an earlier unfinished one to the same sale or claim, or written in
# the same conversation (its sale may be known only at its delivery), that is not due itself (waiting to
# retry, or in another worker's hands): the buyer reads them in the order written. Params: now, now.
_WAITS_FOR_EARLIER = (
    "(r.kind IN ('message', 'claim') AND EXISTS (SELECT 1 FROM replies AS e WHERE e.kind = r.kind"
    " AND (e.target_id = r.target_id OR e.conversation_id = r.conversation_id) AND e.id < r.id"
    " AND e.status IN ('pending', 'sending')"
    " AND NOT ((e.status = 'pending' AND e.next_attempt_at <= ?) OR (e.status = 'sending'"
    " AND e.lease_until < ?))))")
# The reply a part belongs to is still there and unfinished (its id never names another reply).
_UNFINISHED = "EXISTS (SELECT 1 FROM replies WHERE replies.id = ? AND replies.status IN ('pending', 'sending'))"
_FINISHED = "status IN ('delivered', 'failed')"
# A send of a part that may still land on Mercado Livre though the bridge will never record its id
# (sent again after a look that found nothing, or erased with its reply while in flight): a links
# row "<reply kind>:<target>:<text hash>", data {"since": first attempt}. No text, no buyer id.
STRAY = "stray_send"
# A stray send lands within this of its first attempt, if ever: past it, a seller message with the
# same text ("Ok", "Obrigado!") is the seller's own again, and its hash stands for nothing.
STRAY_LANDS_WITHIN = 86400.0
BUSY = "busy"  # retarget: another reply to that sale or claim goes first


def record_stray(conn, kind: str, target_id: str, text: str | None, since: float, now: float,
                 owner: str = "") -> None:
    """Inside a write: a send of this text to this target may still land, from `since` on. `owner`: the
    part that sent it ("<reply id>:<seq>"). Each send keeps its own first attempt (data.by: owner -> list):
    it may land within a day of it, whatever other sends of the text did; and a part looking for its own
    lost send tells its own strays from another part's."""
    key = f"{kind}:{target_id}:{text_hash(text or '')}"
    row = conn.execute("SELECT data FROM links WHERE kind = ? AND external_id = ?", (STRAY, key)).fetchone()
    sends = stray_sends(json.loads(row[0]) if row is not None and row[0] else {})
    sends.setdefault(owner, []).append(float(since))
    _write_stray(conn, key, sends, now)


def stray_sends(data: dict) -> dict[str, list[float]]:
    """A stray row's sends: owner -> first attempts (a row from before they were kept by part: one send)."""
    by = data.get("by")
    if isinstance(by, dict):
        return {str(owner): [float(t) for t in times] for owner, times in by.items() if isinstance(times, list)}
    return {"": [float(data["since"])]} if data.get("since") is not None else {}


def _write_stray(conn, key: str, sends: dict[str, list[float]], now: float) -> None:
    data = {"since": min(t for times in sends.values() for t in times), "by": sends}
    conn.execute("INSERT INTO links (kind, external_id, status, data, created_at, updated_at)"
                 " VALUES (?, ?, 'created', ?, ?, ?) ON CONFLICT (kind, external_id)"
                 " DO UPDATE SET updated_at = excluded.updated_at, data = excluded.data",
                 (STRAY, key, json.dumps(data, sort_keys=True), now, now))


def forget_landed_strays(conn, kind: str, target_id: str, now: float) -> None:
    """Inside a write: the sends to this target past their day have landed or never will; their hashes
    stand for nothing but a message sent (a row left with no send goes)."""
    prefix = f"{kind}:{target_id}:"
    for key, data in conn.execute("SELECT external_id, data FROM links WHERE kind = ? AND external_id >= ?"
                                  " AND external_id < ?", (STRAY, prefix, prefix + "\uffff")).fetchall():
        sends = {owner: [t for t in times if t >= now - STRAY_LANDS_WITHIN]
                 for owner, times in stray_sends(json.loads(data or "{}")).items()}
        sends = {owner: times for owner, times in sends.items() if times}
        if sends:
            _write_stray(conn, key, sends, now)
        else:
            conn.execute("DELETE FROM links WHERE kind = ? AND external_id = ?", (STRAY, key))


class Reply(TypedDict):
    """A `replies` row."""
    id: int
    chatwoot_message_id: int
    conversation_id: int
    kind: str                   # answer | message | claim
    target_id: str | None       # question, pack or claim id
    status: str                 # pending | sending | delivered | failed
    attempts: int
    next_attempt_at: float
    lease_until: float | None
    error: str | None
    note: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    reported_at: float | None
    receiver: str | None        # claims: complainant | mediator, fixed at acceptance for every part
    addressed: str | None       # claims: whom the agent's attribute named (receiver may differ)


class ReplyPart(TypedDict):
    """A `reply_parts` row, its attachments decoded."""
    reply_id: int
    seq: int
    text: str | None
    attachments: list[dict]
    status: str                 # pending | sending | sent
    remote_id: str | None
    sent_at: float | None
    first_attempt_at: float | None
    last_attempt_at: float | None


class DueReply(TypedDict):
    id: int
    kind: str
    target_id: str | None
    conversation_id: int


class AnswerInFlight(TypedDict):
    id: int
    conversation_id: int
    chatwoot_message_id: int
    text: str | None


class SentClaimPart(TypedDict):
    id: int
    conversation_id: int
    chatwoot_message_id: int
    seq: int
    sent_at: float | None
    first_attempt_at: float | None


class OutboxStats(TypedDict):
    pending: int
    failed: int
    delivered: int
    oldest_pending_age_seconds: float | None


class RepliesStore:
    """`db.replies`: queries get/by_…/parts/due/…, commands accept/claim/mark_…/retry_later."""

    def __init__(self, db: Database):
        self._db = db

    def seen(self, chatwoot_message_id: int) -> bool:
        return self._db.one("SELECT 1 AS x FROM replies WHERE chatwoot_message_id = ?",
                            (chatwoot_message_id,)) is not None

    def accept(self, *, chatwoot_message_id: int, conversation_id: int, kind: str, target_id: str | None,
               parts: list[dict], now: float, error: str | None = None, note: str | None = None,
               taken: tuple[str, str] | None = None, receiver: str | None = None,
               addressed: str | None = None) -> int | None:
        """Record an agent reply and its parts in one transaction.

        Returns the new reply id, or None when this Chatwoot message was already accepted
        (the same message delivered by both the account and the inbox webhook). A reply
        whose plan already failed is stored as 'failed' so the agent is still told.
        `taken` = (error, note) makes the target exclusive: when another reply to it is
        pending, sending or delivered, this one is stored failed with that reason. The check
        runs inside the insert's transaction, so two listener workers accepting two answers
        to one question at the same moment cannot both win.
        """
        with self._db.write() as conn:
            if taken and not error and conn.execute(
                    "SELECT 1 FROM replies WHERE kind = ? AND target_id = ? AND status IN"
                    " ('pending', 'sending', 'delivered') AND chatwoot_message_id != ? LIMIT 1",
                    (kind, target_id, chatwoot_message_id)).fetchone():
                error, note = taken
            status = "failed" if error else "pending"
            cur = conn.execute(
                "INSERT OR IGNORE INTO replies (chatwoot_message_id, conversation_id, kind, target_id, status,"
                " next_attempt_at, error, note, created_at, updated_at, finished_at, receiver, addressed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (chatwoot_message_id, conversation_id, kind, target_id, status, now, error, note, now, now,
                 now if error else None, receiver, addressed))
            if cur.rowcount != 1:
                return None
            reply_id = cur.lastrowid
            if not error:
                conn.executemany(
                    "INSERT INTO reply_parts (reply_id, seq, text, attachments) VALUES (?, ?, ?, ?)",
                    [(reply_id, seq, p.get("text"), json.dumps(p.get("attachments") or []))
                     for seq, p in enumerate(parts)])
            return reply_id

    def retarget(self, reply_id: int, target_id: str, exclusive: bool, now: float) -> bool | str | None:
        """The reply goes to `target_id` (the item the bridge showed in its conversation, not the one its
        webhook named), before any part left. `exclusive`: one answer per question, checked as `accept`
        does, in the same transaction. False: the target has another reply; None: the reply is gone;
        BUSY: a post-sale or claim reply, not moved: another reply to that sale or claim is in another
        worker's hands, or was written before this one and is unfinished (it goes first, alone)."""
        with self._db.write() as conn:
            row = conn.execute("SELECT kind FROM replies WHERE id = ? AND status = 'sending'", (reply_id,)).fetchone()
            if row is None:
                return None
            if row[0] in ("message", "claim") and conn.execute(
                    "SELECT 1 FROM replies WHERE kind = ? AND target_id = ? AND id != ? AND status IN"
                    " ('pending', 'sending') AND (id < ? OR (status = 'sending' AND lease_until >= ?)) LIMIT 1",
                    (row[0], target_id, reply_id, reply_id, now)).fetchone():
                return BUSY
            if exclusive and conn.execute(
                    "SELECT 1 FROM replies WHERE kind = ? AND target_id = ? AND status IN"
                    " ('pending', 'sending', 'delivered') AND id != ? LIMIT 1",
                    (row[0], target_id, reply_id)).fetchone():
                return False
            conn.execute("UPDATE replies SET target_id = ? WHERE id = ?", (target_id, reply_id))
            return True

    def active_for_target(self, kind: str, target_id: str) -> list[Reply]:
        return self._db.all("SELECT * FROM replies WHERE kind = ? AND target_id = ?"
                            " AND status IN ('pending', 'sending', 'delivered') ORDER BY id", (kind, target_id))

    def get(self, reply_id: int) -> Reply | None:
        return self._db.one("SELECT * FROM replies WHERE id = ?", (reply_id,))

    def by_message(self, chatwoot_message_id: int) -> Reply | None:
        return self._db.one("SELECT * FROM replies WHERE chatwoot_message_id = ?", (chatwoot_message_id,))

    def parts(self, reply_id: int) -> list[ReplyPart]:
        rows = self._db.all("SELECT * FROM reply_parts WHERE reply_id = ? ORDER BY seq", (reply_id,))
        for row in rows:
            row["attachments"] = json.loads(row["attachments"] or "[]")
        return rows

    def due(self, now: float, limit: int = 200) -> list[DueReply]:
        """Pending replies whose time has come, and 'sending' ones whose worker died, oldest first.

        A post-sale or claim reply waits while an earlier one to the same sale or claim is
        unfinished (e.g. waiting to retry): the buyer must read them in the order the agent wrote them.
        """
        return self._db.all(
            "SELECT id, kind, target_id, conversation_id FROM replies AS r"
            " WHERE ((status = 'pending' AND next_attempt_at <= ?)"
            f" OR (status = 'sending' AND lease_until < ?)) AND NOT {_WAITS_FOR_EARLIER}"
            " ORDER BY id LIMIT ?", (now, now, now, now, limit))

    def claim(self, reply_id: int, now: float, lease: float) -> Reply | None:
        """Take a reply for delivery; None when another worker has it."""
        with self._db.write() as conn:
            # Checked again here, in the claim's transaction: listed before, the reply may since have got an
            # earlier one in hand beside it (one moved to its sale at delivery, by another worker).
            cur = conn.execute(
                "UPDATE replies SET status = 'sending', lease_until = ?, attempts = attempts + 1, updated_at = ?"
                " WHERE id = ? AND ((status = 'pending' AND next_attempt_at <= ?)"
                f" OR (status = 'sending' AND lease_until < ?)) AND NOT EXISTS (SELECT 1 FROM replies AS r"
                f" WHERE r.id = ? AND {_WAITS_FOR_EARLIER})",
                (now + lease, now, reply_id, now, now, reply_id, now, now))
            if cur.rowcount != 1:
                return None
            return dict(conn.execute("SELECT * FROM replies WHERE id = ?", (reply_id,)).fetchone())

    def extend_lease(self, reply_id: int, lease_until: float) -> bool:
        """A reply still in hand: another poller must not take it over between two of its parts."""
        with self._db.write() as conn:
            return conn.execute("UPDATE replies SET lease_until = MAX(lease_until, ?) WHERE id = ?"
                                " AND status = 'sending'", (lease_until, reply_id)).rowcount == 1

    def mark_part_sending(self, reply_id: int, seq: int, now: float | None = None) -> str | None:
        """Mark a part in flight; returns its previous status ('sending' means: check remote first),
        None when the reply is gone or finished.

        `now` is kept as the first attempt's time: only a message created after it can be
        this part's lost send.
        """
        with self._db.write() as conn:
            row = conn.execute(f"SELECT status FROM reply_parts WHERE reply_id = ? AND seq = ? AND {_UNFINISHED}",
                               (reply_id, seq, reply_id)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE reply_parts SET status = 'sending', first_attempt_at = COALESCE(first_attempt_at, ?)"
                         " WHERE reply_id = ? AND seq = ? AND status = 'pending'", (now, reply_id, seq))
            return row["status"]

    def put_in_doubt(self) -> int:
        """After a restore: every part of an unfinished reply may have reached Mercado Livre after the
        backup was taken (the state put back cannot tell), so each is `sending`, as after a lost
        answer: the outbox looks for it there before sending, from when its reply was accepted.
        Returns the parts changed."""
        with self._db.write() as conn:
            return conn.execute(
                "UPDATE reply_parts SET status = 'sending', first_attempt_at = COALESCE(first_attempt_at,"
                " (SELECT created_at FROM replies WHERE replies.id = reply_parts.reply_id))"
                " WHERE status = 'pending' AND reply_id IN (SELECT id FROM replies"
                " WHERE status IN ('pending', 'sending'))").rowcount

    def mark_part_attempted(self, reply_id: int, seq: int, now: float) -> bool:
        """The send is going out now: a lost answer is looked for only once it has settled."""
        with self._db.write() as conn:
            return conn.execute(f"UPDATE reply_parts SET last_attempt_at = ? WHERE reply_id = ? AND seq = ?"
                                f" AND {_UNFINISHED}", (now, reply_id, seq, reply_id)).rowcount == 1

    def mark_part_sent(self, reply_id: int, seq: int, remote_id: str | None, now: float) -> bool:
        """False: the reply is gone (erased while the part was in flight) or already finished."""
        with self._db.write() as conn:
            return conn.execute(f"UPDATE reply_parts SET status = 'sent', remote_id = ?, sent_at = ?"
                                f" WHERE reply_id = ? AND seq = ? AND {_UNFINISHED}",
                                (remote_id, now, reply_id, seq, reply_id)).rowcount == 1

    def mark_answer_sent(self, reply_id: int, question_id: str, conversation_id: int, message_id: int,
                         now: float) -> bool:
        """The answer is on Mercado Livre: its part is sent and the agent's message is the
        question's answer in Chatwoot, in one commit, so the questions sync never sees one
        without the other and mirrors our own answer back. False (nothing written): the reply
        is gone, erased with its question meanwhile."""
        with self._db.write() as conn:
            if conn.execute(f"UPDATE reply_parts SET status = 'sent', sent_at = COALESCE(sent_at, ?)"
                            f" WHERE reply_id = ? AND seq = 0 AND {_UNFINISHED}",
                            (now, reply_id, reply_id)).rowcount != 1:
                return False
            insert_pending(conn, "answer", question_id, now)
            update_fields(conn, "answer", question_id, now,
                          {"status": "created", "conversation_id": conversation_id, "message_id": message_id,
                           "data": {"by": "bridge"}})
            return True

    def answer_in_flight(self, question_id: str) -> AnswerInFlight | None:
        """An unfinished reply to this question whose POST may have reached Mercado Livre."""
        return self._db.one("SELECT r.id, r.conversation_id, r.chatwoot_message_id, p.text FROM replies r"
                            " JOIN reply_parts p ON p.reply_id = r.id AND p.seq = 0"
                            " WHERE r.kind = 'answer' AND r.target_id = ? AND r.status IN ('pending', 'sending')"
                            " AND p.status = 'sending' ORDER BY r.id LIMIT 1", (str(question_id),))

    def release_leases(self, now: float) -> int:
        """Replies left `sending` by a dead poller become due now (call only holding the poller lock)."""
        with self._db.write() as conn:
            return conn.execute("UPDATE replies SET lease_until = ?, updated_at = ? WHERE status = 'sending'"
                                " AND lease_until >= ?", (now - 1, now, now)).rowcount

    def fix_receiver(self, reply_id: int, receiver: str) -> str | None:
        """A claim reply accepted before its claim was known decides its receiver once, before any part
        leaves; returns the receiver every part uses (an earlier decision stands), None when the
        reply is no longer unfinished (erased, or finished elsewhere) while its claim was read."""
        with self._db.write() as conn:
            conn.execute("UPDATE replies SET receiver = ? WHERE id = ? AND receiver IS NULL"
                         " AND status IN ('pending', 'sending')", (receiver, reply_id))
            row = conn.execute("SELECT receiver FROM replies WHERE id = ? AND status IN ('pending', 'sending')",
                               (reply_id,)).fetchone()
            return row["receiver"] if row else None

    def readdress_unsent(self, reply_id: int, receiver: str) -> str | None:
        """A claim reply none of whose parts can have arrived takes `receiver`: every part `pending`
        (never tried, refused before it was applied: a 429 or a 403, or settled and not found in
        the claim); none `sending` (in doubt) nor sent. Returns the receiver every part uses, None
        when the reply is no longer unfinished."""
        with self._db.write() as conn:
            conn.execute("UPDATE replies SET receiver = ? WHERE id = ? AND status IN ('pending', 'sending')"
                         " AND NOT EXISTS (SELECT 1 FROM reply_parts WHERE reply_id = ? AND status != 'pending')",
                         (receiver, reply_id, reply_id))
            row = conn.execute("SELECT receiver FROM replies WHERE id = ? AND status IN ('pending', 'sending')",
                               (reply_id,)).fetchone()
            return row["receiver"] if row else None

    def mark_part_unsent(self, reply_id: int, seq: int) -> None:
        """The remote side has no trace of this part: it may be sent again."""
        with self._db.write() as conn:
            conn.execute("UPDATE reply_parts SET status = 'pending' WHERE reply_id = ? AND seq = ?"
                         " AND status = 'sending'", (reply_id, seq))

    def set_part_attachments(self, reply_id: int, seq: int, attachments: list[dict]) -> bool:
        with self._db.write() as conn:
            return conn.execute(f"UPDATE reply_parts SET attachments = ? WHERE reply_id = ? AND seq = ?"
                                f" AND {_UNFINISHED}", (json.dumps(attachments), reply_id, seq, reply_id)).rowcount == 1

    def mark_delivered(self, reply_id: int, now: float) -> bool:
        """Done: forget the text (LGPD), keep ids for the record. False: gone or already finished."""
        with self._db.write() as conn:
            if conn.execute("UPDATE replies SET status = 'delivered', finished_at = ?, updated_at = ?,"
                            " lease_until = NULL, next_attempt_at = ?, error = NULL WHERE id = ?"
                            " AND status IN ('pending', 'sending')", (now, now, now, reply_id)).rowcount != 1:
                return False
            conn.execute("UPDATE reply_parts SET text = NULL, attachments = NULL WHERE reply_id = ?", (reply_id,))
            return True

    def mark_failed(self, reply_id: int, error: str, note: str, now: float) -> bool:
        """False: gone or already finished."""
        with self._db.write() as conn:
            if conn.execute("UPDATE replies SET status = 'failed', error = ?, note = ?, finished_at = ?,"
                            " updated_at = ?, lease_until = NULL, next_attempt_at = ? WHERE id = ?"
                            " AND status IN ('pending', 'sending')",
                            (error, note, now, now, now, reply_id)).rowcount != 1:
                return False
            conn.execute("UPDATE reply_parts SET text = NULL, attachments = NULL WHERE reply_id = ?", (reply_id,))
            return True

    def retry_later(self, reply_id: int, next_attempt_at: float, error: str, now: float,
                    count_attempt: bool = True) -> bool:
        """Give the reply back to the queue; the next attempt is pushed forward first."""
        with self._db.write() as conn:
            return conn.execute("UPDATE replies SET status = 'pending', next_attempt_at = ?, error = ?, updated_at = ?,"
                                " lease_until = NULL, attempts = attempts - ? WHERE id = ? AND status = 'sending'",
                                (next_attempt_at, error, now, 0 if count_attempt else 1, reply_id)).rowcount == 1

    def sent_ids(self, remote_ids: list[str]) -> set[str]:
        """Which of these Mercado Livre message ids the bridge itself sent."""
        found: set[str] = set()
        for start in range(0, len(remote_ids), 500):
            chunk = remote_ids[start:start + 500]
            rows = self._db.conn().execute(
                f"SELECT remote_id FROM reply_parts WHERE remote_id IN ({','.join('?' * len(chunk))})", chunk)
            found.update(r[0] for r in rows)
        return found

    def stray_possible(self, reply_id: int, seq: int, kind: str, target_id: str, since: float, now: float) -> bool:
        """This part is sent again though its earlier send may still land: remembered (by its text's
        hash) for good, so that copy is known as the bridge's own whenever it lands. False: the
        reply is gone or finished."""
        with self._db.write() as conn:
            row = conn.execute(f"SELECT text FROM reply_parts WHERE reply_id = ? AND seq = ? AND {_UNFINISHED}",
                               (reply_id, seq, reply_id)).fetchone()
            if row is None:
                return False
            if (row["text"] or "").strip():
                # A part of files alone is not told apart from the seller's own files by an empty text.
                record_stray(conn, kind, target_id, row["text"], since, now, owner=f"{reply_id}:{seq}")
            return True

    def strays(self, kind: str, target_id: str) -> dict[str, list[float]]:
        """Text hash -> first attempts of the sends to this target that may still land unrecorded."""
        prefix = f"{kind}:{target_id}:"
        return {row["external_id"][len(prefix):]: sorted(t for times in stray_sends(json.loads(row["data"] or "{}"))
                                                         .values() for t in times)
                for row in self._db.all("SELECT external_id, data FROM links WHERE kind = ? AND external_id >= ?"
                                        " AND external_id < ?", (STRAY, prefix, prefix + "\uffff"))}

    def strays_of_others(self, kind: str, target_id: str, text: str | None, owner: str) -> list[float]:
        """First attempts of the stray sends of this text to this target by parts other than `owner`
        ("<reply id>:<seq>"), one per send."""
        row = self._db.one("SELECT data FROM links WHERE kind = ? AND external_id = ?",
                           (STRAY, f"{kind}:{target_id}:{text_hash(text or '')}"))
        sends = stray_sends(json.loads(row["data"] or "{}")) if row is not None else {}
        return sorted(t for part, times in sends.items() if part != owner for t in times)

    def texts_in_doubt(self, kind: str, target_id: str) -> list[str]:
        """Texts of the parts of `kind` replies ('message' to a sale, 'claim' to a claim) to this
        target that may have reached Mercado Livre without us knowing (in flight).

        Only of unfinished replies: a finished one will not settle its parts any more (and its
        texts are cleared), so its doubt would hold back the seller's messages for good.
        """
        return [r["text"] or "" for r in self._db.all(
            "SELECT p.text FROM reply_parts p JOIN replies r ON r.id = p.reply_id WHERE r.kind = ?"
            " AND r.target_id = ? AND r.status IN ('pending', 'sending') AND p.status = 'sending'",
            (kind, str(target_id)))]

    def claim_parts_sent(self, remote_id: str) -> list[SentClaimPart]:
        """Claim reply parts the bridge sent with this text key (claim messages have no id), oldest first."""
        return self._db.all("SELECT r.id, r.conversation_id, r.chatwoot_message_id, p.seq, p.sent_at,"
                            " p.first_attempt_at FROM reply_parts p"
                            " JOIN replies r ON r.id = p.reply_id WHERE r.kind = 'claim' AND p.remote_id = ?"
                            " AND p.status = 'sent' ORDER BY p.sent_at, r.id, p.seq", (remote_id,))

    def by_remote_id(self, remote_id: str) -> Reply | None:
        return self._db.one("SELECT r.* FROM replies r JOIN reply_parts p ON p.reply_id = r.id WHERE p.remote_id = ?",
                            (remote_id,))

    def moderation_told(self, reply_id: int) -> bool:
        """A part of this reply was reported blocked by Mercado Livre's moderation (its failed mark and note
        shown, or on their way): a delivered mark must never be shown over that one."""
        return self._db.one(
            "SELECT EXISTS (SELECT 1 FROM reply_parts p JOIN links m ON m.kind = 'moderation'"
            " AND m.external_id = p.remote_id WHERE p.reply_id = ?)"
            " OR EXISTS (SELECT 1 FROM replies r JOIN links c ON c.conversation_id = r.conversation_id"
            " AND c.kind = 'claim_message' AND c.message_id = r.chatwoot_message_id"
            " JOIN links m ON m.kind = 'claim_moderation' AND m.external_id = c.external_id"
            " WHERE r.id = ?) AS told", (reply_id, reply_id))["told"] == 1

    def delivered_between(self, kind: str, start: float, end: float) -> list[Reply]:
        return self._db.all("SELECT * FROM replies WHERE kind = ? AND status = 'delivered' AND finished_at >= ?"
                            " AND finished_at < ? ORDER BY finished_at", (kind, start, end))

    def unreported(self, now: float, limit: int = 20) -> list[Reply]:
        return self._db.all("SELECT * FROM replies WHERE reported_at IS NULL AND status IN ('delivered', 'failed')"
                            " AND next_attempt_at <= ? ORDER BY id LIMIT ?", (now, limit))

    def mark_reported(self, reply_id: int, now: float) -> bool:
        with self._db.write() as conn:
            return conn.execute("UPDATE replies SET reported_at = ?, note = NULL, updated_at = ? WHERE id = ?"
                                f" AND {_FINISHED}", (now, now, reply_id)).rowcount == 1

    def report_later(self, reply_id: int, next_attempt_at: float, now: float) -> bool:
        with self._db.write() as conn:
            return conn.execute(f"UPDATE replies SET next_attempt_at = ?, updated_at = ? WHERE id = ? AND {_FINISHED}",
                                (next_attempt_at, now, reply_id)).rowcount == 1

    def stats(self, now: float) -> OutboxStats:
        row = self._db.one(
            "SELECT SUM(status IN ('pending', 'sending')) AS pending, SUM(status = 'failed') AS failed,"
            " SUM(status = 'delivered') AS delivered, MIN(CASE WHEN status IN ('pending', 'sending')"
            " THEN created_at END) AS oldest FROM replies")
        return {
            "pending": row["pending"] or 0,
            "failed": row["failed"] or 0,
            "delivered": row["delivered"] or 0,
            "oldest_pending_age_seconds": round(now - row["oldest"], 1) if row["oldest"] else None,
        }

    def retrying(self) -> int:
        """Waiting to be sent again after at least one failed attempt."""
        return self._db.one("SELECT COUNT(*) AS n FROM replies WHERE status IN ('pending', 'sending')"
                            " AND error IS NOT NULL")["n"]
