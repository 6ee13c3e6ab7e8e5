"""Mercado Livre notifications end to end: pushed, duplicated, missed, foreign."""

from collections import Counter

import requests

from config import load_settings
from db_manager import Database
from tests.e2e import wait_until
from webhook_server import create_app


def notify(bridge, body):
    return requests.post(f"{bridge.url}/notifications", json=body, timeout=5)


def test_a_question_notification_brings_the_question_at_once(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    bridge.env["QUESTIONS_POLL_SECONDS"] = "3600"  # no polling help: only the notification
    bridge.listener()
    bridge.poller()
    wait_until(lambda: meli.count("GET", "/questions/search") >= 1, 20, what="the first poll")
    meli.add_user(9001, "COMPRADOR")
    meli.add_item("MLB1", "Caneca")
    question = meli.add_question(item_id="MLB1", buyer_id=9001, text="Tem azul?")
    body = meli.notification("questions", f"/questions/{question['id']}")
    assert notify(bridge, body).status_code == 200
    assert notify(bridge, body).json()["status"] == "duplicate"
    wait_until(lambda: chatwoot.conversations, 10, what="the conversation")
    assert meli.count("GET", f"/questions/{question['id']}") == 1


def test_a_message_notification_brings_the_message(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    bridge.env["MESSAGES_POLL_SECONDS"] = "3600"
    bridge.listener()
    bridge.poller()
    wait_until(lambda: meli.count("GET", "/messages/unread") >= 1, 20, what="the first poll")
    meli.add_user(7001, "COMPRADOR")
    meli.add_order(2000001, 7001, "COMPRADOR", items=[("MLB1", "Caneca", 1, 10.0)])
    message = meli.add_buyer_message("2000001", "Chegou quebrado")
    assert notify(bridge, meli.notification("messages", message["id"])).status_code == 200
    wait_until(lambda: any(m["content"] == "Chegou quebrado" for c in chatwoot.conversations
                           for m in chatwoot.messages_in(c)), 10, what="the message in chatwoot")


def test_another_users_notification_is_ignored(bridge):
    meli = bridge.fakes.meli.state
    assert bridge.once().returncode == 0  # the bridge learns which seller it serves
    bridge.listener()
    body = dict(meli.notification("questions", "/questions/1"), user_id="999")
    resp = notify(bridge, body)
    assert resp.status_code == 200 and resp.json()["status"] == "ignored"


def test_missed_feeds_after_a_downtime_are_synced(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    meli.add_user(9001, "COMPRADOR")
    meli.add_item("MLB1", "Caneca")
    question = meli.add_question(item_id="MLB1", buyer_id=9001, text="Tem azul?")
    meli.missed.append(meli.notification("questions", f"/questions/{question['id']}"))
    assert bridge.once().returncode == 0
    assert len(chatwoot.conversations) == 1
    db = Database(bridge.env["DATABASE_PATH"])
    recorded = db.all("SELECT * FROM notifications")
    assert len(recorded) == 1 and recorded[0]["processed_at"] is not None
    assert meli.count("GET", "/missed_feeds") == 1


def forgeries(meli, n: int) -> dict:
    """Notifications that are not Mercado Livre's, or not for us: never worth a call."""
    ours = meli.notification("questions", "/questions/1")
    fake_id = f"77777{n:05d}"
    shapes = [
        {"resource": f"/questions/{fake_id}", "topic": "questions"},                                   # anonymous
        dict(ours, resource=f"/questions/{fake_id}", application_id=None),
        dict(ours, resource=f"/questions/{fake_id}", user_id=None),
        dict(ours, resource=f"/questions/{fake_id}", application_id=meli.app_id + 1),
        dict(ours, resource=f"/questions/{fake_id}", user_id=str(meli.seller_id + 1)),
        dict(ours, resource=f"/questions/{fake_id}", application_id=str(float(meli.app_id))),
        dict(ours, resource=f"/questions/{fake_id}abc"),
        dict(ours, resource=f"/questions/{fake_id}/../../users/me"),
        dict(ours, topic="messages", resource=f"/messages/{fake_id}/../x"),
        dict(ours, topic="orders_v2", resource=f"/orders/{fake_id}"),
        dict(ours, topic="questions", resource=f"/post-purchase/v1/claims/{fake_id}"),
    ]
    body = shapes[n % len(shapes)]
    return {k: v for k, v in body.items() if v is not None}


def test_ten_thousand_forged_notifications_cost_no_meli_call_and_polling_goes_on(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    assert bridge.once().returncode == 0  # the bridge learns which seller it serves
    # The listener in process (the same app gunicorn serves), so 10 000 requests take seconds.
    listener = create_app(load_settings(bridge.env)).test_client()
    statuses = Counter()
    for n in range(10_000):
        statuses[listener.post("/notifications", json=forgeries(meli, n)).status_code] += 1
    assert statuses == {200: 10_000}
    meli.add_user(9001, "COMPRADOR")
    meli.add_item("MLB1", "Caneca")
    question = meli.add_question(item_id="MLB1", buyer_id=9001, text="Tem azul?")
    calls_before = len(meli.calls)

    assert bridge.once().returncode == 0

    assert not [c for c in meli.calls[calls_before:] if "77777" in c["path"]]
    db = Database(bridge.env["DATABASE_PATH"])
    assert db.all("SELECT * FROM notifications") == []
    assert [str(c["custom_attributes"].get("meli_question_id")) for c in chatwoot.conversations.values()] == [
        str(question["id"])]
