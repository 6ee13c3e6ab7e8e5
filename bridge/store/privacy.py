"""Privacy: retention (RETENTION_DAYS) and the erasure of one buyer (`main.py forget-buyer`).

Both delete every row about a question, sale or claim at once, leaving a closed watermark (ids
and a date, never a buyer id) so its history is not imported again. Nothing in progress is
touched. docs/privacidade.md describes what is kept and for how long.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from bridge.store.links import ADOPTED, link_row
from bridge.store.replies import STRAY, forget_landed_strays, record_stray

if TYPE_CHECKING:
    from db_manager import Database

# `forget-buyer --chatwoot` deletes in Chatwoot before the bridge's rows go (they say where to look,
# and a failed deletion is resumed by running it again). Meanwhile no poller may make the buyer's
# contact or conversations again there: the erasure would leave them behind, remembered by nobody.
# The hold lasts while the command runs; one that died holding it stops holding after this long.
ERASING = "erasing"  # links kind: a buyer whose erasure is deleting in Chatwoot now
ERASING_HOLD = 3600.0
RETENTION_BATCH = 20  # conversations erased per write: few fsyncs, yet a short wait for the listener

# How retention and erasure find each kind of conversation the bridge mirrors: where its
# buyer id is kept, and which rows hang off it. A new kind (claims) adds one entry here.
#   finished: SQL over its `links` row, true once nothing more can happen to it locally
#     (a sale has no end of its own: only the lack of any sign of life within the window)
#   children: link kinds whose external id equals this one's (one answer per question)
#   messages: link kinds whose data.<kind>_id names this one (one row per mirrored message;
#     give each an index like links_message_by_pack)
#   keyed: link kinds whose external id starts with "<this id>:" (a claim's messages, which
#     have no id of their own, its state notes and moderation reports)
#   reply_kind: the outbox `replies.kind` that targets it
#   check_prefix: how its replies' `moderation_check` links are named ("" = the bare reply id),
#     one per round of MODERATION_CHECK_ROUNDS
#   thread: its activity is also in `threads` (post-sale)
#   mark_in_data: its watermark date is data.last_message_at (the newest Mercado Livre message
#     date seen), moved forward by each erasure; otherwise the local time of the last change
# Every conversation row carries the buyer id in data.buyer_id (rows written before it did
# are found by the buyer's contact id).
# The suffixes of a reply's moderation re-checks (bridge.sync.sales.check_recent_replies): the
# first round's key is the reply id alone, the late one's "<id>:late". Erasure deletes both.
MODERATION_CHECK_ROUNDS = ("", ":late")
CONVERSATION_KINDS: dict[str, dict] = {
    "question": {"finished": "json_extract(data, '$.state') IN ('closed', 'removed')",
                 "children": ("answer",), "messages": (), "keyed": (), "reply_kind": "answer", "check_prefix": "",
                 "thread": False, "mark_in_data": False},
    "pack": {"finished": "1 = 1", "children": (), "messages": ("message",), "keyed": (), "reply_kind": "message",
             "check_prefix": "", "thread": True, "mark_in_data": False},
    # Closed on Mercado Livre, or out of reach (another account's, removed): nothing more comes.
    "claim": {"finished": "json_extract(data, '$.status') IN ('closed', 'unavailable')", "children": (),
              "messages": (), "keyed": ("claim_message", "claim_event", "claim_moderation"), "reply_kind": "claim",
              "check_prefix": "claim:", "thread": False, "mark_in_data": True},
}


# How far Mercado Livre's clock may run ahead of ours (bridge.rules.own_parts.SEND_CLOCK_SKEW): a
# part recorded sent at our time t is dated at most this much later there.
SENT_CLOCK_SKEW = 60.0

# A create in doubt (its answer lost) is looked for by its row before it is made again: pruned with its
# conversation, the next attempt would make it again without looking, twice in Chatwoot once the first was
# applied. Its item is tried again at least daily while it fails (bridge.failures.AFTER_GIVE_UP), so it
# holds the conversation while tried within a retention window past the cutoff: a pass that finds every row
# RETENTION_DAYS old at once (a bridge stopped that long, the soak's passes) still finds it in progress. One
# untried longer (its conversation deleted, the bridge stopped retrying it) never resolves: it holds nothing,
# and the buyer's rows go at most one more RETENTION_DAYS late. Over `links`, one ? for that bound.
HELD_INTENT = "status = 'pending' AND updated_at >= ?"


def intents_held_since(cutoff: float, days: float) -> float:
    """The last attempt after which a create in doubt still holds its conversation (HELD_INTENT)."""
    return cutoff - days * 86400


# The statuses of a reply whose agent has not been told its outcome (see forget_buyer's `untold`).
UNTOLD_REPLIES = ("pending", "sending", "failed", "delivered")


def _marks(values) -> str:
    """Placeholders for an IN list; NULL for an empty one (IN (NULL) matches nothing)."""
    return ",".join("?" * len(values)) or "NULL"


def _add_counts(total: dict, more: dict) -> None:
    for key, value in more.items():
        if value:
            total[key] = total.get(key, 0) + value


# The resources Mercado Livre's notifications name (as bridge.sync.notifications records them):
# only these are this conversation's. A bare id would also match another buyer's claim or
# question that happens to carry the same number.
NOTIFIED = {"question": ("/questions/{}",), "pack": (), "claim": ("/post-purchase/v1/claims/{}",)}
NOTIFIED_MESSAGE = ("{}", "/messages/{}")  # a post-sale message: its id, bare (or as older versions kept it)


def _item_replies(conn: sqlite3.Connection, kind: str, external_id: str, where: str = "1 = 1",
                  params: tuple = ()) -> list[int]:
    """Ids of the replies about this question, sale or claim (`where` narrows them): those written in a
    conversation the bridge itself gave it (made or found, or deleted since: not a candidate only a webhook
    named, ADOPTED), whatever item they target now, and those targeting it, unless written in another item's
    own conversation. A reply's target is what its webhook's attribute said until the delivery reads the
    conversation: written in this buyer's conversation under another buyer's item (or none), it is this
    buyer's, and is moved there at delivery; written in another buyer's under this one's, it is theirs."""
    spec = CONVERSATION_KINDS[kind]
    row = conn.execute("SELECT conversation_id, data FROM links WHERE kind = ? AND external_id = ?",
                       (kind, external_id)).fetchone()
    data = json.loads(row[1]) if row is not None and row[1] else {}
    own = {c for c in ((None if data.get(ADOPTED) else row[0]) if row is not None else None,
                       data.get("removed_conversation"), data.get("removed")) if isinstance(c, int)}
    unadopted = f"json_extract(COALESCE(NULLIF(o.data, ''), '{{}}'), '$.{ADOPTED}') IS NULL"
    return [r[0] for r in conn.execute(
        f"SELECT id FROM replies r WHERE r.kind = ? AND ({where}) AND (r.conversation_id IN ({_marks(own)})"
        f" OR (r.target_id = ? AND NOT EXISTS (SELECT 1 FROM links o WHERE o.kind = ? AND o.external_id != ?"
        f" AND o.conversation_id = r.conversation_id AND {unadopted})))",
        (spec["reply_kind"], *params, *own, external_id, kind, external_id))]


def _delete_orphans(conn: sqlite3.Connection, kind: str, owner: str, rows: str, cutoff: float) -> int:
    """Delete the `rows` (SQL over `links`, one ? for `cutoff`) left without their `kind` conversation, whose
    external id `owner` gives. A message among them mirrored by a sync a prune or an erasure overtook (the
    housekeeping thread, forget-buyer) is in Chatwoot after the conversation's closed mark: the mark covers
    its Mercado Livre date (`at`) as its row goes, or the next read of the thread brings it in again."""
    mirrored = (f"links.status = 'created' AND json_extract(links.data, '$.at') IS NOT NULL"
                f" AND {owner} = watermarks.external_id AND {rows}")
    conn.execute(f"UPDATE watermarks SET last_message_at = MAX(COALESCE(last_message_at, 0), (SELECT"
                 f" MAX(CAST(json_extract(links.data, '$.at') AS REAL)) FROM links WHERE {mirrored}))"
                 f" WHERE kind = ? AND closed_at IS NOT NULL AND EXISTS (SELECT 1 FROM links WHERE {mirrored})",
                 (cutoff, kind, cutoff))
    return conn.execute(f"DELETE FROM links WHERE {rows}", (cutoff,)).rowcount


class PrivacyStore:
    """`db.privacy`: commands apply_retention/forget_buyer, queries buyer_…/contacts_of_other_buyers/…"""

    def __init__(self, db: Database):
        self._db = db

    def apply_retention(self, now: float, days: float) -> dict:
        """Delete rows about questions and sales finished more than `days` ago (RETENTION_DAYS).

        What stays is a closed watermark per question or sale (ids and a date), so their old
        history is never imported again. Nothing in progress is touched: an unanswered or
        watched question, a sale with a reply in the outbox, a mark-read in flight, or any
        sign of life (message, reply, thread activity) inside the window. A few conversations
        per write: the listener's commits never wait behind a whole pruning run.
        """
        cutoff = now - days * 86400
        held = intents_held_since(cutoff, days)
        counts: dict[str, int] = {}
        conn = self._db.conn()
        for kind, spec in CONVERSATION_KINDS.items():
            due = [r[0] for r in conn.execute(
                f"SELECT external_id FROM links WHERE kind = ? AND status = 'created' AND updated_at < ?"
                f" AND {spec['finished']}", (kind, cutoff)) if self._retention_due(conn, kind, r[0], cutoff, held)]
            for start in range(0, len(due), RETENTION_BATCH):
                with self._db.write() as wconn:
                    for external_id in due[start:start + RETENTION_BATCH]:
                        # Re-checked under the write lock: a message may have arrived meanwhile.
                        if self._retention_due(wconn, kind, external_id, cutoff, held):
                            _add_counts(counts, self._erase_conversation(wconn, kind, external_id, now, pruning=True))
        # Buyers none of whose questions or sales remain.
        buyers = [tuple(r) for r in conn.execute("SELECT external_id, contact_id FROM links WHERE kind = 'buyer'"
                                                 " AND updated_at < ?", (cutoff,))
                  if not self._buyer_conversations(conn, r[0], r[1])]
        for start in range(0, len(buyers), RETENTION_BATCH):
            with self._db.write() as wconn:
                for buyer_id, contact_id in buyers[start:start + RETENTION_BATCH]:
                    if not self._buyer_conversations(wconn, buyer_id, contact_id):
                        _add_counts(counts, self._erase_buyer_rows(wconn, buyer_id))
        with self._db.write() as wconn:
            # Rows whose conversation is already gone (kept by older versions, or half-created). A create
            # in doubt names only its conversation until it is confirmed: kept while a sale there stays.
            orphans = _delete_orphans(
                wconn, "pack", "json_extract(links.data, '$.pack_id')",
                "kind = 'message' AND updated_at < ? AND NOT EXISTS (SELECT 1 FROM links p WHERE p.kind = 'pack'"
                " AND (p.external_id = json_extract(links.data, '$.pack_id')"
                " OR (links.conversation_id IS NOT NULL AND p.conversation_id = links.conversation_id)))", cutoff)
            orphans += wconn.execute(
                "DELETE FROM links WHERE kind = 'answer' AND updated_at < ? AND NOT EXISTS (SELECT 1 FROM links p"
                " WHERE p.kind = 'question' AND p.external_id = links.external_id)", (cutoff,)).rowcount
            orphans += wconn.execute("DELETE FROM links WHERE kind = 'moderation_check' AND updated_at < ?",
                                     (cutoff,)).rowcount
            # A send held that long has landed or never will. Its hash still tells the copy that landed from
            # a message typed on the site while the sale keeps its rows (its thread is read whole, and the
            # copy, never mirrored, would be); once they are gone, the sale's watermark covers the copy.
            orphans += wconn.execute(
                "DELETE FROM links WHERE kind = ? AND updated_at < ? AND NOT ((substr(external_id, 1, 8) = 'message:'"
                " AND EXISTS (SELECT 1 FROM links p WHERE p.kind = 'pack' AND p.external_id ="
                " substr(links.external_id, 9, instr(substr(links.external_id, 9), ':') - 1)))"
                " OR (substr(external_id, 1, 6) = 'claim:' AND EXISTS (SELECT 1 FROM links c WHERE c.kind = 'claim'"
                " AND c.external_id = substr(links.external_id, 7, instr(substr(links.external_id, 7), ':') - 1))))",
                (STRAY, cutoff)).rowcount
            # The hold of an erasure whose command stopped midway: it names the buyer.
            orphans += wconn.execute("DELETE FROM links WHERE kind = ? AND updated_at < ?",
                                     (ERASING, now - ERASING_HOLD)).rowcount
            claim_of_row = "substr(links.external_id, 1, instr(links.external_id, ':') - 1)"
            orphans += _delete_orphans(
                wconn, "claim", claim_of_row,
                "kind IN ('claim_message', 'claim_event', 'claim_moderation') AND updated_at < ?"
                f" AND NOT EXISTS (SELECT 1 FROM links p WHERE p.kind = 'claim' AND p.external_id = {claim_of_row})",
                cutoff)
            _add_counts(counts, {"links": orphans})
            # Final replies keep no text, whatever path finished them (LGPD).
            wconn.execute("UPDATE reply_parts SET text = NULL, attachments = NULL WHERE (text IS NOT NULL OR"
                          " attachments IS NOT NULL) AND reply_id IN (SELECT id FROM replies WHERE status IN"
                          " ('delivered', 'failed'))")
        return counts

    @staticmethod
    def _retention_due(conn: sqlite3.Connection, kind: str, external_id: str, cutoff: float, held: float) -> bool:
        """Finished and quiet since `cutoff`: no reply in the outbox or unreported, no recent reply,
        answer, message or thread activity, no mark-read in flight, no create in doubt tried since `held`."""
        spec = CONVERSATION_KINDS[kind]
        if not conn.execute(f"SELECT 1 FROM links WHERE kind = ? AND external_id = ? AND status = 'created'"
                            f" AND updated_at < ? AND {spec['finished']}", (kind, external_id, cutoff)).fetchone():
            return False
        if _item_replies(conn, kind, external_id, "r.status IN ('pending', 'sending') OR r.created_at >= ?"
                         " OR r.reported_at IS NULL", (cutoff,)):
            return False
        for child in spec["children"]:
            if conn.execute("SELECT 1 FROM links WHERE kind = ? AND external_id = ? AND updated_at >= ?",
                            (child, external_id, cutoff)).fetchone():
                return False
        for message_kind in spec["messages"]:
            if conn.execute(f"SELECT 1 FROM links WHERE kind = '{message_kind}'"
                            f" AND json_extract(data, '$.{kind}_id') = ? AND updated_at >= ? LIMIT 1",
                            (external_id, cutoff)).fetchone():
                return False
        for keyed_kind in spec["keyed"]:
            if conn.execute(f"SELECT 1 FROM links WHERE kind = ? AND external_id >= ? AND external_id < ?"
                            f" AND (updated_at >= ? OR ({HELD_INTENT})) LIMIT 1",
                            (keyed_kind, f"{external_id}:", f"{external_id}:\uffff", cutoff, held)).fetchone():
                return False
        if spec["thread"] and conn.execute(
                "SELECT 1 FROM threads WHERE pack_id = ? AND (active_at >= ? OR marking_since IS NOT NULL)",
                (external_id, cutoff)).fetchone():
            return False
        # A message create in doubt names only its conversation until confirmed (HELD_INTENT).
        for message_kind in spec["messages"]:
            if conn.execute(f"SELECT 1 FROM links WHERE kind = '{message_kind}' AND conversation_id = (SELECT"
                            f" conversation_id FROM links WHERE kind = ? AND external_id = ?) AND {HELD_INTENT}"
                            f" LIMIT 1", (kind, external_id, held)).fetchone():
                return False
        # A part the bridge sent that no sync has read back yet is not under the thread's mark; once
        # its reply's row is gone, nothing would tell it from a message the seller wrote on the site,
        # and the next sync would copy it into Chatwoot. Read back: its thread was read (the mark's
        # updated_at, as a sync records it) after the part was recorded sent. A mark only a prune or
        # an erasure wrote (updated_at = closed_at) was read by no sync: every sent part waits. (No mark
        # at all: rows older than watermarks, pruned as before.)
        return not (spec["thread"] and conn.execute(
            "SELECT 1 FROM reply_parts p JOIN replies r ON r.id = p.reply_id WHERE r.kind = ? AND r.target_id = ?"
            " AND p.status = 'sent' AND COALESCE(p.sent_at, 0) >= COALESCE((SELECT CASE WHEN w.closed_at IS NOT"
            " NULL AND w.updated_at = w.closed_at THEN -1 ELSE w.updated_at END FROM watermarks w"
            " WHERE w.kind = ? AND w.external_id = ?), 9e999) LIMIT 1",
            (spec["reply_kind"], external_id, kind, external_id)).fetchone())

    def forget_buyer(self, buyer_id: str, now: float, untold: dict[str, list[int]] | None = None) -> dict:
        """Erase every row about one buyer (LGPD erasure); returns what was removed, by table.

        Their questions and sales keep a closed watermark (ids and a date, no buyer id) so the
        erased history is not imported again; a new question or message starts fresh.
        `untold`, when given, receives the Chatwoot message ids of the replies erased before their
        agents were told what became of them (UNTOLD_REPLIES), read in the erasure's own
        transaction: a reply the listener accepts while the erasure starts is named too.
        """
        buyer_id = str(buyer_id)
        counts: dict[str, int] = {}
        with self._db.write() as conn:
            buyer = conn.execute("SELECT contact_id FROM links WHERE kind = 'buyer' AND external_id = ?",
                                 (buyer_id,)).fetchone()
            conversations = self._buyer_conversations(conn, buyer_id, buyer[0] if buyer else None)
            if untold is not None:
                untold.update(self._untold_replies(conn, conversations))
            for kind, external_id in conversations:
                _add_counts(counts, self._erase_conversation(conn, kind, external_id, now))
                counts[f"{kind}s"] = counts.get(f"{kind}s", 0) + 1
            _add_counts(counts, self._erase_buyer_rows(conn, buyer_id))
        return counts

    def begin_erasure(self, buyer_id: str, now: float) -> None:
        """Hold the buyer (being_erased) until forget_buyer ends it, or ERASING_HOLD passes."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO links (kind, external_id, status, created_at, updated_at)"
                         " VALUES (?, ?, 'pending', ?, ?) ON CONFLICT (kind, external_id) DO UPDATE SET"
                         " updated_at = excluded.updated_at", (ERASING, str(buyer_id), now, now))

    def being_erased(self, buyer_id, now: float) -> bool:
        """An erasure is deleting this buyer in Chatwoot now: nothing of theirs may be made there."""
        return self._db.one("SELECT 1 FROM links WHERE kind = ? AND external_id = ? AND updated_at > ?",
                            (ERASING, str(buyer_id), now - ERASING_HOLD)) is not None

    def buyer_conversations(self, buyer_id: str) -> list[tuple[str, str]]:
        """(kind, external id) of the questions and sales the bridge keeps for this buyer."""
        buyer = self._db.links.get("buyer", str(buyer_id))
        return self._buyer_conversations(self._db.conn(), str(buyer_id), buyer["contact_id"] if buyer else None)

    def buyer_chatwoot_ids(self, buyer_id: str) -> tuple[set[int], set[int]]:
        """(contact ids, conversation ids) the bridge remembers for this buyer in Chatwoot."""
        contacts: set[int] = set()
        conversations: set[int] = set()
        buyer = self._db.links.get("buyer", str(buyer_id))
        if buyer and buyer["contact_id"]:
            contacts.add(buyer["contact_id"])
        for kind, external_id in self.buyer_conversations(buyer_id):
            link = self._db.links.get(kind, external_id)
            if link["contact_id"]:
                contacts.add(link["contact_id"])
            for conversation_id in (link["conversation_id"], link["data"].get("removed_conversation")):
                if conversation_id:
                    conversations.add(int(conversation_id))
        return contacts, conversations

    @staticmethod
    def _untold_replies(conn: sqlite3.Connection, conversations: list[tuple[str, str]]) -> dict[str, list[int]]:
        """Chatwoot message ids of these conversations' replies whose agents an erasure would leave
        unaware of their outcome, by status: `pending` never left, `sending` may be reaching the buyer
        right now, `failed` did not reach the buyer (or only in part), `delivered` did; neither shown yet."""
        found: dict[str, list[int]] = {status: [] for status in UNTOLD_REPLIES}
        for kind, external_id in conversations:
            ids = _item_replies(conn, kind, external_id, "r.status IN ('pending', 'sending') OR r.reported_at IS NULL")
            for message_id, status in conn.execute(
                    f"SELECT chatwoot_message_id, status FROM replies WHERE id IN ({_marks(ids)})", ids):
                found[status].append(message_id)
        return {status: sorted(ids) for status, ids in found.items()}

    def contacts_of_other_buyers(self, buyer_id: str, contact_ids: set[int]) -> set[int]:
        """The contacts among `contact_ids` another buyer's rows also use (contacts merged in
        Chatwoot): deleting one there would delete the other buyer's conversations too."""
        shared = set()
        for contact_id in contact_ids:
            if self._db.one("SELECT 1 FROM links WHERE contact_id = ? AND ((kind = 'buyer' AND external_id != ?)"
                            " OR CAST(json_extract(data, '$.buyer_id') AS TEXT) != ?) LIMIT 1",
                            (contact_id, str(buyer_id), str(buyer_id))):
                shared.add(contact_id)
        return shared

    def buyers_by_nickname(self, nickname: str) -> list[str]:
        """Buyer ids whose cached nickname is this one (case-insensitive)."""
        rows = self._db.all("SELECT key, value FROM cache WHERE kind = 'user'")
        wanted = nickname.strip().casefold()
        return sorted(r["key"] for r in rows if str(json.loads(r["value"])).casefold() == wanted)

    @staticmethod
    def _buyer_conversations(conn: sqlite3.Connection, buyer_id: str, contact_id: int | None) -> list[tuple[str, str]]:
        found = []
        for kind in CONVERSATION_KINDS:
            rows = conn.execute(
                "SELECT external_id FROM links WHERE kind = ? AND CAST(json_extract(data, '$.buyer_id') AS TEXT) = ?"
                " ORDER BY created_at", (kind, buyer_id))
            found.extend((kind, r[0]) for r in rows)
            if contact_id is not None:
                # By contact only for rows older than the buyer id in `data`: two buyers' contacts
                # merged in Chatwoot share a contact id.
                rows = conn.execute("SELECT external_id FROM links WHERE contact_id = ? AND kind = ?"
                                    " AND json_extract(data, '$.buyer_id') IS NULL ORDER BY created_at",
                                    (contact_id, kind))
                found.extend((kind, r[0]) for r in rows)
        return found

    @staticmethod
    def _erase_buyer_rows(conn: sqlite3.Connection, buyer_id: str) -> dict:
        return {"links": conn.execute("DELETE FROM links WHERE kind IN ('buyer', ?) AND external_id = ?",
                                      (ERASING, buyer_id)).rowcount,
                "cache": conn.execute("DELETE FROM cache WHERE kind = 'user' AND key = ?", (buyer_id,)).rowcount}

    @staticmethod
    def _erase_conversation(conn: sqlite3.Connection, kind: str, external_id: str, now: float,
                            pruning: bool = False) -> dict:
        """Delete one question's or sale's rows, leaving its closed watermark (inside a write).

        `pruning` (retention): the thread was read after the bridge's last sent part (_retention_due),
        so the mark already covers those parts, and nothing written since is covered."""
        spec = CONVERSATION_KINDS[kind]
        row = conn.execute("SELECT * FROM links WHERE kind = ? AND external_id = ?", (kind, external_id)).fetchone()
        link = link_row(dict(row) if row is not None else None) or {"data": {}}
        # Literal kinds: the partial indexes on each message kind apply only then.
        message_ids = [r[0] for m in spec["messages"] for r in conn.execute(
            f"SELECT external_id FROM links WHERE kind = '{m}' AND json_extract(data, '$.{kind}_id') = ?",
            (external_id,))]
        # A create in doubt names only its conversation until it is confirmed (db.links.record_intent): it
        # belongs to the item whose conversation it names, or it outlives the erasure.
        own = [c for c in (link.get("conversation_id"), link["data"].get("removed_conversation"),
                           link["data"].get("removed")) if isinstance(c, int)]
        message_ids += [r[0] for m in spec["messages"] for r in conn.execute(
            f"SELECT external_id FROM links WHERE kind = '{m}' AND json_extract(data, '$.{kind}_id') IS NULL"
            f" AND conversation_id IN ({_marks(own)})", own)]
        reply_ids = _item_replies(conn, kind, external_id)
        remote_ids = [r[0] for r in conn.execute(
            f"SELECT remote_id FROM reply_parts WHERE remote_id IS NOT NULL AND reply_id IN ({_marks(reply_ids)})",
            reply_ids)]
        # Without a watermark yet (rows older than watermarks): everything mirrored by the
        # last local change counts as handled.
        last = max([link.get("updated_at") or 0, *(r[0] for m in spec["messages"] for r in conn.execute(
            f"SELECT MAX(updated_at) FROM links WHERE kind = '{m}' AND json_extract(data, '$.{kind}_id') = ?",
            (external_id,)) if r[0] is not None)]) or now
        # A mark moves only when a sync ends well: a message mirrored by one that failed after it is
        # newer. The newest Mercado Livre date of what was mirrored (its row's `at`) covers it too, or
        # it would be mirrored again, into a new conversation.
        mirrored = max([0.0, *(float(r[0]) for m in spec["messages"] for r in conn.execute(
            f"SELECT MAX(CAST(json_extract(data, '$.at') AS REAL)) FROM links WHERE kind = '{m}'"
            f" AND json_extract(data, '$.{kind}_id') = ?", (external_id,)) if r[0] is not None),
            *(float(r[0]) for keyed_kind in spec["keyed"] for r in conn.execute(
                "SELECT MAX(CAST(json_extract(data, '$.at') AS REAL)) FROM links WHERE kind = ?"
                " AND external_id >= ? AND external_id < ?", (keyed_kind, f"{external_id}:", f"{external_id}:\uffff"))
              if r[0] is not None)])
        if spec["reply_kind"] in ("message", "claim") and not pruning:
            # The bridge's own sent parts: a thread read after their send would have moved the mark
            # past them, but one that comes only after the erasure finds them newer than the mark,
            # their ids and texts gone with the replies, and mirrors them back as typed on the
            # site. Each was on Mercado Livre when recorded sent (its date there is earlier, up to
            # the clocks' skew); nothing later than the erasure itself is covered.
            sent = conn.execute(f"SELECT MAX(sent_at) FROM reply_parts WHERE status = 'sent'"
                                f" AND reply_id IN ({_marks(reply_ids)})", reply_ids).fetchone()[0]
            if sent is not None:
                mirrored = max(mirrored, min(float(sent) + SENT_CLOCK_SKEW, now))
        if spec["reply_kind"] in ("message", "claim"):
            # A part in flight (its answer lost, or not back yet) may land on Mercado Livre at any time,
            # even after this erasure: remembered by its text's hash alone, so it is never mirrored
            # back as a message typed on the site (db.replies.strays).
            in_flight = conn.execute(f"SELECT p.text, COALESCE(p.first_attempt_at, r.created_at), p.reply_id, p.seq"
                                     f" FROM reply_parts p"
                                     f" JOIN replies r ON r.id = p.reply_id WHERE p.status = 'sending'"
                                     f" AND TRIM(COALESCE(p.text, '')) != '' AND p.reply_id IN ({_marks(reply_ids)})",
                                     reply_ids).fetchall()
            for row in in_flight:
                record_stray(conn, spec["reply_kind"], external_id, row[0], float(row[1]), now,
                             owner=f"{row[2]}:{row[3]}")
            # Past its day, a stray send's hash stands for nothing but a message to this buyer: it goes too.
            forget_landed_strays(conn, spec["reply_kind"], external_id, now)
        if spec["mark_in_data"]:
            # Messages without ids (claims): the newest Mercado Livre date seen is exact; a later
            # erasure of a conversation started afresh moves the mark forward.
            last = max(float(link["data"].get("last_message_at") or 0), mirrored) or last
            conn.execute("INSERT INTO watermarks (kind, external_id, last_message_at, closed_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, external_id) DO UPDATE SET"
                         " closed_at = excluded.closed_at,"
                         " last_message_at = MAX(COALESCE(last_message_at, 0), excluded.last_message_at),"
                         " updated_at = excluded.updated_at", (kind, external_id, last, now, now))
        else:
            conn.execute("INSERT INTO watermarks (kind, external_id, last_message_at, closed_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, external_id) DO UPDATE SET"
                         # Its latest: updated_at = closed_at then says no sync read the thread since (_retention_due).
                         " closed_at = excluded.closed_at,"
                         " last_message_at = MAX(COALESCE(last_message_at, excluded.last_message_at), ?),"
                         " updated_at = excluded.updated_at",
                         (kind, external_id, max(last, mirrored), now, now, mirrored))
        counts = {"links": 0}
        for link_kind, ids in ((kind, [external_id]), *((c, [external_id]) for c in spec["children"]),
                               *((m, message_ids) for m in spec["messages"]), ("moderation", remote_ids),
                               ("moderation_check", [f"{spec['check_prefix']}{i}{round_}" for i in reply_ids
                                                     for round_ in MODERATION_CHECK_ROUNDS])):
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                counts["links"] += conn.execute(f"DELETE FROM links WHERE kind = ? AND external_id IN"
                                                f" ({_marks(chunk)})", (link_kind, *chunk)).rowcount
        for keyed_kind in spec["keyed"]:
            counts["links"] += conn.execute("DELETE FROM links WHERE kind = ? AND external_id >= ? AND external_id < ?",
                                            (keyed_kind, f"{external_id}:", f"{external_id}:\uffff")).rowcount
        conn.execute(f"DELETE FROM reply_parts WHERE reply_id IN ({_marks(reply_ids)})", reply_ids)
        counts["replies"] = conn.execute(f"DELETE FROM replies WHERE id IN ({_marks(reply_ids)})",
                                         reply_ids).rowcount
        notified = ((NOTIFIED[kind], [external_id]), (NOTIFIED_MESSAGE, message_ids))
        resources = [shape.format(i) for shapes, ids in notified for i in ids for shape in shapes]
        notification_ids = [r[0] for start in range(0, len(resources), 500) for r in conn.execute(
            f"SELECT id FROM notifications WHERE resource IN ({_marks(resources[start:start + 500])})",
            resources[start:start + 500])]
        for start in range(0, len(notification_ids), 500):
            chunk = notification_ids[start:start + 500]
            conn.execute(f"DELETE FROM notifications WHERE id IN ({_marks(chunk)})", chunk)
        counts["notifications"] = len(notification_ids)
        attempts = [(kind, external_id), *(("reply", str(i)) for i in reply_ids),
                    *(("notification", n) for n in notification_ids)]
        counts["item_attempts"] = sum(conn.execute("DELETE FROM item_attempts WHERE kind = ? AND item_id = ?",
                                                   pair).rowcount for pair in attempts)
        return counts
