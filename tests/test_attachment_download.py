"""Attachment downloads stay on the configured Chatwoot host, redirects included."""

import json
import time

import pytest
import responses

from bridge.replies import accept, delivery
from bridge.services import build_services
from chatwoot_api import ChatwootClient, DownloadRefused
from tests.payloads import message_created

API = "https://api.meli.test"
CW = "https://chat.example.test/api/v1/accounts/1"
BLOB = "https://chat.example.test/rails/active_storage/blobs/redirect/tok/foto.png"
DISK = "https://chat.example.test/rails/active_storage/disk/tok/foto.png"


@pytest.fixture
def chatwoot(settings):
    return ChatwootClient(settings, sleep=lambda _s: None)


@responses.activate
def test_a_redirect_within_the_chatwoot_host_is_followed(chatwoot):
    responses.get(BLOB, status=302, headers={"Location": "/rails/active_storage/disk/tok/foto.png"})
    responses.get(DISK, body=b"\x89PNG", content_type="image/png")
    assert chatwoot.download(BLOB) == (b"\x89PNG", "image/png")


@pytest.mark.parametrize("location", [
    "https://storage.example.test/tok/foto.png",
    "https://chat.example.test.evil.example/tok",
    "https://chat.example.test:8443/rails/active_storage/disk/tok/foto.png",
    "http://127.0.0.1/latest/meta-data",
    "file:///etc/passwd",
    "https://[::1/broken",
])
@responses.activate
def test_a_redirect_to_another_host_is_refused_without_fetching_it(chatwoot, location):
    responses.get(BLOB, status=302, headers={"Location": location})
    with pytest.raises(DownloadRefused) as refused:
        chatwoot.download(BLOB)
    assert refused.value.code == "foreign_redirect" and "não foi baixado" in refused.value.message
    assert [c.request.url for c in responses.calls] == [BLOB]


@responses.activate
def test_every_hop_is_checked_not_only_the_first(chatwoot):
    responses.get(BLOB, status=302, headers={"Location": DISK})
    responses.get(DISK, status=302, headers={"Location": "https://storage.example.test/tok"})
    with pytest.raises(DownloadRefused) as refused:
        chatwoot.download(BLOB)
    assert refused.value.code == "foreign_redirect" and "storage.example.test" in refused.value.message
    assert [c.request.url for c in responses.calls] == [BLOB, DISK]


@responses.activate
def test_a_foreign_redirect_reaches_the_agent_as_a_failed_mark_and_note(settings, db):
    s = build_services(settings, db, sleep=lambda _s: None)
    db.auth.store_authorized(555, "LOJA", "AT-1", "RT-1", time.time() + 21600, time.time())
    db.links.mark_created("pack", "2000001", 1.0, conversation_id=88, contact_id=5,
                          data={"buyer_id": 9, "blocked": False, "migrated": False})
    status, _code, extra = accept.accept_webhook(
        message_created(message_id=9300, conversation_id=88, inbox_id=2, content="Segue a foto",
                        attachments=[{"id": 5, "file_type": "image", "extension": "png", "data_url": BLOB}]),
        settings, db, time.time())
    assert status == "accepted"
    responses.get(BLOB, status=302, headers={"Location": "https://storage.example.test/tok/foto.png"})
    responses.patch(f"{CW}/conversations/88/messages/9300", json={"id": 9300})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 1})

    delivery.run_outbox(s)

    reply = db.replies.get(extra["reply_id"])
    assert reply["status"] == "failed" and reply["reported_at"]
    assert not [c for c in responses.calls if c.request.url.startswith(API)]  # nothing went to Mercado Livre
    patch = [json.loads(c.request.body) for c in responses.calls if c.request.method == "PATCH"][0]
    assert patch["status"] == "failed" and "foto.png" in patch["external_error"]
    note = [json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"][0]
    assert note["private"] is True and "fora do Chatwoot configurado" in note["content"]
