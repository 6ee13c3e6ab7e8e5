"""The cache of Mercado Livre items and users (titles, nicknames), dropped after a week by `Database.prune`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db_manager import Database


class CacheStore:
    """`db.cache`: query get_many, command put_many."""

    def __init__(self, db: Database):
        self._db = db

    def get_many(self, kind: str, keys: list[str], max_age: float, now: float) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.conn().execute(
                    f"SELECT key, value FROM cache WHERE kind = ? AND fetched_at >= ? AND key IN ({marks})",
                    (kind, now - max_age, *chunk)):
                found[row["key"]] = json.loads(row["value"])
        return found

    def put_many(self, kind: str, values: dict[str, Any], now: float) -> None:
        if not values:
            return
        with self._db.write() as conn:
            conn.executemany("INSERT OR REPLACE INTO cache (kind, key, value, fetched_at) VALUES (?, ?, ?, ?)",
                             [(kind, k, json.dumps(v), now) for k, v in values.items()])
