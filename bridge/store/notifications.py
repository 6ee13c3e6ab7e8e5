"""Mercado Livre notifications recorded by the listener for the poller.

The listener records a notification before answering 200; the poller fetches its resource and
marks it done, or schedules it again. One row waits per topic and resource: a repeat is only counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from db_manager import Database


class Notification(TypedDict):
    """A `notifications` row."""
    id: str
    topic: str
    resource: str
    received_at: float
    processed_at: float | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    repeats: int


class NotificationsStore:
    """`db.notifications`: queries get/due/received_since/retrying, commands record/mark_done/retry_later."""

    def __init__(self, db: Database):
        self._db = db

    def record(self, notification_id: str, topic: str, resource: str, now: float,
               max_pending: int | None = None) -> str:
        """Queue a notification for the poller.

        Returns 'recorded'; 'duplicate' when this notification id was seen before; 'merged'
        when the same resource is already waiting (counted, so the poller fetches it again
        if it was mid-fetch); 'full' when `max_pending` rows already wait (polling catches up).
        """
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM notifications WHERE id = ?", (notification_id,)).fetchone():
                return "duplicate"
            if conn.execute("UPDATE notifications SET repeats = repeats + 1"
                            " WHERE topic = ? AND resource = ? AND processed_at IS NULL",
                            (topic, resource)).rowcount:
                return "merged"
            if max_pending is not None and conn.execute(
                    "SELECT COUNT(*) FROM notifications WHERE processed_at IS NULL").fetchone()[0] >= max_pending:
                return "full"
            conn.execute("INSERT INTO notifications (id, topic, resource, received_at, next_attempt_at)"
                         " VALUES (?, ?, ?, ?, ?)", (notification_id, topic, resource, now, now))
            return "recorded"

    def due(self, now: float, limit: int = 50) -> list[Notification]:
        return self._db.all("SELECT * FROM notifications WHERE processed_at IS NULL AND next_attempt_at <= ?"
                            " ORDER BY received_at LIMIT ?", (now, limit))

    def mark_done(self, notification_id: str, now: float, repeats: int | None = None) -> bool:
        """Mark processed; with `repeats` (as read before fetching), only if no new notification
        for the resource arrived meanwhile — otherwise it stays due and is fetched again."""
        with self._db.write() as conn:
            cur = conn.execute("UPDATE notifications SET processed_at = ?, last_error = NULL WHERE id = ?"
                               " AND (? IS NULL OR repeats = ?)", (now, notification_id, repeats, repeats))
            return cur.rowcount == 1

    def retry_later(self, notification_id: str, next_attempt_at: float, error: str) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                         " WHERE id = ?", (next_attempt_at, error[:500], notification_id))

    def received_since(self, since: float) -> int:
        return self._db.one("SELECT COUNT(*) AS n FROM notifications WHERE received_at >= ?", (since,))["n"]

    def get(self, notification_id: str) -> Notification | None:
        return self._db.one("SELECT * FROM notifications WHERE id = ?", (notification_id,))

    def retrying(self) -> int:
        """Not processed yet, after at least one failed attempt."""
        return self._db.one("SELECT COUNT(*) AS n FROM notifications WHERE processed_at IS NULL AND attempts > 0")["n"]
