"""The listener's /webhook: authentication, validation, filtering, recording in the outbox."""

import io
import json
import random
import time

import pytest

from tests.helpers import link_conversations
from tests.payloads import SECRET, message_created, signed


@pytest.fixture(autouse=True)
def linked(db):
    link_conversations(db)


def post(client, body, **kw):
    raw, headers = signed(body, **kw)
    return client.post("/webhook", data=raw, headers=headers)


def test_an_agent_reply_is_recorded_then_acknowledged(client, db):
    resp = post(client, message_created())
    assert resp.status_code == 200 and resp.json["status"] == "accepted"
    reply = db.replies.by_message(9123)
    assert reply["kind"] == "answer" and reply["target_id"] == "555" and reply["status"] == "pending"
    assert db.replies.parts(reply["id"])[0]["text"] == "Olá! Temos sim."


def test_a_post_sale_reply_targets_the_pack(client, db):
    resp = post(client, message_created(conversation_id=88, inbox_id=2, content="x " * 300))
    assert resp.json["status"] == "accepted"
    reply = db.replies.by_message(9123)
    assert reply["kind"] == "message" and reply["target_id"] == "2000001"
    assert len(db.replies.parts(reply["id"])) == 2


def test_the_same_delivery_twice_records_one_reply(client, db):
    assert post(client, message_created()).json["status"] == "accepted"
    assert post(client, message_created()).json["status"] == "duplicate"
    assert db.one("SELECT COUNT(*) AS n FROM replies")["n"] == 1


@pytest.mark.parametrize("change,reason", [
    ({"private": True}, "private note"),
    ({"message_type": "incoming"}, "message_type incoming"),
    ({"message_type": "template"}, "message_type template"),
    ({"source_id": "meli:question:555"}, "created by the bridge"),
    ({"inbox_id": 99}, "not a Mercado Livre inbox"),
    ({"sender_type": None}, "not sent by an agent"),
])
def test_messages_that_are_not_agent_replies_are_ignored(client, db, change, reason):
    resp = post(client, message_created(**change))
    assert resp.status_code == 200 and resp.json == {"status": "ignored", "reason": reason}
    assert db.one("SELECT COUNT(*) AS n FROM replies")["n"] == 0


def test_an_agent_bot_reply_is_accepted(client):
    assert post(client, message_created(sender_type="agent_bot")).json["status"] == "accepted"


def test_other_events_are_ignored(client):
    body = dict(message_created(), event="conversation_updated")
    assert post(client, body).json == {"status": "ignored", "reason": "event not handled"}


def test_an_unsigned_delivery_is_refused(client, db):
    resp = client.post("/webhook", json=message_created())
    assert resp.status_code == 401 and resp.data == b"unauthorized\n"
    assert db.one("SELECT COUNT(*) AS n FROM replies")["n"] == 0


def test_an_unsigned_delivery_with_the_url_token_is_accepted(client):
    resp = client.post(f"/webhook?token={SECRET}", json=message_created())
    assert resp.status_code == 200 and resp.json["status"] == "accepted"


def test_a_wrong_url_token_is_refused(client):
    assert client.post("/webhook?token=nope", json=message_created()).status_code == 401


def test_a_wrong_signature_is_refused(client):
    raw, headers = signed(message_created(), secret="not-the-secret")
    assert client.post("/webhook", data=raw, headers=headers).status_code == 401


def test_a_stale_timestamp_is_refused(client):
    assert post(client, message_created(), timestamp=int(time.time()) - 600).status_code == 401


def test_a_body_over_one_megabyte_is_refused(client):
    raw, headers = signed(b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert client.post("/webhook", data=raw, headers=headers).status_code == 413


def chunked(client, path, raw, headers=None):
    """A body sent chunked, as gunicorn hands it to the app: no Content-Length, and the server
    saying it ends the stream itself (gunicorn sets wsgi.input_terminated on every request)."""
    return client.post(path, input_stream=io.BytesIO(raw), headers={**(headers or {}), "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})


@pytest.mark.parametrize("path", ["/webhook", "/notifications"])
def test_a_chunked_body_over_one_megabyte_is_refused_as_too_large(client, path):
    raw, headers = signed(b'{"event": "message_created", "content": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    resp = chunked(client, path, raw, headers)
    assert resp.status_code == 413 and resp.json["reason"] == "body over 1 MB"


def test_a_chunked_body_of_exactly_one_megabyte_is_read_whole(client, db):
    body = json.dumps(message_created()).encode()
    raw, headers = signed(body[:-1] + b" " * (1024 * 1024 - len(body)) + b"}")
    assert len(raw) == 1024 * 1024
    resp = chunked(client, "/webhook", raw, headers)
    assert resp.status_code == 200 and resp.json["status"] == "accepted"


def test_broken_json_is_a_400(client):
    raw, headers = signed(b'{"event": "message_created", "id": ')
    assert client.post("/webhook", data=raw, headers=headers).status_code == 400


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b"\xff\xfe"])
def test_a_body_that_is_not_an_object_is_a_400(client, body):
    raw, headers = signed(body)
    assert client.post("/webhook", data=raw, headers=headers).status_code == 400


def test_missing_fields_are_a_400(client):
    body = message_created()
    del body["conversation"]
    assert post(client, body).status_code == 400
    assert post(client, dict(message_created(), id="9123")).status_code == 400


def test_a_second_answer_to_the_same_question_is_refused_for_the_agent(client, db):
    post(client, message_created(message_id=1))
    resp = post(client, message_created(message_id=2))
    assert resp.json["status"] == "refused"
    assert db.replies.by_message(2)["status"] == "failed"
    assert "uma única resposta" in db.replies.by_message(2)["note"]


def test_a_too_long_answer_is_refused_not_truncated(client, db):
    resp = post(client, message_created(content="a" * 2500))
    assert resp.json["status"] == "refused"
    reply = db.replies.by_message(9123)
    assert reply["status"] == "failed" and "2500" in reply["error"] and reply["reported_at"] is None


def test_an_answer_with_an_attachment_is_refused(client, db):
    files = [{"id": 5, "file_type": "image", "extension": "png",
              "data_url": "https://chat.example.test/rails/active_storage/blobs/redirect/x/foto.png"}]
    assert post(client, message_created(attachments=files)).json["status"] == "refused"
    assert "anexos" in db.replies.by_message(9123)["error"]


def test_an_attachment_on_another_host_is_refused(client, db):
    files = [{"id": 5, "file_type": "file", "extension": "pdf", "data_url": "https://evil.example/x/nota.pdf"}]
    resp = post(client, message_created(conversation_id=88, inbox_id=2, attachments=files))
    assert resp.json["status"] == "refused"
    assert "fora do Chatwoot" in db.replies.by_message(9123)["error"]


def test_an_unsupported_file_type_is_refused(client, db):
    files = [{"id": 5, "file_type": "file", "extension": "docx",
              "data_url": "https://chat.example.test/rails/active_storage/blobs/redirect/x/contrato.docx"}]
    resp = post(client, message_created(conversation_id=88, inbox_id=2, attachments=files))
    assert resp.json["status"] == "refused" and "docx" in db.replies.by_message(9123)["error"]


def test_a_conversation_unknown_to_the_bridge_waits_for_chatwoots_record_of_it(client, db):
    """No row and no attribute: the bridge's own messages there may still name the item (an agent cleared the
    attribute), which only Chatwoot's record tells; the delivery reads it (test_reply_addressee), not the
    listener, which must answer within 5 s."""
    resp = post(client, message_created(conversation_id=4242))
    assert resp.json["status"] == "accepted"
    assert db.replies.by_message(9123)["status"] == "pending"
    assert db.replies.by_message(9123)["target_id"] is None


def test_fuzzed_signed_bodies_never_cause_a_5xx(client):
    rng = random.Random(7)
    base = json.dumps(message_created()).encode()
    values = [None, 0, -1, 2**70, "", "x", [], {}, True, 1.5, "outgoing", "message_created"]
    keys = ["event", "id", "content", "message_type", "private", "source_id", "sender", "inbox", "conversation",
            "attachments"]
    for _ in range(300):
        if rng.random() < 0.3:
            raw = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw)
        else:
            body = message_created(message_id=rng.randint(1, 10**6))
            for key in rng.sample(keys, rng.randint(1, 4)):
                body[key] = rng.choice(values)
            if isinstance(body.get("conversation"), dict) and rng.random() < 0.5:
                body["conversation"]["custom_attributes"] = rng.choice(values)
            raw = json.dumps(body).encode()
        r, headers = signed(raw)
        status = client.post("/webhook", data=r, headers=headers).status_code
        assert status in (200, 400), raw[:200]
