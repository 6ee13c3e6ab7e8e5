"""Delivering post-sale replies: parts, files, blocked threads, migrated threads, crashes between parts."""

import json
from datetime import datetime, timezone

import pytest
import requests
import responses

from bridge.backoff import RETRY_MAX
from bridge.replies import delivery, refusal
from bridge.replies.accept import accept_webhook
from mercado_livre_api import MELI_AGENT_ID
from tests.helpers import API, CW, THREAD, Killed, PausedBudget, sale_services
from tests.payloads import message_created

SENTENCE = "Seu pedido foi enviado hoje pela transportadora e chega em breve. "  # 66 chars


@pytest.fixture
def s(settings, db, clock):
    return sale_services(settings, db, clock)


def accept(s, content, attachments=None, message_id=9200):
    status, _code, extra = accept_webhook(
        message_created(message_id=message_id, conversation_id=88, inbox_id=2, content=content,
                        attachments=attachments), s.settings, s.db, s.clock())
    return status, extra.get("reply_id")


def chatwoot_ok(message_id=9200):
    responses.patch(f"{CW}/conversations/88/messages/{message_id}", json={"id": message_id})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 1})


def posts():
    return [json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.url.startswith(THREAD)]


def ml_date(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seller_message(mid, text, created):
    return {"id": mid, "from": {"user_id": 555}, "to": {"user_id": 9}, "text": text,
            "message_date": {"created": ml_date(created)}}


def in_doubt(s, content, message_id=9200):
    """An accepted reply whose single part was in flight when its worker died, 10 minutes ago."""
    _status, reply_id = accept(s, content, message_id=message_id)
    s.db.replies.claim(reply_id, s.clock(), 300)
    s.db.replies.mark_part_sending(reply_id, 0, s.clock() - 600)
    s.db.replies.release_leases(s.clock())  # the poller that held it died: the next one gives its leases back
    return reply_id


def sent_ok(n):
    for i in range(n):
        responses.post(THREAD, json={"id": f"m{i}"})


@responses.activate
def test_a_900_character_reply_goes_out_as_3_ordered_parts(s):
    content = (SENTENCE * 14)[:900]
    status, reply_id = accept(s, content)
    assert status == "accepted"
    sent_ok(3)
    chatwoot_ok()
    delivery.run_outbox(s)
    bodies = posts()
    assert len(bodies) == 3 and all(len(b["text"]) <= 350 for b in bodies)
    assert " ".join(b["text"] for b in bodies).split() == content.split()
    assert bodies[0]["from"] == {"user_id": 555} and bodies[0]["to"] == {"user_id": 9}
    assert s.db.replies.get(reply_id)["status"] == "delivered"
    assert [p["remote_id"] for p in s.db.replies.parts(reply_id)] == ["m0", "m1", "m2"]


@responses.activate
def test_a_crash_between_parts_sends_no_part_twice(s):
    content = (SENTENCE * 14)[:900]
    _status, reply_id = accept(s, content)
    parts = s.db.replies.parts(reply_id)
    # First worker: part 0 confirmed, part 1 reached ML but the worker died before recording it,
    # long enough ago for that send to have settled.
    s.db.replies.claim(reply_id, s.clock(), 300)
    s.db.replies.mark_part_sent(reply_id, 0, "m0", s.clock())
    attempt = s.clock() - 2 * delivery.IN_DOUBT_SETTLE
    s.db.replies.mark_part_sending(reply_id, 1, attempt)
    s.db.replies.release_leases(s.clock())
    responses.get(THREAD, json={"paging": {"total": 2, "offset": 0, "limit": 10}, "messages": [
        seller_message("m0", parts[0]["text"], attempt - 5),
        seller_message("m1", parts[1]["text"], attempt + 1)],
        "conversation_status": {"status": "active"}})
    sent_ok(1)
    chatwoot_ok()
    delivery.run_outbox(s)
    bodies = posts()
    assert [b["text"] for b in bodies] == [parts[2]["text"]]
    assert s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_a_part_in_flight_that_never_arrived_is_sent(s):
    _status, reply_id = accept(s, "Oi, tudo certo!")
    s.db.replies.claim(reply_id, s.clock(), 300)
    s.db.replies.mark_part_sending(reply_id, 0, s.clock() - 2 * delivery.IN_DOUBT_SETTLE)
    s.db.replies.release_leases(s.clock())
    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}})
    sent_ok(1)
    chatwoot_ok()
    delivery.run_outbox(s)
    assert [b["text"] for b in posts()] == ["Oi, tudo certo!"]


@responses.activate
def test_a_migrated_thread_is_answered_to_the_meli_agent(s):
    s.db.links.update("pack", "2000001", 1.0, data={"buyer_id": 9, "migrated": True})
    accept(s, "Olá!")
    sent_ok(1)
    chatwoot_ok()
    delivery.run_outbox(s)
    assert posts()[0]["to"] == {"user_id": MELI_AGENT_ID}


@responses.activate
def test_a_pdf_is_downloaded_from_chatwoot_uploaded_once_and_sent_with_the_text(s):
    data_url = "https://chat.example.test/rails/active_storage/blobs/redirect/tok/nota.pdf"
    storage = "https://chat.example.test/rails/active_storage/disk/tok/nota.pdf"
    responses.get(data_url, status=302, headers={"Location": storage})
    responses.get(storage, body=b"%PDF-1.4 nota", content_type="application/pdf")
    responses.post(f"{API}/messages/attachments", json={"id": "att-1"})
    _status, reply_id = accept(s, "Segue a nota", attachments=[
        {"id": 5, "file_type": "file", "extension": "pdf", "data_url": data_url, "file_size": 13}])
    sent_ok(1)
    chatwoot_ok()
    delivery.run_outbox(s)
    assert posts()[0]["attachments"] == ["att-1"] and posts()[0]["text"] == "Segue a nota"
    uploads = [c for c in responses.calls if c.request.url.startswith(f"{API}/messages/attachments")]
    assert len(uploads) == 1 and b"%PDF-1.4 nota" in uploads[0].request.body
    downloads = [c for c in responses.calls if "active_storage" in c.request.url]
    assert "api_access_token" not in downloads[0].request.headers


@responses.activate
def test_an_upload_is_not_repeated_when_the_send_is_retried(s):
    data_url = "https://chat.example.test/rails/active_storage/blobs/redirect/tok/foto.png"
    responses.get(data_url, body=b"\x89PNG....", content_type="image/png")
    responses.post(f"{API}/messages/attachments", json={"id": "att-9"})
    _status, reply_id = accept(s, "Foto", attachments=[
        {"id": 5, "file_type": "image", "extension": "png", "data_url": data_url}])
    responses.post(THREAD, status=429, json={"error": "too_many_requests"}, headers={"Retry-After": "0"})
    delivery.run_outbox(s)
    assert s.db.replies.get(reply_id)["status"] == "pending"
    s.clock.advance(RETRY_MAX)
    responses.replace(responses.POST, THREAD, json={"id": "m1"})
    chatwoot_ok()
    delivery.run_outbox(s)
    uploads = [c for c in responses.calls if c.request.url.startswith(f"{API}/messages/attachments")]
    assert len(uploads) == 1 and s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_a_blocked_thread_fails_with_an_explanation(s):
    _status, reply_id = accept(s, "Olá")
    responses.post(THREAD, status=403, json={"error": "blocked_conversation_send_message_forbidden",
                                             "message": "blocked", "status": 403})
    chatwoot_ok()
    delivery.run_outbox(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "failed" and "bloqueada" in reply["error"]
    note = [json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"][0]
    assert "mediação" in note["content"] and note["private"] is True


@responses.activate
def test_curly_quotes_are_converted_and_an_emoji_is_refused(s):
    accept(s, "Ele disse “chega amanhã” — ok…", message_id=1)
    sent_ok(1)
    responses.patch(f"{CW}/conversations/88/messages/1", json={})
    delivery.run_outbox(s)
    assert posts()[0]["text"] == 'Ele disse "chega amanhã" - ok...'
    status, reply_id = accept(s, "Obrigado 😀", message_id=2)
    assert status == "refused"
    assert "U+1F600" in s.db.replies.get(reply_id)["note"]


@responses.activate
def test_a_429_with_retry_after_is_waited_and_nothing_is_lost(s):
    _status, reply_id = accept(s, "Olá")
    responses.post(THREAD, status=429, json={"error": "too_many_requests"}, headers={"Retry-After": "30"})
    before = s.clock()
    delivery.run_outbox(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "pending" and reply["next_attempt_at"] >= before + 30
    assert s.db.replies.parts(reply_id)[0]["status"] == "pending"


@responses.activate
def test_reconciling_a_part_ignores_an_earlier_reply_with_the_same_text(s):
    _status, first = accept(s, "Ok", message_id=1)
    s.db.replies.claim(first, s.clock(), 300)
    s.db.replies.mark_part_sent(first, 0, "m-old", s.clock())
    s.db.replies.mark_delivered(first, s.clock())
    _status, second = accept(s, "Ok", message_id=2)
    s.db.replies.claim(second, s.clock(), 300)
    # Crashed mid-send: did it arrive?
    s.db.replies.mark_part_sending(second, 0, s.clock() - 2 * delivery.IN_DOUBT_SETTLE)
    s.db.replies.release_leases(s.clock())
    responses.get(THREAD, json={"paging": {"total": 1}, "messages": [
        {"id": "m-old", "from": {"user_id": 555}, "text": "Ok"}], "conversation_status": {"status": "active"}})
    sent_ok(1)
    responses.patch(f"{CW}/conversations/88/messages/2", json={})
    delivery.run_outbox(s)
    assert [b["text"] for b in posts()] == ["Ok"]
    assert s.db.replies.get(second)["status"] == "delivered"


@responses.activate
def test_replies_to_one_sale_go_out_in_order_while_others_go_in_parallel(s):
    s.db.links.mark_created("pack", "2000002", 1.0, conversation_id=89, contact_id=6, data={"buyer_id": 10})
    for n, text in enumerate(["primeira", "segunda", "terceira"]):
        accept(s, text, message_id=100 + n)
    accept_webhook(message_created(message_id=200, conversation_id=89, inbox_id=2, content="outra venda"),
                          s.settings, s.db, s.clock())
    sent_ok(3)
    responses.post(f"{API}/messages/packs/2000002/sellers/555", json={"id": "x"})
    for mid in (100, 101, 102):
        responses.patch(f"{CW}/conversations/88/messages/{mid}", json={})
    responses.patch(f"{CW}/conversations/89/messages/200", json={})
    counts = delivery.run_outbox(s)
    assert counts["delivered"] == 4 and counts["reported"] == 4
    assert [b["text"] for b in posts()] == ["primeira", "segunda", "terceira"]


@responses.activate
def test_a_later_reply_waits_for_an_earlier_one_to_the_same_sale(s):
    _status, first = accept(s, "primeira", message_id=1)
    responses.post(THREAD, status=503, json={"message": "down"})
    delivery.run_outbox(s)
    assert s.db.replies.get(first)["status"] == "pending"  # waiting to retry
    _status, second = accept(s, "segunda", message_id=2)
    delivery.run_outbox(s)
    assert s.db.replies.get(second)["status"] == "pending" and s.db.replies.get(second)["attempts"] == 0
    s.clock.advance(RETRY_MAX)
    # The 503 left "primeira" in doubt: once settled, the thread is read before sending it again.
    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}})
    responses.replace(responses.POST, THREAD, json={"id": "m1"})
    for mid in (1, 2):
        responses.patch(f"{CW}/conversations/88/messages/{mid}", json={})
    delivery.run_outbox(s)
    assert [b["text"] for b in posts()] == ["primeira", "primeira", "segunda"]
    assert s.db.replies.get(second)["status"] == "delivered"


@responses.activate
def test_an_older_site_message_with_the_same_text_is_not_taken_for_a_lost_send(s):
    reply_id = in_doubt(s, "Obrigado!")
    # "Obrigado!" typed on the site an hour before the reply's first attempt.
    responses.get(THREAD, json={"paging": {"total": 1}, "messages": [
        seller_message("m-site", "Obrigado!", s.clock() - 3600)], "conversation_status": {"status": "active"}})
    sent_ok(1)
    chatwoot_ok()
    delivery.run_outbox(s)
    assert [b["text"] for b in posts()] == ["Obrigado!"]
    assert s.db.replies.parts(reply_id)[0]["status"] == "sent" and s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_a_site_message_already_mirrored_is_not_taken_for_a_lost_send(s):
    reply_id = in_doubt(s, "Ok")
    s.db.links.mark_created("message", "m-site", s.clock(), conversation_id=88, message_id=70,
                            data={"pack_id": "2000001", "direction": "outgoing"})
    responses.get(THREAD, json={"paging": {"total": 1}, "messages": [
        seller_message("m-site", "Ok", s.clock() - 60)], "conversation_status": {"status": "active"}})
    sent_ok(1)
    chatwoot_ok()
    delivery.run_outbox(s)
    assert [b["text"] for b in posts()] == ["Ok"]
    assert s.db.replies.parts(reply_id)[0]["remote_id"] == "m0"


@responses.activate
def test_a_lost_send_created_after_the_first_attempt_is_recognised(s):
    reply_id = in_doubt(s, "Ok")
    responses.get(THREAD, json={"paging": {"total": 2}, "messages": [
        seller_message("m-old", "Ok", s.clock() - 3600), seller_message("m-ours", "Ok", s.clock() - 590)],
        "conversation_status": {"status": "active"}})
    chatwoot_ok()
    delivery.run_outbox(s)
    assert posts() == []
    assert s.db.replies.parts(reply_id)[0]["remote_id"] == "m-ours"
    assert s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_a_later_part_refused_tells_which_parts_reached_the_buyer_and_what_is_left(s):
    content = (SENTENCE * 14)[:900]
    _status, reply_id = accept(s, content)
    parts = s.db.replies.parts(reply_id)
    responses.post(THREAD, json={"id": "m0"})
    responses.post(THREAD, json={"id": "m1"})
    responses.post(THREAD, status=400, json={"message": "message length exceeded", "error": "bad_request",
                                             "status": 400})
    chatwoot_ok()
    delivery.run_outbox(s)
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "failed"
    assert reply["error"].startswith("partes 1 e 2 de 3 enviadas")
    mark = [json.loads(c.request.body) for c in responses.calls if c.request.method == "PATCH"][0]
    assert mark["status"] == "failed" and "partes 1 e 2 de 3" in mark["external_error"]
    note = [json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"][0]
    assert note["private"] is True
    assert note["content"].startswith("Resposta enviada só em parte")
    assert "As partes 1 e 2 de 3 chegaram ao comprador; a parte 3 não." in note["content"]
    assert "envie somente o restante" in note["content"] and parts[2]["text"] in note["content"]
    assert parts[0]["text"] not in note["content"] and "Nada foi enviado" not in note["content"]


def test_a_part_whose_answer_was_lost_is_named_as_maybe_arrived():
    parts = [{"seq": 0, "status": "sent", "text": "um"}, {"seq": 1, "status": "sending", "text": "dois"},
             {"seq": 2, "status": "pending", "text": "três"}, {"seq": 3, "status": "pending", "text": "quatro"}]
    error, note = refusal.partial_failure(parts, "Mercado Livre indisponível por 24 h", "nada foi", "Fora do ar.")
    assert error == "parte 1 de 4 enviada; Mercado Livre indisponível por 24 h"
    assert note.startswith("A parte 1 de 4 chegou ao comprador; as partes 3 e 4 não. A parte 2 pode ter chegado")
    assert "> dois\n> três\n> quatro" in note and "> um" not in note
    single = [{"seq": 0, "status": "pending", "text": "x"}]
    assert refusal.partial_failure(single, "e", "nada foi enviado", "w") == ("e", "nada foi enviado")


@responses.activate
def test_a_part_in_doubt_is_not_looked_for_before_its_send_has_settled(s):
    """Mercado Livre may still apply a request it held while we gave up waiting: looking now
    would find nothing and send the part a second time."""
    _status, reply_id = accept(s, "Chega amanhã")
    s.db.replies.claim(reply_id, s.clock(), 300)
    s.db.replies.mark_part_sending(reply_id, 0, s.clock() - 5)
    s.db.replies.mark_part_attempted(reply_id, 0, s.clock() - 5)
    s.db.replies.release_leases(s.clock())
    chatwoot_ok()
    assert delivery.run_outbox(s)["retry"] == 1
    assert [c.request.url for c in responses.calls if "/messages/packs/" in c.request.url] == []
    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "pending" and s.db.replies.parts(reply_id)[0]["status"] == "sending"
    assert reply["next_attempt_at"] >= s.clock() + delivery.IN_DOUBT_SETTLE - 10


@responses.activate
def test_a_send_applied_after_its_timeout_is_found_once_settled_not_sent_again(s):
    _status, reply_id = accept(s, "Chega amanhã")
    responses.post(THREAD, body=requests.exceptions.ReadTimeout("read timed out"))
    chatwoot_ok()
    assert delivery.run_outbox(s)["retry"] == 1
    attempt = s.db.replies.parts(reply_id)[0]["last_attempt_at"]
    # Mercado Livre applies the held request a moment later; the retry comes once it has settled.
    responses.get(THREAD, json={"paging": {"total": 1}, "messages": [
        seller_message("m-late", "Chega amanhã", attempt + 3)], "conversation_status": {"status": "active"}})
    s.clock.advance(RETRY_MAX)
    posted = len(posts())
    delivery.run_outbox(s)
    assert len(posts()) == posted
    assert s.db.replies.parts(reply_id)[0]["remote_id"] == "m-late"
    assert s.db.replies.get(reply_id)["status"] == "delivered"


@responses.activate
def test_a_partial_reply_whose_conversation_was_deleted_is_told_as_sent_in_part_in_the_new_one(s):
    content = (SENTENCE * 14)[:900]
    _status, reply_id = accept(s, content)
    # The agent deleted conversation 88; the sale continues in conversation 99.
    data = s.db.links.get("pack", "2000001")["data"]
    s.db.links.update("pack", "2000001", s.clock(), conversation_id=99, data=dict(data, removed_conversation=88))
    sent_ok(2)
    responses.post(THREAD, status=400, json={"message": "message length exceeded", "error": "bad_request",
                                             "status": 400})
    responses.patch(f"{CW}/conversations/88/messages/9200", status=404, json={"error": "not found"})
    responses.post(f"{CW}/conversations/88/messages", status=404, json={"error": "not found"})
    responses.post(f"{CW}/conversations/99/messages", json={"id": 1})

    delivery.run_outbox(s)

    [note] = [json.loads(c.request.body) for c in responses.calls
              if c.request.method == "POST" and c.request.url == f"{CW}/conversations/99/messages"]
    # Two parts reached the buyer: "not sent" would have the agent send the whole reply again.
    assert note["content"].startswith("Resposta enviada só em parte")
    assert "As partes 1 e 2 de 3 chegaram ao comprador" in note["content"]


@responses.activate
def test_a_reply_given_up_waiting_for_reauthorization_after_some_parts_says_which_went(s):
    content = (SENTENCE * 14)[:900]
    _status, reply_id = accept(s, content)
    # Part 1 reached the buyer; then the authorization was lost, and a day went by.
    s.db.replies.mark_part_sending(reply_id, 0, s.clock())
    s.db.replies.mark_part_sent(reply_id, 0, "m0", s.clock())
    s.db.auth.require_reauthorization("refused", s.clock())
    s.clock.advance(25 * 3600)
    chatwoot_ok()

    delivery.run_outbox(s)

    reply = s.db.replies.get(reply_id)
    assert reply["status"] == "failed" and reply["error"].startswith("parte 1 de 3 enviada")
    note = [json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"][0]["content"]
    # "Not sent" would have the agent send the whole reply again: part 1 twice to the buyer.
    assert note.startswith("Resposta enviada só em parte")
    assert "A parte 1 de 3 chegou ao comprador" in note and "não foi enviada" not in note
    assert "./bridge.sh authorize" in note
    assert not posts()


@responses.activate
def test_a_send_that_waited_before_timing_out_settles_from_when_the_wait_ended(s):
    _status, reply_id = accept(s, "Chega amanhã")
    chatwoot_ok()

    def held(_request):
        # A rate-budget pause, then Mercado Livre holding the request: it left well after the
        # attempt was recorded, and may still be applied.
        s.clock.advance(30)
        raise requests.exceptions.ReadTimeout("read timed out")

    responses.add_callback(responses.POST, THREAD, callback=held)
    delivery.run_outbox(s)
    assert s.db.replies.parts(reply_id)[0]["last_attempt_at"] == s.clock()

    def thread_reads():
        return [c for c in responses.calls if c.request.method == "GET" and c.request.url.startswith(THREAD)]

    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}})
    # Counted from the attempt's start it would have settled by now, and been looked for too early.
    s.clock.advance(delivery.IN_DOUBT_SETTLE - 1)
    delivery.run_outbox(s)
    assert thread_reads() == []
    s.clock.advance(60)  # settled, and past the attempt's backoff
    delivery.run_outbox(s)
    assert len(thread_reads()) == 1


@responses.activate
def test_a_send_killed_in_flight_after_a_budget_pause_settles_from_when_it_left(s):
    _status, reply_id = accept(s, "Chega amanhã")
    s.meli.budgets = {"POST": PausedBudget(s.clock, 30)}

    def in_flight(_request):
        raise Killed()

    responses.add_callback(responses.POST, THREAD, callback=in_flight)
    with pytest.raises(Killed):
        delivery.deliver(s, reply_id)
    left_at = s.clock()
    part = s.db.replies.parts(reply_id)[0]
    assert part["status"] == "sending" and part["last_attempt_at"] == left_at

    # The next poller: Mercado Livre may apply the held send until IN_DOUBT_SETTLE after it left.
    s.meli.budgets = {}
    s.db.replies.release_leases(s.clock())
    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}})
    s.clock.advance(delivery.IN_DOUBT_SETTLE - 1)  # settled, counted from the record before the pause
    assert delivery.deliver(s, reply_id) == "retry"
    assert not [c for c in responses.calls if c.request.method == "GET" and c.request.url.startswith(THREAD)]


def reply_in_unknown_conversation(s, stored_pack_id):
    """The sale's create lost its answer (its row has no conversation); an agent's reply arrives from
    conversation 93, the webhook naming sale 2000001, while Chatwoot's own record of 93 names `stored_pack_id`."""
    s.db.links.update("pack", "2000001", s.clock(), status="pending", conversation_id=None)
    _status, _code, extra = accept_webhook(
        message_created(message_id=9300, conversation_id=93, inbox_id=2, content="Enviado hoje",
                        custom_attributes={"meli_pack_id": "2000001"}), s.settings, s.db, s.clock())
    responses.get(f"{CW}/conversations/93", json={"id": 93, "inbox_id": 2,
                                                  "custom_attributes": {"meli_pack_id": stored_pack_id}})
    responses.get(f"{CW}/conversations/93/messages", json={"payload": []})  # nothing of the bridge's there
    return extra["reply_id"]


@responses.activate
def test_a_reply_whose_webhook_names_a_sale_chatwoot_does_not_reaches_nobody(s):
    """Conversation 93 is another buyer's sale in Chatwoot: a reply written there must not reach sale 2000001's
    buyer."""
    reply_id = reply_in_unknown_conversation(s, "2000002")
    sent_ok(1)

    assert delivery.deliver(s, reply_id) == "failed"
    assert posts() == []
    assert s.db.replies.get(reply_id)["error"] == delivery.NOT_ITS_CONVERSATION.error


@responses.activate
def test_a_reply_in_a_conversation_chatwoot_confirms_as_the_sales_goes_to_its_buyer(s):
    reply_id = reply_in_unknown_conversation(s, "2000001")
    sent_ok(1)

    assert delivery.deliver(s, reply_id) == "delivered"
    assert [p["to"] for p in posts()] == [{"user_id": 9}]


@responses.activate
def test_a_reply_from_a_deleted_conversation_the_webhook_alone_names_reaches_nobody(s):
    s.db.links.update("pack", "2000001", s.clock(), status="pending", conversation_id=None)
    _status, _code, extra = accept_webhook(
        message_created(message_id=9300, conversation_id=93, inbox_id=2, content="Enviado hoje",
                        custom_attributes={"meli_pack_id": "2000001"}), s.settings, s.db, s.clock())
    responses.get(f"{CW}/conversations/93", status=404, json={"error": "Resource could not be found"})
    sent_ok(1)

    assert delivery.deliver(s, extra["reply_id"]) == "failed"
    assert posts() == []


@responses.activate
def test_a_reply_whose_conversation_was_deleted_after_it_was_written_still_reaches_the_buyer(s):
    """The agent wrote in the sale's conversation 88, then deleted it; the sync went on in a new one
    (95) before the reply left. Chatwoot has no record of 88 any more, but the bridge mirrored the
    sale's messages there itself: the reply is the sale's, and goes (soak seed 20261129)."""
    s.db.links.mark_created("message", "b1", 1.0, conversation_id=88, message_id=1,
                            data={"pack_id": "2000001", "direction": "incoming"})
    _status, reply_id = accept(s, "Enviado hoje")
    s.db.links.update("pack", "2000001", s.clock(), conversation_id=95, data={"buyer_id": 9})
    responses.get(f"{CW}/conversations/88", status=404, json={"error": "Resource could not be found"})
    responses.patch(f"{CW}/conversations/88/messages/9200", status=404, json={"error": "Resource could not be found"})
    sent_ok(1)

    assert delivery.deliver(s, reply_id) == "delivered"
    assert [p["to"] for p in posts()] == [{"user_id": 9}]


@responses.activate
def test_another_replys_stray_send_landing_late_is_not_taken_for_this_replys_lost_send(s):
    """Reply 1's "Ok" went again after a look that found nothing (its first send may still land: a stray).
    Reply 2, also "Ok", lost its answer. Reply 1's first send then lands: that copy may be reply 2's as well
    as reply 1's stray, so reply 2 is sent again; taken for reply 2's, it showed delivered and never went."""
    first = in_doubt(s, "Ok", message_id=9200)
    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}})
    responses.post(THREAD, json={"id": "m-first"})
    chatwoot_ok(9200)
    delivery.run_outbox(s)
    assert s.db.replies.get(first)["status"] == "delivered"

    _status, second = accept(s, "Ok", message_id=9201)
    responses.replace(responses.POST, THREAD, body=requests.exceptions.ReadTimeout("read timed out"))
    chatwoot_ok(9201)
    assert delivery.run_outbox(s)["retry"] == 1
    attempt = s.db.replies.parts(second)[0]["last_attempt_at"]
    responses.replace(responses.GET, THREAD, json={"paging": {"total": 2}, "messages": [
        seller_message("m-first", "Ok", attempt - 30), seller_message("m-stray", "Ok", attempt + 3)],
        "conversation_status": {"status": "active"}})
    responses.replace(responses.POST, THREAD, json={"id": "m-second"})
    s.clock.advance(RETRY_MAX)
    posted = len(posts())
    delivery.run_outbox(s)

    assert len(posts()) == posted + 1
    assert s.db.replies.parts(second)[0]["remote_id"] == "m-second"


@responses.activate
def test_a_replys_own_stray_send_landing_late_is_taken_for_its_lost_send(s):
    """The part's own earlier send is the only stray of its text: its copy is this part's, not sent a third time."""
    reply_id = in_doubt(s, "Ok")
    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}})
    responses.post(THREAD, body=requests.exceptions.ReadTimeout("read timed out"))
    chatwoot_ok()
    assert delivery.run_outbox(s)["retry"] == 1
    attempt = s.db.replies.parts(reply_id)[0]["last_attempt_at"]
    responses.replace(responses.GET, THREAD, json={"paging": {"total": 1}, "messages": [
        seller_message("m-late", "Ok", attempt + 3)], "conversation_status": {"status": "active"}})
    s.clock.advance(RETRY_MAX)
    posted = len(posts())
    delivery.run_outbox(s)

    assert len(posts()) == posted
    assert s.db.replies.parts(reply_id)[0]["remote_id"] == "m-late"


@responses.activate
def test_a_reply_in_another_buyers_conversation_whose_attribute_an_agent_edited_reaches_nobody(s):
    """Conversation 93 was made by the bridge for buyer 77 (its additional attributes, which agents cannot
    edit, say so); an agent typed sale 2000001's id into its sidebar. The bridge has no row for 93 (the sale it
    was made for was pruned by retention): Chatwoot's attribute alone must not send the reply to buyer 9."""
    reply_id = reply_in_unknown_conversation(s, "2000001")
    responses.replace(responses.GET, f"{CW}/conversations/93", json={
        "id": 93, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "2000001"},
        "additional_attributes": {"meli_buyer_id": "77"}})
    sent_ok(1)

    assert delivery.deliver(s, reply_id) == "failed"
    assert posts() == []
    assert s.db.replies.get(reply_id)["error"] == delivery.NOT_ITS_CONVERSATION.error


@responses.activate
def test_a_reply_in_the_buyers_other_sale_conversation_whose_attribute_an_agent_edited_goes_to_that_sale(s):
    """Conversation 93 was made by the bridge for buyer 9's sale 2000005 (its additional attributes, which
    agents cannot edit, say so), since pruned; an agent typed the same buyer's sale 2000001 into its sidebar.
    The buyer check passes (same buyer): only the sale the bridge made 93 for keeps the reply off 2000001's
    thread, which the agent was not looking at."""
    reply_id = reply_in_unknown_conversation(s, "2000001")
    responses.replace(responses.GET, f"{CW}/conversations/93", json={
        "id": 93, "inbox_id": 2, "custom_attributes": {"meli_pack_id": "2000001"},
        "additional_attributes": {"meli_buyer_id": "9", "meli_pack_id": "2000005"}})
    sent_ok(1)

    delivery.deliver(s, reply_id)
    assert posts() == []
    assert s.db.replies.get(reply_id)["target_id"] == "2000005"
