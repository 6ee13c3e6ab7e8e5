"""The fake Mercado Livre's consent page: the link `./bridge.sh authorize` prints can be opened
against the fakes, as a deployer trying the setup on this machine does, and it ends at the
listener's /oauth/callback with the seller authorized."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from config import load_settings
from db_manager import Database
from tests.conftest import base_env
from webhook_server import create_app


@pytest.fixture
def listener_on_fakes(tmp_path):
    from tests.fakes import start_fakes
    fakes = start_fakes()

    def make(**overrides):
        settings = load_settings(base_env(tmp_path, MELI_API_URL=fakes.meli.url, MELI_AUTH_URL=fakes.meli.url,
                                          **overrides))
        db = Database(settings.database_path).open()
        app = create_app(settings, db=db)
        return app.test_client(), app.extensions["bridge"]["meli"], db
    yield fakes, make
    fakes.stop()


def _open_in_browser(link: str, client):
    """The seller opens the link and approves; the browser follows the redirect to the callback."""
    consent = requests.get(link, allow_redirects=False, timeout=5)
    assert consent.status_code == 302
    back = urlsplit(consent.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == "https://bridge.example.com/oauth/callback"
    return client.get(f"{back.path}?{back.query}")


@pytest.mark.parametrize("pkce", ["false", "true"])
def test_the_authorize_link_opened_against_the_fake_authorizes_the_seller(listener_on_fakes, pkce):
    fakes, make = listener_on_fakes
    client, meli, db = make(MELI_USE_PKCE=pkce)
    try:
        page = _open_in_browser(meli.authorization_url(), client)
        seller = fakes.meli.state.seller_id
        assert page.status_code == 200 and b"Conta autorizada" in page.data and str(seller).encode() in page.data
        assert db.auth.current()["user_id"] == seller
    finally:
        db.close()


def test_the_fake_consent_page_refuses_a_link_for_another_application(listener_on_fakes):
    fakes, make = listener_on_fakes
    client, meli, db = make(MELI_APP_ID="999")
    try:
        assert requests.get(meli.authorization_url(), allow_redirects=False, timeout=5).status_code == 400
    finally:
        db.close()
