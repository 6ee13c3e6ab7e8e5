"""An erasure (`forget-buyer`) racing the outbox: a deleted reply's id never names another reply.

A reply id was a bare rowid: deleting the newest reply gave its id to the next one accepted, and
the in-flight send of the erased reply then marked that other buyer's reply delivered.
"""

import json
import os
import re
import sqlite3

import pytest
import responses

from bridge.replies import delivery
from bridge.replies.accept import accept_webhook
from bridge.sync import sales
from db_manager import Database
from tests.helpers import API, CW, SELLER, THREAD, sale_services
from tests.payloads import message_created

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_THREAD = f"{API}/messages/packs/2000002/sellers/{SELLER}"  # sale 2000002, buyer 10


@pytest.fixture
def s(settings, db, clock):
    services = sale_services(settings, db, clock)
    db.links.mark_created("pack", "2000002", 1.0, conversation_id=89, contact_id=6,
                          data={"buyer_id": 10, "blocked": False, "migrated": False})
    return services


def accept(s, conversation_id, message_id, content):
    status, _code, extra = accept_webhook(
        message_created(message_id=message_id, conversation_id=conversation_id, inbox_id=2, content=content),
        s.settings, s.db, s.clock())
    assert status == "accepted"
    return extra["reply_id"]


def chatwoot_ok():
    responses.patch(re.compile(rf"{CW}/conversations/\d+/messages/\d+"), json={})
    responses.get(re.compile(rf"{CW}/conversations/\d+/messages"), json={"payload": []})
    responses.post(re.compile(rf"{CW}/conversations/\d+/messages"), json={"id": 1})
    responses.post(re.compile(rf"{CW}/conversations/\d+/toggle_status"), json={})


def marks(message_id):
    return [json.loads(c.request.body)["status"] for c in responses.calls
            if c.request.method == "PATCH" and c.request.url.endswith(f"/messages/{message_id}")]


def test_the_newest_reply_deleted_leaves_its_id_unused_by_the_next(db):
    first = db.replies.accept(chatwoot_message_id=1, conversation_id=88, kind="message", target_id="2000001",
                              parts=[{"text": "a"}], now=1.0)
    db.links.mark_created("pack", "2000001", 1.0, conversation_id=88, contact_id=5, data={"buyer_id": 9})
    db.privacy.forget_buyer("9", 2.0)
    assert db.replies.get(first) is None
    second = db.replies.accept(chatwoot_message_id=2, conversation_id=89, kind="message", target_id="2000002",
                               parts=[{"text": "b"}], now=3.0)
    assert second > first
    # What follows a send of the deleted reply finds nothing to write to, and says so.
    assert not db.replies.mark_part_sent(first, 0, "m-1", 4.0)
    assert not db.replies.mark_delivered(first, 4.0)
    assert db.replies.get(second)["status"] == "pending" and db.replies.parts(second)[0]["text"] == "b"


@responses.activate
def test_a_buyer_erased_while_its_reply_is_sent_leaves_the_next_buyers_reply_pending_until_it_goes(s):
    mine = accept(s, 88, 9200, "Segue o codigo de rastreio.")
    theirs = {}

    def erased_while_sending(request):
        # `forget-buyer 9` runs beside the poller while the part is on its way, and the listener
        # accepts buyer 10's reply at that moment.
        s.db.privacy.forget_buyer("9", s.clock())
        theirs["id"] = accept(s, 89, 9300, "Sua nota fiscal esta anexada.")
        return 200, {}, json.dumps({"id": "m-erased"})

    responses.add_callback(responses.POST, THREAD, callback=erased_while_sending)
    responses.post(OTHER_THREAD, json={"id": "m-other"})
    chatwoot_ok()

    delivery.run_outbox(s)
    assert s.db.replies.get(mine) is None
    other = s.db.replies.get(theirs["id"])
    assert other["status"] == "pending" and other["id"] != mine
    assert s.db.replies.parts(other["id"])[0]["text"] == "Sua nota fiscal esta anexada."
    assert "delivered" not in marks(9300)

    delivery.run_outbox(s)
    sent = [json.loads(c.request.body) for c in responses.calls if c.request.url.startswith(OTHER_THREAD)]
    assert [(b["to"], b["text"]) for b in sent] == [({"user_id": 10}, "Sua nota fiscal esta anexada.")]
    assert s.db.replies.get(theirs["id"])["status"] == "delivered"
    assert s.db.replies.parts(theirs["id"])[0]["remote_id"] == "m-other"
    assert marks(9300) == ["delivered"]


def test_the_late_moderation_check_of_a_reply_accepted_after_an_erasure_is_not_skipped(s, clock, monkeypatch):
    read = []
    monkeypatch.setattr(sales, "sync_pack", lambda _s, pack_id, _seller: read.append(pack_id))
    first = s.db.replies.accept(chatwoot_message_id=9200, conversation_id=88, kind="message", target_id="2000001",
                                parts=[{"text": "a"}], now=clock())
    s.db.replies.mark_delivered(first, clock())
    for wait in (sales.MODERATION_CHECK_AFTER + 1, sales.MODERATION_RECHECK_AFTER):
        clock.advance(wait)
        sales.check_recent_replies(s, SELLER, skip=set())
    assert read == ["2000001", "2000001"]
    s.db.privacy.forget_buyer("9", clock())
    # Both rounds' keys were about the erased reply.
    assert not [k for k in (str(first), f"{first}:late") if s.db.links.get("moderation_check", k)]

    second = s.db.replies.accept(chatwoot_message_id=9300, conversation_id=89, kind="message", target_id="2000002",
                                 parts=[{"text": "b"}], now=clock())
    s.db.replies.mark_delivered(second, clock())
    for wait in (sales.MODERATION_CHECK_AFTER + 1, sales.MODERATION_RECHECK_AFTER):
        clock.advance(wait)
        sales.check_recent_replies(s, SELLER, skip=set())
    assert read[2:] == ["2000002", "2000002"]


def test_an_old_database_keeps_its_replies_and_gives_no_new_reply_an_id_it_ever_named(tmp_path):
    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    with open(os.path.join(ROOT, "tests", "schema_v10.sql")) as script:
        old.executescript(script.read())
    old.execute("INSERT INTO replies (id, chatwoot_message_id, conversation_id, kind, target_id, status,"
                " next_attempt_at, created_at, updated_at)"
                " VALUES (7, 70, 88, 'message', '2000001', 'sending', 1, 1, 1)")
    old.execute("INSERT INTO reply_parts (reply_id, seq, text, status) VALUES (7, 0, 'em voo', 'sending')")
    # Reply 12 was delivered and pruned; its late moderation check still names it.
    old.execute("INSERT INTO links (kind, external_id, status, created_at, updated_at)"
                " VALUES ('moderation_check', '12:late', 'created', 1, 1)")
    old.commit()
    old.close()

    db = Database(path).open()
    assert db.replies.get(7)["status"] == "sending"
    assert [(p["seq"], p["text"], p["status"]) for p in db.replies.parts(7)] == [(0, "em voo", "sending")]
    new = db.replies.accept(chatwoot_message_id=71, conversation_id=89, kind="message", target_id="2000002",
                            parts=[{"text": "nova"}], now=2.0)
    assert new > 12
    assert db.conn().execute("PRAGMA foreign_key_check").fetchall() == []


def test_an_erasure_keeps_of_the_sales_stray_sends_only_the_hashes_that_may_still_land(db):
    """A stray send's text hash stands for the bridge's own copy only within a day of its first attempt
    (own_parts.STRAY_LANDS_WITHIN); past it, it is what remains of a message to the erased buyer, and the
    erasure takes it (it stayed for the whole retention)."""
    from bridge.store.replies import record_stray
    from bridge.text import text_hash

    now = 10 * 86400.0
    db.links.mark_created("pack", "2000001", now - 3 * 86400, conversation_id=88, contact_id=5,
                          data={"buyer_id": 9})
    db.links.mark_created("pack", "2000002", now - 3 * 86400, conversation_id=89, contact_id=6,
                          data={"buyer_id": 10})
    with db.write() as conn:
        record_stray(conn, "message", "2000001", "Seu pedido saiu, João.", now - 2 * 86400, now - 2 * 86400)
        record_stray(conn, "message", "2000001", "Chega amanhã.", now - 600, now - 600)
        # The same text sent again by another reply an hour ago: its send may still land, within its own day.
        record_stray(conn, "message", "2000001", "Ok", now - 2 * 86400, now - 2 * 86400)
        record_stray(conn, "message", "2000001", "Ok", now - 3600, now - 3600)
        record_stray(conn, "message", "2000002", "Seu pedido saiu, Maria.", now - 2 * 86400, now - 2 * 86400)

    db.privacy.forget_buyer("9", now)

    assert db.replies.strays("message", "2000001") == {text_hash("Chega amanhã."): [now - 600],
                                                       text_hash("Ok"): [now - 3600]}
    assert db.replies.strays("message", "2000002") == {text_hash("Seu pedido saiu, Maria."): [now - 2 * 86400]}


def test_a_claim_part_in_flight_when_its_buyer_is_erased_leaves_its_texts_hash_as_a_sales_does(db):
    """Its send may still land after the erasure: known then as the bridge's own, never mirrored back into the
    claim's new conversation as a message the seller typed on the site."""
    from bridge.text import text_hash

    db.links.mark_created("claim", "5000001", 1.0, conversation_id=88, contact_id=5, data={"buyer_id": 9})
    reply = db.replies.accept(chatwoot_message_id=1, conversation_id=88, kind="claim", target_id="5000001",
                              parts=[{"text": "Vamos reembolsar hoje"}], now=10.0, receiver="complainant")
    db.replies.claim(reply, 10.0, 300)
    db.replies.mark_part_sending(reply, 0, 11.0)

    db.privacy.forget_buyer("9", 20.0)

    assert db.replies.strays("claim", "5000001") == {text_hash("Vamos reembolsar hoje"): [11.0]}


@responses.activate
def test_a_sale_message_whose_create_is_in_doubt_when_its_buyer_is_erased_leaves_no_row(s):
    """The sync had recorded its intent and lost the create's answer (soak seed 31001, message 5b498245 of
    sale 2000000130): the intent named only its conversation, the erasure finds a sale's messages by
    their sale, and the row outlived the buyer's erasure."""
    import requests

    from bridge.http import TransientError

    message = {"id": "b1", "from": {"user_id": 9}, "to": {"user_id": SELLER}, "text": "Chegou quebrado",
               "message_date": {"created": "2026-11-29T10:01:00.000Z", "read": None},
               "message_resources": [{"id": "2000001", "name": "orders"}]}
    responses.post(f"{CW}/conversations/88/messages", body=requests.exceptions.ReadTimeout("held"))
    with pytest.raises(TransientError):
        sales._mirror(s, 88, "2000001", message, "incoming")
    assert s.db.links.get("message", "b1") is not None

    s.db.privacy.forget_buyer("9", s.clock())

    assert s.db.links.get("message", "b1") is None
