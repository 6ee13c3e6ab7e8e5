"""Post-sale threads: what the safety-net sweep knows of each sale's thread, the mark-reads in
flight, and the polls' cursors.

Ids and counts only, never text. A thread is read again when its message count moved; a
`marking_since` still set after a crash makes the next poll sync the thread first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from db_manager import Database


class Thread(TypedDict):
    """A `threads` row."""
    pack_id: str
    total: int | None           # messages when last fully handled; None = read it again
    last_message_id: str | None
    active_at: float
    checked_at: float | None
    marking_since: float | None


class ThreadsStore:
    """`db.threads`: queries get/marking/due/cursor, commands begin_marking/mark_…/record_discovered/prune/…"""

    def __init__(self, db: Database):
        self._db = db

    def get(self, pack_id: str) -> Thread | None:
        return self._db.one("SELECT * FROM threads WHERE pack_id = ?", (str(pack_id),))

    def begin_marking(self, pack_id: str, now: float) -> None:
        """A mark-read is about to go out: until cleared, the thread is synced again on the next poll."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO threads (pack_id, active_at, marking_since) VALUES (?, ?, ?)"
                         " ON CONFLICT (pack_id) DO UPDATE SET marking_since = excluded.marking_since",
                         (str(pack_id), now, now))

    def marking(self) -> list[str]:
        return [r["pack_id"] for r in self._db.all("SELECT pack_id FROM threads WHERE marking_since IS NOT NULL"
                                                   " ORDER BY marking_since")]

    def mark_synced(self, pack_id: str, now: float, total: int | None, last_message_id: str | None,
                    changed: bool) -> None:
        """The thread was read and handled: record its size (NULL = read again), clear a mark-read in flight."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO threads (pack_id, total, last_message_id, active_at, checked_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (pack_id) DO UPDATE SET total = excluded.total,"
                " last_message_id = excluded.last_message_id, checked_at = excluded.checked_at,"
                " marking_since = NULL, active_at = CASE WHEN ? THEN excluded.active_at ELSE active_at END",
                (str(pack_id), total, last_message_id, now, now, 1 if changed else 0))

    def mark_checked(self, pack_id: str, now: float) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE threads SET checked_at = ? WHERE pack_id = ?", (now, str(pack_id)))

    def record_discovered(self, packs: dict[str, float]) -> None:
        """Sales seen in the orders search, with when they last changed; a newer change keeps them in the sweep."""
        if not packs:
            return
        with self._db.write() as conn:
            conn.executemany("INSERT INTO threads (pack_id, active_at) VALUES (?, ?) ON CONFLICT (pack_id)"
                             " DO UPDATE SET active_at = MAX(active_at, excluded.active_at)",
                             [(str(k), v) for k, v in packs.items()])

    def due(self, active_since: float, checked_before: float, limit: int) -> list[Thread]:
        """Threads of recent sales not read for a while: never read first, then the longest unread."""
        return self._db.all("SELECT * FROM threads WHERE active_at >= ? AND (checked_at IS NULL OR checked_at < ?)"
                            " AND marking_since IS NULL ORDER BY checked_at IS NOT NULL, checked_at, active_at DESC"
                            " LIMIT ?", (active_since, checked_before, limit))

    def prune(self, inactive_before: float) -> int:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM threads WHERE active_at < ? AND marking_since IS NULL",
                                (inactive_before,)).rowcount

    def cursor(self, name: str) -> Any:
        row = self._db.one("SELECT value FROM poll_cursors WHERE name = ?", (name,))
        return json.loads(row["value"]) if row else None

    def set_cursor(self, name: str, value: Any, now: float) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT INTO poll_cursors (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name)"
                         " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                         (name, json.dumps(value), now))
