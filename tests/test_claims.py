"""Claims: pure decisions, the listener's acceptance of claim replies, the sync against recorded state."""

import json
import threading
import time

import pytest
import responses

from bridge.replies import accept, delivery
from bridge.sync import claims as sync_claims
from tests.helpers import authorized_services
from tests.payloads import message_created

CLAIM_INBOX = 9


def claim(stage="claim", status="opened", actions=("send_message_to_complainant",), due="2026-11-22T10:00:00.000Z"):
    return {"id": 5000001, "resource": "order", "resource_id": 2000001, "type": "mediations", "stage": stage,
            "status": status, "reason_id": "PDD9939", "last_updated": "2026-11-20T10:00:00.000Z",
            "players": [{"role": "complainant", "type": "buyer", "user_id": 7001, "available_actions": []},
                        {"role": "respondent", "type": "seller", "user_id": 555,
                         "available_actions": [{"action": a, "due_date": due, "mandatory": True}
                                               for a in actions]}],
            "resolution": None}


def test_a_reply_goes_to_the_buyer_unless_the_mediator_is_asked_for_or_the_only_one_allowed():
    open_claim = claim()
    dispute = claim(stage="dispute", actions=("send_message_to_mediator",))
    both = claim(stage="dispute", actions=("send_message_to_complainant", "send_message_to_mediator"))
    assert sync_claims.choose_receiver("complainant", open_claim) == "complainant"
    assert sync_claims.choose_receiver("mediator", open_claim) is None
    assert sync_claims.choose_receiver("complainant", dispute) == "mediator"
    assert sync_claims.choose_receiver("complainant", both) == "complainant"
    assert sync_claims.choose_receiver("mediator", both) == "mediator"
    assert sync_claims.choose_receiver("complainant", claim(actions=("refund",))) is None


def test_unknown_actions_are_shown_by_name_and_never_fail():
    assert sync_claims.action_name("send_potato") == "send potato"
    assert sync_claims.next_action(claim(actions=("send_potato",)))[0] == "send_potato"
    assert sync_claims.next_action({"players": "garbage"}) == (None, None)


def test_a_message_is_known_by_role_date_and_text_hash_never_by_its_text():
    message = {"sender_role": "complainant", "date_created": "2026-11-20T10:00:00.000Z",
               "message": "Meu telefone é 11 99999-9999"}
    key = sync_claims.message_key("5", message)
    assert "99999" not in key and key.startswith("5:complainant:2026-11-20T10:00:00.000Z:")
    assert key == sync_claims.message_key("5", dict(message, message="Meu  telefone é 11 99999-9999"))
    assert key != sync_claims.message_key("5", dict(message, sender_role="mediator"))


def test_the_mediator_speaks_with_a_visible_prefix_and_moderation_is_shown_with_its_reason():
    mediator = {"sender_role": "mediator", "message": "Envie a nota fiscal"}
    assert sync_claims.message_content(mediator, "incoming") == "Mediação do Mercado Livre: Envie a nota fiscal"
    rejected = {"sender_role": "complainant", "message": "me liga", "status": "rejected",
                "moderation": {"status": "rejected", "reason": "PERSONAL_DATA"}}
    assert "dados pessoais" in sync_claims.message_content(rejected, "incoming")


def test_state_changes_become_notes_once_each():
    old = {"stage": "claim", "status": "opened", "due": "2026-11-22T10:00:00.000Z"}
    dispute = claim(stage="dispute", actions=("send_message_to_mediator",), due="2026-11-23T10:00:00.000Z")
    events = dict(sync_claims.state_events(old, dispute))
    assert set(events) == {"stage:dispute", "due:2026-11-23T10:00:00.000Z"}
    closed = dict(claim(status="closed"), resolution={"reason": "payment_refunded", "benefited": ["complainant"]})
    events = dict(sync_claims.state_events(old, closed))
    assert list(events) == ["closed"] and "o comprador" in events["closed"]
    assert sync_claims.state_events(dict(old, status="closed"), closed) == []


def test_the_deadline_counts_only_when_near_and_the_seller_owes_an_answer():
    data = {"status": "opened", "due": "2026-11-21T10:00:00.000Z", "awaiting_seller": True}
    due = sync_claims.parse_date(data["due"])
    assert sync_claims.due_soon(data, due - 3600)
    assert not sync_claims.due_soon(data, due - 25 * 3600)
    assert not sync_claims.due_soon(dict(data, awaiting_seller=False), due - 3600)
    assert not sync_claims.due_soon(dict(data, status="closed"), due - 3600)
    assert sync_claims.awaiting_seller([{"sender_role": "respondent", "date_created": "1"},
                                        {"sender_role": "complainant", "date_created": "2"}])
    assert not sync_claims.awaiting_seller([{"sender_role": "respondent", "date_created": "3"},
                                            {"sender_role": "complainant", "date_created": "2"}])


def test_the_listener_ignores_the_claims_inbox_while_claims_are_off(settings, db):
    status, code, extra = accept.accept_webhook(message_created(inbox_id=CLAIM_INBOX), settings, db, 1000.0)
    assert (status, code, extra["reason"]) == ("ignored", 200, "not a Mercado Livre inbox")


def test_a_claim_reply_is_accepted_with_the_receiver_the_agent_chose(make_settings, db):
    settings = make_settings(CHATWOOT_CLAIMS_INBOX_ID=str(CLAIM_INBOX))
    body = message_created(message_id=1, inbox_id=CLAIM_INBOX, content="Olá",
                           custom_attributes={"meli_claim_id": "5000001", "meli_claim_reply_to": "Mediador "})
    status, _code, extra = accept.accept_webhook(body, settings, db, 1000.0)
    assert status == "accepted" and extra["kind"] == "claim" and extra["target"] == "5000001"
    assert db.replies.get(extra["reply_id"])["receiver"] == "mediator"
    body = message_created(message_id=2, inbox_id=CLAIM_INBOX, content="Olá",
                           custom_attributes={"meli_claim_id": "5000001", "meli_claim_reply_to": ["x"]})
    _status, _code, extra = accept.accept_webhook(body, settings, db, 1000.0)
    assert db.replies.get(extra["reply_id"])["receiver"] == "complainant"


def test_a_claim_reply_with_a_file_and_no_text_is_refused_with_a_note(make_settings, db):
    settings = make_settings(CHATWOOT_CLAIMS_INBOX_ID=str(CLAIM_INBOX))
    files = [{"id": 5, "extension": "png", "data_url": "https://chat.example.test/rails/active_storage/x/foto.png",
              "file_size": 100}]
    body = message_created(message_id=3, inbox_id=CLAIM_INBOX, content=None, attachments=files,
                           custom_attributes={"meli_claim_id": "5000001"})
    status, _code, extra = accept.accept_webhook(body, settings, db, 1000.0)
    assert status == "refused" and extra["reason"] == "anexo sem texto"


# ---- the claims sync against recorded state (responses + a real database) -------------------------

API = "https://api.meli.test"
CW = "https://chat.example.test/api/v1/accounts/1"
CLAIM_ID = "5000001"


@pytest.fixture
def s(make_settings, db, clock):
    services = authorized_services(make_settings(CHATWOOT_CLAIMS_INBOX_ID=str(CLAIM_INBOX)), db, clock)
    data = {"buyer_id": 7001, "order_id": "2000001", "pack_id": "2000001", "stage": "claim", "status": "opened",
            "last_updated": "old", "due": "2026-11-22T10:00:00.000Z", "affects": "not_affected",
            "attributes": sync_claims.claim_attributes(claim(), None, "not_affected")}
    db.links.mark_created("claim", CLAIM_ID, 1.0, conversation_id=88, contact_id=5, data=data)
    return services


def respondent_message(text, minute):
    return {"sender_role": "respondent", "receiver_role": "complainant", "message": text,
            "date_created": f"2026-11-20T10:{minute:02d}:00.000Z", "status": "available", "attachments": []}


def delivered_claim_reply(db, message_id, text):
    reply_id = db.replies.accept(chatwoot_message_id=message_id, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": text}], now=1000.0, receiver="complainant")
    db.replies.mark_part_sent(reply_id, 0, sync_claims.sent_key(CLAIM_ID, text), 1001.0)
    db.replies.mark_delivered(reply_id, 1002.0)
    return reply_id


@responses.activate
def test_a_reply_repeating_a_pruned_replys_text_is_still_the_agents_own_message(s, db):
    old = delivered_claim_reply(db, 901, "Ok, obrigado")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim())
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[respondent_message("Ok, obrigado", 1)])
    sync_claims.sync_claim(s, CLAIM_ID)
    # The old reply is forgotten (housekeeping); weeks later an agent writes the same words.
    db.replies.mark_reported(old, 1003.0)
    assert db.prune(s.clock())["replies"] == 1 and db.replies.parts(old) == []
    delivered_claim_reply(db, 902, "Ok, obrigado")
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                      json=[respondent_message("Ok, obrigado", 1), respondent_message("Ok, obrigado", 40)])
    sync_claims.sync_claim(s, CLAIM_ID)
    created = [c for c in responses.calls if c.request.method == "POST" and "/messages" in c.request.url
               and c.request.url.startswith(CW)]
    assert created == []
    links = [link for link in db.links.with_prefix("claim_message", f"{CLAIM_ID}:")]
    assert sorted(link["message_id"] for link in links) == [901, 902]


@responses.activate
def test_a_file_mercado_livre_no_longer_has_is_named_and_the_conversation_is_kept(s, db):
    message = {"sender_role": "complainant", "receiver_role": "respondent", "message": "Veja a foto",
               "date_created": "2026-11-20T10:05:00.000Z", "status": "available",
               "attachments": [{"filename": "7001_abc.png", "original_filename": "foto.png", "size": 10}]}
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[message])
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/attachments/7001_abc.png/download", status=404,
                  json={"error": "not_found", "message": "attachment not found"})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 700})
    responses.get(f"{CW}/conversations/88", json={"custom_attributes": {"meli_claim_reply_to": "mediador"}})
    responses.post(f"{CW}/conversations/88/custom_attributes", json={})
    assert sync_claims.sync_claim(s, CLAIM_ID) == 1
    posted = [json.loads(c.request.body) for c in responses.calls
              if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"]
    [created] = [m for m in posted if not m["private"]]
    assert [m["content"] for m in posted if m["private"]] == [
        "O prazo do vendedor mudou: responder ao comprador até 01/01/2030 00:00 UTC."]
    assert created["content"].startswith("Veja a foto") and "foto.png" in created["content"]
    assert "não disponível no Mercado Livre" in created["content"]
    # The due date moved: attributes updated, the agent's own attribute kept.
    [attributes] = [json.loads(c.request.body)["custom_attributes"] for c in responses.calls
                    if c.request.url == f"{CW}/conversations/88/custom_attributes"]
    assert attributes["meli_claim_reply_to"] == "mediador"
    assert attributes["meli_claim_due_date"] == "2030-01-01T00:00:00.000Z"
    link = db.links.get("claim", CLAIM_ID)
    assert link["conversation_id"] == 88 and link["data"]["last_updated"] == claim()["last_updated"]


def buyer_message(text, date="2026-11-20T10:05:00.000Z", status="available"):
    return {"sender_role": "complainant", "receiver_role": "respondent", "message": text, "date_created": date,
            "status": status, "attachments": []}


def chatwoot_for_mirroring(first_id=700):
    """Conversation 88 as Chatwoot keeps it: created messages are listed back with their source_id."""
    stored = []

    def create(request):
        body = json.loads(request.body)
        stored.append(dict(body, id=first_id + len(stored)))
        return 200, {}, json.dumps(stored[-1])

    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages", callback=create)
    responses.add_callback(responses.GET, f"{CW}/conversations/88/messages",
                           callback=lambda r: (200, {}, json.dumps({"payload": [] if "before" in r.url else stored})))
    responses.get(f"{CW}/conversations/88", json={"custom_attributes": {}})
    responses.post(f"{CW}/conversations/88/custom_attributes", json={})


def mirrored(conversation_id=88):
    return [json.loads(c.request.body)["content"] for c in responses.calls
            if c.request.method == "POST" and c.request.url == f"{CW}/conversations/{conversation_id}/messages"
            and not json.loads(c.request.body).get("private")]


@responses.activate
def test_two_equal_buyer_messages_with_the_same_date_are_both_mirrored_once(s, db):
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[buyer_message("ok"), buyer_message("ok")])
    chatwoot_for_mirroring()
    assert sync_claims.sync_claim(s, CLAIM_ID) == 2
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"], last_updated="older"))
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == ["ok", "ok"]


@responses.activate
def test_two_equal_replies_mercado_livre_dated_alike_are_both_the_agents_and_none_comes_back(s, db):
    delivered_claim_reply(db, 901, "ok")
    delivered_claim_reply(db, 902, "ok")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[respondent_message("ok", 1), respondent_message("ok", 1)])
    chatwoot_for_mirroring()
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == []
    assert sorted(link["message_id"] for link in db.links.with_prefix("claim_message", f"{CLAIM_ID}:")) == [901, 902]


@responses.activate
def test_a_site_message_held_back_for_a_reply_in_flight_is_read_again_at_the_next_poll(s, db):
    reply_id = db.replies.accept(chatwoot_message_id=903, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "ok"}], now=1000.0, receiver="complainant")
    db.replies.mark_part_sending(reply_id, 0, 1000.0)
    summary = claim(due="2030-01-01T00:00:00.000Z")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=summary)
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[respondent_message("ok", 1)])
    chatwoot_for_mirroring()
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == []
    # The part then fails (nothing reached the claim): the seller's own "ok" must still come in.
    db.replies.mark_part_unsent(reply_id, 0)
    db.replies.mark_failed(reply_id, "x", "x", 1100.0)
    assert sync_claims._changed(s, CLAIM_ID, summary)
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == ["ok\n\n(enviada pelo Mercado Livre, fora do Chatwoot)"]
    assert not sync_claims._changed(s, CLAIM_ID, summary)


@responses.activate
def test_a_message_waiting_for_translation_comes_in_once_with_its_final_text(s, db):
    summary = claim(due="2030-01-01T00:00:00.000Z")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=summary)
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[buyer_message("", status="pending_translation")])
    chatwoot_for_mirroring()
    sync_claims.sync_claim(s, CLAIM_ID)
    assert sync_claims._changed(s, CLAIM_ID, summary)
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                      json=[dict(buyer_message("Chegou quebrado"), translated_message="Chegou quebrado")])
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == ["Chegou quebrado"]


@responses.activate
def test_a_claim_reply_split_in_parts_never_sends_its_rest_to_another_receiver(s, db):
    reply_id = db.replies.accept(chatwoot_message_id=904, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Primeira parte"}, {"text": "Segunda parte"}], now=s.clock(),
                                 receiver="complainant")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim())
    sent = []

    def send(request):
        sent.append(json.loads(request.body))
        return (503, {}, "{}") if len(sent) == 2 else (200, {}, "{}")

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    assert delivery.deliver(s, reply_id) == "retry"
    # Meanwhile the claim went to mediation: only the mediator may be written to now.
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                      json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[])
    s.clock.advance(3600)  # the unanswered send has long settled, and did not arrive
    assert delivery.deliver(s, reply_id) == "failed"
    assert {m["receiver_role"] for m in sent} == {"complainant"}
    assert "Segunda parte" not in [m["message"] for m in sent if m["receiver_role"] == "mediator"]


@responses.activate
def test_a_claim_reply_begun_to_the_mediator_as_the_only_receiver_ends_there(s, db):
    reply_id = db.replies.accept(chatwoot_message_id=905, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Primeira parte"}, {"text": "Segunda parte"}], now=s.clock(),
                                 receiver="complainant")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    sent = []

    def send(request):
        sent.append(json.loads(request.body))
        return (503, {}, "{}") if len(sent) == 2 else (200, {}, "{}")

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    assert delivery.deliver(s, reply_id) == "retry"
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                      json=claim(stage="dispute", actions=("send_message_to_mediator", "send_message_to_complainant")))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[])
    s.clock.advance(3600)
    assert delivery.deliver(s, reply_id) == "delivered"
    assert [(m["message"], m["receiver_role"]) for m in sent] == [
        ("Primeira parte", "mediator"), ("Segunda parte", "mediator"), ("Segunda parte", "mediator")]


@responses.activate
def test_a_deadline_note_is_written_once_while_a_notification_syncs_the_same_claim(s, db):
    due = "2026-11-22T10:00:00.000Z"
    s.clock = lambda: sync_claims.parse_date(due) - 3600
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"], awaiting_seller=True,
                                                     last_message_at=1.0, last_updated=claim()["last_updated"]))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due=due))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[buyer_message("Cadê?")])
    responses.post(f"{CW}/conversations/88/toggle_status", json={})
    responses.post(f"{CW}/conversations/88/toggle_priority", json={})
    stored, syncs = [], []

    def create(request):
        body = json.loads(request.body)
        if body.get("private") and not syncs:
            # The notifications job takes the same claim while the poll writes its deadline note.
            syncs.append(threading.Thread(target=sync_claims.sync_claim, args=(s, CLAIM_ID)))
            syncs[0].start()
            syncs[0].join(timeout=2)
        stored.append(dict(body, id=700 + len(stored)))
        return 200, {}, json.dumps(stored[-1])

    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages", callback=create)
    responses.add_callback(responses.GET, f"{CW}/conversations/88/messages",
                           callback=lambda r: (200, {}, json.dumps({"payload": [] if "before" in r.url else stored})))
    assert sync_claims.check_deadlines(s) == 1
    syncs[0].join()
    assert [m["content"][:20] for m in stored if m.get("private")] == ["Prazo perto do fim: "]


def test_messages_are_ordered_by_their_moment_whatever_the_time_zone_of_their_dates():
    seller = respondent_message("Antes", 0) | {"date_created": "2026-11-20T14:00:00.000Z"}
    buyer = buyer_message("Depois", date="2026-11-20T11:30:00.000-04:00")  # 15:30 UTC
    assert [m["message"] for m in sync_claims.in_order([buyer, seller])] == ["Antes", "Depois"]
    assert sync_claims.awaiting_seller([buyer, seller])


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))


@responses.activate
def test_a_reply_in_doubt_that_arrived_is_not_sent_again_because_an_older_equal_reply_is_not_matched_yet(s, db):
    start = 1_790_000_000.0
    older = db.replies.accept(chatwoot_message_id=906, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                              parts=[{"text": "ok"}], now=start, receiver="complainant")
    db.replies.mark_part_sent(older, 0, sync_claims.sent_key(CLAIM_ID, "ok"), start + 1)
    db.replies.mark_delivered(older, start + 1)
    # Ten minutes later the same words again; the send's answer is lost, but it reached the claim.
    reply_id = db.replies.accept(chatwoot_message_id=907, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "ok"}], now=start + 600, receiver="complainant")
    db.replies.mark_part_sending(reply_id, 0, start + 600)
    db.replies.mark_part_attempted(reply_id, 0, start + 600)
    s.clock = lambda: start + 900
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim())
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[respondent_message("ok", 0) | {"date_created": iso(start + 1)},
                        respondent_message("ok", 0) | {"date_created": iso(start + 600)}])
    send = responses.post(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message", json={})
    assert delivery.deliver(s, reply_id) == "delivered"
    assert send.call_count == 0


@responses.activate
def test_a_reply_to_a_claim_mercado_livre_no_longer_shows_fails_at_once_with_a_note(s, db):
    reply_id = db.replies.accept(chatwoot_message_id=908, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Olá"}], now=s.clock(), receiver="complainant")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", status=404,
                  json={"error": "not_found", "message": "claim not found"})
    assert delivery.deliver(s, reply_id) == "failed"
    reply = db.replies.get(reply_id)
    assert "Nada foi enviado" in reply["note"] and reply["error"] == "reclamação não acessível"


def found_resolved_conversation(db, messages):
    """Claim conversation 88, adopted at an agent's reply (the bridge's create lost its answer) and
    resolved by an agent since; the claim row is still pending."""
    db.links.update("claim", CLAIM_ID, 2.0, status="pending", conversation_id=None, data={})
    assert db.links.adopt_conversation("claim", CLAIM_ID, 88, 3.0)
    db.links.mark_created("buyer", "7001", 1.0, contact_id=5, data={"inboxes": [CLAIM_INBOX]})
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=messages)
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation",
                  json={"affects_reputation": "not_affected"})
    responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 7001, "nickname": "COMPRADOR"}})
    responses.get(f"{CW}/conversations/88", json={"id": 88, "inbox_id": CLAIM_INBOX, "status": "resolved"})
    responses.post(f"{CW}/conversations/88/labels", json={})
    chatwoot_for_mirroring()


@responses.activate
def test_a_buyer_message_reopens_a_found_claim_conversation_an_agent_resolved(s, db):
    """The claim's conversation was not made by this sync but found (here: adopted at an agent's reply
    after its create's answer was lost); the agent resolved it since. A buyer message reopens it."""
    found_resolved_conversation(db, [buyer_message("Chegou quebrado")])

    assert sync_claims.sync_claim(s, CLAIM_ID) == 1
    assert "Chegou quebrado" in mirrored()[-1]
    toggles = [json.loads(c.request.body) for c in responses.calls if c.request.url.endswith("/toggle_status")]
    assert toggles and all(t == {"status": "open"} for t in toggles)
    assert db.links.get("claim", CLAIM_ID)["status"] == "created"


@responses.activate
def test_a_found_claim_conversation_an_agent_resolved_is_reopened_for_the_claim_itself(s, db):
    """Found rather than made, and resolved by an agent while still empty: the claim's summary (the
    buyer's complaint) going in reopens it, though the buyer has written nothing else yet."""
    found_resolved_conversation(db, [])

    sync_claims.sync_claim(s, CLAIM_ID)
    calls = [(c.request.url.rsplit("/", 1)[-1], json.loads(c.request.body)) for c in responses.calls
             if c.request.method == "POST" and c.request.url.startswith(f"{CW}/conversations/88/")]
    toggles = [i for i, (what, _b) in enumerate(calls) if what == "toggle_status"]
    summary = [i for i, (what, body) in enumerate(calls) if what == "messages" and body["message_type"] == "incoming"]
    assert toggles and summary and toggles[0] < summary[0]
    assert all(calls[i][1] == {"status": "open"} for i in toggles)
    assert db.links.get("claim", CLAIM_ID)["status"] == "created"


@responses.activate
def test_a_claim_message_mirrored_by_a_sync_that_failed_after_it_stays_covered_once_the_claim_is_erased(s, db):
    """The buyer's message went into Chatwoot, then the stage note failed: the claim's row still holds
    the last message date of the sync before. Erased then, the claim's mark must cover that message,
    or the next sync would show it again, in a new conversation."""
    message = buyer_message("chegou quebrado", date="2026-11-20T10:05:00.000Z")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[message])
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation",
                  json={"affects_reputation": "not_affected"})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    def note_refused(request):
        body = json.loads(request.body)
        if body.get("private"):
            return 422, {}, json.dumps({"error": "refused"})
        return 200, {}, json.dumps(dict(body, id=700))

    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages", callback=note_refused)
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    with pytest.raises(Exception):  # noqa: B017 — what failed after the message went in
        sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == ["chegou quebrado"]

    db.privacy.forget_buyer("7001", s.clock())
    assert sync_claims.after_watermark([message], db.watermarks.get("claim", CLAIM_ID)) == []


@responses.activate
def test_a_claim_message_mirrored_while_the_claim_was_erased_opens_no_new_conversation_later(s, db):
    """`forget-buyer` runs while the poller mirrors the buyer's second message: it is in Chatwoot,
    after the erasure's mark. The next sync has nothing new: no new conversation for the erased buyer."""
    first = buyer_message("primeira", date="2026-11-20T10:01:00.000Z")
    second = buyer_message("segunda", date="2026-11-20T10:02:00.000Z")
    key = sync_claims.message_key(CLAIM_ID, first)
    db.links.mark_created("claim_message", key, 1.0, conversation_id=88, message_id=699,
                          data={"role": "complainant", "direction": "incoming",
                                "at": sync_claims.parse_date(first["date_created"])})
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim())
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[first, second])
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation",
                  json={"affects_reputation": "not_affected"})
    responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 7001, "nickname": "ZEQ"}})
    responses.post(f"{CW}/conversations/88/toggle_status", json={})

    def erased_while_mirrored(_request):
        db.privacy.forget_buyer("7001", s.clock())
        return 200, {}, json.dumps({"id": 700})

    responses.add_callback(responses.POST, f"{CW}/conversations/88/messages", callback=erased_while_mirrored)
    responses.post(f"{CW}/contacts", json={"payload": {"contact": {"id": 6}}})
    responses.post(f"{CW}/conversations", json={"id": 95})
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == ["segunda"]

    try:
        sync_claims.sync_claim(s, CLAIM_ID)
    except Exception:  # noqa: BLE001 — only what it made in Chatwoot matters here
        pass
    assert not [c for c in responses.calls if c.request.method == "POST" and c.request.url in
                (f"{CW}/contacts", f"{CW}/conversations")]
