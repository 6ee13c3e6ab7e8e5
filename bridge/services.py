"""What a job needs to run: settings, the database and the two API clients."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from bridge.rate_budget import Budget
from chatwoot_api import ChatwootClient
from config import Settings
from db_manager import Database
from mercado_livre_api import MeliClient


@dataclass
class Services:
    settings: Settings
    db: Database
    meli: MeliClient
    chatwoot: ChatwootClient
    clock: Callable[[], float] = time.time
    # Set on SIGTERM: loops finish the item in hand and return.
    stopping: threading.Event = field(default_factory=threading.Event)
    # One worker at a time per question, pack or claim: the poll job and a notification must
    # not race to create the same conversation, yet a backlog must not hold up the rest.
    # Per buyer too (contacts.buyer_lock), always taken inside an item's lock, never around one.
    locks: "KeyedLocks" = field(default_factory=lambda: KeyedLocks())


class KeyedLocks:
    """A lock per key (e.g. "question:123"), forgotten when nobody holds or waits for it."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()
        try:
            yield
        finally:
            entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


def build_services(settings: Settings, db: Database, *, paced: bool = False, **client_kwargs) -> Services:
    """`paced`: calls go through the rate budgets (the poller); tests and one-off commands skip them."""
    meli_budgets = chatwoot_budgets = None
    if paced:
        meli_budgets = {"GET": Budget("mercadolivre GET", settings.meli_get_per_minute),
                        "*": Budget("mercadolivre POST", settings.meli_post_per_minute)}
        chatwoot_budgets = {"*": Budget("chatwoot", settings.chatwoot_per_minute)}
    return Services(settings=settings, db=db, meli=MeliClient(settings, db, budgets=meli_budgets, **client_kwargs),
                    chatwoot=ChatwootClient(settings, budgets=chatwoot_budgets, **client_kwargs))
