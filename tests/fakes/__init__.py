"""In-process fakes of Mercado Livre and Chatwoot for the tests (and manual runs: python -m tests.fakes)."""

from __future__ import annotations

from typing import Any

from .fake_chatwoot import ChatwootState, create_chatwoot_app
from .fake_meli import MeliState, create_meli_app
from .server import ServerHandle, serve

__all__ = ["ChatwootState", "Fakes", "MeliState", "ServerHandle", "create_chatwoot_app", "create_meli_app", "serve",
           "start_fakes"]

MELI_OPTIONS = ("app_id", "secret", "seller_id", "seller_nickname", "access_ttl")
CHATWOOT_OPTIONS = ("account_id", "api_token", "account_name")


class Fakes:
    """Both fakes running; `.meli.state` / `.chatwoot.state` are the states. Tests may add attributes."""

    def __init__(self, meli: ServerHandle, chatwoot: ServerHandle):
        self.meli = meli
        self.chatwoot = chatwoot

    def stop(self) -> None:
        self.chatwoot.state.stop()
        self.meli.shutdown()
        self.chatwoot.shutdown()


def start_fakes(meli_port: int = 0, chatwoot_port: int = 0, **options: Any) -> Fakes:
    """Start both fakes on 127.0.0.1; options go to MeliState or ChatwootState by name."""
    unknown = set(options) - set(MELI_OPTIONS) - set(CHATWOOT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown start_fakes options: {sorted(unknown)}")
    meli_state = MeliState(**{k: v for k, v in options.items() if k in MELI_OPTIONS})
    chatwoot_state = ChatwootState(**{k: v for k, v in options.items() if k in CHATWOOT_OPTIONS})
    meli = serve(create_meli_app(meli_state), meli_port, meli_state)
    chatwoot = serve(create_chatwoot_app(chatwoot_state), chatwoot_port, chatwoot_state)
    chatwoot_state.base_url = chatwoot.url  # data_url links must work before the first request
    return Fakes(meli, chatwoot)
