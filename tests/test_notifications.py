"""POST /notifications: fast, deduplicated, only ours."""

import pytest

from webhook_server import create_app


@pytest.fixture
def client(make_settings, db):
    app = create_app(make_settings(MELI_USER_ID="555"), db=db)
    return app.test_client()


def body(**kw):
    base = {"_id": "n-1", "resource": "/questions/321", "user_id": 555, "topic": "questions",
            "application_id": 123456, "attempts": 1, "sent": "2026-11-20T12:00:00.000Z",
            "received": "2026-11-20T12:00:00.000Z"}
    base.update(kw)
    return base


def test_a_notification_is_recorded_for_the_poller(client, db):
    resp = client.post("/notifications", json=body())
    assert resp.status_code == 200 and resp.json["status"] == "recorded"
    due = db.notifications_due(now=9e12)
    assert [(n["topic"], n["resource"]) for n in due] == [("questions", "/questions/321")]


def test_the_same_notification_twice_is_recorded_once(client, db):
    client.post("/notifications", json=body())
    assert client.post("/notifications", json=body()).json["status"] == "duplicate"
    assert len(db.notifications_due(now=9e12)) == 1


def test_a_user_id_sent_as_a_string_is_accepted(client):
    assert client.post("/notifications", json=body(user_id="555")).json["status"] == "recorded"


def test_another_seller_is_ignored_with_200(client, db):
    resp = client.post("/notifications", json=body(user_id=999))
    assert resp.status_code == 200 and resp.json["status"] == "ignored"
    assert db.notifications_due(now=9e12) == []


def test_another_application_is_ignored_with_200(client, db):
    assert client.post("/notifications", json=body(application_id=42)).json["reason"] == "other application"


def test_an_unknown_topic_is_ignored_with_200(client):
    resp = client.post("/notifications", json=body(topic="orders_v2", resource="/orders/1"))
    assert resp.status_code == 200 and resp.json["status"] == "ignored"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"topic": 1}', b'{"resource": "/questions/1"}'])
def test_a_malformed_notification_is_a_400(client, raw):
    resp = client.post("/notifications", data=raw, content_type="application/json")
    assert resp.status_code == 400
