"""The fakes' knobs for the chaos soak: agents' actions in Chatwoot, random faults, mark-read hook."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.e2e import wait_until
from tests.fakes import start_fakes
from tests.fakes.fake_chatwoot import MESSAGE_TYPES


@pytest.fixture
def fk():
    running = start_fakes()
    yield running
    running.stop()


def buyer_conversation(state, inbox: int, buyer: int) -> tuple[int, int]:
    contact, _link = state.create_contact({"name": f"C{buyer}", "identifier": f"meli:buyer:{buyer}",
                                           "inbox_id": inbox, "source_id": f"meli:buyer:{buyer}"})
    conv, _deliveries = state.create_conversation({"inbox_id": inbox, "contact_id": contact["id"],
                                                   "source_id": f"meli:buyer:{buyer}"})
    return contact["id"], conv["id"]


def test_deleting_a_contact_deletes_its_conversations_and_messages(fk):
    state = fk.chatwoot.state
    inbox = state.add_inbox("Vendas")
    contact, conv = buyer_conversation(state, inbox, 1)
    _other, kept = buyer_conversation(state, inbox, 2)
    message = state.contact_message(conv, "Oi")
    state.delete_contact(contact)
    assert contact not in state.contacts and set(state.conversations) == {kept}
    assert message["id"] not in state.messages and state.deleted_messages[message["id"]]["deleted_at"] > 0
    assert all(link["contact_id"] != contact for link in state.contact_inboxes)
    gone = requests.post(f"{fk.chatwoot.url}/api/v1/accounts/1/conversations/{conv}/messages",
                         headers={"api_access_token": state.api_token}, json={"content": "x"}, timeout=5)
    assert gone.status_code == 404


def test_merging_moves_conversations_and_inboxes_to_the_base_and_deletes_the_mergee(fk):
    state = fk.chatwoot.state
    inbox = state.add_inbox("Vendas")
    base, base_conv = buyer_conversation(state, inbox, 1)
    mergee, mergee_conv = buyer_conversation(state, inbox, 2)
    state.merge_contacts(base, mergee)
    assert mergee not in state.contacts
    assert {state.conversations[c]["contact_id"] for c in (base_conv, mergee_conv)} == {base}
    assert {link["source_id"] for link in state.contact_inboxes if link["contact_id"] == base} == \
        {"meli:buyer:1", "meli:buyer:2"}
    assert state.filter_contacts([{"attribute_key": "identifier", "filter_operator": "equal_to",
                                   "values": ["meli:buyer:2"]}]) == []


def test_resolving_and_deleting_a_conversation(fk):
    state = fk.chatwoot.state
    inbox = state.add_inbox("Perguntas")
    _contact, conv = buyer_conversation(state, inbox, 1)
    state.resolve_conversation(conv)
    assert state.conversations[conv]["status"] == "resolved"
    state.delete_conversation(conv)
    assert conv not in state.conversations


def test_chaos_answers_the_drawn_status_and_counts_it(fk):
    meli = fk.meli.state
    meli.chaos([{"prefix": "/users/", "p": 1.0, "status": 429, "retry_after": 3}], seed=1)
    token = meli.seed_tokens()[0]
    resp = requests.get(f"{fk.meli.url}/users/{meli.seller_id}", headers={"Authorization": f"Bearer {token}"},
                        timeout=5)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert meli.chaos_counts[("status 429", "/users/")] == 1
    meli.chaos([])
    assert requests.get(f"{fk.meli.url}/users/{meli.seller_id}", headers={"Authorization": f"Bearer {token}"},
                        timeout=5).status_code == 200


def test_a_late_answer_still_applies_the_request(fk):
    meli = fk.meli.state
    meli.add_item("MLB1", "Caneca")
    question = meli.add_question(item_id="MLB1", buyer_id=7001, text="Tem?")
    meli.chaos([{"prefix": "/answers", "p": 1.0, "late": 0.5}], seed=1)
    with pytest.raises(requests.Timeout):
        requests.post(f"{fk.meli.url}/answers", json={"question_id": question["id"], "text": "Tem sim"},
                      headers={"Authorization": f"Bearer {meli.seed_tokens()[0]}"}, timeout=0.2)
    assert meli.answers_posted == [(question["id"], "Tem sim")]


def thread_read_once(fk):
    """Sale 2000001 with one buyer message, read once without marking; every marking read is
    recorded in `seen` as (thread, ids marked, ids shown before). Returns what the tests use."""
    meli = fk.meli.state
    meli.add_order(2000001, 7001, "COMPRADOR", items=[("MLB1", "Caneca", 1, 25.0)])
    message = meli.add_buyer_message("2000001", "Oi")
    seen = []
    meli.on_mark_read = lambda key, ids, peeked: seen.append((key, ids, peeked))
    url = f"{fk.meli.url}/messages/packs/2000001/sellers/{meli.seller_id}"
    headers = {"Authorization": f"Bearer {meli.seed_tokens()[0]}"}
    requests.get(url, params={"tag": "post_sale", "mark_as_read": "false"}, headers=headers, timeout=5)
    return meli, message, seen, url, headers


def test_mark_read_hook_is_called_with_the_ids_marked(fk):
    meli, message, seen, url, headers = thread_read_once(fk)
    later = meli.add_buyer_message("2000001", "Ainda aí?")
    requests.get(url, params={"tag": "post_sale"}, headers=headers, timeout=5)
    # The second message was never shown before the marking read: it is marked, not "seen".
    assert seen == [("2000001", [message["id"], later["id"]], [message["id"]])]


def test_fail_next_after_lets_the_first_requests_through(fk):
    meli = fk.meli.state
    meli.fail_next("GET", "/users/", 403, after=1)
    token = meli.seed_tokens()[0]

    def get():
        return requests.get(f"{fk.meli.url}/users/{meli.seller_id}", headers={"Authorization": f"Bearer {token}"},
                            timeout=5).status_code

    assert [get(), get(), get()] == [200, 403, 200]


def test_refresh_grants_record_the_spent_token_the_new_pair_and_whether_it_was_presented(fk):
    meli = fk.meli.state
    seen = []
    meli.on_refresh_granted = seen.append

    def refresh(token: str) -> requests.Response:
        return requests.post(f"{fk.meli.url}/oauth/token", data={
            "client_id": str(meli.app_id), "client_secret": meli.secret, "grant_type": "refresh_token",
            "refresh_token": token}, timeout=5)

    _access, first = meli.seed_tokens()
    pair = refresh(first).json()
    grant = meli.refresh_grants[0]
    assert seen == [grant]
    assert (grant["spent"], grant["access_token"], grant["refresh_token"]) == \
        (first, pair["access_token"], pair["refresh_token"])
    assert not grant["access_presented"] and not grant["refresh_presented"]

    requests.get(f"{fk.meli.url}/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"}, timeout=5)
    assert grant["access_presented"] and not grant["refresh_presented"]
    refresh(pair["refresh_token"])
    assert grant["refresh_presented"] and len(meli.refresh_grants) == 2

    again = refresh(first)  # single use: already spent by the first grant
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert [r["token"] for r in meli.refused_refreshes] == [first]
    assert meli.refused_refreshes[0]["t"] >= grant["t"] and meli.refresh_count == 2


def test_a_held_marking_read_counts_as_seen_only_what_was_shown_before_it_arrived(fk):
    meli, message, seen, url, headers = thread_read_once(fk)
    meli.chaos([{"prefix": "/messages/packs", "p": 1.0, "delay": 1.0, "lost": True}], seed=1)
    marking = threading.Thread(target=requests.get, args=(url,),
                               kwargs={"params": {"tag": "post_sale"}, "headers": headers, "timeout": 5})
    marking.start()
    wait_until(lambda: sum(meli.chaos_counts.values()) == 1, timeout=5)
    meli.chaos([], seed=1)
    # Written and read while the marking request is held: the bridge asked to mark before it existed.
    later = meli.add_buyer_message("2000001", "Ainda aí?")
    requests.get(url, params={"tag": "post_sale", "mark_as_read": "false"}, headers=headers, timeout=5)
    marking.join()
    assert seen == [("2000001", [message["id"], later["id"]], [message["id"]])]


# ---- the soak's own checks, against fakes holding a known story ----------------------------------------

@pytest.fixture
def soak_check(fk, tmp_path):
    from types import SimpleNamespace

    from bench import soak

    run = soak.Soak(seed=1, minutes=0.0, drain=0.0, access_ttl=60.0, quiet=True)
    run.fakes, run.cw, run.meli = fk, fk.chatwoot.state, fk.meli.state
    fk.questions_inbox = run.cw.add_inbox("Mercado Livre - Perguntas")
    fk.messages_inbox = run.cw.add_inbox("Mercado Livre - Vendas")
    fk.claims_inbox = run.cw.add_inbox("Mercado Livre - Reclamações")
    # No bridge: no rows in its database, nobody listening for notifications.
    run.bridge = SimpleNamespace(env={"DATABASE_PATH": str(tmp_path / "absent.db")}, url="http://127.0.0.1:9")
    yield run
    import shutil
    shutil.rmtree(run.tmp, ignore_errors=True)


def sale_conversation(run, pack: str, buyer: int = 7001) -> int:
    state = run.cw
    contact, _ = state.create_contact({"name": f"C{buyer}", "identifier": f"meli:buyer:{buyer}",
                                       "inbox_id": run.fakes.messages_inbox, "source_id": f"meli:buyer:{buyer}"})
    conv, _ = state.create_conversation({"inbox_id": run.fakes.messages_inbox, "contact_id": contact["id"],
                                         "source_id": f"meli:buyer:{buyer}",
                                         "custom_attributes": {"meli_pack_id": pack}})
    run.packs[pack] = {"buyer": buyer}
    return conv["id"]


def long_reply(run, conv_id: int, tag: str, sentences: int, pack: str) -> dict:
    content = " ".join(f"{tag}p{k} Obrigado pela compra, seu pedido segue hoje." for k in range(1, sentences + 1))
    message = run.cw.agent_reply(conv_id, content)
    run.replies[tag] = {"message_id": message["id"], "conversation_id": conv_id, "answer": False, "private": False,
                        "units": [f"{tag}p{k}" for k in range(1, sentences + 1)], "style": "long",
                        "t": message["t_created"] - 1, "target": pack}
    return message


def ml_received(run, pack: str, text: str) -> None:
    with run.meli.lock:
        run.meli.sent_messages.append({"text": text, "attachments": [], "pack_id": pack, "message_id": text[:8]})


def reply_note(run, conv_id: int, reply_id: int, text: str) -> None:
    run.cw._create_message(conv_id, text, 1, private=True, source_id=f"meli:note:reply:{reply_id}")


PARTIAL = "partes 1 de 2 enviadas; conversa bloqueada"


def test_soak_check_wants_the_partial_note_of_that_reply_not_of_another(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000001")
    first = long_reply(run, conv, "R00001", 2, "3000000001")
    second = long_reply(run, conv, "R00002", 2, "3000000001")
    for tag in ("R00001", "R00002"):
        ml_received(run, "3000000001", f"{tag}p1 Obrigado pela compra, seu pedido segue hoje.")
    for message in (first, second):
        run.cw.update_message_status(message, "failed", PARTIAL)
    # Only the second reply's outcome was told: the first's agent does not know what to send.
    reply_note(run, conv, 2, "A parte 1 de 2 chegou ao comprador; a parte 2 não.\n\n"
                             "> R00002p2 Obrigado pela compra, seu pedido segue hoje.")

    found = run.check()["violations"]["a partial reply is failed with a note naming the parts sent"]

    assert [v.split(" (")[0] for v in found] == ["reply R00001"]


def test_soak_check_wants_the_note_to_name_exactly_what_is_left_to_send(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000002")
    message = long_reply(run, conv, "R00001", 3, "3000000002")
    ml_received(run, "3000000002", "R00001p1 Obrigado pela compra, seu pedido segue hoje.")
    run.cw.update_message_status(message, "failed", PARTIAL)
    # Says part 2 is left, but part 3 never went either: the agent would send only part 2.
    reply_note(run, conv, 1, "A parte 1 de 3 chegou ao comprador; a parte 2 não.\n\n> R00001p2 Obrigado.")

    found = run.check()["violations"]["a partial reply is failed with a note naming the parts sent"]

    assert len(found) == 1 and "R00001p3" in found[0]


def test_soak_check_accepts_the_note_that_quotes_every_part_left(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000003")
    message = long_reply(run, conv, "R00001", 3, "3000000003")
    ml_received(run, "3000000003", "R00001p1 Obrigado pela compra, seu pedido segue hoje.")
    run.cw.update_message_status(message, "failed", PARTIAL)
    reply_note(run, conv, 1, "A parte 1 de 2 chegou ao comprador; a parte 2 não.\n\n> R00001p2 Obrigado.\n"
                             "> R00001p3 Obrigado.")

    assert run.check()["violations"]["a partial reply is failed with a note naming the parts sent"] == []


def test_soak_check_does_not_count_a_reply_sent_to_another_sale_as_delivered(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000004")
    sale_conversation(run, "3000000005", buyer=7002)
    message = long_reply(run, conv, "R00001", 1, "3000000004")
    ml_received(run, "3000000005", "R00001p1 Obrigado pela compra, seu pedido segue hoje.")
    run.cw.update_message_status(message, "delivered", None)

    found = run.check()["violations"]["a reply reaches only its own question or sale"]

    assert len(found) == 1 and "sale 3000000005" in found[0]


def test_soak_check_wants_a_buyer_message_incoming_public_and_with_its_file(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000006")
    for mid, kind, private, files in (("m-out", 1, False, 0), ("m-note", 0, True, 0), ("m-nofile", 0, False, 1),
                                      ("m-ok", 0, False, 1)):
        attached = [("foto.png", b"png", "image/png")] if mid == "m-ok" else []
        run.cw._create_message(conv, "Mensagem do comprador", kind, private=private,
                               source_id=f"meli:message:{mid}", files=attached)
        run.buyer_messages[mid] = {"pack": "3000000006", "t": 0.0, "files": files}

    found = run.check()["violations"]["buyer messages in Chatwoot exactly once, live conversation"]

    assert sorted(v.split(":")[0] for v in found) == ["message m-nofile of sale 3000000006",
                                                      "message m-note of sale 3000000006",
                                                      "message m-out of sale 3000000006"]


def test_soak_check_flags_the_bridges_own_answer_mirrored_back(soak_check):
    run = soak_check
    question = run.meli.add_question(item_id="MLB1", buyer_id=7003, text="Tem azul?")
    run.meli.answers_posted.append((question["id"], "R00001p1 Sim, temos."))
    contact, _ = run.cw.create_contact({"name": "C", "identifier": "meli:buyer:7003",
                                        "inbox_id": run.fakes.questions_inbox, "source_id": "meli:buyer:7003"})
    conv, _ = run.cw.create_conversation({"inbox_id": run.fakes.questions_inbox, "contact_id": contact["id"],
                                          "source_id": "meli:buyer:7003",
                                          "custom_attributes": {"meli_question_id": str(question["id"])}})
    run.cw._create_message(conv["id"], "R00001p1 Sim, temos.", 1, source_id=f"meli:answer:{question['id']}")

    found = run.check()["violations"]["the bridge's own replies are not mirrored back"]

    assert len(found) == 1 and f"question {question['id']}" in found[0]


def test_soak_check_flags_a_thread_left_unread(soak_check):
    run = soak_check
    run.meli.add_order(2000000901, 7004, "COMPRADOR", [("MLB1", "Produto", 1, 20.0)])
    message = run.meli.add_buyer_message("2000000901", "Quando chega?")
    # In Chatwoot, and never marked read: nothing else would notice.
    conv = sale_conversation(run, "2000000901", buyer=7004)
    run.cw._create_message(conv, "Quando chega?", 0, source_id=f"meli:message:{message['id']}")
    run.buyer_messages[message["id"]] = {"pack": "2000000901", "t": 0.0, "files": 0}

    violations = run.check()["violations"]

    assert violations["buyer messages in Chatwoot exactly once, live conversation"] == []
    assert [v.split(":")[0] for v in violations["no thread left unread after the drain"]] == \
        ["/packs/2000000901/sellers/555000111"]


def question_conversation(run, text: str = "Tem azul?", buyer: int = 7005) -> tuple[int, int]:
    question = run.meli.add_question(item_id="MLB1", buyer_id=buyer, text=text)
    run.questions[question["id"]] = {"t": 0.0, "buyer": buyer}
    contact, _ = run.cw.create_contact({"name": "C", "identifier": f"meli:buyer:{buyer}",
                                        "inbox_id": run.fakes.questions_inbox, "source_id": f"meli:buyer:{buyer}"})
    conv, _ = run.cw.create_conversation({"inbox_id": run.fakes.questions_inbox, "contact_id": contact["id"],
                                          "source_id": f"meli:buyer:{buyer}",
                                          "custom_attributes": {"meli_question_id": str(question["id"])}})
    run.cw._create_message(conv["id"], text, 0, source_id=f"meli:question:{question['id']}")
    return question["id"], conv["id"]


SITE = "the seller's site messages and answers in Chatwoot exactly once"


def test_soak_answers_on_the_site_only_a_question_shown_in_chatwoot_and_still_unanswered(soak_check):
    run = soak_check
    hidden = run.meli.add_question(item_id="MLB1", buyer_id=7006, text="Ainda não importada?")
    run.questions[hidden["id"]] = {"t": 0.0, "buyer": 7006}
    shown, _conv = question_conversation(run)

    run.seller_answers_on_site()
    run.seller_answers_on_site()

    assert list(run.site_answers) == [shown] and run.meli.questions[hidden["id"]]["status"] == "UNANSWERED"
    assert run.injected["(skipped: no question shown to answer on the site)"] == 1


def test_soak_check_wants_a_site_answer_shown_once_as_the_sellers_while_its_question_is(soak_check):
    run = soak_check
    missing, _ = question_conversation(run, buyer=7007)
    shown, conv = question_conversation(run, buyer=7008)
    for qid in (missing, shown):
        run.meli.answer_elsewhere(qid, "Sim, temos.")
        run.site_answers[qid] = 0.0
    run.cw._create_message(conv, "Sim, temos.", 1, source_id=f"meli:answer:{shown}")

    found = run.check()["violations"][SITE]

    assert [v.split(":")[0] for v in found] == [f"site answer to question {missing}"]


def test_soak_check_wants_a_site_message_of_the_seller_as_outgoing(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000007")
    run.cw._create_message(conv, "Enviado hoje", 0, source_id="meli:message:s-in")
    run.cw._create_message(conv, "Enviado hoje", 1, source_id="meli:message:s-out")
    for mid in ("s-in", "s-out", "s-missing"):
        run.seller_messages[mid] = {"pack": "3000000007", "t": 0.0}

    found = run.check()["violations"][SITE]

    assert sorted(v.split(":")[0] for v in found) == ["seller's site message s-in of sale 3000000007",
                                                      "seller's site message s-missing of sale 3000000007"]


def test_soak_checks_a_site_message_only_once_its_notification_was_taken(soak_check):
    run = soak_check
    sale_conversation(run, "2000000902", buyer=7009)
    run.meli.add_order(2000000902, 7009, "COMPRADOR", [("MLB1", "Produto", 1, 20.0)])

    run.seller_writes_on_site()  # nobody listens: the bridge could only find it by the sweep

    assert run.seller_messages == {} and run.own_posts[("notification", "no answer")] == 1


def test_a_chatwoot_message_created_late_is_there_though_its_creator_timed_out(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000008")
    cw = run.cw
    lost = [r for r in run.chatwoot_chaos_rules() if r.get("lost")][0]
    assert all(r["prefix"] == "/api/v1/" for r in run.chatwoot_chaos_rules())  # never the signed file links
    cw.chaos([dict(lost, p=1.0, delay=0.5)], seed=1)
    with pytest.raises(requests.Timeout):
        requests.post(f"{run.fakes.chatwoot.url}/api/v1/accounts/{cw.account_id}/conversations/{conv}/messages",
                      json={"content": "Quando chega?", "message_type": "incoming", "source_id": "meli:message:x"},
                      headers={"api_access_token": cw.api_token}, timeout=0.2)
    cw.chaos([])
    # The request was applied after the client gave up: only its intent row can tell.
    wait_until(lambda: any(m["source_id"] == "meli:message:x" for m in cw.messages_in(conv)), timeout=5)
    assert cw.chaos_counts[("delay", "/api/v1/")] == 1


def test_soak_report_names_the_cases_a_run_never_produced(soak_check):
    from collections import Counter

    from bench import soak

    run = soak_check
    run.resolves[1] = 0.0
    result = run.check()
    result.update(chaos_seconds=1.0, drained_in=1.0, faults=Counter())

    assert "a conversation resolved by an agent" not in soak.exercised_nothing(run, result)
    assert {"a reply sent in part", "a thread marked read", "a kill -9"} <= set(soak.exercised_nothing(run, result))
    text, _violations = soak.report(run, result)
    assert "not exercised in this run (their checks passed with nothing to check): a reply sent in part" in text


def _merged_away_sale(run, message_in_orphan: bool, agent_reply: str | None = None) -> tuple[int, int]:
    """Sale 3000000009 of buyer 7001: a conversation made for it, then its contact merged by an
    agent into buyer 7002's contact; the bridge, finding the buyer's contact gone, made another.
    `agent_reply`: an agent answers in the carried-off one "before" or "after" that other was made."""
    state = run.cw
    orphan = sale_conversation(run, "3000000009", buyer=7001)
    if message_in_orphan:
        with state.lock:
            state._create_message(orphan, "Oi", MESSAGE_TYPES["incoming"], source_id="meli:message:m-1")

    def answer_in_orphan():
        with state.lock:
            state._create_message(orphan, "R00009p1 Respondo aqui", MESSAGE_TYPES["outgoing"])

    if agent_reply == "before":
        answer_in_orphan()
    other = sale_conversation(run, "3000000010", buyer=7002)
    base, mergee = state.conversations[other]["contact_id"], state.conversations[orphan]["contact_id"]
    state.merge_contacts(base, mergee)
    run.merges.append((base, mergee))
    contact, _ = state.create_contact({"name": "C7001b", "identifier": "meli:buyer:7001",
                                       "inbox_id": run.fakes.messages_inbox, "source_id": "meli:buyer:7001:x"})
    again, _ = state.create_conversation({"inbox_id": run.fakes.messages_inbox, "contact_id": contact["id"],
                                          "source_id": "meli:buyer:7001:x",
                                          "custom_attributes": {"meli_pack_id": "3000000009"}})
    if agent_reply == "after":
        answer_in_orphan()
    return orphan, again["id"]


def test_soak_check_flags_a_second_conversation_made_after_a_merge_carried_the_empty_first_off(soak_check):
    """No longer exempt: the bridge finds a conversation by its attribute wherever a merge carried it."""
    run = soak_check
    orphan, again = _merged_away_sale(run, message_in_orphan=False)

    found = run.check()["violations"]["one live conversation per question / sale"]

    assert found == [f"meli_pack_id=3000000009: live conversations {sorted([orphan, again])}"]


def test_soak_check_flags_a_carried_off_conversation_answered_after_the_other_was_made(soak_check):
    run = soak_check
    orphan, again = _merged_away_sale(run, message_in_orphan=False, agent_reply="after")

    found = run.check()["violations"]["one live conversation per question / sale"]

    assert found == [f"meli_pack_id=3000000009: live conversations {sorted([orphan, again])}"]


def test_soak_check_flags_a_second_conversation_made_after_an_agent_answered_in_the_first(soak_check):
    # Answered while the sale still waited for a conversation: the bridge should have adopted it.
    run = soak_check
    orphan, again = _merged_away_sale(run, message_in_orphan=False, agent_reply="before")

    found = run.check()["violations"]["one live conversation per question / sale"]

    assert found == [f"meli_pack_id=3000000009: live conversations {sorted([orphan, again])}"]


def test_soak_check_still_flags_a_second_conversation_when_the_first_holds_a_message(soak_check):
    run = soak_check
    orphan, again = _merged_away_sale(run, message_in_orphan=True)

    found = run.check()["violations"]["one live conversation per question / sale"]

    assert found == [f"meli_pack_id=3000000009: live conversations {sorted([orphan, again])}"]


# ---- the holes planted defects went through (issue 18) ------------------------------------------------

FAILED_FOR_NO_REASON = "a reply is failed only for a reason that cannot be retried"


def ml_answered_send(run, pack: str, status: int, t: float) -> None:
    with run.meli.lock:
        run.meli.calls.append({"method": "POST", "path": f"/messages/packs/{pack}/sellers/{run.meli.seller_id}",
                               "query": {}, "status": status, "t": t, "ms": 1.0})


def test_soak_check_flags_a_reply_failed_after_only_a_5xx(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000011")
    message = long_reply(run, conv, "R00001", 1, "3000000011")
    ml_answered_send(run, "3000000011", 503, message["t_created"])
    run.cw.update_message_status(message, "failed", "recusado")

    found = run.check()["violations"][FAILED_FOR_NO_REASON]

    assert len(found) == 1 and found[0].startswith("reply R00001") and "(503, 1)" in found[0]


def test_soak_check_accepts_a_reply_failed_after_mercado_livre_refused_it(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000012")
    message = long_reply(run, conv, "R00001", 1, "3000000012")
    ml_answered_send(run, "3000000012", 503, message["t_created"])
    ml_answered_send(run, "3000000012", 403, message["t_created"] + 1)
    run.cw.update_message_status(message, "failed", "conversa bloqueada")

    assert run.check()["violations"][FAILED_FOR_NO_REASON] == []


def test_soak_check_accepts_a_failed_answer_to_a_question_answered_on_the_site(soak_check):
    run = soak_check
    qid, conv = question_conversation(run, buyer=7010)
    message = run.cw.agent_reply(conv, "R00001p1 Sim, temos.")
    run.replies["R00001"] = {"message_id": message["id"], "conversation_id": conv, "answer": True,
                             "private": False, "units": ["R00001p1"], "style": "answer", "t": 0.0,
                             "target": str(qid)}
    run.cw.update_message_status(message, "failed", "pergunta já respondida")
    assert len(run.check()["violations"][FAILED_FOR_NO_REASON]) == 1  # still open: no reason yet

    run.meli.answer_elsewhere(qid, "Temos sim.")

    assert run.check()["violations"][FAILED_FOR_NO_REASON] == []


def delivered_to_the_bridge(run, message: dict, t: float) -> None:
    with run.cw.lock:
        run.cw.webhook_deliveries.append({"message_id": message["id"], "url": "http://127.0.0.1:9/webhook",
                                          "status": 200, "ms": 1.0, "t": t, "signed": True})


def test_soak_check_checks_a_reply_whose_conversation_was_deleted_after_the_bridge_took_it(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000013")
    message = long_reply(run, conv, "R00001", 2, "3000000013")
    delivered_to_the_bridge(run, message, message["t_created"])
    run.delete_conversation()  # the only one there is
    assert run.deletions[0]["conversations"] == [conv]
    rows = {}
    run._db_replies = lambda: rows

    rows[message["id"]] = {"id": 1, "status": "failed", "attempts": 1, "error": "conversa apagada"}
    assert len(run.check()["violations"][FAILED_FOR_NO_REASON]) == 1
    rows[message["id"]] = dict(rows[message["id"]], status="pending")
    assert len(run.check()["violations"]["no reply left queued after the drain"]) == 1
    del rows[message["id"]]  # dropped: the bridge took it, and kept nothing of it
    assert len(run.check()["violations"]["no reply left queued after the drain"]) == 1
    ml_received(run, "3000000013", "R00001p1 Obrigado pela compra, seu pedido segue hoje.")
    rows[message["id"]] = {"id": 1, "status": "sending", "attempts": 1, "error": None}
    rows[message["id"]]["status"] = "failed"  # sent in part, then given up on after a 5xx
    assert len(run.check()["violations"][FAILED_FOR_NO_REASON]) == 1


def test_soak_check_lets_a_reply_fail_whose_conversation_was_deleted_before_the_bridge_heard_of_it(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000014")
    message = long_reply(run, conv, "R00001", 1, "3000000014")
    run.delete_conversation()
    delivered_to_the_bridge(run, message, run.deletions[0]["t"] + 1.0)
    run._db_replies = lambda: {message["id"]: {"id": 1, "status": "failed", "attempts": 0, "error": "apagada"}}

    assert run.check()["violations"][FAILED_FOR_NO_REASON] == []


MARKED_LATE = "a message marked read is in Chatwoot within seconds of the marking"


def test_soak_check_flags_a_message_marked_read_that_reached_chatwoot_only_much_later(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000015")
    for mid, late in (("m-soon", 2.0), ("m-late", 40.0)):
        copy = run.cw._create_message(conv, "Oi", MESSAGE_TYPES["incoming"], source_id=f"meli:message:{mid}")[0]
        run.marked.append(("3000000015", mid, copy["t_created"] - late))
    run.marked.append(("3000000015", "m-never", 0.0))

    found = run.check()["violations"][MARKED_LATE]

    assert [v.split(":")[0] for v in found] == ["message m-late of sale ?", "message m-never of sale ?"]


def test_the_soak_records_every_message_a_marking_read_marked(fk):
    from bench import soak

    run = soak.Soak(seed=1, minutes=0.0, drain=0.0, access_ttl=60.0, quiet=True)
    run.cw, run.meli = fk.chatwoot.state, fk.meli.state
    meli, message, _seen, url, headers = thread_read_once(fk)
    meli.on_mark_read = run._on_mark_read
    later = meli.add_buyer_message("2000001", "Ainda aí?")
    requests.get(url, params={"tag": "post_sale"}, headers=headers, timeout=5)

    assert [(pack, mid) for pack, mid, _t in run.marked] == [("2000001", message["id"]), ("2000001", later["id"])]
    import shutil
    shutil.rmtree(run.tmp, ignore_errors=True)


MIRRORED = "mirrored text is Mercado Livre's, in Mercado Livre's order"


def test_soak_check_flags_mirrored_text_that_is_not_the_buyers(soak_check):
    run = soak_check
    run.meli.add_order(2000000903, 7011, "COMPRADOR", [("MLB1", "Produto", 1, 20.0)])
    conv = sale_conversation(run, "2000000903", buyer=7011)
    first = run.meli.add_buyer_message("2000000903", "Quando chega?")
    second = run.meli.add_buyer_message("2000000903", "E a nota fiscal?")
    for message, shown in ((first, "Quando chega?"), (second, "E a nota")):
        run.cw._create_message(conv, shown, MESSAGE_TYPES["incoming"], source_id=f"meli:message:{message['id']}")
        run.buyer_messages[message["id"]] = {"pack": "2000000903", "t": 0.0, "files": 0}

    found = run.check()["violations"][MIRRORED]

    assert len(found) == 1 and found[0].startswith(f"meli:message:{second['id']}")


def test_soak_check_flags_buyer_messages_shown_out_of_order(soak_check):
    run = soak_check
    run.meli.add_order(2000000904, 7012, "COMPRADOR", [("MLB1", "Produto", 1, 20.0)])
    conv = sale_conversation(run, "2000000904", buyer=7012)
    first = run.meli.add_buyer_message("2000000904", "Quando chega?")
    second = run.meli.add_buyer_message("2000000904", "E a nota fiscal?")
    for message in (second, first):
        run.cw._create_message(conv, message["text"], MESSAGE_TYPES["incoming"],
                               source_id=f"meli:message:{message['id']}")
        run.buyer_messages[message["id"]] = {"pack": "2000000904", "t": 0.0, "files": 0}

    found = run.check()["violations"][MIRRORED]

    assert found == [f"conversation {conv}: buyer messages shown as {[second['id'], first['id']]}, "
                     f"written as {[first['id'], second['id']]}"]


# ---- claims in the soak ------------------------------------------------------------------------------

RECEIVER = "a claim reply reaches only the receiver the agent addressed"
GUESSED = "a claim reply with a receiver the bridge cannot read is refused, never guessed"


def claim_conversation(run, claim_id: int = 5000001, buyer: int = 7013) -> int:
    run.meli.add_order(2000000905, buyer, "COMPRADOR", [("MLB1", "Produto", 1, 20.0)])
    run.meli.add_claim(claim_id, 2000000905)
    run.claims[claim_id] = {"pack": "2000000905", "buyer": buyer}
    contact, _ = run.cw.create_contact({"name": "C", "identifier": f"meli:buyer:{buyer}",
                                        "inbox_id": run.fakes.claims_inbox, "source_id": f"meli:buyer:{buyer}"})
    conv, _ = run.cw.create_conversation({"inbox_id": run.fakes.claims_inbox, "contact_id": contact["id"],
                                          "source_id": f"meli:buyer:{buyer}",
                                          "custom_attributes": {"meli_claim_id": str(claim_id)}})
    return conv["id"]


def claim_reply(run, conv: int, tag: str, reply_to: str, claim_id: int = 5000001) -> dict:
    message = run.cw.agent_reply(conv, f"{tag}p1 Vamos resolver.")
    run.replies[tag] = {"message_id": message["id"], "conversation_id": conv, "answer": False, "private": False,
                        "units": [f"{tag}p1"], "style": "short", "t": message["t_created"] - 1,
                        "target": str(claim_id), "claim": True, "reply_to": reply_to}
    return message


def claim_received(run, tag: str, receiver: str, claim_id: int = 5000001) -> None:
    with run.meli.lock:
        run.meli.claim_sent.append({"receiver_role": receiver, "message": f"{tag}p1 Vamos resolver.",
                                    "claim_id": claim_id})


def test_soak_check_flags_a_claim_reply_for_the_mediator_that_reached_the_buyer(soak_check):
    run = soak_check
    conv = claim_conversation(run)
    for tag, reply_to, receiver in (("R00001", "mediadora.", "complainant"),
                                    ("R00002", "equipe", "complainant"),
                                    ("R00003", "Mediador", "mediator"), ("R00004", "comprador", "complainant")):
        message = claim_reply(run, conv, tag, reply_to)
        claim_received(run, tag, receiver)
        run.cw.update_message_status(message, "delivered", None)

    violations = run.check()["violations"]

    assert [v.split(" (")[0] for v in violations[RECEIVER]] == ["reply R00001"]
    assert [v.split(" (")[0] for v in violations[GUESSED]] == ["reply R00002"]


def test_soak_check_lets_the_buyers_reply_reach_the_mediator_only_in_a_dispute(soak_check):
    run = soak_check
    conv = claim_conversation(run)
    message = claim_reply(run, conv, "R00001", "")
    claim_received(run, "R00001", "mediator")
    run.cw.update_message_status(message, "delivered", None)
    assert len(run.check()["violations"][RECEIVER]) == 1

    run.meli.open_dispute(5000001)

    assert run.check()["violations"][RECEIVER] == []


def test_soak_check_takes_a_refused_unreadable_receiver_as_a_reason_to_fail(soak_check):
    run = soak_check
    conv = claim_conversation(run)
    unreadable = claim_reply(run, conv, "R00001", "ML")
    readable = claim_reply(run, conv, "R00002", "mediador")
    run.replies["R00002"]["stage"] = "dispute"  # the mediator could be written to
    early = claim_reply(run, conv, "R00003", "Mediador")
    run.replies["R00003"]["stage"] = "claim"  # not yet: Mercado Livre refuses it (403)
    for message in (unreadable, readable, early):
        run.cw.update_message_status(message, "failed", "destinatário não reconhecido")

    found = run.check()["violations"][FAILED_FOR_NO_REASON]

    assert [v.split(" (")[0] for v in found] == ["reply R00002"]


def test_soak_check_wants_each_claim_message_once_in_its_claim_conversation(soak_check):
    run = soak_check
    conv = claim_conversation(run)
    for text, copies in (("Reclamação 1: veio quebrado.", 1), ("Reclamação 2: e agora?", 2),
                         ("Reclamação 3: cadê?", 0)):
        run.claim_texts.append({"claim": 5000001, "role": "complainant", "text": text, "t": 0.0})
        for _ in range(copies):
            run.cw._create_message(conv, text, MESSAGE_TYPES["incoming"], source_id=f"meli:claim_message:{text[11]}")

    found = run.check()["violations"]["claim messages in Chatwoot exactly once"]

    assert [v.rsplit("': ", 1)[-1].split(" [")[0] for v in found] == ["2 live copies", "not in Chatwoot"]


def test_a_5xx_answered_after_the_request_was_applied_still_applies_it(fk):
    meli = fk.meli.state
    meli.add_item("MLB1", "Caneca")
    question = meli.add_question(item_id="MLB1", buyer_id=7001, text="Tem?")
    meli.chaos([{"prefix": "/answers", "p": 1.0, "applied_status": 503}], seed=1)

    resp = requests.post(f"{fk.meli.url}/answers", json={"question_id": question["id"], "text": "Tem sim"},
                         headers={"Authorization": f"Bearer {meli.seed_tokens()[0]}"}, timeout=5)

    assert resp.status_code == 503 and meli.answers_posted == [(question["id"], "Tem sim")]
    assert meli.chaos_counts[("applied, then 503", "/answers")] == 1
    assert meli.calls[-1]["status"] == 503


def test_soak_check_wants_the_note_on_a_question_that_can_no_longer_be_answered(soak_check):
    from bridge import source_ids

    run = soak_check
    noted, noted_conv = question_conversation(run, buyer=7014)
    silent, _conv = question_conversation(run, buyer=7015)
    never_shown = run.meli.add_question(item_id="MLB1", buyer_id=7016, text="Ainda tem?")["id"]
    run.questions[never_shown] = {"t": 0.0, "buyer": 7016}
    for qid, status in ((noted, "DELETED"), (silent, "UNDER_REVIEW"), (never_shown, "BANNED")):
        run.meli.set_question_status(qid, status)
        run.status_changed[qid] = (status, 0.0)
    run.cw._create_message(noted_conv, "A pergunta foi apagada.", MESSAGE_TYPES["outgoing"], private=True,
                           source_id=source_ids.note("question", noted, "DELETED"))

    violations = run.check()["violations"]

    assert violations["a question shown in Chatwoot that can no longer be answered says so"] == [
        f"question {silent}: UNDER_REVIEW on Mercado Livre, its conversation has no note saying so"]
    # Closed before the bridge saw it: never shown, rightly.
    assert violations["buyer questions in Chatwoot exactly once, live conversation"] == []


def test_soak_check_reports_a_process_slow_to_stop_on_sigterm(soak_check):
    run = soak_check
    run.term_slow.append("poller still running 10 s after SIGTERM: killed")

    assert run.check()["violations"]["a process stops within supervisord's stopwaitsecs (10 s) of SIGTERM"] == [
        "poller still running 10 s after SIGTERM: killed"]


ERASURE = "forget-buyer erases that buyer, and only that buyer"


def test_soak_check_flags_a_forget_buyer_that_kept_its_rows_or_erased_another_buyers(soak_check, tmp_path):
    import json
    import sqlite3
    from types import SimpleNamespace

    run = soak_check
    path = tmp_path / "bridge.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE links (kind, external_id, data, created_at);"
                       "CREATE TABLE replies (id, kind, target_id, created_at);"
                       "CREATE TABLE cache (kind, key);")
    for buyer, pack in ((7001, "3000000020"), (7002, "3000000021"), (7003, "3000000022")):
        run.buyers.append(buyer)
        run.packs[pack] = {"buyer": buyer}
        conn.execute("INSERT INTO links VALUES ('buyer', ?, '{}', 0)", (str(buyer),))
        conn.execute("INSERT INTO links VALUES ('pack', ?, ?, 0)", (pack, json.dumps({"buyer_id": str(buyer)})))
    conn.commit()

    def erase_badly(*args, **_kw):
        # Erases buyer 7001's contact row but keeps its sale, and takes buyer 7003's contact row too.
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM links WHERE kind = 'buyer' AND external_id IN ('7001', '7003')")
        return SimpleNamespace(returncode=0)

    run.bridge = SimpleNamespace(env={"DATABASE_PATH": str(path)}, url="http://127.0.0.1:9", cli=erase_badly)
    run._forget(7001)

    found = run.check()["violations"][ERASURE]

    assert len(found) == 2
    assert "still holds ['link pack 3000000020 (older than the erasure)']" in found[0]
    assert "erased other buyers' rows [('buyer', '7003')]" in found[1]
    assert run.erased and run.erasing is None


MODERATED = "a reply moderated after acceptance is shown failed once the bridge read the thread"


def test_soak_check_wants_a_moderated_reply_failed_once_the_bridge_read_its_thread(soak_check):
    import time

    run = soak_check
    conv = sale_conversation(run, "3000000016")
    message = long_reply(run, conv, "R00001", 1, "3000000016")
    ml_received(run, "3000000016", "R00001p1 Obrigado pela compra, seu pedido segue hoje.")
    run.cw.update_message_status(message, "delivered", None)
    run.moderations["R00001p1"] = time.monotonic() - 30.0  # ml_received's message id: the text's start
    found = run.check()["violations"]
    # Not read since: the bridge could not know yet (counted, not a violation).
    assert found[MODERATED] == []
    assert found["a reply that reached Mercado Livre is shown delivered"] == [] and run.moderation_unseen == 1

    with run.meli.lock:
        run.meli.calls.append({"method": "GET", "path": f"/messages/packs/3000000016/sellers/{run.meli.seller_id}",
                               "query": {}, "status": 200, "t": time.monotonic() - 20.0, "ms": 1.0})

    found = run.check()["violations"][MODERATED]
    assert len(found) == 1 and found[0].startswith("reply R00001")
    run.cw.update_message_status(message, "failed", "bloqueada pela moderação")
    assert run.check()["violations"][FAILED_FOR_NO_REASON] == []


def test_soak_check_counts_a_part_sent_twice_after_a_hold_past_the_settle_apart(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000017")
    for tag, holds in (("R00001", (9.0, 0.1)), ("R00002", (0.4, 0.1))):
        message = long_reply(run, conv, tag, 1, "3000000017")
        for held in holds:
            with run.meli.lock:
                run.meli.sent_messages.append({"text": f"{tag}p1 Obrigado.", "attachments": [], "held": held,
                                               "pack_id": "3000000017", "message_id": f"{tag}-{held}"})
        run.cw.update_message_status(message, "delivered", None)

    found = run.check()["violations"]["no reply part or file reached Mercado Livre twice"]

    assert [v.split(" (")[0] for v in found] == ["reply R00002"] and run.sent_twice_past_settle == 1


def test_a_reply_after_an_agent_edited_the_sale_id_is_still_expected_at_the_sale_the_bridge_linked(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000018")
    sale_conversation(run, "3000000019", buyer=7002)
    for seed in range(40):  # until the draw is "another sale's id"
        run.rng.seed(seed)
        run.edit_attributes()
        if run.cw.conversations[conv]["custom_attributes"]["meli_pack_id"] == "3000000019":
            break
    run.agent_reply(conv_id=conv, style="short")
    [reply] = run.replies.values()
    ml_received(run, "3000000019", f"{next(iter(run.replies))}p1 Olá! Seu pedido já foi enviado, obrigado.")

    found = run.check()["violations"]["a reply reaches only its own question or sale"]

    assert reply["target"] == "3000000018" and len(found) == 1 and "sale 3000000019" in found[0]


def test_soak_check_wants_a_snoozed_sale_conversation_open_after_a_new_buyer_message(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000023")
    run.snooze_conversation()
    run.cw._create_message(conv, "Oi?", MESSAGE_TYPES["incoming"], source_id="meli:message:m-snoozed")

    found = run.check()["violations"]["sale conversation reopened after a new buyer message"]

    assert found == [f"conversation {conv} snoozed by the agent, still snoozed after buyer messages "
                     f"{[m['id'] for m in run.cw.messages_in(conv) if m['message_type'] == 0]}"]


def test_soak_check_waits_for_the_sweep_for_a_message_read_on_the_site_only_until_it_is_due(soak_check):
    from bench import soak

    run = soak_check
    run.meli.add_order(2000000906, 7017, "COMPRADOR", [("MLB1", "Produto", 1, 20.0)])
    run.packs["2000000906"] = {"buyer": 7017, "order": 2000000906}
    run.read_on_site()
    [(mid, info)] = run.buyer_messages.items()
    assert info["read_on_site"] and run.meli.unread_results() == []

    found = run.check()["violations"]["buyer messages in Chatwoot exactly once, live conversation"]
    assert found == [] and run.not_swept_yet == 1

    info["t"] -= soak.SWEEP_RECHECK + 61.0  # long enough ago for the sweep to have come by
    found = run.check()["violations"]["buyer messages in Chatwoot exactly once, live conversation"]
    assert len(found) == 1 and found[0].startswith(f"message {mid} of sale 2000000906: not in Chatwoot")


def test_a_moderated_reply_in_a_deleted_conversation_is_told_by_a_note_in_the_sales_new_one(soak_check):
    import time

    from bridge import source_ids

    run = soak_check
    conv = sale_conversation(run, "3000000024")
    message = long_reply(run, conv, "R00001", 1, "3000000024")
    ml_received(run, "3000000024", "R00001p1 Obrigado pela compra, seu pedido segue hoje.")
    run.moderations["R00001p1"] = time.monotonic() - 30.0
    with run.meli.lock:
        run.meli.calls.append({"method": "GET", "path": f"/messages/packs/3000000024/sellers/{run.meli.seller_id}",
                               "query": {}, "status": 200, "t": time.monotonic() - 20.0, "ms": 1.0})
    run._db_replies = lambda: {message["id"]: {"id": 1, "status": "delivered", "attempts": 1, "error": None}}
    run.delete_conversation()
    assert run.check()["violations"][MODERATED] == []  # no conversation of the sale left to tell it in

    again = sale_conversation(run, "3000000024", buyer=7018)  # the sale's new conversation
    assert len(run.check()["violations"][MODERATED]) == 1
    run.cw._create_message(again, "Bloqueada pela moderação", MESSAGE_TYPES["outgoing"], private=True,
                           source_id=source_ids.note("moderation", "R00001p1"))

    assert run.check()["violations"][MODERATED] == []


def test_the_soak_deletes_the_conversation_a_moment_after_the_agent_replied_there(soak_check):
    run = soak_check
    conv = sale_conversation(run, "3000000025")

    run.reply_then_delete()

    [reply] = run.replies.values()
    assert reply["conversation_id"] == conv and conv not in run.cw.conversations
    assert run.deletions[-1]["conversations"] == [conv] and run.deletions[-1]["t"] > reply["t"]


def test_soak_check_does_not_take_mercado_livre_refusing_the_wrong_claim_receiver_as_a_reason(soak_check):
    run = soak_check
    conv = claim_conversation(run)
    run.meli.open_dispute(5000001)
    message = claim_reply(run, conv, "R00001", "Mediador")
    run.replies["R00001"]["stage"] = "dispute"
    with run.meli.lock:  # the bridge wrote to the buyer, whom Mercado Livre no longer lets it write to
        run.meli.calls.append({"method": "POST", "path": "/post-purchase/v1/claims/5000001/actions/send-message",
                               "query": {}, "status": 403, "t": message["t_created"], "ms": 1.0})
    run.cw.update_message_status(message, "failed", "recusado pelo Mercado Livre")

    found = run.check()["violations"][FAILED_FOR_NO_REASON]

    assert [v.split(" (")[0] for v in found] == ["reply R00001"]


def test_soak_check_does_not_count_a_chatwoot_outage_against_a_marked_message(soak_check):
    # Seed 31001: marked as a 60 s outage began, shown 10 s after it ended.
    run = soak_check
    conv = sale_conversation(run, "3000000016")
    copy = run.cw._create_message(conv, "Oi", MESSAGE_TYPES["incoming"], source_id="meli:message:m-out")[0]
    marked_at = copy["t_created"] - 70.0
    run.marked.append(("3000000016", "m-out", marked_at))
    run.outages.append((marked_at + 1.0, marked_at + 61.0))

    assert run.check()["violations"][MARKED_LATE] == []


def test_soak_check_does_not_take_an_empty_conversation_an_agent_edited_for_a_second_one(soak_check):
    # Seed 31001: a create held past its answer made the first; its attribute edited before the bridge
    # looked for it, nothing named it any more, and the bridge made another.
    run = soak_check
    first = sale_conversation(run, "3000000017")
    run.true_attrs[first] = dict(run.cw.conversations[first]["custom_attributes"])
    run.cw.conversations[first]["custom_attributes"]["meli_pack_id"] = "30000000179"
    again, _ = run.cw.create_conversation({"inbox_id": run.fakes.messages_inbox,
                                           "contact_id": run.cw.conversations[first]["contact_id"],
                                           "source_id": "meli:buyer:7001",
                                           "custom_attributes": {"meli_pack_id": "3000000017"}})
    again = again["id"]
    run.cw._create_message(again, "Oi", MESSAGE_TYPES["incoming"], source_id="meli:message:m-17")

    assert run.check()["violations"]["one live conversation per question / sale"] == []
    # Once the bridge had written there, it knew it as the sale's: a second is a violation again.
    run.cw._create_message(first, "Oi", MESSAGE_TYPES["incoming"], source_id="meli:message:m-16")
    assert run.check()["violations"]["one live conversation per question / sale"] == \
        [f"meli_pack_id=3000000017: live conversations {sorted([first, again])}"]


def test_soak_check_takes_a_message_written_before_its_buyers_erasure_as_erased_when_marked_after_it(soak_check):
    # Seed 31001, sale 2000000130: read at 01:21:32, buyer erased at 01:22:06, thread marked at 01:23:47.
    import time as clock
    run = soak_check
    sale_conversation(run, "2000000130", buyer=7100017)
    now = clock.monotonic()
    run.buyer_messages["m-old"] = {"pack": "2000000130", "t": now - 140.0, "files": 0}
    run.buyer_messages["m-new"] = {"pack": "2000000130", "t": now - 10.0, "files": 0}
    run.erased[7100017] = now - 100.0
    run.marked += [("2000000130", "m-old", now - 5.0), ("2000000130", "m-new", now - 5.0)]
    run.mark_read_bad.append(("2000000130", [("m-old", 135.2), ("m-new", 5.0)]))

    found = run.check()["violations"]

    assert found[MARKED_LATE] == ["message m-new of sale 2000000130: marked read, never in Chatwoot"]
    assert found["threads marked read only when Chatwoot has the messages"] == \
        ["sale 2000000130: marked read while Chatwoot lacked ['m-new (shown 5.0s before)']"]


def test_soak_check_lets_a_forget_buyer_leave_an_item_it_did_not_hold_brought_in_as_it_ran(soak_check, tmp_path):
    # Seed 31001, buyer 7100004: the erasure found nothing; a sync that had read the sale a moment before
    # made its rows as it ended (docs/privacidade.md: run the command again). A sale it held may not come back.
    import json
    import sqlite3
    import time as clock
    from types import SimpleNamespace

    run = soak_check
    path = tmp_path / "bridge.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE links (kind, external_id, data, created_at);"
                       "CREATE TABLE replies (id, kind, target_id, created_at);"
                       "CREATE TABLE cache (kind, key);")
    conn.execute("INSERT INTO links VALUES ('pack', '3000000023', ?, 0)", (json.dumps({"buyer_id": "7004"}),))
    conn.commit()
    run.buyers.append(7004)
    run.packs["3000000021"] = {"buyer": 7004}
    run.packs["3000000023"] = {"buyer": 7004}
    run.buyer_messages["m-21"] = {"pack": "3000000021", "t": 0.0, "files": 0}

    def erase_while_a_sync_ends(*args, **_kw):
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM links")
            later = clock.time() + 1
            for kind, external_id in (("buyer", "7004"), ("pack", "3000000021"), ("message", "m-21"),
                                      ("pack", "3000000023")):
                db.execute("INSERT INTO links VALUES (?, ?, ?, ?)",
                           (kind, external_id, json.dumps({"buyer_id": "7004"}), later))
        return SimpleNamespace(returncode=0)

    run.bridge = SimpleNamespace(env={"DATABASE_PATH": str(path)}, url="http://127.0.0.1:9",
                                 cli=erase_while_a_sync_ends)
    run._forget(7004)

    assert run.check()["violations"][ERASURE] == \
        ["forget-buyer 7004: the bridge still holds ['link pack 3000000023 (written after the erasure)']"]
