"""What a job needs to run: settings, the database and the two API clients."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

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
    # One sync at a time per kind: the poll job and a notification must not race to
    # create the same conversation.
    questions_lock: threading.Lock = field(default_factory=threading.Lock)
    messages_lock: threading.Lock = field(default_factory=threading.Lock)


def build_services(settings: Settings, db: Database, **client_kwargs) -> Services:
    return Services(settings=settings, db=db, meli=MeliClient(settings, db, **client_kwargs),
                    chatwoot=ChatwootClient(settings, **client_kwargs))
