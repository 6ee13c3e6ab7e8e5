"""The safety-net sweep: one sale whose thread keeps failing must not stop the others from being swept."""

import json
import time

import pytest
import responses
from responses import matchers

from bridge.services import build_services
from bridge.sync import sales as sync_messages

API = "https://api.meli.test"
CW = "https://chat.example.test/api/v1/accounts/1"
GOOD = f"{API}/messages/packs/2000001/sellers/555"
BAD = f"{API}/messages/packs/3000001/sellers/555"


@pytest.fixture
def s(settings, db):
    services = build_services(settings, db, sleep=lambda _s: None)
    now = time.time()
    db.auth.store_authorized(555, "LOJA", "AT-1", "RT-1", now + 21600, now)
    db.links.mark_created("pack", "2000001", 1.0, conversation_id=88, contact_id=5,
                          data={"buyer_id": 9, "blocked": False, "migrated": False})
    db.links.mark_created("message", "b0", 1.0, conversation_id=88, message_id=600)
    db.threads.mark_synced("2000001", now - 3600, 1, "b0", changed=True)
    # A sale never swept yet comes first in the sweep's order.
    db.threads.record_discovered({"3000001": now})
    return services


def read_on_site(mid, text, minute):
    created = f"2026-11-29T10:{minute:02d}:00.000Z"
    return {"id": mid, "from": {"user_id": 9}, "to": {"user_id": 555}, "text": text,
            "message_date": {"created": created, "read": created},
            "message_resources": [{"id": "2000001", "name": "orders"}]}


@pytest.mark.parametrize("broken", ["answers 500", "answers nonsense"])
@responses.activate
def test_a_thread_that_keeps_failing_does_not_stop_the_sweep_of_the_other_sales(s, broken):
    responses.get(f"{API}/orders/search", json={"results": [], "paging": {"total": 0}})
    if broken == "answers 500":
        responses.get(BAD, status=500, json={"message": "internal"})
    else:
        responses.get(BAD, json=["not", "a", "thread"])
    messages = [read_on_site("b0", "Oi", 1), read_on_site("b1", "Lido no app", 2)]
    responses.get(GOOD, match=[matchers.query_param_matcher(
        {"tag": "post_sale", "mark_as_read": "false", "limit": "1", "offset": "0"})],
        json={"paging": {"total": 2}, "messages": messages[:1]})
    responses.get(GOOD, match=[matchers.query_param_matcher(
        {"tag": "post_sale", "mark_as_read": "false", "limit": "10", "offset": "0"})],
        json={"paging": {"total": 2}, "messages": messages})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 601})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    for _poll in range(2):
        sync_messages.sweep_threads(s, 555)

    mirrored = [json.loads(c.request.body)["content"] for c in responses.calls
                if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"]
    assert mirrored == ["Lido no app"]
    assert s.db.links.get("message", "b1")["status"] == "created"


@responses.activate
def test_an_interrupted_mark_read_on_a_thread_that_breaks_does_not_stop_the_unread_poll(s):
    s.db.threads.begin_marking("3000001", time.time())
    responses.get(BAD, json=["not", "a", "thread"])
    responses.get(f"{API}/messages/unread", json={"results": [
        {"resource": "/packs/2000001/sellers/555", "count": 1}]})
    unread = dict(read_on_site("b1", "Ainda não chegou", 2), message_date={
        "created": "2026-11-29T10:02:00.000Z", "read": None})
    responses.get(GOOD, match=[matchers.query_param_matcher(
        {"tag": "post_sale", "mark_as_read": "false", "limit": "10", "offset": "0"})],
        json={"paging": {"total": 2}, "messages": [read_on_site("b0", "Oi", 1), unread]})
    responses.get(GOOD, match=[matchers.query_param_matcher({"tag": "post_sale", "limit": "10", "offset": "0"})],
                  json={"paging": {"total": 2}, "messages": [read_on_site("b0", "Oi", 1), unread]})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 601})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    responses.get(f"{API}/orders/search", json={"results": [], "paging": {"total": 0}})

    sync_messages.sync_messages(s)

    assert s.db.links.get("message", "b1")["status"] == "created"
    assert s.db.threads.get("3000001")["marking_since"] is not None  # still owed its re-sync


@responses.activate
def test_a_message_repeated_by_a_page_shift_is_not_counted_twice_so_the_sweep_still_finds_the_new_one(s):
    m = {i: read_on_site(f"m{i}", f"mensagem {i}", i) for i in range(1, 13)}
    before = [m[i] for i in range(11, 0, -1)]  # newest first
    after = [m[i] for i in range(12, 0, -1)]
    # m12 arrives between our two page reads and pushes m2 onto the second page again.
    pages = iter([(11, before[:10]), (12, [m[2], m[1]])])

    def thread_page(request):
        offset, limit = int(request.params["offset"]), int(request.params["limit"])
        total, messages = next(pages, (12, after[offset:offset + limit]))
        return 200, {}, json.dumps({"paging": {"total": total}, "messages": messages})

    responses.add_callback(responses.GET, GOOD, callback=thread_page)
    created = iter(range(900, 1000))
    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages",
                           callback=lambda _req: (200, {}, json.dumps({"id": next(created)})))
    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    sync_messages.sync_pack(s, "2000001", 555)
    assert s.db.links.get("message", "m12") is None

    # The seller read m12 on the site: only the sweep's count can reveal it.
    assert sync_messages._sweep_one(s, s.db.threads.get("2000001"), 555) == 1
    assert s.db.links.get("message", "m12")["status"] == "created"


@responses.activate
def test_a_quiet_sweep_does_not_clear_a_mark_read_another_thread_has_in_flight(s):
    row = s.db.threads.get("2000001")  # read by the sweep before the notification's sync started marking
    s.db.threads.begin_marking("2000001", time.time())
    responses.get(GOOD, json={"paging": {"total": 1}, "messages": [read_on_site("b0", "Oi", 1)]})
    assert sync_messages._sweep_one(s, row, 555) == 0
    # Were the marking thread killed now, the flag is what makes the next poll finish its work.
    assert s.db.threads.marking() == ["2000001"]


@responses.activate
def test_a_moderation_check_on_a_failing_thread_does_not_stop_the_sweep(s):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    now = time.time()
    s.db.links.mark_created("pack", "3000001", 1.0, conversation_id=89, contact_id=5,
                            data={"buyer_id": 9, "blocked": False, "migrated": False})
    accept_webhook(message_created(message_id=9600, conversation_id=89, inbox_id=2, content="Ok"),
                   s.settings, s.db, now - 400)
    reply = s.db.replies.active_for_target("message", "3000001")[0]
    s.db.replies.claim(reply["id"], now - 400, 300)
    s.db.replies.mark_part_sent(reply["id"], 0, "m-ok", now - 300)
    s.db.replies.mark_delivered(reply["id"], now - 300)
    responses.get(f"{API}/messages/unread", json={"results": []})
    responses.get(BAD, status=500, json={"message": "internal"})
    responses.get(f"{API}/orders/search", json={"results": [], "paging": {"total": 0}})

    counts = sync_messages.sync_messages(s)

    assert any(c.request.url.startswith(f"{API}/orders/search") for c in responses.calls)
    assert counts["moderation_checks"] == 0
    assert s.db.links.get("moderation_check", reply["id"])["status"] == "pending"  # checked again next poll
