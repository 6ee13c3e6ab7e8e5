"""Items whose processing keeps failing (failures.Batch's table): questions, sales, claims,
notifications and replies.

One row per item that failed and has not succeeded since; success deletes it. The polls skip
an item in backoff; one given up is reported once, then retried once a day.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from db_manager import Database


class ItemAttempt(TypedDict):
    """An `item_attempts` row."""
    kind: str                   # question | pack | claim | notification | reply
    item_id: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    first_failed_at: float
    last_failed_at: float
    gave_up_at: float | None
    reported_at: float | None


class ItemsStore:
    """`db.items`: queries get/waiting/unreported/summary, commands record_failure/mark_…/forget_…/reset."""

    def __init__(self, db: Database):
        self._db = db

    def get(self, kind: str, item_id: str | int) -> ItemAttempt | None:
        return self._db.one("SELECT * FROM item_attempts WHERE kind = ? AND item_id = ?", (kind, str(item_id)))

    def waiting(self, kind: str, now: float) -> set[str]:
        """Items of `kind` in backoff: the polls leave them alone until they are due."""
        rows = self._db.conn().execute("SELECT item_id FROM item_attempts WHERE kind = ? AND next_attempt_at > ?",
                                       (kind, now))
        return {r[0] for r in rows}

    def record_failure(self, kind: str, item_id: str | int, error: str, next_attempt_at: float, now: float,
                       give_up: bool = False, attempts: int | None = None) -> ItemAttempt:
        """Count one more failed attempt (or set the count its own queue kept); returns the row as it now stands."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO item_attempts (kind, item_id, attempts, next_attempt_at, last_error, first_failed_at,"
                " last_failed_at, gave_up_at) VALUES (?, ?, COALESCE(?, 1), ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, item_id) DO UPDATE SET attempts = COALESCE(?, attempts + 1),"
                " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,"
                " last_failed_at = excluded.last_failed_at, gave_up_at = COALESCE(gave_up_at, excluded.gave_up_at)",
                (kind, str(item_id), attempts, next_attempt_at, error[:300], now, now, now if give_up else None,
                 attempts))
            return dict(conn.execute("SELECT * FROM item_attempts WHERE kind = ? AND item_id = ?",
                                     (kind, str(item_id))).fetchone())

    def mark_succeeded(self, kind: str, item_id: str | int) -> bool:
        """Forget an item's failures; True when it had any."""
        with self._db.write() as conn:
            return conn.execute("DELETE FROM item_attempts WHERE kind = ? AND item_id = ?",
                                (kind, str(item_id))).rowcount == 1

    def forget_others(self, kind: str, keep: set[str]) -> int:
        """Forget failures of `kind` items that no longer need work (answered elsewhere, read on the site...).

        A give-up still owed its report is kept until it is reported.
        """
        with self._db.write() as conn:
            rows = conn.execute("SELECT item_id FROM item_attempts WHERE kind = ?"
                                " AND (gave_up_at IS NULL OR reported_at IS NOT NULL)", (kind,)).fetchall()
            gone = [(kind, r[0]) for r in rows if r[0] not in keep]
            conn.executemany("DELETE FROM item_attempts WHERE kind = ? AND item_id = ?", gone)
            return len(gone)

    def mark_reported(self, kind: str, item_id: str | int, now: float) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE item_attempts SET reported_at = ? WHERE kind = ? AND item_id = ?",
                         (now, kind, str(item_id)))

    def unreported(self, limit: int = 50) -> list[ItemAttempt]:
        """Given-up items whose report (log line, note in Chatwoot) is still owed."""
        return self._db.all("SELECT * FROM item_attempts WHERE gave_up_at IS NOT NULL AND reported_at IS NULL"
                            " ORDER BY gave_up_at LIMIT ?", (limit,))

    def reset(self, now: float, kind: str | None = None, item_id: str | int | None = None) -> int:
        """Make failing items due now with a fresh count (`main.py retry`).

        A given-up notification is put back in its queue; a reply's record is only cleared
        (its agent was told, or its report is what kept failing).
        """
        where, params = "1 = 1", []
        if kind:
            where, params = "kind = ?", [kind]
            if item_id is not None:
                where, params = "kind = ? AND item_id = ?", [kind, str(item_id)]
        with self._db.write() as conn:
            conn.execute("UPDATE notifications SET processed_at = NULL, attempts = 0, next_attempt_at = ?"
                         f" WHERE id IN (SELECT item_id FROM item_attempts WHERE kind = 'notification' AND {where})",
                         [now, *params])
            return conn.execute(f"DELETE FROM item_attempts WHERE {where}", params).rowcount

    def forget_reported(self, before: float) -> int:
        """Given-up notifications and replies are not retried: their record goes once it is old news."""
        with self._db.write() as conn:
            return conn.execute("DELETE FROM item_attempts WHERE kind IN ('notification', 'reply')"
                                " AND reported_at < ?", (before,)).rowcount

    def summary(self, limit: int = 20) -> dict:
        """Counts per kind and the given-up items, for /health and `main.py status`."""
        counts = {}
        for row in self._db.all("SELECT kind, SUM(gave_up_at IS NULL) AS retrying, SUM(gave_up_at IS NOT NULL)"
                                " AS gave_up FROM item_attempts GROUP BY kind ORDER BY kind"):
            counts[row["kind"]] = {"retrying": row["retrying"] or 0, "gave_up": row["gave_up"] or 0}
        gave_up = self._db.all("SELECT kind, item_id, attempts, last_error, first_failed_at, gave_up_at,"
                               " next_attempt_at FROM item_attempts WHERE gave_up_at IS NOT NULL"
                               " ORDER BY gave_up_at DESC LIMIT ?", (limit,))
        return {"by_kind": counts, "gave_up": gave_up}
