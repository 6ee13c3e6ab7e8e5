"""The fakes reproduce the traps of the real APIs (see /work/shared/api-facts.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import requests
from flask import Flask, request

from tests.fakes import fake_chatwoot, serve, start_fakes
from tests.fakes.fake_meli import AGENT_ID

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 32


@pytest.fixture
def fk():
    running = start_fakes()
    yield running
    running.stop()


@pytest.fixture
def receiver():
    """A webhook endpoint recording raw bodies and headers; `.status` is what it answers."""
    app = Flask("receiver")
    app.received, app.status = [], 200

    @app.post("/hook")
    def hook():
        app.received.append({"raw": request.get_data(), "headers": dict(request.headers)})
        return "", app.status

    handle = serve(app)
    handle.app = app
    yield handle
    handle.shutdown()


def meli_session(fk, token=None) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token or fk.meli.state.seed_tokens()[0]}"
    return session


def cw(fk, token="cw-token-abc") -> requests.Session:
    session = requests.Session()
    session.headers["api_access_token"] = token
    return session


def api(fk, path: str) -> str:
    return f"{fk.chatwoot.url}/api/v1/accounts/1{path}"


def token_call(fk, **form) -> requests.Response:
    meli = fk.meli.state
    return requests.post(f"{fk.meli.url}/oauth/token",
                         data={"client_id": str(meli.app_id), "client_secret": meli.secret, **form}, timeout=5)


# ---- Mercado Livre: OAuth ------------------------------------------------------------------------

def test_refresh_tokens_are_single_use(fk):
    meli = fk.meli.state
    _access, refresh = meli.seed_tokens()
    first = token_call(fk, grant_type="refresh_token", refresh_token=refresh)
    assert first.status_code == 200
    body = first.json()
    assert body["refresh_token"] != refresh and body["expires_in"] == 21600 and body["user_id"] == meli.seller_id
    again = token_call(fk, grant_type="refresh_token", refresh_token=refresh)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert token_call(fk, grant_type="refresh_token", refresh_token=body["refresh_token"]).status_code == 200
    assert (meli.refresh_count, meli.invalid_grant_count) == (2, 1)


def test_authorization_codes_are_single_use_and_check_redirect_and_pkce(fk):
    meli = fk.meli.state
    code = meli.issue_code(redirect_uri="https://b.example/cb", code_verifier="v" * 43)
    assert token_call(fk, grant_type="authorization_code", code=code, redirect_uri="https://other/cb",
                      code_verifier="v" * 43).status_code == 400
    assert token_call(fk, grant_type="authorization_code", code=code, redirect_uri="https://b.example/cb",
                      code_verifier="w" * 43).status_code == 400
    ok = token_call(fk, grant_type="authorization_code", code=code, redirect_uri="https://b.example/cb",
                    code_verifier="v" * 43)
    assert ok.status_code == 200 and ok.json()["scope"] == "offline_access read write"
    assert token_call(fk, grant_type="authorization_code", code=code, redirect_uri="https://b.example/cb",
                      code_verifier="v" * 43).json()["error"] == "invalid_grant"
    bad_client = requests.post(f"{fk.meli.url}/oauth/token", data={"grant_type": "refresh_token",
                               "client_id": "1", "client_secret": "x", "refresh_token": "y"}, timeout=5)
    assert bad_client.status_code == 400 and bad_client.json()["error"] == "invalid_client"


def test_expired_or_revoked_access_tokens_get_401(fk):
    meli = fk.meli.state
    meli.access_ttl = 0.05
    session = meli_session(fk)
    time.sleep(0.1)
    resp = session.get(f"{fk.meli.url}/users/me", timeout=5)
    assert resp.status_code == 401 and resp.json()["message"] == "invalid_token"
    meli.access_ttl = 3600.0
    access, refresh = meli.seed_tokens()
    assert meli_session(fk, access).get(f"{fk.meli.url}/users/me", timeout=5).json()["nickname"] == "LOJA_TESTE"
    meli.revoke_all()
    assert meli_session(fk, access).get(f"{fk.meli.url}/users/me", timeout=5).status_code == 401
    assert token_call(fk, grant_type="refresh_token", refresh_token=refresh).json()["error"] == "invalid_grant"
    assert meli.unauthorized_count == 2
    assert requests.get(f"{fk.meli.url}/users/me", timeout=5).status_code == 401


# ---- Mercado Livre: questions and items --------------------------------------------------------------

def test_question_search_paginates_and_filters(fk):
    meli = fk.meli.state
    meli.add_item("MLB1", "Caneca")
    ids = [meli.add_question(item_id="MLB1", buyer_id=9001, text=f"q{n}")["id"] for n in range(120)]
    meli.set_question_status(ids[0], "ANSWERED")
    session, url = meli_session(fk), f"{fk.meli.url}/questions/search"
    params = {"seller_id": meli.seller_id, "status": "UNANSWERED", "api_version": 4, "limit": 50}
    pages = [session.get(url, params={**params, "offset": o}, timeout=5).json() for o in (0, 50, 100)]
    assert [len(p["questions"]) for p in pages] == [50, 50, 19] and pages[0]["total"] == 119
    seen = [q["id"] for p in pages for q in p["questions"]]
    assert seen == ids[1:]  # ascending by date_created
    assert session.get(url, params={**params, "limit": 51}, timeout=5).status_code == 400
    newest = session.get(url, params={**params, "sort_fields": "date_created", "sort_types": "DESC"}, timeout=5)
    assert newest.json()["questions"][0]["id"] == ids[-1]
    one = session.get(f"{fk.meli.url}/questions/{ids[5]}", params={"api_version": 4}, timeout=5).json()
    assert one["from"] == {"id": 9001} and one["answer"] is None and one["date_created"].endswith("-04:00")


def test_answers_follow_question_status(fk):
    meli = fk.meli.state
    q1 = meli.add_question(item_id="MLB1", buyer_id=9001, text="tem?")["id"]
    q2 = meli.add_question(item_id="MLB1", buyer_id=9001, text="e azul?")["id"]
    session, url = meli_session(fk), f"{fk.meli.url}/answers"
    assert session.post(url, json={"question_id": q1, "text": "x" * 2001}, timeout=5).status_code == 400
    ok = session.post(url, json={"question_id": q1, "text": "Temos"}, timeout=5)
    assert ok.status_code == 200 and ok.json()["answer"]["text"] == "Temos" and ok.json()["status"] == "ANSWERED"
    twice = session.post(url, json={"question_id": q1, "text": "Temos"}, timeout=5)
    assert twice.status_code == 400 and twice.json()["error"] == "not_unanswered_question"
    meli.answer_elsewhere(q2, "pelo site")
    assert session.post(url, json={"question_id": q2, "text": "x"}, timeout=5).json()["error"] == \
        "not_unanswered_question"
    assert meli.answers_posted == [(q1, "Temos")]


def test_items_multiget(fk):
    meli = fk.meli.state
    meli.add_item("MLB1", "Caneca")
    session = meli_session(fk)
    got = session.get(f"{fk.meli.url}/items", params={"ids": "MLB1,MLB404"}, timeout=5).json()
    assert got[0]["code"] == 200 and got[0]["body"]["permalink"].startswith("https://produto.mercadolivre.com.br/")
    assert got[1]["code"] == 404
    too_many = ",".join(f"MLB{i}" for i in range(21))
    assert session.get(f"{fk.meli.url}/items", params={"ids": too_many}, timeout=5).status_code == 400


# ---- Mercado Livre: post-sale -------------------------------------------------------------------------

def sale(meli, pack_id=None):
    meli.add_order(2000001, 7001, "COMPRADOR", items=[("MLB1", "Caneca", 2, 25.0)], pack_id=pack_id)
    return str(pack_id or 2000001)


def test_reading_a_thread_marks_read_unless_mark_as_read_false(fk):
    meli = fk.meli.state
    pack = sale(meli)
    first = meli.add_buyer_message(pack, "Oi", attachments=[("foto.png", PNG, "image/png")])
    session = meli_session(fk)
    url = f"{fk.meli.url}/messages/packs/{pack}/sellers/{meli.seller_id}"
    unread = session.get(f"{fk.meli.url}/messages/unread", params={"role": "seller", "tag": "post_sale"}, timeout=5)
    assert unread.json() == {"results": [{"resource": f"/packs/{pack}/sellers/{meli.seller_id}", "count": 1}]}
    peek = session.get(url, params={"tag": "post_sale", "mark_as_read": "false"}, timeout=5).json()
    assert peek["messages"][0]["message_date"]["read"] is None and meli.mark_read_events == []
    assert peek["seller_max_message_length"] == 350 and peek["conversation_status"]["status"] == "active"
    msg = peek["messages"][0]
    assert len(msg["id"]) == 32 and msg["from"] == {"user_id": 7001}
    assert msg["message_resources"] == [{"id": pack, "name": "orders"}]
    session.get(url, params={"tag": "post_sale"}, timeout=5)
    assert [(p, ids) for p, ids, _t in meli.mark_read_events] == [(pack, [first["id"]])]
    assert session.get(f"{fk.meli.url}/messages/unread", timeout=5).json() == {"results": []}
    filename = msg["message_attachments"][0]["filename"]
    download = session.get(f"{fk.meli.url}/messages/attachments/{filename}", params={"tag": "post_sale"}, timeout=5)
    assert download.content == PNG and download.headers["Content-Type"] == "image/png"
    assert session.get(f"{fk.meli.url}/messages/{first['id']}", timeout=5).json()["text"] == "Oi"
    assert session.get(f"{fk.meli.url}/packs/{pack}", timeout=5).status_code == 404  # an order id, not a pack


def test_sending_enforces_length_latin1_recipient_and_blocking(fk):
    meli = fk.meli.state
    pack = sale(meli, pack_id=3000001)
    meli.add_buyer_message(pack, "Oi")
    session = meli_session(fk)
    url = f"{fk.meli.url}/messages/packs/{pack}/sellers/{meli.seller_id}?tag=post_sale"

    def send(text, to=7001):
        return session.post(url, json={"from": {"user_id": meli.seller_id}, "to": {"user_id": to}, "text": text},
                            timeout=5)

    assert send("a" * 351).status_code == 400
    emoji = send("Obrigado 😀")
    assert emoji.status_code == 400 and emoji.json()["error"] == "invalid_characters"
    assert send("Olá, ação ç").status_code == 201  # Latin-1 is fine
    assert send("oi", to=AGENT_ID).status_code == 400
    meli.set_migrated(pack)
    assert send("oi").status_code == 400 and send("oi", to=AGENT_ID).status_code == 201
    meli.block_thread(pack)
    blocked = send("oi", to=AGENT_ID)
    assert blocked.status_code == 403 and blocked.json()["error"] == "blocked_conversation_send_message_forbidden"
    assert [m["text"] for m in meli.sent_messages] == ["Olá, ação ç", "oi"]
    assert session.get(f"{fk.meli.url}/packs/{pack}", timeout=5).json()["orders"] == [{"id": 2000001}]


def test_uploads_and_attachment_ids(fk):
    meli = fk.meli.state
    pack = sale(meli)
    meli.add_buyer_message(pack, "Oi")
    session = meli_session(fk)
    upload_url = f"{fk.meli.url}/messages/attachments?tag=post_sale&site_id=MLB"
    exe = session.post(upload_url, files={"file": ("virus.exe", b"MZ", "application/octet-stream")}, timeout=5)
    assert exe.status_code == 400
    attachment_id = session.post(upload_url, files={"file": ("nota.pdf", b"%PDF-1.4", "application/pdf")},
                                 timeout=5).json()["id"]
    url = f"{fk.meli.url}/messages/packs/{pack}/sellers/{meli.seller_id}?tag=post_sale"
    body = {"from": {"user_id": meli.seller_id}, "to": {"user_id": 7001}, "text": "nota"}
    assert session.post(url, json={**body, "attachments": ["nope.pdf"]}, timeout=5).status_code == 422
    sent = session.post(url, json={**body, "attachments": [attachment_id]}, timeout=5).json()
    assert sent["message_attachments"][0]["original_filename"] == "nota.pdf"
    assert meli.uploads[0]["id"] == attachment_id and meli.sent_messages[0]["attachments"] == [attachment_id]


def test_injected_failures_rate_limits_and_missed_feeds(fk):
    meli = fk.meli.state
    session = meli_session(fk)
    meli.fail_next("GET", "/users/me", 429, times=2)
    first = session.get(f"{fk.meli.url}/users/me", timeout=5)
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert session.get(f"{fk.meli.url}/users/me", timeout=5).status_code == 429
    assert session.get(f"{fk.meli.url}/users/me", timeout=5).status_code == 200
    meli.rate_limit("GET", 1)
    assert session.get(f"{fk.meli.url}/users/me", timeout=5).status_code == 200
    limited = session.get(f"{fk.meli.url}/users/me", timeout=5)
    assert limited.status_code == 429 and limited.json()["error"] == "too_many_requests" and meli.rate_limited == 1
    meli.rate_limit("GET", None)
    meli.missed.append(meli.notification("questions", "/questions/1"))
    feeds = session.get(f"{fk.meli.url}/missed_feeds", params={"app_id": meli.app_id}, timeout=5).json()
    assert feeds["messages"][0]["topic"] == "questions" and feeds["messages"][0]["user_id"] == meli.seller_id
    assert meli.count("GET", "/users/me") == 5 and meli.calls[0]["status"] == 429


# ---- Chatwoot ----------------------------------------------------------------------------------------

def make_conversation(fk, identifier="meli:buyer:7001"):
    """A contact with a contact_inbox and a conversation in a fresh API inbox, through the API."""
    inbox = fk.chatwoot.state.add_inbox("Mercado Livre - Perguntas")
    session = cw(fk)
    created = session.post(api(fk, "/contacts"), json={"name": "COMPRADOR", "identifier": identifier,
                                                       "inbox_id": inbox, "source_id": "src-7001"}, timeout=5)
    contact = created.json()["payload"]["contact"]
    conv = session.post(api(fk, "/conversations"), json={"source_id": "src-7001", "inbox_id": inbox,
                        "contact_id": contact["id"], "custom_attributes": {"meli_question_id": "42"}}, timeout=5)
    return session, contact, conv.json()


def test_chatwoot_auth_and_account(fk):
    assert cw(fk, "wrong").get(api(fk, "/inboxes"), timeout=5).json() == {"error": "Invalid Access Token"}
    other = cw(fk).get(f"{fk.chatwoot.url}/api/v1/accounts/2/inboxes", timeout=5)
    assert other.status_code == 404
    fk.chatwoot.state.add_inbox("Mercado Livre - Vendas")
    assert cw(fk).get(api(fk, "/inboxes"), timeout=5).json()["payload"][0]["channel_type"] == "Channel::Api"


def test_contact_identifier_is_unique_and_filter_is_exact(fk):
    session, contact, conv = make_conversation(fk)
    dup = session.post(api(fk, "/contacts"), json={"name": "X", "identifier": "meli:buyer:7001"}, timeout=5)
    assert dup.status_code == 422 and dup.json()["attributes"] == ["identifier"]
    session.post(api(fk, "/contacts"), json={"name": "Y", "identifier": "meli:buyer:70012"}, timeout=5)
    found = session.post(api(fk, "/contacts/filter"), json={"payload": [{
        "attribute_key": "identifier", "filter_operator": "equal_to", "values": ["meli:buyer:7001"],
        "query_operator": None}]}, timeout=5).json()
    assert found["meta"]["count"] == 1 and found["payload"][0]["id"] == contact["id"]
    assert len(session.get(api(fk, "/contacts/search"), params={"q": "meli:buyer:7001"}, timeout=5)
               .json()["payload"]) == 2  # substring search: the wrong tool for identity
    bad = session.post(api(fk, "/conversations"), json={"source_id": "nope", "inbox_id": conv["inbox_id"],
                       "contact_id": contact["id"]}, timeout=5)
    assert bad.status_code == 422
    listed = session.get(api(fk, f"/contacts/{contact['id']}/conversations"), timeout=5).json()["payload"]
    assert [c["id"] for c in listed] == [conv["id"]] and conv["meta"]["sender"]["id"] == contact["id"]
    assert fk.chatwoot.state.find_conversation(meli_question_id=42)["id"] == conv["id"]


def test_webhooks_are_signed_and_differ_from_api_shapes(fk, receiver):
    state = fk.chatwoot.state
    state.add_webhook(f"{receiver.url}/hook", "whsec-test")
    session, _contact, conv = make_conversation(fk)
    resp = session.post(api(fk, f"/conversations/{conv['id']}/messages"),
                        json={"content": "Tem <azul> & verde?", "message_type": "incoming", "private": False,
                              "source_id": "meli:question:42"}, timeout=5)
    api_msg = resp.json()
    assert api_msg["message_type"] == 0 and isinstance(api_msg["created_at"], int) and api_msg["status"] == "sent"
    reply = state.agent_reply(conv["id"], "Temos!")
    assert state.wait_webhooks_idle(5)
    assert len(receiver.app.received) == 2
    first = receiver.app.received[0]
    raw, headers = first["raw"], first["headers"]
    expected = hmac.new(b"whsec-test", headers["X-Chatwoot-Timestamp"].encode() + b"." + raw,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Chatwoot-Signature"], f"sha256={expected}")
    assert abs(int(headers["X-Chatwoot-Timestamp"]) - time.time()) < 60 and headers["X-Chatwoot-Delivery"]
    assert b"\\u003cazul\\u003e \\u0026" in raw  # Rails escaping: verify the raw bytes, not a re-dump
    hook = json.loads(raw)
    assert hook["event"] == "message_created" and hook["id"] == api_msg["id"]
    assert hook["message_type"] == "incoming" and hook["created_at"].endswith("Z") and "." in hook["created_at"]
    assert "attachments" not in hook and "type" not in hook["sender"]
    assert hook["source_id"] == "meli:question:42" and hook["conversation"]["channel"] == "Channel::Api"
    assert hook["conversation"]["custom_attributes"] == {"meli_question_id": "42"}
    agent = json.loads(receiver.app.received[1]["raw"])
    assert agent["id"] == reply["id"] and agent["message_type"] == "outgoing" and agent["source_id"] is None
    assert agent["sender"]["type"] == "user" and agent["private"] is False
    assert [d["status"] for d in state.webhook_deliveries] == [200, 200]


def test_unsigned_webhook_and_failed_inbox_webhook_marks_message(fk, receiver):
    state = fk.chatwoot.state
    state.add_webhook(f"{receiver.url}/hook")
    session, _contact, conv = make_conversation(fk)
    state.inboxes[conv["inbox_id"]]["webhook_url"] = f"{receiver.url}/hook"  # same URL twice: two deliveries
    receiver.app.status = 500
    reply = state.agent_reply(conv["id"], "oi")
    assert state.wait_webhooks_idle(5)
    assert len(receiver.app.received) == 2
    assert "X-Chatwoot-Signature" not in receiver.app.received[0]["headers"]
    assert state.message(reply["id"])["status"] == "failed"
    shown = session.get(api(fk, f"/conversations/{conv['id']}/messages"), timeout=5).json()["payload"][-1]
    assert shown["status"] == "failed" and "external_error" in shown["content_attributes"]


def test_inbox_webhooks_are_set_by_patch_and_signed_with_the_secret_the_inbox_shows(fk, receiver):
    state = fk.chatwoot.state
    session, _contact, conv = make_conversation(fk)
    inbox_id = conv["inbox_id"]
    updated = session.patch(api(fk, f"/inboxes/{inbox_id}"), json={"channel": {"webhook_url": f"{receiver.url}/hook"}},
                            timeout=5).json()
    assert updated["webhook_url"] == f"{receiver.url}/hook" and updated["secret"]
    state.agent_reply(conv["id"], "oi")
    assert state.wait_webhooks_idle(5)
    headers, raw = receiver.app.received[0]["headers"], receiver.app.received[0]["raw"]
    signature = fake_chatwoot.sign(updated["secret"], headers["X-Chatwoot-Timestamp"], raw)
    assert headers["X-Chatwoot-Signature"] == signature
    # Before 4.13: no secret in the inbox JSON, and the inbox's deliveries go unsigned.
    state.signs_inbox_webhooks = False
    assert "secret" not in session.get(api(fk, f"/inboxes/{inbox_id}"), timeout=5).json()
    state.agent_reply(conv["id"], "oi de novo")
    assert state.wait_webhooks_idle(5)
    assert "X-Chatwoot-Signature" not in receiver.app.received[1]["headers"]


def test_account_webhooks_show_their_secret_in_lists_as_chatwoot_does(fk):
    session = cw(fk)
    created = session.post(api(fk, "/webhooks"), json={"url": "https://bridge.example.test/webhook",
                                                       "subscriptions": ["message_created"]}, timeout=5).json()
    secret = created["payload"]["webhook"]["secret"]
    listed = session.get(api(fk, "/webhooks"), timeout=5).json()["payload"]["webhooks"]
    assert secret and [h["secret"] for h in listed] == [secret]


def test_attachments_redirect_to_storage(fk, receiver):
    state = fk.chatwoot.state
    state.add_webhook(f"{receiver.url}/hook", "s")
    session, _contact, conv = make_conversation(fk)
    resp = session.post(api(fk, f"/conversations/{conv['id']}/messages"),
                        data={"content": "foto", "message_type": "incoming", "private": "false"},
                        files=[("attachments[]", ("defeito.png", PNG, "image/png"))], timeout=5)
    attachment = resp.json()["attachments"][0]
    assert attachment["file_type"] == "image" and attachment["extension"] == "png"
    assert attachment["file_size"] == len(PNG)
    hop = requests.get(attachment["data_url"], allow_redirects=False, timeout=5)
    assert hop.status_code == 302 and "/storage/" in hop.headers["Location"]
    assert requests.get(attachment["data_url"], timeout=5).content == PNG
    state.wait_webhooks_idle(5)
    assert json.loads(receiver.app.received[0]["raw"])["attachments"][0]["data_url"] == attachment["data_url"]


def test_messages_page_status_patch_and_conversation_updates(fk):
    state = fk.chatwoot.state
    session, _contact, conv = make_conversation(fk)
    url = api(fk, f"/conversations/{conv['id']}/messages")
    ids = [session.post(url, json={"content": f"m{n}", "message_type": "outgoing", "private": False},
                        timeout=5).json()["id"] for n in range(25)]
    latest = session.get(url, timeout=5).json()["payload"]
    assert [m["id"] for m in latest] == ids[-20:]
    older = session.get(url, params={"before": ids[-20]}, timeout=5).json()["payload"]
    assert [m["id"] for m in older] == ids[:5]
    patched = session.patch(f"{url}/{ids[0]}", json={"status": "failed", "external_error": "too long"}, timeout=5)
    assert patched.json()["status"] == "failed" and state.message(ids[0])["external_error"] == "too long"
    toggled = session.post(api(fk, f"/conversations/{conv['id']}/toggle_status"), json={"status": "resolved"},
                           timeout=5).json()
    assert toggled["payload"]["current_status"] == "resolved" and state.conversations[conv["id"]]["status"] == \
        "resolved"
    session.post(api(fk, f"/conversations/{conv['id']}/custom_attributes"),
                 json={"custom_attributes": {"a": 1}}, timeout=5)
    assert state.conversations[conv["id"]]["custom_attributes"] == {"a": 1}  # replaced, not merged
    assert len(state.messages_in(conv["id"])) == 25  # the activity message is left out


def test_flood_guard_answers_429(fk, monkeypatch):
    monkeypatch.setattr(fake_chatwoot, "FLOOD_LIMIT", 3)
    session, _contact, conv = make_conversation(fk)
    url = api(fk, f"/conversations/{conv['id']}/messages")
    codes = [session.post(url, json={"content": "x", "message_type": "outgoing"}, timeout=5).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_initial_conversation_message_is_outgoing_by_default(fk):
    state = fk.chatwoot.state
    inbox = state.add_inbox("Vendas")
    session = cw(fk)
    contact = session.post(api(fk, "/contacts"), json={"name": "A", "identifier": "meli:buyer:1"},
                           timeout=5).json()["payload"]["contact"]
    link = session.post(api(fk, f"/contacts/{contact['id']}/contact_inboxes"), json={"inbox_id": inbox},
                        timeout=5).json()
    conv = session.post(api(fk, "/conversations"), json={"source_id": link["source_id"], "inbox_id": inbox,
                        "contact_id": contact["id"], "message": {"content": "oi"}}, timeout=5).json()
    assert [m["message_type"] for m in state.messages_in(conv["id"])] == [1]


def test_deleting_a_conversation_or_contact_makes_the_api_answer_404(fk):
    state = fk.chatwoot.state
    session, contact, conv = make_conversation(fk)
    message = session.post(api(fk, f"/conversations/{conv['id']}/messages"),
                           json={"content": "oi", "message_type": "incoming"}, timeout=5).json()
    assert session.delete(api(fk, f"/conversations/{conv['id']}"), timeout=5).status_code == 200
    assert session.get(api(fk, f"/conversations/{conv['id']}/messages"), timeout=5).status_code == 404
    assert session.post(api(fk, f"/conversations/{conv['id']}/messages"), json={"content": "x"},
                        timeout=5).status_code == 404
    assert message["id"] not in state.messages
    second = session.post(api(fk, "/conversations"), json={"source_id": "src-7001", "inbox_id": conv["inbox_id"],
                          "contact_id": contact["id"]}, timeout=5).json()
    # Deleting the contact takes its conversations and contact_inboxes along.
    assert session.delete(api(fk, f"/contacts/{contact['id']}"), timeout=5).status_code == 200
    assert second["id"] not in state.conversations and not state.contact_inboxes
    assert session.get(api(fk, f"/contacts/{contact['id']}/conversations"), timeout=5).status_code == 404
    gone = session.post(api(fk, "/conversations"), json={"source_id": "src-7001", "inbox_id": conv["inbox_id"],
                        "contact_id": contact["id"]}, timeout=5)
    assert gone.status_code == 404
    found = session.post(api(fk, "/contacts/filter"), json={"payload": [{
        "attribute_key": "identifier", "filter_operator": "equal_to", "values": ["meli:buyer:7001"],
        "query_operator": None}]}, timeout=5).json()
    assert found["payload"] == []
    assert session.delete(api(fk, f"/contacts/{contact['id']}"), timeout=5).status_code == 404


def test_merging_contacts_moves_conversations_and_inboxes_to_the_base(fk):
    state = fk.chatwoot.state
    session, mergee, conv = make_conversation(fk)
    base = session.post(api(fk, "/contacts"), json={"name": "Cliente do balcão", "email": "c@x.test"},
                        timeout=5).json()["payload"]["contact"]
    merged = session.post(api(fk, "/actions/contact_merge"),
                          json={"base_contact_id": base["id"], "mergee_contact_id": mergee["id"]}, timeout=5)
    assert merged.status_code == 200 and merged.json()["id"] == base["id"]
    assert mergee["id"] not in state.contacts
    # The base keeps its own attributes and takes the ones it lacked (the identifier here).
    assert state.contacts[base["id"]]["identifier"] == "meli:buyer:7001"
    assert state.contacts[base["id"]]["name"] == "Cliente do balcão"
    assert state.conversations[conv["id"]]["meta"]["sender"]["id"] == base["id"]
    assert [ci["contact_id"] for ci in state.contact_inboxes] == [base["id"]]
    assert session.get(api(fk, f"/contacts/{mergee['id']}/conversations"), timeout=5).status_code == 404
    again = session.post(api(fk, "/conversations"), json={"source_id": "src-7001", "inbox_id": conv["inbox_id"],
                         "contact_id": base["id"]}, timeout=5)
    assert again.status_code == 200
    assert session.post(api(fk, "/actions/contact_merge"), json={"base_contact_id": base["id"],
                        "mergee_contact_id": mergee["id"]}, timeout=5).status_code == 404


def test_state_helpers_do_what_an_agent_does(fk):
    state = fk.chatwoot.state
    _session, contact, conv = make_conversation(fk)
    state.resolve_conversation(conv["id"])
    assert state.conversations[conv["id"]]["status"] == "resolved"
    other = state.create_contact({"name": "B", "identifier": "meli:buyer:2"})[0]
    state.merge_contacts(other["id"], contact["id"])
    assert state.conversations[conv["id"]]["contact_id"] == other["id"]
    state.delete_conversation(conv["id"])
    assert conv["id"] not in state.conversations
    state.delete_contact(other["id"])
    assert other["id"] not in state.contacts


def test_claims_search_messages_receivers_attachments_and_reputation(fk):
    meli = fk.meli.state
    session, base = meli_session(fk), f"{fk.meli.url}/post-purchase/v1/claims"
    meli.add_user(7001, "COMPRADOR")
    for i in range(3):
        meli.add_order(2000001 + i, 7001, "COMPRADOR", items=[("MLB1", "Caneca", 1, 10.0)])
        meli.add_claim(5000001 + i, 2000001 + i)
    meli.close_claim(5000003)
    page = session.get(f"{base}/search", params={"status": "opened", "offset": 1, "limit": 1}).json()
    assert page["paging"] == {"offset": 1, "limit": 1, "total": 2} and [c["id"] for c in page["data"]] == [5000002]
    claim = session.get(f"{base}/5000001").json()
    assert claim["players"][1]["role"] == "respondent" and claim["stage"] == "claim"
    meli.add_claim_message(5000001, "complainant", "Quebrou", attachments=[("foto.png", PNG, "image/png")])
    [message] = session.get(f"{base}/5000001/messages").json()
    assert message["sender_role"] == "complainant" and "id" not in message
    filename = message["attachments"][0]["filename"]
    assert session.get(f"{base}/5000001/attachments/{filename}/download").content == PNG
    assert session.get(f"{base}/5000002/attachments/{filename}/download").status_code == 404
    send = f"{base}/5000001/actions/send-message"
    assert session.post(send, json={"receiver_role": "mediator", "message": "Oi"}).status_code == 403
    assert session.post(send, json={"receiver_role": "complainant", "message": "Olá 😀"}).status_code == 400
    upload = session.post(f"{base}/5000001/attachments", files={"file": ("nota.pdf", b"%PDF", "application/pdf")})
    sent = session.post(send, json={"receiver_role": "complainant", "message": "Segue",
                                    "attachments": [upload.json()["filename"]]})
    assert sent.status_code == 200 and meli.claim_sent[-1]["receiver_role"] == "complainant"
    assert session.get(f"{base}/5000001/affects-reputation").json()["affects_reputation"] == "not_affected"
    meli.open_dispute(5000001)
    assert session.post(send, json={"receiver_role": "complainant", "message": "Oi"}).status_code == 403
    assert session.post(send, json={"receiver_role": "mediator", "message": "Oi"}).status_code == 200
    closed = session.post(f"{base}/5000003/actions/send-message", json={"receiver_role": "complainant",
                                                                        "message": "Oi"})
    assert closed.status_code == 400 and closed.json()["error"] == "claim_closed"


def test_claims_search_filters_on_the_respondent_only_with_both_players_parameters(fk):
    meli = fk.meli.state
    session, base = meli_session(fk), f"{fk.meli.url}/post-purchase/v1/claims"
    meli.add_user(7001, "COMPRADOR")
    meli.add_order(2000001, 7001, "COMPRADOR", items=[("MLB1", "Caneca", 1, 10.0)])
    meli.add_claim(5000001, 2000001)
    purchase = meli.add_purchase_claim(5000002, 3000001)
    assert [p["role"] for p in purchase["players"] if p["user_id"] == meli.seller_id] == ["complainant"]
    assert session.get(f"{base}/5000002").status_code == 200
    unfiltered = session.get(f"{base}/search", params={"status": "opened"}).json()
    assert [c["id"] for c in unfiltered["data"]] == [5000001, 5000002]
    filtered = session.get(f"{base}/search", params={"status": "opened", "players.role": "respondent",
                                                     "players.user_id": meli.seller_id}).json()
    assert [c["id"] for c in filtered["data"]] == [5000001]
    for half in ({"players.role": "respondent"}, {"players.user_id": meli.seller_id}):
        assert session.get(f"{base}/search", params=dict(half, status="opened")).status_code == 400


def test_conversation_priority_can_be_set_and_cleared(fk):
    chatwoot = fk.chatwoot.state
    inbox = chatwoot.add_inbox("Mercado Livre - Reclamações")
    contact = cw(fk).post(api(fk, "/contacts"), json={"name": "C", "identifier": "meli:buyer:1", "inbox_id": inbox,
                                                      "source_id": "meli:buyer:1"}).json()["payload"]["contact"]
    conv = cw(fk).post(api(fk, "/conversations"), json={"source_id": "meli:buyer:1", "inbox_id": inbox,
                                                        "contact_id": contact["id"]}).json()
    assert cw(fk).post(api(fk, f"/conversations/{conv['id']}/toggle_priority"),
                       json={"priority": "urgent"}).status_code == 200
    assert chatwoot.conversations[conv["id"]]["priority"] == "urgent"
    assert cw(fk).post(api(fk, f"/conversations/{conv['id']}/toggle_priority"),
                       json={"priority": "very"}).status_code == 422
    cw(fk).post(api(fk, f"/conversations/{conv['id']}/toggle_priority"), json={"priority": None})
    assert chatwoot.conversations[conv["id"]]["priority"] is None


# ---- Chatwoot: custom attribute definitions and the conversation filter -----------------------------------

def filter_by(session, fk, key, value, page=1):
    return session.post(api(fk, f"/conversations/filter?page={page}"), json={"payload": [
        {"attribute_key": key, "filter_operator": "equal_to", "values": [value], "query_operator": None}]},
        timeout=5).json()


def test_the_conversation_filter_drops_an_undefined_attribute_and_answers_every_conversation(fk):
    session, contact, conv = make_conversation(fk)
    other = fk.chatwoot.state.create_conversation({"source_id": "src-7001", "inbox_id": conv["inbox_id"],
                                                   "contact_id": contact["id"],
                                                   "custom_attributes": {"meli_question_id": "43"}})[0]
    assert {c["id"] for c in filter_by(session, fk, "meli_question_id", "42")["payload"]} == {conv["id"], other["id"]}

    defined = session.post(api(fk, "/custom_attribute_definitions"), json={
        "attribute_key": "meli_question_id", "attribute_display_name": "Pergunta", "attribute_display_type": 0,
        "attribute_model": 0}, timeout=5)
    assert defined.json()["attribute_display_type"] == "text"
    assert defined.json()["attribute_model"] == "conversation_attribute"
    found = filter_by(session, fk, "meli_question_id", "42")
    assert [c["id"] for c in found["payload"]] == [conv["id"]] and found["meta"]["all_count"] == 1
    assert found["payload"][0]["custom_attributes"] == {"meli_question_id": "42"}


def test_attribute_keys_are_unique_per_model_and_listed_by_model(fk):
    session = cw(fk)
    body = {"attribute_key": "meli_claim_reply_to", "attribute_display_name": "Responder para",
            "attribute_display_type": 6, "attribute_model": 0, "attribute_values": ["comprador", "mediador"]}
    assert session.post(api(fk, "/custom_attribute_definitions"), json=body, timeout=5).status_code == 200
    assert session.post(api(fk, "/custom_attribute_definitions"), json=body, timeout=5).status_code == 422
    assert session.post(api(fk, "/custom_attribute_definitions"), json=dict(body, attribute_model=1),
                        timeout=5).status_code == 200
    listed = session.get(api(fk, "/custom_attribute_definitions?attribute_model=0"), timeout=5).json()
    assert [(d["attribute_key"], d["attribute_display_type"], d["attribute_values"]) for d in listed] == [
        ("meli_claim_reply_to", "list", ["comprador", "mediador"])]


def test_the_conversation_filter_compares_as_text_ignoring_case_and_pages_by_25(fk):
    state = fk.chatwoot.state
    session, contact, conv = make_conversation(fk)
    state.define_attribute("meli_item_id")
    for _ in range(30):
        state.create_conversation({"source_id": "src-7001", "inbox_id": conv["inbox_id"],
                                   "contact_id": contact["id"], "custom_attributes": {"meli_item_id": "MLB1"}})
    first, second = filter_by(session, fk, "meli_item_id", "mlb1"), filter_by(session, fk, "meli_item_id", "mlb1", 2)
    assert (len(first["payload"]), len(second["payload"]), first["meta"]["all_count"]) == (25, 5, 30)
    assert not {c["id"] for c in first["payload"]} & {c["id"] for c in second["payload"]}
