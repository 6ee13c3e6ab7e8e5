"""Responses lost on the way back: a call that may have been applied is never repeated blindly."""

import json
import time

import pytest
import requests
import responses
from responses import matchers

from bridge.http import PermanentError, TransientError
from bridge.sync import ensure
from bridge.sync import sales as sync_messages
from bridge.sync.contacts import is_gone
from tests.fakes.fake_meli import in_old_shape
from tests.helpers import API, CW, MARK, PEEK, THREAD, sale_services


@pytest.fixture
def s(settings, db):
    return sale_services(settings, db)


def buyer_message(mid, text):
    created = "2026-11-29T10:01:00.000Z"
    return {"id": mid, "from": {"user_id": 9}, "to": {"user_id": 555}, "text": text,
            "message_date": {"created": created, "read": None},
            "message_resources": [{"id": "2000001", "name": "orders"}]}


def thread_shows(*messages, marked=True):
    """The sale's thread holds `messages`: read, and (`marked`) read again when marked read."""
    body = {"paging": {"total": len(messages)}, "messages": list(messages)}
    responses.get(THREAD, match=[matchers.query_param_matcher(PEEK)], json=body)
    if marked:
        responses.get(THREAD, match=[matchers.query_param_matcher(MARK)], json=body)


def posts_to(url):
    return [c for c in responses.calls if c.request.method == "POST" and c.request.url == url]


@responses.activate
def test_a_buyer_message_whose_creation_timed_out_is_not_created_twice_in_chatwoot(s):
    message = buyer_message("b1", "Chegou quebrado")
    thread_shows(message)
    # Chatwoot created the message but its answer never came back (a read timeout).
    responses.post(f"{CW}/conversations/88/messages", body=requests.exceptions.ReadTimeout("slow"))
    responses.post(f"{CW}/conversations/88/messages", json={"id": 700})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    responses.get(f"{CW}/conversations/88/messages",
                  json={"payload": [{"id": 700, "source_id": "meli:message:b1"}]})

    with pytest.raises(TransientError):
        sync_messages.sync_pack(s, "2000001", 555)
    assert len(posts_to(f"{CW}/conversations/88/messages")) == 1
    assert s.db.links.get("message", "b1")["status"] == "pending"

    # Next poll: the intent is found in Chatwoot by its source id, not created again.
    assert sync_messages.sync_pack(s, "2000001", 555) == 1
    assert len(posts_to(f"{CW}/conversations/88/messages")) == 1
    assert s.db.links.get("message", "b1")["message_id"] == 700


@responses.activate
def test_a_message_creation_refused_with_429_is_retried_at_once(s):
    responses.post(f"{CW}/conversations/88/messages", status=429, json={"message": "slow down"})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 701})
    created = s.chatwoot.create_message(88, "Oi", message_type="incoming", source_id="meli:message:x")
    assert created["id"] == 701
    assert [json.loads(c.request.body)["source_id"] for c in posts_to(f"{CW}/conversations/88/messages")] \
        == ["meli:message:x"] * 2


@responses.activate
def test_a_conversation_creation_that_timed_out_is_not_repeated_in_the_same_call(s):
    responses.post(f"{CW}/conversations", body=requests.exceptions.ReadTimeout("slow"))
    responses.post(f"{CW}/conversations", json={"id": 90})
    with pytest.raises(TransientError):
        s.chatwoot.create_conversation(source_id="meli:buyer:9", inbox_id=2, contact_id=5, custom_attributes={},
                                       additional_attributes={})
    assert len(posts_to(f"{CW}/conversations")) == 1


def buyer_file_message(mid, text, filename):
    return dict(buyer_message(mid, text), message_attachments=[
        {"filename": filename, "original_filename": "foto.png", "type": "image/png", "size": 10}])


@responses.activate
def test_a_buyer_file_mercado_livre_no_longer_serves_does_not_hold_back_the_sales_messages(s):
    first = buyer_file_message("b1", "Segue a foto", "gone-123.png")
    second = buyer_message("b2", "Alguém aí?")
    thread_shows(first, second)
    responses.get(f"{API}/messages/attachments/gone-123.png", status=404, json={"message": "not found"})
    created = iter(range(800, 810))
    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages",
                           callback=lambda _req: (200, {}, json.dumps({"id": next(created)})))
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    assert sync_messages.sync_pack(s, "2000001", 555) == 2
    contents = [json.loads(c.request.body)["content"] for c in posts_to(f"{CW}/conversations/88/messages")]
    assert contents[0].startswith("Segue a foto") and "foto.png" in contents[0]
    assert contents[1] == "Alguém aí?"
    assert (s.db.links.get("message", "b1")["status"] == "created"
            and s.db.links.get("message", "b2")["status"] == "created")
    # Mercado Livre's 404 said nothing about the Chatwoot conversation: the sale stays in it.
    assert not posts_to(f"{CW}/conversations") and s.db.links.get("pack", "2000001")["conversation_id"] == 88


@responses.activate
def test_a_404_from_mercado_livre_is_not_taken_for_a_deleted_chatwoot_conversation(s):
    responses.get(f"{API}/messages/attachments/x.png", status=404, json={"message": "not found"})
    responses.get(f"{CW}/conversations/88", status=404, json={"error": "not found"})
    with pytest.raises(PermanentError) as from_meli:
        s.meli.download_attachment("x.png")
    with pytest.raises(PermanentError) as from_chatwoot:
        s.chatwoot.conversation(88)
    assert not is_gone(from_meli.value) and is_gone(from_chatwoot.value)


@responses.activate
def test_a_file_the_seller_sent_on_the_site_is_mirrored_after_a_failed_reply_left_a_part_half_sent(s):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    accept_webhook(message_created(message_id=9300, conversation_id=88, inbox_id=2, content="Ok"),
                   s.settings, s.db, time.time())
    reply = s.db.replies.active_for_target("message", "2000001")[0]
    s.db.replies.claim(reply["id"], time.time(), 300)
    s.db.replies.mark_part_sending(reply["id"], 0, time.time())
    s.db.replies.mark_failed(reply["id"], "recusado", "nota", time.time())  # finished: nothing of it is in flight
    typed = {"id": "m-file", "from": {"user_id": 555}, "to": {"user_id": 9}, "text": "",
             "message_date": {"created": "2026-11-29T10:05:00.000Z", "read": None},
             "message_attachments": [{"filename": "nf-1.pdf", "original_filename": "nota.pdf", "size": 3}]}
    thread_shows(typed, marked=False)
    responses.get(f"{API}/messages/attachments/nf-1.pdf", body=b"%PDF", content_type="application/pdf")
    responses.post(f"{CW}/conversations/88/messages", json={"id": 702})

    assert sync_messages.sync_pack(s, "2000001", 555) == 1
    assert s.db.links.get("message", "m-file")["status"] == "created"
    assert s.db.threads.get("2000001")["total"] == 1


@responses.activate
def test_a_reply_moderated_after_its_first_check_is_still_shown_failed_to_the_agent(s):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    now = time.time()
    accept_webhook(message_created(message_id=9400, conversation_id=88, inbox_id=2, content="Me chama no zap"),
                   s.settings, s.db, now - 1300)
    reply = s.db.replies.active_for_target("message", "2000001")[0]
    s.db.replies.claim(reply["id"], now - 1300, 300)
    s.db.replies.mark_part_sent(reply["id"], 0, "m-r", now - 1200)
    s.db.replies.mark_delivered(reply["id"], now - 1200)
    # Checked three minutes after delivery: still clean then.
    s.db.links.mark_created("moderation_check", reply["id"], now - 1000)
    moderated = {"id": "m-r", "from": {"user_id": 555}, "to": {"user_id": 9}, "text": "Me chama no zap",
                 "status": "moderated", "message_moderation": {"status": "rejected", "reason": "PERSONAL_DATA"},
                 "message_date": {"created": "2026-11-29T10:05:00.000Z", "read": None}}
    thread_shows(moderated, marked=False)
    responses.patch(f"{CW}/conversations/88/messages/9400", json={})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 703})

    assert sync_messages.check_recent_replies(s, 555, set()) == 1
    patched = [json.loads(c.request.body) for c in responses.calls if c.request.method == "PATCH"]
    assert patched and patched[0]["status"] == "failed"
    assert s.db.links.get("moderation", "m-r")["status"] == "created"
    assert sync_messages.check_recent_replies(s, 555, set()) == 0  # once per round


@responses.activate
def test_a_lost_send_at_the_end_of_a_long_thread_is_found_instead_of_sent_again(s):
    from bridge.replies import delivery
    since = time.time()
    old = [dict(buyer_message(f"o{i}", f"antiga {i}"), message_date={"created": "2026-01-01T10:00:00.000Z"})
           for i in range(249)]
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(since + 5))
    ours = {"id": "m-late", "from": {"user_id": 555}, "to": {"user_id": 9}, "text": "Enviado hoje",
            "message_date": {"created": created}}
    everything = old + [ours]  # oldest first, as Mercado Livre lists a thread

    def thread_page(request):
        offset, limit = int(request.params["offset"]), int(request.params["limit"])
        return 200, {}, json.dumps({"paging": {"total": len(everything)},
                                    "messages": everything[offset:offset + limit]})

    responses.add_callback(responses.GET, THREAD, callback=thread_page)
    part = {"text": "Enviado hoje", "attachments": []}
    assert delivery._find_sent_part(s, "2000001", 555, part, since) == "m-late"


@responses.activate
def test_a_lost_send_is_found_when_mercado_livre_gives_its_text_in_the_older_plain_shape(s):
    from bridge.replies import delivery
    since = time.time()
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(since + 5))
    ours = {"id": "m-late", "from": {"user_id": 555}, "to": {"user_id": 9}, "text": "Enviado hoje",
            "message_date": {"created": created}}
    responses.get(THREAD, json={"paging": {"total": 2}, "messages": [in_old_shape(buyer_message("b1", "Oi")),
                                                                      in_old_shape(ours)]})
    part = {"text": "Enviado hoje", "attachments": []}
    assert delivery._find_sent_part(s, "2000001", 555, part, since) == "m-late"


@responses.activate
def test_a_later_reply_waits_when_the_earlier_one_is_in_another_pollers_hands(s):
    from bridge.replies import accept, delivery
    from tests.payloads import message_created
    for message_id, content in ((9501, "Primeiro"), (9502, "Segundo")):
        accept.accept_webhook(message_created(message_id=message_id, conversation_id=88, inbox_id=2,
                                              content=content), s.settings, s.db, time.time())
    first, second = s.db.replies.active_for_target("message", "2000001")
    # Between the listing of due replies and the claim, another poller (e.g. `--once`) took the first.
    assert s.db.replies.claim(first["id"], time.time(), 300) is not None
    responses.post(THREAD, json={"id": "m-x"})
    delivery._deliver_in_order(s, [first["id"], second["id"]])
    assert not [c for c in responses.calls if c.request.method == "POST"]
    assert s.db.replies.get(second["id"])["status"] == "pending"


@responses.activate
def test_a_long_reply_keeps_its_lease_while_its_parts_go_out(s):
    from bridge.replies import accept, delivery
    from tests.payloads import message_created
    clock = {"now": time.time()}
    s.clock = lambda: clock["now"]
    long_text = ("Primeira parte do texto. " * 14 + "\n\n" + "Segunda parte do texto. " * 14).strip()
    accept.accept_webhook(message_created(message_id=9700, conversation_id=88, inbox_id=2, content=long_text),
                          s.settings, s.db, clock["now"])
    reply = s.db.replies.active_for_target("message", "2000001")[0]
    assert len(s.db.replies.parts(reply["id"])) == 2
    taken_by_another = []

    def send(_request):
        # Each part takes two thirds of a lease (Mercado Livre slow, retries, rate pacing)...
        clock["now"] += delivery.LEASE_SECONDS * 2 / 3
        # ...and a second poller (`main.py --once`) looks for replies whose worker died.
        taken_by_another.append(s.db.replies.claim(reply["id"], clock["now"] + 20, delivery.LEASE_SECONDS))
        return 200, {}, json.dumps({"id": f"m-{len(taken_by_another)}"})

    responses.add_callback(responses.POST, THREAD, callback=send)
    assert delivery.deliver(s, reply["id"]) == "delivered"
    assert taken_by_another == [None, None]


@responses.activate
def test_one_moderated_part_of_a_long_reply_is_named_and_the_others_are_not_said_lost(s):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    now = time.time()
    content = ("Seu pedido foi enviado hoje pela transportadora e chega em breve. " * 14)[:900]
    accept_webhook(message_created(message_id=9401, conversation_id=88, inbox_id=2, content=content),
                   s.settings, s.db, now - 1300)
    reply = s.db.replies.active_for_target("message", "2000001")[0]
    s.db.replies.claim(reply["id"], now - 1300, 300)
    for seq in range(3):
        s.db.replies.mark_part_sent(reply["id"], seq, f"m-{seq}", now - 1200)
    s.db.replies.mark_delivered(reply["id"], now - 1200)

    def sent(seq, moderated=False):
        return {"id": f"m-{seq}", "from": {"user_id": 555}, "to": {"user_id": 9}, "text": f"parte {seq}",
                "status": "moderated" if moderated else "available",
                "message_moderation": {"status": "rejected" if moderated else "clean", "reason": "PERSONAL_DATA"},
                "message_date": {"created": "2026-11-29T10:05:00.000Z", "read": None}}
    thread_shows(sent(0), sent(1, moderated=True), sent(2), marked=False)
    responses.patch(f"{CW}/conversations/88/messages/9401", json={})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 704})

    sync_messages.check_recent_replies(s, 555, set())

    [patched] = [json.loads(c.request.body) for c in responses.calls if c.request.method == "PATCH"]
    [note] = [json.loads(c.request.body)["content"] for c in responses.calls if c.request.method == "POST"]
    # Parts 1 and 3 reached the buyer: "send it again" over the whole message would repeat them.
    assert "parte 2 de 3" in patched["external_error"]
    assert "parte 2 de 3" in note and "envie somente" in note.lower()


@responses.activate
def test_a_buyer_message_whose_creation_is_still_held_by_chatwoot_is_not_created_again(s):
    message = buyer_message("b2", "Chegou quebrado")
    thread_shows(message)
    # Chatwoot holds the first create past the read timeout and applies it a moment after
    # the next poll looked for it: the look finds nothing yet.
    responses.post(f"{CW}/conversations/88/messages", body=requests.exceptions.ReadTimeout("held"))
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 702})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    with pytest.raises(TransientError):
        sync_messages.sync_pack(s, "2000001", 555)
    with pytest.raises(TransientError):
        sync_messages.sync_pack(s, "2000001", 555)  # the next poll, a second later: too soon to tell
    assert len(posts_to(f"{CW}/conversations/88/messages")) == 1

    # Settled, and still not there: the first create never arrived, so it is made now.
    later = time.time() + 2 * ensure.CREATE_SETTLE
    s.clock = lambda: later
    assert sync_messages.sync_pack(s, "2000001", 555) == 1
    assert len(posts_to(f"{CW}/conversations/88/messages")) == 2


def _delivered_reply(s, now, message_id=9400):
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    accept_webhook(message_created(message_id=message_id, conversation_id=88, inbox_id=2, content="Me chama no zap"),
                   s.settings, s.db, now - 1300)
    reply = s.db.replies.active_for_target("message", "2000001")[0]
    s.db.replies.claim(reply["id"], now - 1300, 300)
    s.db.replies.mark_part_sent(reply["id"], 0, "m-r", now - 1200)
    s.db.replies.mark_delivered(reply["id"], now - 1200)
    return reply


MODERATED = {"id": "m-r", "from": {"user_id": 555}, "to": {"user_id": 9}, "text": "Me chama no zap",
             "status": "moderated", "message_moderation": {"status": "rejected", "reason": "PERSONAL_DATA"},
             "message_date": {"created": "2026-11-29T10:05:00.000Z", "read": None}}


@responses.activate
def test_a_moderated_reply_whose_delivered_mark_chatwoot_refused_is_not_shown_delivered_afterwards(s):
    """Its delivered mark met a Chatwoot outage and waited to be shown again; the moderation marked it
    failed, then that waiting mark set it delivered (soak seed 31001, R01654)."""
    from bridge.replies import report
    now = time.time()
    _delivered_reply(s, now)
    thread_shows(MODERATED, marked=False)
    responses.patch(f"{CW}/conversations/88/messages/9400", json={})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 703})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    sync_messages.check_recent_replies(s, 555, set())
    report.report_outcomes(s)

    patched = [json.loads(c.request.body)["status"] for c in responses.calls if c.request.method == "PATCH"]
    assert patched == ["failed"]


@responses.activate
def test_a_moderated_reply_whose_conversation_was_deleted_is_told_in_the_one_the_sale_continues_in(s):
    """No conversation left to tell it in when the thread was read: the report was recorded done, and the
    agent never learnt it once the sale continued in a new conversation (soak seed 31001, R00278)."""
    now = time.time()
    _delivered_reply(s, now)
    thread_shows(MODERATED, marked=False)
    responses.patch(f"{CW}/conversations/88/messages/9400", status=404, json={"error": "not found"})
    responses.get(f"{CW}/conversations/88/messages", status=404, json={"error": "not found"})
    responses.post(f"{CW}/conversations/88/messages", status=404, json={"error": "not found"})

    sync_messages.check_recent_replies(s, 555, set())
    # The sale goes on in a new conversation (a buyer message, say).
    s.db.links.update("pack", "2000001", time.time(), conversation_id=91)
    thread_shows(MODERATED, marked=False)
    responses.get(f"{CW}/conversations/91/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/91/messages", json={"id": 705})
    sync_messages.sync_pack(s, "2000001", 555)

    notes = [json.loads(c.request.body) for c in responses.calls
             if c.request.method == "POST" and c.request.url == f"{CW}/conversations/91/messages"]
    assert [n["source_id"] for n in notes] == ["meli:note:moderation:m-r"]


@responses.activate
def test_a_reply_whose_first_part_was_moderated_while_the_next_waited_is_not_shown_delivered_once_it_goes(s):
    """Part 1 of 2 went, part 2 met a 429; a read of the thread found part 1 moderated and marked the
    message failed. Part 2 went later and the reply's own report set the message delivered over the
    moderation's mark: the agent saw 'delivered' though the buyer never got part 1."""
    from bridge.replies import report
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    now = time.time()
    accept_webhook(message_created(message_id=9400, conversation_id=88, inbox_id=2,
                                   content="Me chama no zap. " + "Obrigado pela compra! " * 20),
                   s.settings, s.db, now - 1300)
    reply = s.db.replies.active_for_target("message", "2000001")[0]
    assert len(s.db.replies.parts(reply["id"])) == 2
    s.db.replies.claim(reply["id"], now - 1300, 300)
    s.db.replies.mark_part_sent(reply["id"], 0, "m-r", now - 1200)
    thread_shows(MODERATED, marked=False)
    responses.patch(f"{CW}/conversations/88/messages/9400", json={})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 703})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    sync_messages.sync_pack(s, "2000001", 555)
    s.db.replies.mark_part_sent(reply["id"], 1, "m-r2", now - 100)
    s.db.replies.mark_delivered(reply["id"], now - 100)
    report.report_outcomes(s)

    patched = [json.loads(c.request.body)["status"] for c in responses.calls if c.request.method == "PATCH"]
    assert patched == ["failed"]


@responses.activate
def test_a_failed_reply_in_a_deleted_conversation_that_was_never_its_sales_is_not_told_in_that_sales_conversation(s):
    """Conversation 95 is unknown to the bridge's rows (another buyer's, say, its sale pruned); an agent typed
    sale 2000001 into its sidebar, replied, and deleted it. The reply reached nobody, rightly; its failure
    note went to conversation 88, sale 2000001's: another buyer's conversation, where no agent wrote it."""
    from bridge.replies import delivery
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    now = time.time()
    accept_webhook(message_created(message_id=9500, conversation_id=95, inbox_id=2, content="Segue o rastreio",
                                   custom_attributes={"meli_pack_id": "2000001"}), s.settings, s.db, now)
    reply = s.db.replies.by_message(9500)
    assert reply is not None and reply["status"] in ("pending", "failed")
    gone = {"error": "not found"}
    responses.get(f"{CW}/conversations/95", status=404, json=gone)
    responses.get(f"{CW}/conversations/95/messages", status=404, json=gone)
    responses.patch(f"{CW}/conversations/95/messages/9500", status=404, json=gone)
    responses.post(f"{CW}/conversations/95/messages", status=404, json=gone)
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 706})

    delivery.run_outbox(s)

    assert s.db.replies.by_message(9500)["status"] == "failed"
    assert posts_to(f"{CW}/conversations/88/messages") == []


@responses.activate
def test_a_failed_reply_whose_conversations_are_all_deleted_is_told_once_its_sale_continues_in_a_new_one(s):
    """Mercado Livre refused the reply; an agent had deleted the sale's conversation meanwhile, and no
    sync had made the next one yet. Its report was recorded done with no note anywhere, and the agent
    never learnt the buyer did not get it (a moderated reply's note waits for the new conversation)."""
    from bridge.replies import report
    from bridge.replies.accept import accept_webhook
    from tests.payloads import message_created
    now = time.time()
    accept_webhook(message_created(message_id=9600, conversation_id=88, inbox_id=2, content="Segue o rastreio"),
                   s.settings, s.db, now)
    reply = s.db.replies.by_message(9600)
    s.db.replies.claim(reply["id"], now, 300)
    s.db.replies.mark_failed(reply["id"], "recusado pelo Mercado Livre", "Corrija o texto e envie de novo.", now)
    gone = {"error": "not found"}
    responses.patch(f"{CW}/conversations/88/messages/9600", status=404, json=gone)
    responses.post(f"{CW}/conversations/88/messages", status=404, json=gone)
    report.report_outcomes(s)

    # A buyer message: the sale goes on in conversation 91.
    data = s.db.links.get("pack", "2000001")["data"]
    s.db.links.update("pack", "2000001", now, conversation_id=91, data=dict(data, removed_conversation=88))
    responses.post(f"{CW}/conversations/91/messages", json={"id": 707})
    s.db.replies.report_later(reply["id"], 0, now)  # its backoff over
    report.report_outcomes(s)

    assert [json.loads(c.request.body)["source_id"] for c in posts_to(f"{CW}/conversations/91/messages")] \
        == [f"meli:note:reply:{reply['id']}"]
