"""Watermarks: what stays of a pruned or erased question, sale or claim, so its history is not
imported again.

Ids and Mercado Livre dates only: never a buyer id, name or text (docs/privacidade.md).
Retention and erasure (db.privacy) write the closed marks; the syncs move a thread's mark forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from db_manager import Database


class Watermark(TypedDict):
    """A `watermarks` row."""
    kind: str                   # question | pack | claim
    external_id: str
    last_message_id: str | None  # a claim's: its `last_updated` date
    last_message_at: float | None
    closed_at: float | None
    updated_at: float


class WatermarksStore:
    """`db.watermarks`: queries get/closed, commands record_thread/record_claim_seen."""

    def __init__(self, db: Database):
        self._db = db

    def get(self, kind: str, external_id: str | int) -> Watermark | None:
        return self._db.one("SELECT * FROM watermarks WHERE kind = ? AND external_id = ?", (kind, str(external_id)))

    def record_thread(self, pack_id: str, last_message_id: str | None, last_message_at: float | None,
                      read_at: float) -> None:
        """A thread read at `read_at` (before its first page) was handled up to this message. Frozen
        once closed while the rows it stands for are gone; a sale started afresh after an erasure moves
        it again, or erasing that fresh conversation too would leave its messages outside the mark, to
        be imported once more. `updated_at` keeps `read_at`: every part the bridge sent before it is
        under the mark (retention waits for that, db.privacy), so a read that found nothing newer moves it too:
        a part recorded sent just after an earlier read began, and seen by it, is under the mark only from
        the next read."""
        if last_message_at is None:
            return
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO watermarks (kind, external_id, last_message_id, last_message_at, updated_at)"
                " VALUES ('pack', ?, ?, ?, ?) ON CONFLICT (kind, external_id) DO UPDATE SET"
                " last_message_id = excluded.last_message_id, last_message_at = excluded.last_message_at,"
                " updated_at = MAX(updated_at, excluded.updated_at) WHERE (closed_at IS NULL OR EXISTS (SELECT 1"
                " FROM links WHERE kind = 'pack' AND external_id = excluded.external_id AND status = 'created'))"
                " AND COALESCE(last_message_at, 0) <= excluded.last_message_at",
                (str(pack_id), last_message_id, last_message_at, read_at))

    def record_claim_seen(self, claim_id: str, last_updated: str | None, now: float) -> None:
        """A claim whose rows are gone was read again with nothing new: its `last_updated` (a
        date, kept in last_message_id since claim messages have no id) spares the next polls."""
        with self._db.write() as conn:
            conn.execute("UPDATE watermarks SET last_message_id = ?, updated_at = ? WHERE kind = 'claim'"
                         " AND external_id = ? AND closed_at IS NOT NULL", (last_updated, now, str(claim_id)))

    def closed(self, kind: str) -> set[str]:
        rows = self._db.conn().execute("SELECT external_id FROM watermarks WHERE kind = ? AND closed_at IS NOT NULL",
                                       (kind,))
        return {r[0] for r in rows}
