"""Helpers shared by the unit tests (fixtures are in conftest.py)."""

from __future__ import annotations

import re
import time

import responses

from bridge.services import Services, build_services

SELLER = 555
API = "https://api.meli.test"
CW = "https://chat.example.test/api/v1/accounts/1"
THREAD = f"{API}/messages/packs/2000001/sellers/{SELLER}"  # sale 2000001's post-sale thread
PEEK = {"tag": "post_sale", "mark_as_read": "false", "limit": "10", "offset": "0"}
MARK = {"tag": "post_sale", "limit": "10", "offset": "0"}


class Clock:
    """The services' clock in tests: time moves only when a test moves it."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def authorized_services(settings, db, clock: Clock | None = None) -> Services:
    """Services that never sleep, for a seller whose Mercado Livre tokens are fresh."""
    services = build_services(settings, db, sleep=lambda _s: None)
    if clock is not None:
        services.clock = clock
    now = time.time()
    db.auth.store_authorized(SELLER, "LOJA", "AT-1", "RT-1", now + 21600, now)
    return services


def link_conversations(db) -> None:
    """Question 555 in conversation 77 and sale 2000001 in conversation 88, both already in Chatwoot."""
    db.links.mark_created("question", "555", 1.0, conversation_id=77, contact_id=5, message_id=1,
                          data={"state": "open"})
    db.links.mark_created("pack", "2000001", 1.0, conversation_id=88, contact_id=5, data={"buyer_id": 9})


def sale_services(settings, db, clock: Clock | None = None) -> Services:
    """Authorized services with sale 2000001 (buyer 9) already in Chatwoot conversation 88."""
    services = authorized_services(settings, db, clock)
    db.links.mark_created("pack", "2000001", 1.0, conversation_id=88, contact_id=5,
                          data={"buyer_id": 9, "blocked": False, "migrated": False})
    return services


class Killed(BaseException):
    """kill -9 while a request is in flight: nothing after it runs."""


class PausedBudget:
    """A rate budget paused (after a 429) for `seconds` when a request is about to leave."""

    def __init__(self, clock: Clock, seconds: float):
        self.clock, self.seconds = clock, seconds

    def acquire(self, level=None) -> None:
        self.clock.advance(self.seconds)

    def pause(self, seconds: float) -> None:
        pass


def services_on_fakes(make_settings, db, fakes, **env) -> Services:
    """Services in this process, calling the running fakes (tests.fakes) as the poller would, for a
    seller authorized there. `env`: settings overrides."""
    meli, chatwoot = fakes.meli.state, fakes.chatwoot.state
    settings = make_settings(MELI_API_URL=fakes.meli.url, MELI_AUTH_URL=fakes.meli.url, MELI_APP_ID=str(meli.app_id),
                             MELI_SECRET_KEY=meli.secret, CHATWOOT_URL=fakes.chatwoot.url,
                             CHATWOOT_API_TOKEN=chatwoot.api_token, CHATWOOT_ACCOUNT_ID=str(chatwoot.account_id),
                             CHATWOOT_QUESTIONS_INBOX_ID=str(fakes.questions_inbox),
                             CHATWOOT_MESSAGES_INBOX_ID=str(fakes.messages_inbox), **env)
    access, refresh = meli.seed_tokens()
    now = time.time()
    db.auth.store_authorized(meli.seller_id, "LOJA", access, refresh, now + 21600, now)
    return build_services(settings, db, sleep=lambda _s: None)


def chatwoot_sets_status() -> None:
    """Chatwoot accepts a status change of any conversation (`responses`)."""
    responses.post(re.compile(re.escape(CW) + r"/conversations/\d+/toggle_status"), json={"payload": {"success": True}})
