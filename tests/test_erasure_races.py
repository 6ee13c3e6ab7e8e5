"""An erasure (`forget-buyer`) run beside the poller while the sync is creating that buyer's things in
Chatwoot: what the sync holds in memory never writes the erased buyer back into the database."""

import json

import pytest
import responses
from responses import matchers

from bridge.http import TransientError
from bridge.sync import questions as sync_questions
from bridge.sync import sales
from tests.helpers import API, CW, MARK, PEEK, THREAD, authorized_services, sale_services

QUESTION = {"id": 12, "status": "UNANSWERED", "item_id": "MLB1", "text": "Tem azul?", "from": {"id": 9},
            "seller_id": 555}


@pytest.fixture
def s(settings, db, clock):
    return authorized_services(settings, db, clock)


def buyer_rows(db, buyer_id="9"):
    return db.all("SELECT kind, external_id, status FROM links WHERE kind = 'buyer' AND external_id = ?"
                  " OR CAST(json_extract(data, '$.buyer_id') AS TEXT) = ? OR contact_id = 5", (buyer_id, buyer_id))


@responses.activate
def test_a_question_erased_while_its_first_message_is_made_is_not_recorded_again(s, clock):
    inbox = s.settings.chatwoot_questions_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=5, data={"inboxes": [inbox]})
    responses.post(f"{CW}/conversations", json={"id": 77})

    def erased_in_flight(_request):
        s.db.privacy.forget_buyer("9", clock())  # `forget-buyer 9`, beside the poller
        return 200, {}, json.dumps({"id": 701})

    responses.add_callback(responses.POST, f"{CW}/conversations/77/messages", callback=erased_in_flight)
    with pytest.raises(TransientError):
        sync_questions.create_question(s, QUESTION, None, "ZEQ")
    assert buyer_rows(s.db) == []
    assert s.db.links.get("question", "12") is None
    assert s.db.watermarks.closed("question") == {"12"}


@responses.activate
def test_a_question_left_half_made_while_its_buyers_contact_was_being_found_again_is_erased(s, clock):
    """The buyer's contact was deleted in Chatwoot: the question's conversation could not be made
    (404), the buyer's row went back to pending without a contact, and making the contact again
    failed. The question's row, still pending, names only the deleted contact."""
    inbox = s.settings.chatwoot_questions_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=20, data={"inboxes": [inbox]})
    responses.post(f"{CW}/conversations", status=404, json={"error": "Resource could not be found"})
    responses.post(f"{CW}/contacts", status=400, json={"message": "invalid"})
    with pytest.raises(Exception):  # noqa: B017 — whatever stopped it, the row is left pending
        sync_questions.create_question(s, QUESTION, None, "ZEQ")
    assert s.db.links.get("question", "12")["status"] == "pending"

    s.db.privacy.forget_buyer("9", clock())
    assert buyer_rows(s.db) == []
    assert s.db.links.get("question", "12") is None
    assert s.db.watermarks.closed("question") == {"12"}


@responses.activate
def test_a_listed_question_erased_before_its_turn_is_not_shown_again(s, clock):
    """The poll lists the buyer's question (half made by an earlier attempt) before `forget-buyer`
    runs; by the time its turn comes, the erasure closed it: it is never shown again."""
    inbox = s.settings.chatwoot_questions_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=5, data={"inboxes": [inbox]})
    s.db.links.record_intent("question", "12", clock(), contact_id=5, data={"buyer_id": 9})
    responses.get(f"{API}/questions/search", json={"total": 1, "limit": 50, "questions": [QUESTION]})

    def erased_meanwhile(_request):
        s.db.privacy.forget_buyer("9", clock())  # `forget-buyer 9`, beside the poller
        return 200, {}, json.dumps([{"code": 200, "body": {"id": "MLB1", "title": "Caneca"}}])

    responses.add_callback(responses.GET, f"{API}/items", callback=erased_meanwhile)
    responses.get(f"{API}/users/9", json={"id": 9, "nickname": "ZEQ"})
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/conversations", json={"id": 77})
    responses.post(f"{CW}/conversations/77/messages", json={"id": 701})

    sync_questions.sync_questions(s)
    assert not [c for c in responses.calls if c.request.url.startswith(f"{CW}/")]
    assert buyer_rows(s.db) == [] and s.db.links.get("question", "12") is None


@responses.activate
def test_a_sale_whose_conversation_an_erasure_deleted_mid_sync_is_not_made_again_from_memory(settings, db, clock):
    """`forget-buyer 9 --chatwoot` deletes the sale's conversation while the poller mirrors the
    buyer's message into it: the poller must not make a new contact and conversation for the
    erased buyer from the thread it holds in memory."""
    s = sale_services(settings, db, clock)
    inbox = s.settings.chatwoot_messages_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=5, data={"inboxes": [inbox]})
    created = "2026-11-29T10:01:00.000Z"
    message = {"id": "b1", "from": {"user_id": 9}, "to": {"user_id": 555}, "text": "Chegou quebrado",
               "message_date": {"created": created, "read": None},
               "message_resources": [{"id": "2000001", "name": "orders"}]}
    responses.get(THREAD, json={"paging": {"total": 1, "offset": 0, "limit": 10}, "messages": [message],
                                "conversation_status": {"status": "active"}})

    def erased_in_chatwoot_meanwhile(_request):
        s.db.privacy.forget_buyer("9", clock())
        return 404, {}, json.dumps({"error": "Resource could not be found"})

    responses.add_callback(responses.POST, f"{CW}/conversations/88/toggle_status",
                           callback=erased_in_chatwoot_meanwhile)
    responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 9, "nickname": "ZEQ"}})
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/conversations", json={"id": 95})
    responses.post(f"{CW}/conversations/95/messages", json={"id": 950})

    with pytest.raises(TransientError):
        sales.sync_pack(s, "2000001", 555)
    assert not [c for c in responses.calls if c.request.method == "POST" and c.request.url in
                (f"{CW}/contacts", f"{CW}/conversations")]
    assert buyer_rows(s.db) == [] and s.db.links.get("pack", "2000001") is None


@responses.activate
def test_a_sale_message_mirrored_by_a_sync_that_failed_after_it_is_not_mirrored_again_after_an_erasure(
        settings, db, clock):
    """The sync mirrored b2, then marking the thread read failed: the thread's mark still says b1.
    An erasure then closes the sale at that mark: b2, already in Chatwoot, must not come back."""
    s = sale_services(settings, db, clock)

    def message(mid, minute):
        created = f"2026-11-29T10:{minute:02d}:00.000Z"
        return {"id": mid, "from": {"user_id": 9}, "to": {"user_id": 555}, "text": f"texto {mid}",
                "message_date": {"created": created, "read": None},
                "message_resources": [{"id": "2000001", "name": "orders"}]}

    def thread(*messages):
        return {"paging": {"total": len(messages), "offset": 0, "limit": 10}, "messages": list(messages),
                "conversation_status": {"status": "active"}}

    created = iter(range(500, 600))

    def serve(peek, marked=True):
        responses.reset()
        responses.add_callback(responses.POST, f"{CW}/conversations/88/messages",
                               callback=lambda _req: (200, {}, json.dumps({"id": next(created)})))
        responses.post(f"{CW}/conversations/88/toggle_status", json={})
        responses.get(THREAD, match=[matchers.query_param_matcher(PEEK)], json=peek)
        responses.get(THREAD, match=[matchers.query_param_matcher(MARK)], json=peek, status=200 if marked else 400)
        responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
        responses.post(f"{CW}/conversations", json={"id": 95})
        responses.post(f"{CW}/conversations/95/messages", json={"id": 950})
        responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 9, "nickname": "ZEQ"}})

    serve(thread(message("b1", 1)))
    sales.sync_pack(s, "2000001", 555)

    serve(thread(message("b1", 1), message("b2", 2)), marked=False)
    with pytest.raises(Exception):  # noqa: B017 — the mark-read failed after b2 went in
        sales.sync_pack(s, "2000001", 555)
    assert s.db.links.get("message", "b2")["status"] == "created"

    clock.advance(60)
    s.db.privacy.forget_buyer("9", clock())
    serve(thread(message("b1", 1), message("b2", 2)))
    sales.sync_pack(s, "2000001", 555)
    assert not [c for c in responses.calls if c.request.method == "POST" and c.request.url in
                (f"{CW}/contacts", f"{CW}/conversations", f"{CW}/conversations/95/messages")]


@responses.activate
def test_a_sale_message_mirrored_while_the_sale_was_erased_opens_no_empty_conversation_later(settings, db, clock):
    """`forget-buyer 9` runs while the poller mirrors b2 into the sale's conversation: b2 is in
    Chatwoot, but after the erasure's mark. The next poll has nothing to show: it must not open
    a new, empty conversation (and contact) for the erased buyer."""
    s = sale_services(settings, db, clock)

    def message(mid, minute):
        created = f"2026-11-29T10:{minute:02d}:00.000Z"
        return {"id": mid, "from": {"user_id": 9}, "to": {"user_id": 555}, "text": f"texto {mid}",
                "message_date": {"created": created, "read": None},
                "message_resources": [{"id": "2000001", "name": "orders"}]}

    def thread(*messages):
        return {"paging": {"total": len(messages), "offset": 0, "limit": 10}, "messages": list(messages),
                "conversation_status": {"status": "active"}}

    s.db.links.mark_created("message", "b1", clock(), conversation_id=88, message_id=499,
                            data={"pack_id": "2000001", "direction": "incoming",
                                  "at": sales.parse_date("2026-11-29T10:01:00.000Z")})
    s.db.watermarks.record_thread("2000001", "b1", sales.parse_date("2026-11-29T10:01:00.000Z"), clock())

    def erased_while_mirrored(_request):
        s.db.privacy.forget_buyer("9", clock())
        return 200, {}, json.dumps({"id": 500})

    both = thread(message("b1", 1), message("b2", 2))
    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages", callback=erased_while_mirrored)
    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    responses.get(THREAD, match=[matchers.query_param_matcher(PEEK)], json=both)
    responses.get(THREAD, match=[matchers.query_param_matcher(MARK)], json=both)
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/conversations", json={"id": 95})
    responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 9, "nickname": "ZEQ"}})
    sales.sync_pack(s, "2000001", 555)

    clock.advance(60)
    sales.sync_pack(s, "2000001", 555)
    assert not [c for c in responses.calls if c.request.method == "POST" and c.request.url in
                (f"{CW}/contacts", f"{CW}/conversations")]
    assert s.db.links.get("pack", "2000001") is None and s.db.links.get("buyer", "9") is None


@responses.activate
def test_a_buyer_erased_while_their_contact_is_made_is_not_recorded_again(s, clock):
    """The question (half made before) waits for its buyer's contact; `forget-buyer 9` runs while
    Chatwoot makes it. Nothing of the buyer may be left in the bridge's database afterwards."""
    s.db.links.record_intent("question", "12", clock(), data={"buyer_id": 9})

    def erased_in_flight(_request):
        s.db.privacy.forget_buyer("9", clock())
        return 200, {}, json.dumps({"payload": {"contact": {"id": 6}}})

    responses.add_callback(responses.POST, f"{CW}/contacts", callback=erased_in_flight)
    responses.post(f"{CW}/conversations", json={"id": 77})
    responses.post(f"{CW}/conversations/77/messages", json={"id": 701})
    with pytest.raises(TransientError):
        sync_questions.create_question(s, QUESTION, None, "ZEQ", sync_questions.NOT_CLOSED)
    assert buyer_rows(s.db) == [] and s.db.links.get("question", "12") is None
