"""Property-based: whatever arrives, signed or not, the listener answers 4xx or 200, never 5xx.

Valid Chatwoot and Mercado Livre bodies are mutated (values replaced by any JSON, keys
removed or added, types swapped) and posted through the real Flask app.
"""

import copy
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.signature import verify_signature
from bridge.sync import notifications
from tests.helpers import link_conversations
from tests.payloads import message_created, signed

# About 2000 examples in all; derandomized so CI sees the same cases every run.
SETTINGS = settings(max_examples=600, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FILES = [{"id": 5, "message_id": 9123, "file_type": "image", "extension": "png", "content_type": "image/png",
          "data_url": "https://chat.example.test/rails/active_storage/blobs/redirect/x/foto.png",
          "thumb_url": "https://chat.example.test/t.png", "file_size": 12345}]
VALID = [
    message_created(),                                                                   # an answer
    message_created(conversation_id=88, inbox_id=2, attachments=copy.deepcopy(FILES)),   # a sale reply with a file
    message_created(conversation_id=4242, custom_attributes={"meli_question_id": "555", "meli_pack_id": 2000001}),
]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=30)
           | st.sampled_from(["", "outgoing", "incoming", "message_created", "user", "agent_bot", "png", "pdf",
                              "https://chat.example.test/x.pdf", "https://[", "meli:x", "\ud800", "٣٢١", "²"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def paths(value, prefix=()):
    """Every place in a JSON document (dict keys and list positions), outermost first."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, prefix + (index,))
    return found


def mutate(data, body: dict) -> dict:
    body = copy.deepcopy(body)
    for _ in range(data.draw(st.integers(1, 4))):
        places = paths(body)
        if not places:
            break
        where = data.draw(st.sampled_from(places))
        parent = body
        for step in where[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = data.draw(json_values)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(json_values)
    return body


def encode(body: dict) -> bytes:
    # Lone surrogates cannot be UTF-8 encoded: send them as JSON escapes, as an attacker could.
    return json.dumps(body).encode()


def quick(db):
    # Thousands of examples: skip the per-commit fsync (durability is not what is tested here).
    db.conn().execute("PRAGMA synchronous = OFF")
    return db


@pytest.fixture
def client(make_client, db):
    link_conversations(db)
    return make_client(with_db=quick(db))


@SETTINGS
@given(data=st.data())
def test_mutated_signed_chatwoot_payloads_never_cause_a_5xx(client, data):
    body = mutate(data, data.draw(st.sampled_from(VALID)))
    if isinstance(body.get("id"), int) and data.draw(st.booleans()):
        body["id"] = data.draw(st.integers(1, 10**9))  # mostly new messages, not duplicates
    raw, headers = signed(encode(body))
    resp = client.post("/webhook", data=raw, headers=headers)
    assert resp.status_code in (200, 400), (resp.status_code, resp.json, raw[:300])
    assert resp.is_json and "status" in resp.json


@settings(SETTINGS, max_examples=500)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_signed_bytes_never_cause_a_5xx(client, raw):
    body, headers = signed(raw)
    assert client.post("/webhook", data=body, headers=headers).status_code in (200, 400)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(timestamp=st.text(max_size=20) | st.sampled_from(["١٧٦٣٦٤٠٠٠٠", "²", "9" * 5000, " 1", "1e9", "-1", "0x10"]),
       signature=st.text(max_size=80))
def test_any_signature_headers_are_a_refusal_not_an_exception(timestamp, signature):
    ok, reason = verify_signature(b"{}", {"X-Chatwoot-Timestamp": timestamp, "X-Chatwoot-Signature": signature},
                                  ["whsec-one-5f3a"], now=time.time())
    assert not ok and reason


@pytest.mark.parametrize("timestamp", ["²³", "١٧٦٣٦٤٠٠٠٠", "9" * 5000, "1" * 13])
def test_a_timestamp_of_other_digits_is_a_401(client, timestamp):
    raw, headers = signed(message_created())
    headers["X-Chatwoot-Timestamp"] = timestamp
    # Werkzeug carries headers as latin-1: what a real client can put on the wire.
    resp = client.post("/webhook", data=raw, headers={k: v.encode("utf-8").decode("latin-1")
                                                      if not v.isascii() else v for k, v in headers.items()})
    assert resp.status_code == 401


@pytest.mark.parametrize("raw", [
    b"[" * 200_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    json.dumps(dict(message_created(), content=json.loads("[" * 900 + "]" * 900))).encode(),
    json.dumps(message_created(content="a\ud800b")).encode(),
    b'{"event": "message_created", "id": ' + b"9" * 5000 + b"}",
    b'{"event": "message_created", "id": 1e400}',
    b'{"event": NaN}',
], ids=["deep-list", "deep-object", "deep-content", "lone-surrogate", "huge-number", "float-overflow", "nan"])
def test_deep_huge_or_broken_json_is_a_4xx_or_ignored(client, raw):
    body, headers = signed(raw)
    assert client.post("/webhook", data=body, headers=headers).status_code in (200, 400, 413)


@pytest.mark.parametrize("change", [
    {"attachments": [{"id": 5, "extension": 7, "data_url": "https://chat.example.test/x/a.pdf"}]},
    {"attachments": [{"id": 5, "extension": "pdf", "data_url": 12}]},
    {"attachments": [{"id": 5, "extension": "pdf", "data_url": "https://[chat.example.test/x.pdf"}]},
    {"attachments": [{"id": [], "extension": None, "data_url": None, "file_size": "big"}]},
    {"attachments": "foto.png"},
    {"content": ["Olá"]},
    {"content": {"text": "Olá"}},
    {"conversation": "77"},
    {"id": 9123.0},
    {"id": True},
    {"inbox": {"id": True}},
    {"private": "false"},
    {"sender": ["user"]},
], ids=lambda change: "-".join(change))
def test_fields_of_an_unexpected_type_are_a_4xx_or_a_reason_never_a_5xx(client, db, change):
    body = dict(message_created(conversation_id=88, inbox_id=2), **change)
    raw, headers = signed(json.dumps(body).encode())
    resp = client.post("/webhook", data=raw, headers=headers)
    assert resp.status_code in (200, 400) and resp.json["status"]


def test_a_string_private_flag_is_never_sent_to_the_buyer(client, db):
    raw, headers = signed(json.dumps(message_created(private="true")).encode())
    assert client.post("/webhook", data=raw, headers=headers).json == {"status": "ignored",
                                                                        "reason": "private note"}


def test_an_inbox_id_of_true_is_not_inbox_1(client, db):
    body = message_created()
    body["inbox"]["id"] = True
    body["conversation"]["inbox_id"] = True
    raw, headers = signed(json.dumps(body).encode())
    assert client.post("/webhook", data=raw, headers=headers).json["reason"] == "not a Mercado Livre inbox"


# ---- /notifications ------------------------------------------------------------------------------

OURS = {"_id": "n-1", "resource": "/questions/321", "user_id": 555, "topic": "questions", "application_id": 123456,
        "attempts": 1, "sent": "2026-11-20T12:00:00.000Z", "received": "2026-11-20T12:00:00.000Z"}
near_ids = st.sampled_from([555, "555", 123456, "123456", 555.0, True, "０５５５", None]) | json_values
near_resources = st.sampled_from(["/questions/321", "/questions/", "/questions/-1", "abc123", "/messages/abc",
                                  "/post-purchase/v1/claims/1", "/orders/1", "/questions/٣", " /questions/1 "])


@pytest.fixture
def notifications_client(make_client, make_settings, db):
    return make_client(make_settings(MELI_USER_ID="555"), quick(db))


@SETTINGS
@given(data=st.data())
def test_mutated_notifications_never_cause_a_5xx_and_only_ours_are_recorded(notifications_client, db, data):
    body = dict(OURS)
    for key in data.draw(st.lists(st.sampled_from(sorted(OURS) + ["extra"]), max_size=4, unique=True)):
        body[key] = data.draw({"user_id": near_ids, "application_id": near_ids,
                               "resource": near_resources | json_values,
                               "topic": st.sampled_from(["questions", "messages", "claims", "orders_v2"]) | json_values,
                               }.get(key, json_values))
    resp = notifications_client.post("/notifications", data=encode(body), content_type="application/json")
    assert resp.status_code in (200, 400), (resp.status_code, body)
    if resp.json["status"] in ("recorded", "duplicate"):
        assert body["application_id"] in (123456, "123456") and body["user_id"] in (555, "555")
    for row in db.notifications.due(now=9e12):
        assert notifications.RESOURCES[row["topic"]].fullmatch(row["resource"])


@pytest.mark.parametrize("raw", [b"[" * 200_000, b'{"topic": "questions", "resource": "\\ud800"}', b"\xff", b""],
                         ids=["deep", "lone-surrogate", "not-utf8", "empty"])
def test_broken_notification_bodies_are_a_4xx_or_ignored(notifications_client, raw):
    resp = notifications_client.post("/notifications", data=raw, content_type="application/json")
    assert resp.status_code in (200, 400)
