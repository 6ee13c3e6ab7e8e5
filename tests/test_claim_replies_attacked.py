"""Claim replies under attack: in-doubt parts, receivers and the claim changing under a reply."""

import json

import pytest
import responses

from bridge.replies import accept, delivery
from bridge.sync import claims as sync_claims
from bridge.sync import sales as sync_sales
from tests.helpers import API, CW, THREAD, authorized_services, sale_services
from tests.payloads import message_created
from tests.test_claims import (
    CLAIM_ID,
    CLAIM_INBOX,
    buyer_message,
    chatwoot_for_mirroring,
    claim,
    iso,
    mirrored,
    respondent_message,
)

SEND = f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message"
CLAIM = f"{API}/post-purchase/v1/claims/{CLAIM_ID}"


@pytest.fixture
def s(make_settings, db, clock):
    services = authorized_services(make_settings(CHATWOOT_CLAIMS_INBOX_ID=str(CLAIM_INBOX)), db, clock)
    data = {"buyer_id": 7001, "order_id": "2000001", "pack_id": "2000001", "stage": "claim", "status": "opened",
            "last_updated": "old", "due": "2026-11-22T10:00:00.000Z", "affects": "not_affected",
            "receivers": ["complainant"],
            "attributes": sync_claims.claim_attributes(claim(), None, "not_affected", zone="America/Sao_Paulo")}
    db.links.mark_created("claim", CLAIM_ID, 1.0, conversation_id=88, contact_id=5, data=data)
    return services


def lost_answer_send(s, arrived):
    """Every send reaches the claim; the first one's answer is lost (503)."""
    sent = []

    def send(request):
        body = json.loads(request.body)
        sent.append(body)
        arrived.append(respondent_message(body["message"], 0) | {"date_created": iso(s.clock()),
                                                                  "receiver_role": body["receiver_role"]})
        return (503, {}, "{}") if len(sent) == 1 else (200, {}, "{}")

    responses.add_callback(responses.POST, SEND, callback=send)
    return sent


@responses.activate
@pytest.mark.parametrize("then", [
    claim(status="closed", actions=()),
    claim(stage="dispute", actions=("send_message_to_mediator",)),
], ids=["claim closed", "only the mediator may be written to now"])
def test_a_claim_reply_that_arrived_before_its_answer_was_lost_is_delivered_whatever_the_claim_became(s, db, then):
    reply_id = db.replies.accept(chatwoot_message_id=950, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Vamos reembolsar hoje"}], now=s.clock(), receiver="complainant")
    responses.get(CLAIM, json=claim())
    arrived = []
    sent = lost_answer_send(s, arrived)
    assert delivery.deliver(s, reply_id) == "retry"
    # The seller's answer did reach the buyer; then the claim moved on before the outbox looked again.
    responses.replace(responses.GET, CLAIM, json=then)
    responses.add_callback(responses.GET, f"{CLAIM}/messages", callback=lambda r: (200, {}, json.dumps(arrived)))
    s.clock.advance(3600)
    outcome = delivery.deliver(s, reply_id)
    reply = db.replies.get(reply_id)
    assert (outcome, reply["status"]) == ("delivered", "delivered"), reply["note"]
    assert len(sent) == 1


@responses.activate
def test_a_claim_reply_in_doubt_that_did_not_arrive_is_refused_without_saying_it_may_have(s, db):
    reply_id = db.replies.accept(chatwoot_message_id=951, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Vamos reembolsar hoje"}], now=s.clock(), receiver="complainant")
    responses.get(CLAIM, json=claim())
    responses.post(SEND, status=503, json={})
    assert delivery.deliver(s, reply_id) == "retry"
    responses.replace(responses.GET, CLAIM, json=claim(status="closed", actions=()))
    responses.get(f"{CLAIM}/messages", json=[])
    s.clock.advance(3600)
    assert delivery.deliver(s, reply_id) == "failed"
    reply = db.replies.get(reply_id)
    assert reply["error"] == "reclamação encerrada" and "Nada foi enviado" in reply["note"]
    assert [p["status"] for p in db.replies.parts(reply_id)] == ["pending"]


MESSAGES_INBOX = 2


@responses.activate
@pytest.mark.parametrize("reply_to", ["mediador", None])
def test_a_reply_in_a_claim_conversation_moved_to_the_sales_inbox_reaches_nobody(s, db, reply_to):
    """The claim's conversation carries its sale's ids (meli_pack_id): moved by an agent to the sales
    inbox, a reply there is not the claim's (the mediator addressed, or the claim's deadline) nor
    plainly the sale's: nothing goes, and the agent is told why."""
    db.links.mark_created("pack", "2000001", 1.0, conversation_id=77, contact_id=5,
                          data={"buyer_id": 7001, "blocked": False, "migrated": False})
    attributes = dict(db.links.get("claim", CLAIM_ID)["data"]["attributes"])
    if reply_to:
        attributes["meli_claim_reply_to"] = reply_to
    status, _code, extra = accept.accept_webhook(
        message_created(message_id=960, conversation_id=88, inbox_id=MESSAGES_INBOX, content="Já devolvemos",
                        custom_attributes=attributes), s.settings, db, s.clock())
    responses.get(f"{CW}/conversations/88", json={"id": 88, "inbox_id": MESSAGES_INBOX,
                                                  "custom_attributes": attributes})
    to_buyer = responses.post(f"{THREAD}", json={"id": "m1"})
    if status == "accepted":
        delivery.deliver(s, extra["reply_id"])
    assert to_buyer.call_count == 0
    assert status == "refused", extra
    assert "reclamação" in extra["reason"]


@responses.activate
def test_a_claim_whose_sync_failed_this_poll_still_gets_its_replys_moderation_check(s, db):
    """Its claim changed (our reply moved its last_updated) but could not be read: the reply's
    moderation check is not done by that failed read, and stays due."""
    now = s.clock()
    reply_id = db.replies.accept(chatwoot_message_id=961, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Segue o reembolso"}], now=now - 600, receiver="complainant")
    db.replies.mark_delivered(reply_id, now - 300)
    responses.get(f"{API}/post-purchase/v1/claims/search",
                  json={"paging": {"offset": 0, "limit": 50, "total": 1}, "data": [claim()]})
    responses.get(CLAIM, status=503, json={"message": "unavailable"})
    sync_claims.sync_claims(s)
    assert db.links.get("moderation_check", f"claim:{reply_id}")["status"] != "created"


@responses.activate
def test_a_sale_whose_thread_failed_this_poll_still_gets_its_replys_moderation_check(settings, db):
    """The sale's twin of the claim's case above."""
    s = sale_services(settings, db)
    now = s.clock()
    reply_id = db.replies.accept(chatwoot_message_id=962, conversation_id=88, kind="message", target_id="2000001",
                                 parts=[{"text": "Segue o código"}], now=now - 600)
    db.replies.mark_delivered(reply_id, now - 300)
    responses.get(f"{API}/messages/unread", json={"results": [{"resource": "/packs/2000001/sellers/555"}]})
    responses.get(THREAD, status=503, json={"message": "unavailable"})
    responses.get(f"{API}/orders/search", json={"results": [], "paging": {"total": 0}})
    sync_sales.sync_messages(s)
    assert db.links.get("moderation_check", str(reply_id))["status"] != "created"


@responses.activate
def test_a_buyer_message_still_being_translated_when_its_claim_closed_comes_in_once_translated(s, db):
    """The claim left the open list with its last buyer message waiting for translation: that
    message was left for a later read, and a closed claim must still get that read."""
    search = {"paging": {"offset": 0, "limit": 50, "total": 0}, "data": []}
    responses.get(f"{API}/post-purchase/v1/claims/search", json=search)
    closed = dict(claim(status="closed", actions=(), due="2030-01-01T00:00:00.000Z"),
                  resolution={"reason": "refunded", "benefited": ["complainant"]})
    responses.get(CLAIM, json=closed)
    responses.get(f"{CLAIM}/messages", json=[buyer_message("", status="pending_translation")])
    chatwoot_for_mirroring()
    sync_claims.sync_claims(s)
    assert mirrored() == []
    responses.replace(responses.GET, f"{CLAIM}/messages",
                      json=[dict(buyer_message("Obrigado, recebi"), translated_message="Obrigado, recebi")])
    s.clock.advance(sync_claims.LEFT_UNREAD_RETRY)
    sync_claims.sync_claims(s)
    assert mirrored() == ["Obrigado, recebi"]
    s.clock.advance(sync_claims.LEFT_UNREAD_RETRY)
    reads = len(responses.calls)
    sync_claims.sync_claims(s)
    assert mirrored() == ["Obrigado, recebi"]
    assert len(responses.calls) - reads == 1  # the search alone: nothing is left to read


@responses.activate
@pytest.mark.parametrize("now", [
    {"json": claim(status="closed", actions=())},
    {"status": 404, "json": {"error": "not_found", "message": "claim not found"}},
], ids=["claim closed", "claim no longer readable"])
def test_a_claim_reply_whose_every_part_was_recorded_sent_before_a_crash_is_delivered(s, db, now):
    """Killed between the last part's record and the reply's: nothing is left to send, whatever
    the claim became since (a 'Nada foi enviado' here would have the agent send it again)."""
    reply_id = db.replies.accept(chatwoot_message_id=963, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Reembolso feito"}], now=s.clock(), receiver="complainant")
    assert db.replies.claim(reply_id, s.clock(), delivery.LEASE_SECONDS)
    db.replies.mark_part_sending(reply_id, 0, s.clock())
    db.replies.mark_part_sent(reply_id, 0, sync_claims.sent_key(CLAIM_ID, "Reembolso feito"), s.clock())
    s.clock.advance(delivery.LEASE_SECONDS + 1)
    responses.get(CLAIM, **now)
    send = responses.post(SEND, json={})
    assert delivery.deliver(s, reply_id) == "delivered"
    assert send.call_count == 0


@responses.activate
def test_a_sale_reply_recorded_sent_before_a_crash_is_delivered_though_its_thread_got_blocked(settings, db):
    """The sale's twin: the blocked-thread check comes before nothing left to send."""
    s = sale_services(settings, db)
    db.links.update("pack", "2000001", 2.0, data={"buyer_id": 9, "blocked": True, "migrated": False})
    reply_id = db.replies.accept(chatwoot_message_id=964, conversation_id=88, kind="message", target_id="2000001",
                                 parts=[{"text": "Enviado hoje"}], now=s.clock())
    assert db.replies.claim(reply_id, s.clock(), delivery.LEASE_SECONDS)
    db.replies.mark_part_sending(reply_id, 0, s.clock())
    db.replies.mark_part_sent(reply_id, 0, "m-77", s.clock())
    responses.get(THREAD, json={"paging": {"total": 0}, "messages": [],
                                "conversation_status": {"status": "blocked"}})
    responses.post(THREAD, json={"id": "m-78"})
    db.replies.retry_later(reply_id, s.clock(), "crash", s.clock())
    assert delivery.deliver(s, reply_id) == "delivered"


@responses.activate
def test_a_reply_to_the_buyer_goes_to_the_buyer_when_the_buyer_can_be_written_to_before_any_part_left(s, db):
    """Accepted while the last read of the claim allowed the mediator only (so the mediator was to get
    it); when it leaves, the buyer the agent addressed can be written to: nothing has left yet, so
    it goes to the buyer, and nobody is told it went elsewhere."""
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"], receivers=["mediator"]))
    status, _code, extra = accept.accept_webhook(
        message_created(message_id=965, conversation_id=88, inbox_id=CLAIM_INBOX, content="Olá, vamos trocar",
                        custom_attributes={"meli_claim_id": CLAIM_ID}), s.settings, db, s.clock())
    assert status == "accepted"
    responses.get(CLAIM, json=claim(stage="dispute",
                                    actions=("send_message_to_mediator", "send_message_to_complainant")))
    send = responses.post(SEND, json={})
    assert delivery.deliver(s, extra["reply_id"]) == "delivered"
    assert json.loads(send.calls[0].request.body)["receiver_role"] == "complainant"
    assert db.replies.get(extra["reply_id"])["receiver"] == "complainant"


@responses.activate
def test_a_site_message_older_than_an_equal_reply_is_never_taken_for_that_reply(s, db):
    """The seller typed the words on the site minutes before an agent sent the same ones, and no sync
    ran in between: the agent's reply is the later message (here moderated: its agent must learn it),
    the earlier one is the site's."""
    start = 1_790_000_000.0
    text_ = "Pode enviar uma foto da etiqueta?"
    reply_id = db.replies.accept(chatwoot_message_id=966, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": text_}], now=start + 290, receiver="complainant")
    db.replies.mark_part_sending(reply_id, 0, start + 300)
    db.replies.mark_part_sent(reply_id, 0, sync_claims.sent_key(CLAIM_ID, text_), start + 301)
    db.replies.mark_delivered(reply_id, start + 302)
    s.clock = lambda: start + 400
    responses.get(CLAIM, json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{CLAIM}/messages", json=[
        respondent_message(text_, 0) | {"date_created": iso(start)},
        respondent_message(text_, 0) | {"date_created": iso(start + 300), "status": "rejected",
                                        "moderation": {"status": "rejected", "reason": "PERSONAL_DATA"}}])
    chatwoot_for_mirroring()
    failed_mark = responses.patch(f"{CW}/conversations/88/messages/966", json={})
    sync_claims.sync_claim(s, CLAIM_ID)
    [ours] = [link for link in db.links.with_prefix("claim_message", f"{CLAIM_ID}:") if link["message_id"] == 966]
    assert iso(start + 300) in ours["external_id"]
    assert json.loads(failed_mark.calls[0].request.body)["status"] == "failed"
    assert len(mirrored()) == 1  # the site's own message, as the seller's


@responses.activate
def test_one_claim_whose_fact_cannot_be_shown_holds_up_neither_the_other_claims_facts_nor_moderation_checks(s, db):
    """Chatwoot keeps failing on one claim's conversation: the others still get their facts, and the
    replies delivered a few minutes ago still get their moderation check this poll."""
    other = "5000002"
    for claim_id, conversation_id in ((CLAIM_ID, 88), (other, 89)):
        data = dict(db.links.get("claim", CLAIM_ID)["data"], affects=None, last_updated="2026-11-20T10:00:00.000Z")
        db.links.mark_created("claim", claim_id, 1.0, conversation_id=conversation_id, contact_id=5, data=data)
        responses.get(f"{API}/post-purchase/v1/claims/{claim_id}/affects-reputation",
                      json={"affects_reputation": "affected"})
    responses.get(f"{CW}/conversations/88", status=500, json={"error": "boom"})
    responses.get(f"{CW}/conversations/89", json={"id": 89, "custom_attributes": {}})
    shown = responses.post(f"{CW}/conversations/89/custom_attributes", json={})
    now = s.clock()
    reply_id = db.replies.accept(chatwoot_message_id=967, conversation_id=89, kind="claim", target_id=other,
                                 parts=[{"text": "Feito"}], now=now - 600, receiver="complainant")
    db.replies.mark_delivered(reply_id, now - 300)
    responses.get(f"{API}/post-purchase/v1/claims/search", json={
        "paging": {"offset": 0, "limit": 50, "total": 2},
        "data": [claim(), dict(claim(), id=int(other))]})
    checked = responses.get(f"{API}/post-purchase/v1/claims/{other}", status=503, json={})
    sync_claims.sync_claims(s)
    assert shown.call_count == 1
    assert checked.call_count >= 1  # the moderation check read the claim (it failed: due again)


@responses.activate
@pytest.mark.parametrize("failing", ["deadline note", "sale note"])
def test_one_claim_whose_note_cannot_be_posted_holds_up_no_moderation_check(s, db, failing):
    now = s.clock()
    data = dict(db.links.get("claim", CLAIM_ID)["data"], last_updated="2026-11-20T10:00:00.000Z")
    if failing == "deadline note":
        data.update(due=iso(now + 3600), awaiting_seller=True, sale_noted=True, last_message_at=now - 100)
    else:
        data.update(sale_noted=False)
        db.links.mark_created("pack", "2000001", 1.0, conversation_id=77, contact_id=5, data={"buyer_id": 7001})
    db.links.update("claim", CLAIM_ID, 2.0, data=data)
    responses.post(f"{CW}/conversations/88/messages", status=500, json={"error": "boom"})
    responses.post(f"{CW}/conversations/77/messages", status=500, json={"error": "boom"})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.get(f"{CW}/conversations/77/messages", json={"payload": []})
    reply_id = db.replies.accept(chatwoot_message_id=968, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Feito"}], now=now - 600, receiver="complainant")
    db.replies.mark_delivered(reply_id, now - 300)
    responses.get(f"{API}/post-purchase/v1/claims/search", json={
        "paging": {"offset": 0, "limit": 50, "total": 1}, "data": [claim()]})
    checked = responses.get(CLAIM, status=503, json={})
    sync_claims.sync_claims(s)
    assert checked.call_count >= 1  # the moderation check still read the claim


@responses.activate
def test_a_claim_reply_of_many_parts_outlasting_one_lease_is_never_taken_over_between_parts(s, db):
    """As the sale's: each part renews the lease, or another outbox worker would take the reply over
    and send its parts again while this one is still sending them."""
    reply_id = db.replies.accept(chatwoot_message_id=969, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Primeira parte"}, {"text": "Segunda parte"}], now=s.clock(),
                                 receiver="complainant")
    responses.get(CLAIM, json=claim())
    taken_over = []

    def send(request):
        s.clock.advance(delivery.LEASE_SECONDS * 0.9)  # a slow send (rate budget, a slow answer)
        taken_over.append(db.replies.claim(reply_id, s.clock(), delivery.LEASE_SECONDS) is not None)
        return 200, {}, "{}"

    responses.add_callback(responses.POST, SEND, callback=send)
    assert delivery.deliver(s, reply_id) == "delivered"
    assert taken_over == [False, False]


@responses.activate
def test_a_claim_reply_sent_again_after_a_look_that_found_nothing_is_not_mirrored_back_when_its_first_send_lands(
        s, db):
    """The claims twin of a sale's stray send: the first send's answer was lost and, settled, it was not in the
    claim, so the part went again. Mercado Livre applied the first one after all, later: two copies of one part.
    The one the part is recorded by is adopted; the other was mirrored as a message the seller typed on the site."""
    text_ = "Vamos reembolsar hoje"
    reply_id = db.replies.accept(chatwoot_message_id=970, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": text_}], now=s.clock(), receiver="complainant")
    responses.get(CLAIM, json=claim(due="2030-01-01T00:00:00.000Z"))
    arrived = []
    calls = []

    def send(request):
        calls.append(1)
        if len(calls) == 1:
            return 503, {}, "{}"  # held: applied only later
        arrived.append(respondent_message(text_, 0) | {"date_created": iso(s.clock())})
        return 200, {}, "{}"

    responses.add_callback(responses.POST, SEND, callback=send)
    responses.add_callback(responses.GET, f"{CLAIM}/messages", callback=lambda r: (200, {}, json.dumps(arrived)))
    assert delivery.deliver(s, reply_id) == "retry"
    s.clock.advance(3600)
    assert delivery.deliver(s, reply_id) == "delivered"
    arrived.append(respondent_message(text_, 0) | {"date_created": iso(s.clock() + 5)})  # the first send, late
    chatwoot_for_mirroring()
    s.clock.advance(60)

    sync_claims.sync_claim(s, CLAIM_ID)

    assert mirrored() == []


@responses.activate
def test_another_claim_replys_stray_send_landing_late_is_not_taken_for_this_replys_lost_send(s, db):
    """Reply 1 went again after a look that found nothing; its first send lands later, never mirrored (the
    bridge's own). Reply 2, the same words, lost its answer and did not arrive: that copy is reply 1's stray
    as much as reply 2's, so reply 2 goes again rather than show delivered."""
    text_ = "Ok, obrigado"
    responses.get(CLAIM, json=claim(due="2030-01-01T00:00:00.000Z"))
    arrived = []
    outcomes = iter([503, 200, 503, 200])
    sent = []

    def send(request):
        status = next(outcomes)
        sent.append(status)
        if status == 200:
            arrived.append(respondent_message(text_, 0) | {"date_created": iso(s.clock())})
        return status, {}, "{}"

    responses.add_callback(responses.POST, SEND, callback=send)
    responses.add_callback(responses.GET, f"{CLAIM}/messages", callback=lambda r: (200, {}, json.dumps(arrived)))
    first = db.replies.accept(chatwoot_message_id=971, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                              parts=[{"text": text_}], now=s.clock(), receiver="complainant")
    assert delivery.deliver(s, first) == "retry"
    s.clock.advance(3600)
    assert delivery.deliver(s, first) == "delivered"
    second = db.replies.accept(chatwoot_message_id=972, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                               parts=[{"text": text_}], now=s.clock(), receiver="complainant")
    assert delivery.deliver(s, second) == "retry"  # its answer lost: it did not arrive
    arrived.append(respondent_message(text_, 0) | {"date_created": iso(s.clock() + 5)})  # reply 1's first send
    s.clock.advance(3600)

    assert delivery.deliver(s, second) == "delivered"
    assert sent == [503, 200, 503, 200]
