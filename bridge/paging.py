"""The one way the bridge reads Mercado Livre's offset-paged lists (questions, claims, threads)."""

from __future__ import annotations

import itertools
from typing import Callable, Iterator


def paging_total(page: dict) -> int:
    """The list's size where most endpoints put it: `paging.total`."""
    return int((page.get("paging") or {}).get("total") or 0)


class Pages:
    """(page, items) for each page: the offset moves on by the items read, until an empty page or
    the total. With `max_pages`, `complete` says whether the end was reached before the limit."""

    def __init__(self, fetch: Callable[[int], dict], items: Callable[[dict], list],
                 total: Callable[[dict], int] = paging_total, max_pages: int | None = None):
        self.fetch, self.items, self.total, self.max_pages = fetch, items, total, max_pages
        self.complete = False

    def __iter__(self) -> Iterator[tuple[dict, list]]:
        offset = 0
        for _ in range(self.max_pages) if self.max_pages is not None else itertools.count():
            page = self.fetch(offset)
            batch = self.items(page)
            yield page, batch
            offset += len(batch)
            if not batch or offset >= self.total(page):
                self.complete = True
                return
