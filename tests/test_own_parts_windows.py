"""Windows in which a message the bridge itself sent to a sale's thread must still be known as its own
when the thread is read (issue 18: own reply parts mirrored back as if typed on Mercado Livre's site)."""

import json

import pytest
import requests
import responses
from responses import matchers

from bridge.http import SETTLE
from bridge.replies import delivery
from bridge.sync import sales
from tests.helpers import API, CW, MARK, PEEK, SELLER, THREAD, sale_services


def message(mid, minute, sender=9, text=None):
    created = f"2026-11-29T10:{minute:02d}:00.000Z"
    return {"id": mid, "from": {"user_id": sender}, "to": {"user_id": 9 if sender == SELLER else SELLER},
            "text": text or f"texto {mid}", "message_date": {"created": created, "read": None},
            "message_resources": [{"id": "2000001", "name": "orders"}]}


def thread(*messages):
    return {"paging": {"total": len(messages), "offset": 0, "limit": 10}, "messages": list(messages),
            "conversation_status": {"status": "active"}}


def serve(page):
    responses.reset()
    made = iter(range(500, 600))
    for conversation in (88, 95):
        responses.add_callback(responses.POST, f"{CW}/conversations/{conversation}/messages",
                               callback=lambda _req: (200, {}, json.dumps({"id": next(made)})))
        responses.post(f"{CW}/conversations/{conversation}/toggle_status", json={})
    responses.get(THREAD, match=[matchers.query_param_matcher(PEEK)], json=page)
    responses.get(THREAD, match=[matchers.query_param_matcher(MARK)], json=page)
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/contacts/filter", json={"payload": []})
    responses.get(f"{CW}/contacts/6/conversations", json={"payload": []})
    responses.post(f"{CW}/conversations/filter", json={"payload": [], "meta": {"all_count": 0}})
    responses.post(f"{CW}/conversations", json={"id": 95})
    responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 9, "nickname": "ZEQ"}})


def mirrored_texts():
    return [json.loads(c.request.body).get("content") or "" for c in responses.calls
            if c.request.method == "POST" and c.request.url.endswith("/messages")]


@pytest.fixture
def s(settings, db, clock):
    return sale_services(settings, db, clock)


@responses.activate
def test_a_reply_delivered_after_the_last_read_of_its_thread_is_not_mirrored_back_once_its_buyer_is_erased(
        s, clock):
    """The thread was last read at b1; the agent's reply then went out (s1) and `forget-buyer 9`
    ran before any read of the thread saw it. When the buyer writes again, the new conversation
    gets b2, never s1 as if the seller had typed it on the site."""
    clock.now = sales.parse_date("2026-11-29T10:01:30.000Z")
    serve(thread(message("b1", 1)))
    sales.sync_pack(s, "2000001", SELLER)

    reply_id = s.db.replies.accept(chatwoot_message_id=9001, conversation_id=88, kind="message",
                                   target_id="2000001", parts=[{"text": "Segue o rastreio."}], now=clock())
    clock.now = sales.parse_date("2026-11-29T10:02:00.000Z")
    s.db.replies.mark_part_sending(reply_id, 0, clock())
    clock.advance(1)
    s.db.replies.mark_part_sent(reply_id, 0, "s1", clock())
    s.db.replies.mark_delivered(reply_id, clock())

    clock.advance(30)
    s.db.privacy.forget_buyer("9", clock())
    clock.now = sales.parse_date("2026-11-29T10:05:00.000Z")
    serve(thread(message("b1", 1), message("s1", 2, sender=SELLER, text="Segue o rastreio."),
                 message("b2", 4)))
    sales.sync_pack(s, "2000001", SELLER)
    shown = mirrored_texts()
    assert shown and not [t for t in shown if "Segue o rastreio" in t or "fora do Chatwoot" in t], shown


def send_times_out():
    responses.reset()
    responses.post(THREAD, body=requests.exceptions.ReadTimeout("held by Mercado Livre"))


@responses.activate
def test_a_part_held_by_mercado_livre_past_the_settle_and_sent_again_is_not_mirrored_back_when_the_held_copy_lands(
        s, clock):
    """The send's answer is lost and Mercado Livre holds it past the settle: the look finds nothing, the
    part goes again (s2, by design). The held copy (s1) lands afterwards: it is the bridge's own
    part too, never a message the seller typed on the site."""
    clock.now = sales.parse_date("2026-11-29T10:01:30.000Z")
    serve(thread(message("b1", 1)))
    sales.sync_pack(s, "2000001", SELLER)
    reply_id = s.db.replies.accept(chatwoot_message_id=9001, conversation_id=88, kind="message",
                                   target_id="2000001", parts=[{"text": "Segue o rastreio."}], now=clock())
    clock.now = sales.parse_date("2026-11-29T10:02:00.000Z")
    send_times_out()
    assert delivery.deliver(s, reply_id) == "retry"

    clock.advance(2 * SETTLE)
    responses.reset()
    responses.get(THREAD, json=thread(message("b1", 1)))
    responses.post(THREAD, json={"id": "s2"})
    assert delivery.deliver(s, reply_id) == "delivered"

    clock.now = sales.parse_date("2026-11-29T10:06:00.000Z")
    serve(thread(message("b1", 1), message("s2", 4, sender=SELLER, text="Segue o rastreio."),
                 message("s1", 4, sender=SELLER, text="Segue o rastreio."), message("b2", 5)))
    sales.sync_pack(s, "2000001", SELLER)
    assert mirrored_texts() == ["texto b2"]


@responses.activate
def test_a_part_in_flight_when_its_buyer_was_erased_is_not_mirrored_back_when_it_lands_later(s, clock):
    """`forget-buyer 9` runs while the part's send is held by Mercado Livre (its answer lost): the reply
    and its text are gone. The send lands after the erasure; when the buyer writes again, the new
    conversation gets b2 only, not the agent's erased reply as a message typed on the site."""
    clock.now = sales.parse_date("2026-11-29T10:01:30.000Z")
    serve(thread(message("b1", 1)))
    sales.sync_pack(s, "2000001", SELLER)
    reply_id = s.db.replies.accept(chatwoot_message_id=9001, conversation_id=88, kind="message",
                                   target_id="2000001", parts=[{"text": "Segue o rastreio."}], now=clock())
    clock.now = sales.parse_date("2026-11-29T10:02:00.000Z")
    send_times_out()
    assert delivery.deliver(s, reply_id) == "retry"
    clock.advance(10)
    s.db.privacy.forget_buyer("9", clock())
    assert s.db.replies.get(reply_id) is None

    clock.now = sales.parse_date("2026-11-29T10:06:00.000Z")
    serve(thread(message("b1", 1), message("s1", 4, sender=SELLER, text="Segue  o rastreio."), message("b2", 5)))
    sales.sync_pack(s, "2000001", SELLER)
    assert mirrored_texts() == ["texto b2"]


@responses.activate
def test_a_part_whose_send_answer_names_no_message_id_is_not_mirrored_back(s, clock):
    """Mercado Livre accepted the send but its answer carried no message id (a shape the bridge does not
    know): the part is delivered with no id to recognize it by. Its text's hash stands in."""
    clock.now = sales.parse_date("2026-11-29T10:01:30.000Z")
    serve(thread(message("b1", 1)))
    sales.sync_pack(s, "2000001", SELLER)
    reply_id = s.db.replies.accept(chatwoot_message_id=9001, conversation_id=88, kind="message",
                                   target_id="2000001", parts=[{"text": "Segue o rastreio."}], now=clock())
    clock.now = sales.parse_date("2026-11-29T10:02:00.000Z")
    responses.reset()
    responses.post(THREAD, status=201, json={"status": "ok"})
    assert delivery.deliver(s, reply_id) == "delivered"

    clock.now = sales.parse_date("2026-11-29T10:06:00.000Z")
    serve(thread(message("b1", 1), message("s1", 2, sender=SELLER, text="Segue o rastreio."), message("b2", 5)))
    sales.sync_pack(s, "2000001", SELLER)
    assert mirrored_texts() == ["texto b2"]


def test_a_stray_send_stands_for_a_seller_message_with_its_text_only_from_its_first_attempt_to_a_day_after():
    from bridge.rules import own_parts
    from bridge.text import text_hash
    since = sales.parse_date("2026-11-29T10:02:00.000Z")
    strays = {text_hash("Ok, obrigado!"): since}
    assert own_parts.sale_stray_copy(message("s1", 3, sender=SELLER, text="Ok,  obrigado!"), SELLER, strays)
    assert not own_parts.sale_stray_copy(message("b1", 3, text="Ok, obrigado!"), SELLER, strays)  # the buyer's
    assert not own_parts.sale_stray_copy(message("s0", 0, sender=SELLER, text="Ok, obrigado!") | {
        "message_date": {"created": "2026-11-29T09:00:00.000Z"}}, SELLER, strays)  # typed before it
    assert not own_parts.sale_stray_copy(message("s9", 0, sender=SELLER, text="Ok, obrigado!") | {
        "message_date": {"created": "2026-12-01T10:00:00.000Z"}}, SELLER, strays)  # typed days after


def test_a_stray_send_a_day_after_another_of_the_same_text_stands_for_its_own_copy(db):
    """Two sends of "Ok" to the sale may each still land: the second, a day after the first, lands within a
    day of its own first attempt. Kept only as the earliest of the two, its copy was past that window and
    mirrored back as a message the seller typed on the site."""
    from bridge.rules import own_parts
    from bridge.store.replies import record_stray
    first = sales.parse_date("2026-11-28T09:00:00.000Z")
    second = sales.parse_date("2026-11-29T08:00:00.000Z")
    with db.write() as conn:
        record_stray(conn, "message", "2000001", "Ok", first, first, owner="1:0")
        record_stray(conn, "message", "2000001", "Ok", second, second, owner="2:0")
    landed = message("s1", 3, sender=SELLER, text="Ok")  # 2026-11-29T10:03, after the first one's day
    assert own_parts.sale_stray_copy(landed, SELLER, db.replies.strays("message", "2000001"))


@responses.activate
def test_a_stray_send_of_a_sale_still_going_is_known_as_the_bridges_after_the_retention_window(s, clock):
    """A part accepted with no message id left its text's hash (s1 landed, unknown to the bridge). The sale goes
    on past RETENTION_DAYS (minimum 7): retention dropped the hash though the sale keeps all its rows, and
    the next read of the thread mirrored s1 back as a message the seller typed on the site."""
    from bridge.store.replies import record_stray
    sent = sales.parse_date("2026-11-29T10:02:00.000Z")
    with s.db.write() as conn:
        record_stray(conn, "message", "2000001", "Segue o rastreio.", sent, sent, owner="1:0")
    clock.now = sent + 8 * 86400
    s.db.links.update("pack", "2000001", clock(), data={"buyer_id": 9, "blocked": False, "migrated": False})

    s.db.privacy.apply_retention(clock(), 7)

    serve(thread(message("s1", 2, sender=SELLER, text="Segue o rastreio."), message("b2", 5)))
    sales.sync_pack(s, "2000001", SELLER)
    assert mirrored_texts() == ["texto b2"]


def test_retention_drops_a_stray_send_once_its_sale_has_no_rows(db):
    from bridge.store.replies import record_stray
    with db.write() as conn:
        record_stray(conn, "message", "2000009", "Segue o rastreio.", 1000.0, 1000.0, owner="1:0")
    db.privacy.apply_retention(1000.0 + 8 * 86400, 7)
    assert db.replies.strays("message", "2000009") == {}
