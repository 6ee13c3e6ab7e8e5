"""Links: which Mercado Livre thing (question, sale, message, buyer…) is which Chatwoot thing.

A row is recorded `pending` before anything is created in Chatwoot (record_intent) and marked
`created` after: a pending row found again means "look for it by its source id first".
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from db_manager import Database


ITEM_KINDS = ("question", "pack", "claim")  # the rows that own a Chatwoot conversation each
ADOPTED = "adopted"  # link data: its conversation came from an agent's reply, not yet checked with Chatwoot
# An item whose rows a prune or an erasure removed since its watermark was read (they write it
# closed, with a new updated_at; 0 = read without one), and that nothing recorded again since.
_CLOSED_SINCE = ("SELECT 1 FROM watermarks w WHERE w.kind = ? AND w.external_id = ? AND w.closed_at IS NOT NULL"
                 " AND w.updated_at != ?"
                 " AND NOT EXISTS (SELECT 1 FROM links l WHERE l.kind = w.kind AND l.external_id = w.external_id)")
RESTORED = "restored"  # poll_cursors row: when a backup was last put back in place (main.py restore)
# After a restore, Chatwoot may hold what the backup never recorded, for as long as the sync can
# come back to an item: longer than any sweep looks back (a sale: 14 days after its last sign of life).
RESTORE_DOUBT = 30 * 86400.0


class Link(TypedDict):
    """A `links` row, its `data` decoded."""
    kind: str                   # buyer | question | answer | pack | message | claim | …
    external_id: str
    status: str                 # pending | created
    contact_id: int | None
    conversation_id: int | None
    message_id: int | None
    data: dict                  # small ids and states, never buyer text
    created_at: float
    updated_at: float


def link_row(row: dict | None) -> Link | None:
    """A links row with its `data` decoded ({} when empty)."""
    if row is not None:
        row["data"] = json.loads(row["data"]) if row.get("data") else {}
    return row


def insert_pending(conn: sqlite3.Connection, kind: str, external_id: str | int, now: float) -> bool:
    """A pending row unless one exists; True when it is new."""
    cur = conn.execute("INSERT OR IGNORE INTO links (kind, external_id, status, created_at, updated_at)"
                       " VALUES (?, ?, 'pending', ?, ?)", (kind, str(external_id), now, now))
    return cur.rowcount == 1


def update_fields(conn: sqlite3.Connection, kind: str, external_id: str | int, now: float, fields: dict) -> None:
    allowed = {"status", "contact_id", "conversation_id", "message_id", "data"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown link fields: {sorted(unknown)}")
    if "data" in fields:
        fields = dict(fields, data=json.dumps(fields["data"], sort_keys=True))
    assignments = ", ".join(f"{name} = ?" for name in fields)
    conn.execute(f"UPDATE links SET {assignments}, updated_at = ? WHERE kind = ? AND external_id = ?",
                 (*fields.values(), now, kind, str(external_id)))


def _restored_since(conn: sqlite3.Connection, since: float) -> bool:
    row = conn.execute("SELECT value FROM poll_cursors WHERE name = ?", (RESTORED,)).fetchone()
    return row is not None and (json.loads(row[0]).get("at") or 0) >= since


class LinksStore:
    """`db.links`: queries get/by_…/ids…, commands record_intent/update/mark_created/complete."""

    def __init__(self, db: Database):
        self._db = db

    def get(self, kind: str, external_id: str | int) -> Link | None:
        return link_row(self._db.one("SELECT * FROM links WHERE kind = ? AND external_id = ?",
                                     (kind, str(external_id))))

    def by_conversation(self, kind: str, conversation_id: int) -> Link | None:
        return link_row(self._db.one(
            "SELECT * FROM links WHERE kind = ? AND conversation_id = ? AND status = 'created'",
            (kind, conversation_id)))

    def record_intent(self, kind: str, external_id: str | int, now: float, mark_seen: float | None = None,
                      **fields: Any) -> tuple[Link | None, bool]:
        """Record that we are about to create `kind/external_id` in Chatwoot.

        Returns (row, fresh). A row that was already there (fresh False) may have been
        half-created before a crash: the caller checks Chatwoot before creating again. Within
        RESTORE_DOUBT of a restore a new row is not fresh either: what Chatwoot got between the
        backup and the restore has no row in the state put back, so it is looked for like a
        create whose answer was lost (found by its attribute or source id, not made twice).
        `mark_seen`: the item's watermark `updated_at` as the caller read it with the item (0: none);
        an item pruned or erased since (its watermark written closed) is not recorded again: (None, False).
        """
        with self._db.write() as conn:
            if mark_seen is not None and conn.execute(_CLOSED_SINCE, (kind, str(external_id), mark_seen)).fetchone():
                return None, False
            fresh = insert_pending(conn, kind, external_id, now)
            if fields and fresh:
                update_fields(conn, kind, external_id, now, fields)
            if fresh and _restored_since(conn, now - RESTORE_DOUBT):
                fresh = False
        return self.get(kind, external_id), fresh

    def closed_since(self, kind: str, external_id: str | int, mark_seen: float) -> bool:
        """Pruned or erased since its watermark was read so, and not recorded again (see record_intent)."""
        return self._db.one(_CLOSED_SINCE, (kind, str(external_id), mark_seen)) is not None

    def mark_restored(self, now: float) -> None:
        """This state was just put back from a backup (main.py restore, on the copy before the swap)."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO poll_cursors (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name)"
                         " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                         (RESTORED, json.dumps({"at": now}), now))

    def update(self, kind: str, external_id: str | int, now: float, **fields: Any) -> None:
        with self._db.write() as conn:
            update_fields(conn, kind, external_id, now, fields)

    def mark_created(self, kind: str, external_id: str | int, now: float, **fields: Any) -> None:
        """Mark the Chatwoot side done (creating the row if the intent was not recorded)."""
        with self._db.write() as conn:
            insert_pending(conn, kind, external_id, now)
            update_fields(conn, kind, external_id, now, dict(fields, status="created"))

    def complete(self, kind: str, external_id: str | int, now: float, **fields: Any) -> bool:
        """Mark a recorded intent created, once its Chatwoot side is made. False (nothing written):
        the row is gone, erased (forget-buyer) or pruned while the Chatwoot calls were in flight;
        what the caller holds in memory must not bring the buyer back, so it stops there."""
        with self._db.write() as conn:
            if not conn.execute("SELECT 1 FROM links WHERE kind = ? AND external_id = ?",
                                (kind, str(external_id))).fetchone():
                return False
            update_fields(conn, kind, external_id, now, dict(fields, status="created"))
            return True

    def adopt_conversation(self, kind: str, external_id: str | int, conversation_id: int, now: float) -> bool:
        """An agent answered in a conversation carrying `kind/external_id` while the bridge does not
        know that thing's conversation (its create's answer was lost, or is still being retried): that
        conversation becomes the one the bridge mirrors into. Otherwise the bridge would make a
        second one, and the agent's answer would stay where nobody looks.

        Only a candidate (data ADOPTED): the delivery's attributes are the webhook's, which may
        not be what Chatwoot stores, so ensure_conversation uses it only once Chatwoot's own
        record of it names this item, in its inbox. A conversation another item's row uses (or
        holds as its candidate) is never adopted. The create's time is kept: the delivery may be a
        late one from a conversation deleted since, and then the create that may be held is still
        waited out."""
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT data FROM links WHERE kind = ? AND external_id = ? AND status = 'pending'"
                " AND conversation_id IS NULL", (kind, str(external_id))).fetchone()
            if row is None or conn.execute(
                    f"SELECT 1 FROM links WHERE kind IN ({','.join('?' * len(ITEM_KINDS))}) AND conversation_id = ?"
                    " AND NOT (kind = ? AND external_id = ?) LIMIT 1",
                    (*ITEM_KINDS, conversation_id, kind, str(external_id))).fetchone():
                return False
            data = dict(json.loads(row[0]) if row[0] else {}, **{ADOPTED: True})
            return conn.execute(
                "UPDATE links SET conversation_id = ?, data = ?, updated_at = ?"
                " WHERE kind = ? AND external_id = ? AND status = 'pending' AND conversation_id IS NULL",
                (conversation_id, json.dumps(data, sort_keys=True), now, kind, str(external_id))).rowcount == 1

    def others_using(self, kind: str, external_id: str | int, conversation_id: int) -> bool:
        """Does another item's row (a question, sale or claim: conversation ids are the account's)
        hold this conversation as its own (made, or found or checked in Chatwoot's record)? A claim's
        conversation names its sale too, so one moved into the sales inbox would pass for the sale's.
        A candidate only a webhook named (ADOPTED) does not count: an agent may have typed another
        item into the conversation, replied, and set it right since; the item Chatwoot's record
        names must not lose its conversation (nor its reply) to that."""
        return self._db.one(
            f"SELECT 1 AS found FROM links WHERE kind IN ({','.join('?' * len(ITEM_KINDS))}) AND conversation_id = ?"
            " AND NOT (kind = ? AND external_id = ?) AND json_extract(COALESCE(NULLIF(data, ''), '{}'), ?) IS NULL"
            " LIMIT 1", (*ITEM_KINDS, conversation_id, kind, str(external_id), f"$.{ADOPTED}")) is not None

    def bridge_used(self, kind: str, external_id: str | int, conversation_id: int) -> bool:
        """Did the bridge itself show this item in this conversation (its row's conversation, or a
        message, answer or claim note it mirrored there)? Its own record, whatever an agent has
        done to the conversation since: deleted it (Chatwoot then has no record to ask) or edited
        its attributes."""
        external_id = str(external_id)
        return self._db.one(
            "SELECT 1 AS found FROM links WHERE conversation_id = ? AND status = 'created' AND ("
            " (kind = ? AND external_id = ?)"
            " OR (? = 'question' AND kind = 'answer' AND external_id = ?)"
            " OR (? = 'pack' AND kind = 'message' AND json_extract(COALESCE(NULLIF(data, ''), '{}'), '$.pack_id') = ?)"
            " OR (? = 'claim' AND kind IN ('claim_message', 'claim_event') AND substr(external_id, 1, ?) = ?))"
            " LIMIT 1",
            (conversation_id, kind, external_id, kind, external_id, kind, external_id, kind,
             len(external_id) + 1, f"{external_id}:")) is not None

    def shown_in(self, kind: str, conversation_id: int) -> set[str]:
        """The `kind` items (questions, sales or claims) the bridge's own rows put in this conversation:
        an item's row that made or found it (pending too: its first message may be there, its answer
        lost; not a candidate only a webhook named, ADOPTED), or deleted it since; a question's answer,
        a sale's message, a claim's message or event it mirrored there. Never an attribute."""
        unadopted = f"json_extract(COALESCE(NULLIF(data, ''), '{{}}'), '$.{ADOPTED}') IS NULL"
        rows = self._db.conn().execute(
            f"SELECT external_id FROM links WHERE kind = ? AND conversation_id = ? AND {unadopted}"
            " UNION SELECT external_id FROM links WHERE kind = ? AND ("
            "  json_extract(COALESCE(NULLIF(data, ''), '{}'), '$.removed_conversation') = ?"
            "  OR json_extract(COALESCE(NULLIF(data, ''), '{}'), '$.removed') = ?)"
            " UNION SELECT external_id FROM links WHERE ? = 'question' AND kind = 'answer' AND conversation_id = ?"
            " UNION SELECT json_extract(COALESCE(NULLIF(data, ''), '{}'), '$.pack_id') FROM links"
            "  WHERE ? = 'pack' AND kind = 'message' AND conversation_id = ?"
            " UNION SELECT substr(external_id, 1, instr(external_id, ':') - 1) FROM links"
            "  WHERE ? = 'claim' AND kind IN ('claim_message', 'claim_event') AND conversation_id = ?",
            (kind, conversation_id, kind, conversation_id, conversation_id, kind, conversation_id, kind,
             conversation_id, kind, conversation_id))
        return {str(r[0]) for r in rows if r[0] not in (None, "")}

    def items_of_messages(self, message_ids: set[str]) -> dict[str, str]:
        """Mercado Livre message id -> the sale the bridge mirrored it for (its `message` rows)."""
        found: dict[str, str] = {}
        ids = sorted(message_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._db.conn().execute(
                "SELECT external_id, json_extract(COALESCE(NULLIF(data, ''), '{}'), '$.pack_id') FROM links"
                f" WHERE kind = 'message' AND external_id IN ({','.join('?' * len(chunk))})", chunk)
            found.update({r[0]: str(r[1]) for r in rows if r[1] not in (None, "")})
        return found

    def set_conversation(self, kind: str, external_id: str | int, conversation_id: int, data: dict,
                         now: float) -> bool:
        """The conversation a create just made, unless the row got one meanwhile (an agent's reply
        adopted it while the create was in flight): False then, the row unchanged."""
        with self._db.write() as conn:
            return conn.execute(
                "UPDATE links SET conversation_id = ?, data = ?, updated_at = ?"
                " WHERE kind = ? AND external_id = ? AND conversation_id IS NULL",
                (conversation_id, json.dumps(data, sort_keys=True), now, kind, str(external_id))).rowcount == 1

    def ids_among(self, kind: str, external_ids: list[str], *, created_only: bool = False) -> set[str]:
        """Which of these ids have a links row of `kind` (pending or created; `created_only`: created)."""
        found: set[str] = set()
        status = " AND status = 'created'" if created_only else ""
        for start in range(0, len(external_ids), 500):
            chunk = [str(i) for i in external_ids[start:start + 500]]
            rows = self._db.conn().execute(f"SELECT external_id FROM links WHERE kind = ?{status} AND external_id IN"
                                           f" ({','.join('?' * len(chunk))})", (kind, *chunk))
            found.update(r[0] for r in rows)
        return found

    def created_among(self, kind: str, external_ids: list[str]) -> set[str]:
        """Which of these ids have a `created` links row of `kind`."""
        return self.ids_among(kind, external_ids, created_only=True)

    def by_status(self, kind: str, status: str) -> list[Link]:
        return [link_row(row) for row in self._db.all("SELECT * FROM links WHERE kind = ? AND status = ?"
                                                      " ORDER BY created_at", (kind, status))]

    def ids(self, kind: str, status: str | None = None) -> set[str]:
        if status is None:
            rows = self._db.conn().execute("SELECT external_id FROM links WHERE kind = ?", (kind,))
        else:
            rows = self._db.conn().execute("SELECT external_id FROM links WHERE kind = ? AND status = ?",
                                           (kind, status))
        return {r[0] for r in rows}

    def with_prefix(self, kind: str, prefix: str) -> list[Link]:
        """Links of `kind` whose external id starts with `prefix` (a claim's messages: "<claim id>:")."""
        return [link_row(row) for row in self._db.all(
            "SELECT * FROM links WHERE kind = ? AND external_id >= ? AND external_id < ?",
            (kind, prefix, prefix + "\uffff"))]
