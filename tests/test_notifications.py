"""POST /notifications: fast, deduplicated, only ours, bounded."""

import logging

import pytest

import db_manager
from bridge.sync import notifications
from db_manager import Database


@pytest.fixture
def client(make_client, make_settings):
    return make_client(make_settings(MELI_USER_ID="555"))


def body(**kw):
    base = {"_id": "n-1", "resource": "/questions/321", "user_id": 555, "topic": "questions",
            "application_id": 123456, "attempts": 1, "sent": "2026-11-20T12:00:00.000Z",
            "received": "2026-11-20T12:00:00.000Z"}
    base.update(kw)
    return base


def test_a_notification_is_recorded_for_the_poller(client, db):
    resp = client.post("/notifications", json=body())
    assert resp.status_code == 200 and resp.json["status"] == "recorded"
    due = db.notifications.due(now=9e12)
    assert [(n["topic"], n["resource"]) for n in due] == [("questions", "/questions/321")]


def test_the_same_notification_twice_is_recorded_once(client, db):
    client.post("/notifications", json=body())
    assert client.post("/notifications", json=body()).json["status"] == "duplicate"
    assert len(db.notifications.due(now=9e12)) == 1


def test_a_user_id_sent_as_a_string_is_accepted(client):
    assert client.post("/notifications", json=body(user_id="555")).json["status"] == "recorded"


def test_another_seller_is_ignored_with_200(client, db):
    resp = client.post("/notifications", json=body(user_id=999))
    assert resp.status_code == 200 and resp.json["status"] == "ignored"
    assert db.notifications.due(now=9e12) == []


def test_another_application_is_ignored_with_200(client, db):
    assert client.post("/notifications", json=body(application_id=42)).json["reason"] == "other application"


def test_an_unknown_topic_is_ignored_with_200(client):
    resp = client.post("/notifications", json=body(topic="orders_v2", resource="/orders/1"))
    assert resp.status_code == 200 and resp.json["status"] == "ignored"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"topic": 1}', b'{"resource": "/questions/1"}'])
def test_a_malformed_notification_is_a_400(client, raw):
    resp = client.post("/notifications", data=raw, content_type="application/json")
    assert resp.status_code == 400


def pending(db):
    return sorted((n["topic"], n["resource"]) for n in db.notifications.due(now=9e12))


@pytest.mark.parametrize("missing", ["application_id", "user_id"])
def test_a_notification_without_our_ids_is_ignored(client, db, missing):
    payload = body()
    del payload[missing]
    resp = client.post("/notifications", json=payload)
    assert resp.status_code == 200 and resp.json == {"status": "ignored", "reason": f"no {missing}"}
    assert pending(db) == []


@pytest.mark.parametrize("app_id", [42, "42", 123456.0, True, [123456], "123456 ", "１２３４５６"])
def test_an_application_id_that_is_not_exactly_ours_is_ignored(client, db, app_id):
    assert client.post("/notifications", json=body(application_id=app_id)).json["status"] == "ignored"
    assert pending(db) == []


def test_the_application_id_may_be_a_string(client, db):
    assert client.post("/notifications", json=body(application_id="123456")).json["status"] == "recorded"


def test_notifications_are_ignored_while_the_seller_is_unknown(make_settings, db, make_client):
    client = make_client(make_settings())  # no MELI_USER_ID, nothing authorized yet
    resp = client.post("/notifications", json=body())
    assert resp.status_code == 200 and resp.json == {"status": "ignored", "reason": "seller not known yet"}
    db.auth.store_authorized(555, "LOJA", "AT-1", "RT-1", 9e12, 1.0)
    assert client.post("/notifications", json=body()).json["status"] == "recorded"


@pytest.mark.parametrize("topic,resource,stored", [
    ("questions", "/questions/321", "/questions/321"),
    ("messages", "0c5b5b2f4ffc4f6b9a6a5d0c8e0f5a9a", "0c5b5b2f4ffc4f6b9a6a5d0c8e0f5a9a"),
    ("messages", "/messages/0c5b5b2f4ffc", "0c5b5b2f4ffc"),
    ("claims", "/post-purchase/v1/claims/5123456789", "/post-purchase/v1/claims/5123456789"),
])
def test_resources_of_the_right_shape_are_recorded(client, db, topic, resource, stored):
    resp = client.post("/notifications", json=body(topic=topic, resource=resource))
    assert resp.status_code == 200 and resp.json["status"] == "recorded"
    assert pending(db) == [(topic, stored)]


@pytest.mark.parametrize("topic,resource", [
    ("questions", "/questions/abc"),
    ("questions", "/questions/321/../../users/me"),
    ("questions", "/questions/321?access_token=x"),
    ("questions", "/questions/" + "1" * 30),
    ("questions", "/questions/٣٢١"),
    ("questions", "/post-purchase/v1/claims/1"),
    ("messages", "../../users/me"),
    ("messages", "a" * 65),
    ("messages", "/messages/"),
    ("messages", "/questions/321"),
    ("claims", "/post-purchase/v1/claims/x1"),
    ("orders_v2", "/orders/2000001"),
    ("items", "/items/MLB1"),
])
def test_resources_of_the_wrong_shape_are_ignored_with_200(client, db, topic, resource):
    resp = client.post("/notifications", json=body(topic=topic, resource=resource))
    assert resp.status_code == 200 and resp.json["status"] == "ignored"
    assert pending(db) == []


def test_pending_notifications_for_one_resource_collapse_into_one(client, db):
    for n in range(5):
        client.post("/notifications", json=body(_id=f"n-{n}"))
    client.post("/notifications", json=body(_id="m-1", topic="messages", resource="/messages/abc123"))
    assert client.post("/notifications", json=body(_id="m-2", topic="messages", resource="abc123")).json == {
        "status": "duplicate"}
    assert pending(db) == [("messages", "abc123"), ("questions", "/questions/321")]
    note = next(n for n in db.notifications.due(now=9e12) if n["topic"] == "questions")
    db.notifications.mark_done(note["id"], now=2.0, repeats=note["repeats"])
    # Once processed, a new notification for the resource is new work again.
    assert client.post("/notifications", json=body(_id="n-9")).json["status"] == "recorded"


def test_a_notification_during_the_fetch_keeps_the_resource_due(db):
    assert db.notifications.record("n-1", "questions", "/questions/1", now=1.0) == "recorded"
    note = db.notifications.due(now=2.0)[0]
    # The poller is fetching the question when Mercado Livre says it changed again.
    assert db.notifications.record("n-2", "questions", "/questions/1", now=3.0) == "merged"
    assert db.notifications.mark_done(note["id"], now=4.0, repeats=note["repeats"]) is False
    again = db.notifications.due(now=5.0)
    assert [n["id"] for n in again] == ["n-1"]
    assert db.notifications.mark_done("n-1", now=6.0, repeats=again[0]["repeats"]) is True
    assert db.notifications.due(now=7.0) == []


def test_beyond_the_queue_bound_notifications_are_dropped_with_200_and_counted_once_a_minute(
        make_settings, db, make_client, monkeypatch, caplog):
    monkeypatch.setattr(notifications, "MAX_PENDING", 3)
    monkeypatch.setattr(notifications, "DROPPED", notifications.LogTally("dropped"))
    client = make_client(make_settings(MELI_USER_ID="555"), clock=lambda: 1000.0)
    with caplog.at_level(logging.WARNING, logger="bridge.notifications"):
        statuses = [client.post("/notifications", json=body(_id=f"n-{n}", resource=f"/questions/{n}")).json["status"]
                    for n in range(10)]
        assert statuses == ["recorded"] * 3 + ["dropped"] * 7
        assert len(pending(db)) == 3
        # An already waiting resource is not dropped: it merges.
        assert client.post("/notifications", json=body(_id="x", resource="/questions/0")).json == {
            "status": "duplicate"}
        # The first drop is logged at once, the rest wait for the next minute.
        assert [r.getMessage() for r in caplog.records] == ["dropped: questions=1"]
        caplog.clear()
        notifications.DROPPED.add("questions", 1000.0 + 61)
        assert [r.getMessage() for r in caplog.records] == ["dropped: questions=7"]


def test_ignored_notifications_are_logged_once_a_minute_with_counts(caplog, monkeypatch):
    tally = notifications.LogTally("ignored")
    with caplog.at_level(logging.WARNING, logger="bridge.notifications"):
        tally.add("other application", 0.0)
        for t in range(1, 50):
            tally.add("other user" if t % 2 else "other application", float(t))
        tally.add("no user_id", 60.0)
    assert [r.getMessage() for r in caplog.records] == [
        "ignored: other_application=1", "ignored: no_user_id=1 other_application=24 other_user=25"]


def test_the_migration_keeps_one_pending_row_per_resource(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    step = [d for d, _sql in db_manager.MIGRATIONS].index("notifications: one pending row per topic and resource")
    monkeypatch.setattr(db_manager, "SCHEMA_VERSION", step)
    old = Database(path).open()
    for n in range(3):
        old.conn().execute("INSERT INTO notifications (id, topic, resource, received_at, next_attempt_at)"
                           " VALUES (?, 'questions', '/questions/1', ?, ?)", (f"n-{n}", n, n))
    old.close()
    monkeypatch.undo()
    db = Database(path).open()
    assert [n["id"] for n in db.notifications.due(now=9e12)] == ["n-0"]
