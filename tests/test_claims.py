"""Claims: pure decisions, the listener's acceptance of claim replies, the sync against recorded state."""

import json
import re
import threading
import time
import unicodedata

import pytest
import responses
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from bridge.replies import accept, delivery, refusal, report
from bridge.rules import claims as claim_rules
from bridge.sync import claims as sync_claims
from tests.fakes.fake_meli import in_old_shape
from tests.helpers import authorized_services
from tests.payloads import message_created

CLAIM_INBOX = 9
ZONE = "America/Sao_Paulo"


def claim(stage="claim", status="opened", actions=("send_message_to_complainant",), due="2026-11-22T10:00:00.000Z"):
    return {"id": 5000001, "resource": "order", "resource_id": 2000001, "type": "mediations", "stage": stage,
            "status": status, "reason_id": "PDD9939", "last_updated": "2026-11-20T10:00:00.000Z",
            "players": [{"role": "complainant", "type": "buyer", "user_id": 7001, "available_actions": []},
                        {"role": "respondent", "type": "seller", "user_id": 555,
                         "available_actions": [{"action": a, "due_date": due, "mandatory": True}
                                               for a in actions]}],
            "resolution": None}


def test_a_reply_goes_to_the_buyer_unless_the_mediator_is_asked_for_or_the_only_one_allowed():
    assert claim_rules.resolve_receiver("complainant", ["complainant"]) == "complainant"
    assert claim_rules.resolve_receiver("mediator", ["complainant"]) == "mediator"  # refused at delivery
    assert claim_rules.resolve_receiver("complainant", ["mediator"]) == "mediator"
    assert claim_rules.resolve_receiver("complainant", ["complainant", "mediator"]) == "complainant"
    assert claim_rules.resolve_receiver("mediator", ["complainant", "mediator"]) == "mediator"
    assert claim_rules.resolve_receiver("complainant", []) == "complainant"
    assert claim_rules.resolve_receiver("complainant", None) is None  # decided at delivery, before any part
    assert claim_rules.resolve_receiver("mediator", None) == "mediator"
    assert sync_claims.allowed_receivers(claim(stage="dispute", actions=("send_message_to_mediator",))) == {"mediator"}


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
    events = dict(sync_claims.state_events(old, dispute, ZONE))
    assert set(events) == {"stage:dispute", "due:2026-11-23T10:00:00.000Z"}
    closed = dict(claim(status="closed"), resolution={"reason": "payment_refunded", "benefited": ["complainant"]})
    events = dict(sync_claims.state_events(old, closed, ZONE))
    assert list(events) == ["closed"] and "o comprador" in events["closed"]
    assert sync_claims.state_events(dict(old, status="closed"), closed, ZONE) == []


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
                           custom_attributes={"meli_claim_id": "5000001"})
    _status, _code, extra = accept.accept_webhook(body, settings, db, 1000.0)
    # The buyer, addressed in a claim not synced yet: the delivery decides, before the first part.
    assert db.replies.get(extra["reply_id"])["addressed"] == "complainant"
    assert db.replies.get(extra["reply_id"])["receiver"] is None


@pytest.mark.parametrize("typed", ["Mediadora", "mediador.", "mediação do ML", "MEDIAÇÃO", "  mediador  ",
                                   "Mediador do Mercado Livre", "a mediação", "mediator",
                                   "mediador"])
def test_the_mediator_is_recognized_however_agents_type_it(typed):
    assert claim_rules.parse_reply_to(typed) == "mediator"


@pytest.mark.parametrize("typed", [None, "", "   ", "comprador", "Compradora", "comprador(a)", "o comprador",
                                   "Cliente", "buyer", "COMPRADOR!"])
def test_the_buyer_is_recognized_and_an_empty_attribute_means_the_buyer(typed):
    assert claim_rules.parse_reply_to(typed) == "complainant"


@pytest.mark.parametrize("typed", ["mediadro", "vendedor", "mediador ou comprador", "?", "x", ["mediador"], 1,
                                   True, {"value": "mediador"}, "o", "comprador e mediador",
                                   # Mercado Livre's name alone: its mediation, or the buyer through the site?
                                   "ML", "mercado livre", "do ML"])
def test_an_unrecognized_receiver_is_never_taken_for_the_buyer(typed):
    assert claim_rules.parse_reply_to(typed) is None


def words_of(typed: str) -> set[str]:
    plain = "".join(c for c in unicodedata.normalize("NFKD", typed.casefold()) if not unicodedata.combining(c))
    return set(re.split(r"[\W_]+", plain))


KNOWN_WORDS = sorted(claim_rules.BUYER_WORDS | claim_rules.MEDIATOR_WORDS | claim_rules.FILLER_WORDS
                     | claim_rules.MELI_WORDS)


@given(st.one_of(st.text(), st.lists(st.sampled_from(KNOWN_WORDS + ["ou", "e", "vendedor", "x"])).map(" ".join)))
@examples(max_examples=300, deadline=None)
def test_a_receiver_is_the_buyer_only_when_the_text_names_the_buyer_or_nothing(typed):
    words = words_of(typed)
    parsed = claim_rules.parse_reply_to(typed)
    if parsed == "complainant":
        assert not typed.strip() or words & claim_rules.BUYER_WORDS
        assert not words & claim_rules.MEDIATOR_WORDS
    if parsed == "mediator":
        assert not words & claim_rules.BUYER_WORDS


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1).filter(lambda t: t.strip()))
@examples(max_examples=300, deadline=None)
def test_no_text_without_a_buyer_word_is_taken_for_the_buyer(typed):
    if not words_of(typed) & claim_rules.BUYER_WORDS:
        assert claim_rules.parse_reply_to(typed) != "complainant"


def test_a_claim_reply_to_an_unrecognized_receiver_is_refused_with_the_accepted_values(make_settings, db):
    settings = make_settings(CHATWOOT_CLAIMS_INBOX_ID=str(CLAIM_INBOX))
    body = message_created(message_id=4, inbox_id=CLAIM_INBOX, content="Segue a nota fiscal",
                           custom_attributes={"meli_claim_id": "5000001", "meli_claim_reply_to": "mediadro"})
    status, _code, extra = accept.accept_webhook(body, settings, db, 1000.0)
    assert status == "refused" and extra["reason"] == "meli_claim_reply_to não reconhecido"
    reply = db.replies.get(extra["reply_id"])
    assert reply["status"] == "failed" and reply["receiver"] is None and db.replies.parts(reply["id"]) == []
    assert "comprador" in reply["note"] and "mediador" in reply["note"] and "não foi enviada" in reply["note"]


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
            "attributes": sync_claims.claim_attributes(claim(), None, "not_affected", zone="America/Sao_Paulo")}
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
        "O prazo do vendedor mudou: responder ao comprador até 31/12/2029 21:00 (horário de Brasília)."]
    assert created["content"].startswith("Veja a foto") and "foto.png" in created["content"]
    assert "não disponível no Mercado Livre" in created["content"]
    # The due date moved: attributes updated, the agent's own attribute kept.
    [attributes] = [json.loads(c.request.body)["custom_attributes"] for c in responses.calls
                    if c.request.url == f"{CW}/conversations/88/custom_attributes"]
    assert attributes["meli_claim_reply_to"] == "mediador"
    assert attributes["meli_claim_due_date"] == "31/12/2029 21:00 (horário de Brasília)"
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
def test_a_failed_claim_reply_left_in_doubt_holds_back_no_site_message_and_no_poll(s, db):
    """24 h of lost answers end a reply failed with its last part still `sending` (and its text
    cleared): that doubt is over, and must not hold back a seller message typed on the site."""
    reply_id = db.replies.accept(chatwoot_message_id=909, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "ok"}], now=1000.0, receiver="complainant")
    db.replies.mark_part_sending(reply_id, 0, 1000.0)
    db.replies.mark_failed(reply_id, "Mercado Livre indisponível por 24 h", "x", 1000.0 + 86400)
    assert db.replies.texts_in_doubt("claim", CLAIM_ID) == []
    summary = claim(due="2030-01-01T00:00:00.000Z")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=summary)
    # Typed on the site, its text removed by Mercado Livre (as a cleared part's text is empty too).
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[respondent_message("", 1)])
    chatwoot_for_mirroring()
    sync_claims.sync_claim(s, CLAIM_ID)
    assert mirrored() == ["(enviada pelo Mercado Livre, fora do Chatwoot)"]
    assert not sync_claims._changed(s, CLAIM_ID, summary)


@responses.activate
def test_claim_messages_in_the_older_plain_shape_are_mirrored_and_the_agents_own_adopted(s, db):
    delivered_claim_reply(db, 901, "Vamos trocar")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[in_old_shape(buyer_message("Chegou quebrado")),
                        in_old_shape(respondent_message("Vamos trocar", 6))])
    chatwoot_for_mirroring()
    assert sync_claims.sync_claim(s, CLAIM_ID) == 1
    assert mirrored() == ["Chegou quebrado"]
    [ours] = [link for link in db.links.with_prefix("claim_message", f"{CLAIM_ID}:") if link["message_id"] == 901]
    assert ours["data"]["by"] == "bridge"


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


def accept_claim_reply(s, db, message_id, content, reply_to=None):
    """An agent's reply in claim conversation 88, accepted by the listener."""
    attributes = {"meli_claim_id": CLAIM_ID} | ({"meli_claim_reply_to": reply_to} if reply_to else {})
    status, _code, extra = accept.accept_webhook(
        message_created(message_id=message_id, conversation_id=88, inbox_id=CLAIM_INBOX, content=content,
                        custom_attributes=attributes), s.settings, db, s.clock())
    assert status == "accepted", extra
    return extra["reply_id"]


@responses.activate
def test_a_claim_reply_begun_to_the_mediator_as_the_only_receiver_ends_there(s, db):
    """Addressed to the buyer while only the mediator may be written to: the receiver is decided at
    acceptance, and the part found arrived after a lost answer does not let the rest go elsewhere."""
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"], receivers=["mediator"]))
    reply_id = accept_claim_reply(s, db, 905, "palavra " * 300)
    assert len(db.replies.parts(reply_id)) == 2
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    sent, arrived = [], []

    def send(request):
        sent.append(json.loads(request.body))
        arrived.append(respondent_message(sent[-1]["message"], 0) | {"date_created": iso(s.clock()),
                                                                     "receiver_role": sent[-1]["receiver_role"]})
        return (503, {}, "{}") if len(sent) == 1 else (200, {}, "{}")  # applied, its answer lost

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    assert delivery.deliver(s, reply_id) == "retry"
    # Meanwhile the buyer may be written to again; the attribute changes too: neither moves the reply.
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                      json=claim(stage="dispute", actions=("send_message_to_mediator", "send_message_to_complainant")))
    responses.add_callback(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                           callback=lambda r: (200, {}, json.dumps(arrived)))
    s.clock.advance(3600)
    assert delivery.deliver(s, reply_id) == "delivered"
    assert [m["receiver_role"] for m in sent] == ["mediator", "mediator"]
    assert db.replies.get(reply_id)["receiver"] == "mediator"


@responses.activate
def test_a_reply_to_the_buyer_accepted_before_the_dispute_opened_goes_to_the_mediator_not_failed(s, db):
    """The claims sync last read the claim in stage `claim` (the buyer may be written to): the reply to
    the buyer is accepted for the buyer. By its first send the mediator joined and the seller may write
    only to the mediator. Mercado Livre refused nothing: as at acceptance, the buyer addressed is
    answered through the mediator, never failed with 'comprador não aceita mensagem agora'."""
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"],
                                                     receivers=["complainant"]))
    reply_id = accept_claim_reply(s, db, 914, "Estamos verificando")
    assert db.replies.get(reply_id)["receiver"] == "complainant"
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    send = responses.post(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message", json={})
    assert delivery.deliver(s, reply_id) == "delivered", db.replies.get(reply_id)["error"]
    assert [json.loads(c.request.body)["receiver_role"] for c in send.calls] == ["mediator"]
    assert db.replies.get(reply_id)["receiver"] == "mediator"


@responses.activate
def test_a_reply_to_the_buyer_whose_only_send_failed_goes_to_the_mediator_once_the_dispute_opened(s, db):
    """Its one send to the buyer answered 503 and, settled, is not in the claim: nothing of the reply
    went. The mediator joined meanwhile: the reply goes there, as it would have if written now,
    rather than failing as 'comprador não aceita mensagem agora' after a 503 alone."""
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"],
                                                     receivers=["complainant"]))
    reply_id = accept_claim_reply(s, db, 915, "Estamos verificando")
    assert db.replies.get(reply_id)["receiver"] == "complainant"
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim())
    sent = []

    def send(request):
        sent.append(json.loads(request.body))
        return (503, {}, "{}") if len(sent) == 1 else (200, {}, "{}")  # the 503 was not applied

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    assert delivery.deliver(s, reply_id) == "retry"
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                      json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[])
    s.clock.advance(3600)
    assert delivery.deliver(s, reply_id) == "delivered", db.replies.get(reply_id)["error"]
    assert [m["receiver_role"] for m in sent] == ["complainant", "mediator"]


@responses.activate
def test_a_reply_to_the_buyer_refused_because_the_dispute_just_opened_goes_to_the_mediator(s, db):
    """The claim read said the buyer may be written to; the mediator joined before the send arrived and
    Mercado Livre refused the buyer (403). Nothing of the reply went: it is sent to the mediator, as it
    would have been a moment later, not failed as 'comprador não aceita mensagem agora'."""
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"],
                                                     receivers=["complainant"]))
    reply_id = accept_claim_reply(s, db, 916, "Estamos verificando")
    reads = iter([claim(), claim(stage="dispute", actions=("send_message_to_mediator",))])
    responses.add_callback(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                           callback=lambda r: (200, {}, json.dumps(next(reads, claim(
                               stage="dispute", actions=("send_message_to_mediator",))))))
    sent = []

    def send(request):
        sent.append(json.loads(request.body))
        if sent[-1]["receiver_role"] == "complainant":
            return 403, {}, json.dumps({"error": "receiver_not_allowed", "status": 403,
                                        "message": "The respondent cannot send messages to the complainant now"})
        return 200, {}, "{}"

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    outcomes = [delivery.deliver(s, reply_id)]
    s.clock.advance(60)
    outcomes.append(delivery.deliver(s, reply_id))
    assert outcomes[-1] == "delivered", (outcomes, db.replies.get(reply_id)["error"])
    assert [m["receiver_role"] for m in sent] == ["complainant", "mediator"]


@responses.activate
def test_a_reply_to_the_buyer_whose_send_met_a_429_goes_to_the_mediator_once_the_dispute_opened(s, db):
    """A 429 is answered before anything is applied: nothing of the reply went, whatever its part's
    first attempt says. The mediator joined before the retry: the reply goes there."""
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"],
                                                     receivers=["complainant"]))
    reply_id = accept_claim_reply(s, db, 917, "Estamos verificando")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim())
    sent = []

    def send(request):
        sent.append(json.loads(request.body))
        return (429, {"Retry-After": "1"}, "{}") if len(sent) == 1 else (200, {}, "{}")

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    assert delivery.deliver(s, reply_id) == "retry"
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                      json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    s.clock.advance(60)
    assert delivery.deliver(s, reply_id) == "delivered", db.replies.get(reply_id)["error"]
    assert [m["receiver_role"] for m in sent] == ["complainant", "mediator"]


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
    responses.get(f"{CW}/conversations/88", json={"id": 88, "inbox_id": CLAIM_INBOX, "status": "resolved",
                                                  "custom_attributes": {"meli_claim_id": CLAIM_ID}})
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
    """Found rather than made, and resolved by an agent while still empty: the claim itself (the
    buyer's complaint, summed up in the bridge's private note) reopens it, though the buyer has
    written nothing else yet."""
    found_resolved_conversation(db, [])

    sync_claims.sync_claim(s, CLAIM_ID)
    calls = [(c.request.url.rsplit("/", 1)[-1], json.loads(c.request.body)) for c in responses.calls
             if c.request.method == "POST" and c.request.url.startswith(f"{CW}/conversations/88/")]
    toggles = [i for i, (what, _b) in enumerate(calls) if what == "toggle_status"]
    summary = [i for i, (what, body) in enumerate(calls) if what == "messages" and "abriu uma" in body["content"]]
    assert all(calls[i][1]["private"] and calls[i][1]["message_type"] == "outgoing" for i in summary)
    assert toggles and summary and toggles[0] < summary[0]
    assert all(calls[i][1] == {"status": "open"} for i in toggles)
    assert db.links.get("claim", CLAIM_ID)["status"] == "created"


@responses.activate
def test_a_failing_reputation_lookup_holds_up_neither_a_new_claim_nor_its_messages_and_is_asked_again(s, db):
    found_resolved_conversation(db, [buyer_message("Chegou quebrado")])
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation", status=503,
                      json={"error": "service_unavailable"})
    responses.post(f"{CW}/conversations/88/custom_attributes", json={})
    assert sync_claims.sync_claim(s, CLAIM_ID) == 1
    assert "Chegou quebrado" in mirrored()[-1]
    link = db.links.get("claim", CLAIM_ID)
    assert link["status"] == "created" and link["data"]["affects"] is None
    # A later poll asks again, and shows it once known.
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation",
                      json={"affects_reputation": "affected"})
    assert sync_claims.retry_optional_facts(s) == 1
    [attributes] = [json.loads(c.request.body)["custom_attributes"] for c in responses.calls
                    if c.request.url == f"{CW}/conversations/88/custom_attributes"]
    assert attributes["meli_claim_affects_reputation"] == "affected"
    assert db.links.get("claim", CLAIM_ID)["data"]["affects"] == "affected"
    assert sync_claims.retry_optional_facts(s) == 0


@responses.activate
def test_a_failing_reputation_lookup_at_a_stage_change_holds_up_no_message(s, db):
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"], affects=None))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",), due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[buyer_message("Cadê?")])
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation", status=500,
                  json={"error": "internal_error"})
    responses.get(f"{CW}/conversations/88", json={"custom_attributes": {}})
    responses.post(f"{CW}/conversations/88/custom_attributes", json={})
    chatwoot_for_mirroring()
    assert sync_claims.sync_claim(s, CLAIM_ID) == 1
    assert mirrored() == ["Cadê?"]
    assert db.links.get("claim", CLAIM_ID)["data"]["stage"] == "dispute"


def purchase_claim():
    """A claim the seller's account opened on its own purchase: it is the complainant."""
    other = claim()
    other["players"] = [{"role": "complainant", "type": "buyer", "user_id": 555, "available_actions": []},
                        {"role": "respondent", "type": "seller", "user_id": 9000001,
                         "available_actions": [{"action": "send_message_to_complainant", "due_date": None}]}]
    return dict(other, id=5000002)


@responses.activate
def test_the_search_asks_for_the_sellers_claims_and_skips_any_other(s, db):
    against = dict(claim(), id=5000003)
    search = responses.get(f"{API}/post-purchase/v1/claims/search",
                           json={"paging": {"offset": 0, "limit": 50, "total": 2},
                                 "data": [purchase_claim(), against]})
    listed, complete = sync_claims._open_claims(s)
    assert complete and list(listed) == ["5000003"]
    assert "players.role=respondent" in search.calls[0].request.url
    assert "players.user_id=555" in search.calls[0].request.url


@responses.activate
def test_a_claim_read_by_id_where_the_seller_is_not_the_respondent_is_skipped(s, db):
    responses.get(f"{API}/post-purchase/v1/claims/5000002", json=purchase_claim())
    assert sync_claims.sync_claim(s, "5000002") == 0
    assert db.links.get("claim", "5000002") is None
    assert not [c for c in responses.calls if c.request.url.startswith(CW)]
    assert not [c for c in responses.calls if "/messages" in c.request.url]


@responses.activate
def test_a_reply_to_a_claim_where_the_seller_is_not_the_respondent_is_refused(s, db):
    reply_id = db.replies.accept(chatwoot_message_id=910, conversation_id=89, kind="claim", target_id="5000002",
                                 parts=[{"text": "Olá"}], now=s.clock(), receiver="complainant")
    responses.get(f"{API}/post-purchase/v1/claims/5000002", json=purchase_claim())
    # Chatwoot's own record names that claim, in the claims inbox: only the claim itself is refused.
    responses.get(f"{CW}/conversations/89", json={"id": 89, "inbox_id": CLAIM_INBOX,
                                                  "custom_attributes": {"meli_claim_id": "5000002"}})
    responses.get(f"{CW}/conversations/89/messages", json={"payload": []})
    send = responses.post(f"{API}/post-purchase/v1/claims/5000002/actions/send-message", json={})
    assert delivery.deliver(s, reply_id) == "failed"
    assert send.call_count == 0
    assert db.replies.get(reply_id)["error"] == "reclamação não é contra a loja"


def test_a_partial_failure_names_the_mediator_when_the_parts_went_to_the_mediator():
    parts = [{"seq": 0, "status": "sent", "text": None}, {"seq": 1, "status": "pending", "text": "Resto"}]
    error, note = refusal.partial_failure(parts, "recusado", "nada foi", "Motivo.", "mediador do Mercado Livre")
    assert error == "parte 1 de 2 enviada ao mediador do Mercado Livre; recusado"
    assert note.startswith("A parte 1 de 2 chegou ao mediador do Mercado Livre; a parte 2 não.")
    claim_reply = {"kind": "claim", "receiver": "mediator"}
    assert refusal.receiver_name(claim_reply) == "mediador do Mercado Livre"
    assert refusal.receiver_name(dict(claim_reply, receiver="complainant")) == "comprador"
    assert refusal.receiver_name({"kind": "message", "receiver": None}) == "comprador"


@responses.activate
def test_a_reply_to_the_buyer_delivered_to_the_mediator_says_who_got_it(s, db):
    db.links.update("claim", CLAIM_ID, 2.0, data=dict(db.links.get("claim", CLAIM_ID)["data"], receivers=["mediator"]))
    reply_id = accept_claim_reply(s, db, 911, "Estamos verificando")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    send = responses.post(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message", json={})
    assert delivery.deliver(s, reply_id) == "delivered"
    assert json.loads(send.calls[0].request.body)["receiver_role"] == "mediator"
    responses.patch(f"{CW}/conversations/88/messages/911", json={})
    chatwoot_for_mirroring()
    assert report.report_reply(s, db.replies.get(reply_id)) == 1
    [note] = [json.loads(c.request.body)["content"] for c in responses.calls
              if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"]
    assert note.startswith("Resposta entregue ao mediador do Mercado Livre, não ao comprador")


@responses.activate
def test_a_claim_reply_to_the_mediator_failed_in_part_says_the_mediator_got_the_first_part(s, db):
    reply_id = accept_claim_reply(s, db, 912, "palavra " * 300, reply_to="mediador")
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    answers = iter([(200, {}, "{}"), (400, {}, json.dumps({"error": "bad_request", "message": "texto inválido"}))])
    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=lambda r: next(answers))
    assert delivery.deliver(s, reply_id) == "failed"
    reply = db.replies.get(reply_id)
    assert reply["note"].startswith("A parte 1 de 2 chegou ao mediador do Mercado Livre; a parte 2 não.")
    assert reply["error"].startswith("parte 1 de 2 enviada ao mediador do Mercado Livre;")


@responses.activate
def test_a_reply_accepted_before_its_claim_was_known_decides_its_receiver_once_before_the_first_part(s, db):
    db.links.update("claim", CLAIM_ID, 2.0, data={k: v for k, v in db.links.get("claim", CLAIM_ID)["data"].items()
                                                  if k != "receivers"})
    reply_id = accept_claim_reply(s, db, 913, "palavra " * 300)
    assert db.replies.get(reply_id)["receiver"] is None
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                  json=claim(stage="dispute", actions=("send_message_to_mediator",)))
    sent = []

    def send(request):
        sent.append(json.loads(request.body))
        return (503, {}, "{}") if len(sent) == 2 else (200, {}, "{}")

    responses.add_callback(responses.POST, f"{API}/post-purchase/v1/claims/{CLAIM_ID}/actions/send-message",
                           callback=send)
    assert delivery.deliver(s, reply_id) == "retry"
    assert db.replies.get(reply_id)["receiver"] == "mediator"
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/{CLAIM_ID}",
                      json=claim(stage="dispute", actions=("send_message_to_complainant", "send_message_to_mediator")))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[])
    s.clock.advance(3600)
    assert delivery.deliver(s, reply_id) == "delivered"
    assert [m["receiver_role"] for m in sent] == ["mediator", "mediator", "mediator"]


@responses.activate
def test_a_new_claim_shows_its_reasons_name_asked_once_and_its_summary_as_a_private_note(s, db):
    found_resolved_conversation(db, [])
    reason = responses.get(f"{API}/post-purchase/v1/claims/reasons/PDD9939",
                           json={"id": "PDD9939", "flow": "post_purchase_delivered", "name": "repentant_buyer",
                                 "detail": "O comprador se arrependeu da compra", "status": "active"})
    sync_claims.sync_claim(s, CLAIM_ID)
    notes = [json.loads(c.request.body) for c in responses.calls
             if c.request.method == "POST" and c.request.url == f"{CW}/conversations/88/messages"]
    [summary] = [n for n in notes if "abriu uma" in n["content"]]
    assert summary["private"] is True and summary["message_type"] == "outgoing"
    assert summary["source_id"].startswith("meli:")
    assert "Motivo: O comprador se arrependeu da compra (PDD9939)" in summary["content"]
    assert "(horário de Brasília)" in summary["content"] and "UTC" not in summary["content"]
    link = db.links.get("claim", CLAIM_ID)
    assert link["data"]["attributes"]["meli_claim_reason"] == "O comprador se arrependeu da compra (PDD9939)"
    # Cached: the next read of the claim does not ask again.
    db.links.update("claim", CLAIM_ID, 3.0, data=dict(link["data"], last_updated="older"))
    sync_claims.sync_claim(s, CLAIM_ID)
    assert reason.call_count == 1


@responses.activate
def test_a_reasons_name_mercado_livre_cannot_give_shows_the_id_and_is_asked_again_later(s, db):
    found_resolved_conversation(db, [])
    responses.get(f"{API}/post-purchase/v1/claims/reasons/PDD9939", status=503, json={"error": "unavailable"})
    responses.post(f"{CW}/conversations/88/custom_attributes", json={})
    sync_claims.sync_claim(s, CLAIM_ID)
    link = db.links.get("claim", CLAIM_ID)
    assert link["status"] == "created" and link["data"]["attributes"]["meli_claim_reason"] == "PDD9939"
    # A change of the claim does not ask again (the retry pass does, at its pace).
    reasons = len([c for c in responses.calls if "/reasons/" in c.request.url])
    db.links.update("claim", CLAIM_ID, 3.0, data=dict(link["data"], last_updated="older"))
    sync_claims.sync_claim(s, CLAIM_ID)
    assert len([c for c in responses.calls if "/reasons/" in c.request.url]) == reasons
    assert sync_claims.retry_optional_facts(s) == 0  # the next poll asks again: still failing
    responses.replace(responses.GET, f"{API}/post-purchase/v1/claims/reasons/PDD9939",
                      json={"id": "PDD9939", "detail": "O comprador se arrependeu da compra"})
    assert sync_claims.retry_optional_facts(s) == 0  # not again before FACT_RETRY
    s.clock.advance(sync_claims.FACT_RETRY)
    assert sync_claims.retry_optional_facts(s) == 1
    [attributes] = [json.loads(c.request.body)["custom_attributes"] for c in responses.calls
                    if c.request.url == f"{CW}/conversations/88/custom_attributes"]
    assert attributes["meli_claim_reason"] == "O comprador se arrependeu da compra (PDD9939)"
    assert sync_claims.retry_optional_facts(s) == 0


@responses.activate
def test_a_claim_that_fails_its_moderation_check_does_not_stop_the_checks_after_it(s, db):
    # The sale's twin already did this; the claim's own copy let a 503 end the whole round.
    other = "5000002"
    db.links.mark_created("claim", other, 1.0, conversation_id=89, contact_id=5, data={"status": "opened"})
    now = s.clock()
    failing = db.replies.accept(chatwoot_message_id=910, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                parts=[{"text": "Primeira"}], now=now - 600, receiver="complainant")
    db.replies.mark_delivered(failing, now - 500)
    fine = db.replies.accept(chatwoot_message_id=911, conversation_id=89, kind="claim", target_id=other,
                             parts=[{"text": "Segunda"}], now=now - 600, receiver="complainant")
    db.replies.mark_delivered(fine, now - 400)
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", status=503, json={"message": "unavailable"})
    responses.get(f"{API}/post-purchase/v1/claims/{other}", status=404, json={"message": "not found"})
    assert sync_claims.check_recent_replies(s, set()) == 1
    assert db.links.get("moderation_check", f"claim:{failing}")["status"] == "pending"  # checked again next poll
    assert db.links.get("moderation_check", f"claim:{fine}")["status"] == "created"


@responses.activate
def test_one_moderated_part_of_a_claim_reply_is_named_so_the_others_are_not_sent_again(s, db):
    # The sale's twin already named the part; the claim's own copy told the agent to send it all again.
    reply_id = db.replies.accept(chatwoot_message_id=912, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Primeira parte"}, {"text": "Meu email é loja@example.com"}],
                                 now=1000.0, receiver="complainant")
    for seq, text in enumerate(["Primeira parte", "Meu email é loja@example.com"]):
        db.replies.mark_part_sent(reply_id, seq, sync_claims.sent_key(CLAIM_ID, text), 1001.0 + seq)
    db.replies.mark_delivered(reply_id, 1003.0)
    blocked = dict(respondent_message("Meu email é loja@example.com", 2), status="rejected",
                   moderation={"status": "rejected", "reason": "PERSONAL_DATA"})
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[respondent_message("Primeira parte", 1), blocked])
    responses.patch(f"{CW}/conversations/88/messages/912", json={"id": 912})
    chatwoot_for_mirroring()
    sync_claims.sync_claim(s, CLAIM_ID)
    [patched] = [json.loads(c.request.body) for c in responses.calls if c.request.method == "PATCH"]
    assert patched["status"] == "failed" and patched["external_error"].startswith("parte 2 de 2 bloqueada")
    notes = [json.loads(c.request.body)["content"] for c in responses.calls if c.request.method == "POST"
             and c.request.url == f"{CW}/conversations/88/messages" and json.loads(c.request.body).get("private")]
    assert any("a parte 2 de 2 da sua mensagem" in n and "envie somente ela" in n for n in notes)


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


@responses.activate
def test_a_claim_whose_new_conversation_is_deleted_too_continues_in_another_at_once(s, db):
    """Conversation 88 was deleted; 94, made to continue in, is deleted as well before anything went in
    (an agent deleting at once, as the soak's do): the buyer's message goes into a third one in the same
    sync, not after the claim's failure backoff."""
    db.links.mark_created("buyer", "7001", 1.0, contact_id=5, data={"inboxes": [CLAIM_INBOX]})
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages", json=[buyer_message("Depois de apagada")])
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/affects-reputation",
                  json={"affects_reputation": "not_affected"})
    responses.get(f"{API}/orders/2000001", json={"id": 2000001, "buyer": {"id": 7001, "nickname": "COMPRADOR"}})
    gone = re.compile(f"{re.escape(CW)}/conversations/(88|94)(/.*)?$")
    for method in (responses.GET, responses.POST, responses.PATCH):
        responses.add(method, gone, status=404, json={"error": "Resource could not be found"})
    responses.post(f"{CW}/conversations/filter", json={"payload": []})
    responses.post(f"{CW}/conversations", json={"id": 94})
    responses.post(f"{CW}/conversations", json={"id": 95})
    created = iter(range(700, 720))
    responses.add_callback(responses.POST, f"{CW}/conversations/95/messages",
                           callback=lambda _req: (200, {}, json.dumps({"id": next(created)})))
    responses.get(f"{CW}/conversations/95/messages", json={"payload": []})
    for action in ("labels", "toggle_status", "custom_attributes", "toggle_priority"):
        responses.post(f"{CW}/conversations/95/{action}", json={})

    assert sync_claims.sync_claim(s, CLAIM_ID) == 1
    assert mirrored(95) == ["Depois de apagada"]
    assert db.links.get("claim", CLAIM_ID)["conversation_id"] == 95


@responses.activate
def test_a_reply_to_the_buyer_that_went_to_the_mediator_still_says_so_when_a_part_is_moderated_before_its_report(s, db):
    """Addressed to the buyer, sent to the mediator (the only one the seller could write to); Chatwoot was
    down as it was delivered, so its report, with the note saying the mediator got it, waited. The claim's
    read then found part 2 moderated: that report superseded the waiting one, and the agent, told only
    that 'o destinatário' missed part 2, took part 1 as the buyer's."""
    reply_id = db.replies.accept(chatwoot_message_id=913, conversation_id=88, kind="claim", target_id=CLAIM_ID,
                                 parts=[{"text": "Primeira parte"}, {"text": "Meu email é loja@example.com"}],
                                 now=1000.0, receiver="mediator", addressed="complainant")
    for seq, text in enumerate(["Primeira parte", "Meu email é loja@example.com"]):
        db.replies.mark_part_sent(reply_id, seq, sync_claims.sent_key(CLAIM_ID, text), 1001.0 + seq)
    db.replies.mark_delivered(reply_id, 1003.0)
    blocked = dict(respondent_message("Meu email é loja@example.com", 2), receiver_role="mediator",
                   status="rejected", moderation={"status": "rejected", "reason": "PERSONAL_DATA"})
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}", json=claim(due="2030-01-01T00:00:00.000Z"))
    responses.get(f"{API}/post-purchase/v1/claims/{CLAIM_ID}/messages",
                  json=[dict(respondent_message("Primeira parte", 1), receiver_role="mediator"), blocked])
    responses.patch(f"{CW}/conversations/88/messages/913", json={"id": 913})
    chatwoot_for_mirroring()
    sync_claims.sync_claim(s, CLAIM_ID)
    s.clock.advance(3600)
    report.report_outcomes(s)

    notes = [json.loads(c.request.body)["content"] for c in responses.calls if c.request.method == "POST"
             and c.request.url == f"{CW}/conversations/88/messages" and json.loads(c.request.body).get("private")]
    assert any("entregue ao mediador" in n for n in notes), notes
    patched = [json.loads(c.request.body)["status"] for c in responses.calls if c.request.method == "PATCH"]
    assert patched == ["failed"]  # its delivered mark never over the moderation's
