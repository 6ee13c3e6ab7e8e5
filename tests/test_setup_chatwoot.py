"""`main.py setup` / `main.py check`: idempotent Chatwoot setup, one sentence per failure, no writes in check."""

import dataclasses
import json
import time

import pytest
import requests
import responses

from bridge.admin.setup import CONVERSATION_ATTRIBUTES, run_check, run_setup

CW = "https://chat.example.test"
ACCOUNT = f"{CW}/api/v1/accounts/1"
MELI = "https://api.meli.test"
PUBLIC = "https://bridge.example.test"
HOOK_URL = f"{PUBLIC}/webhook"
NO_SLEEP = {"sleep": lambda seconds: None}


class FakeChatwoot:
    """Just enough Chatwoot: profile, inboxes and account webhooks, with state across runs.

    secret_mode: "returned" (4.12+, secret in every answer), "hidden" (secret key present but
    empty), "absent" (before 4.12: no secret key at all).
    """

    def __init__(self, rsps, *, role="administrator", inboxes=None, webhooks=None, secret_mode="returned",
                 definitions=None):
        self.role = role
        # Conversation custom attributes; unless given, those of an account this setup already ran on.
        self.definitions = list(DEFINED if definitions is None else definitions)
        self.inboxes = list(inboxes or [])
        self.webhooks = list(webhooks or [])
        self.secret_mode = secret_mode
        self.next_id = 10
        rsps.add_callback(responses.GET, f"{CW}/api/v1/profile", callback=self._profile)
        rsps.add_callback(responses.GET, f"{ACCOUNT}/inboxes", callback=lambda r: self._json({"payload": self.inboxes}))
        rsps.add_callback(responses.POST, f"{ACCOUNT}/inboxes", callback=self._create_inbox)
        rsps.add_callback(responses.GET, f"{ACCOUNT}/webhooks", callback=lambda r: self._json(
            {"payload": {"webhooks": [self._shown(h) for h in self.webhooks]}}))
        rsps.add_callback(responses.POST, f"{ACCOUNT}/webhooks", callback=self._create_webhook)
        for hook in self.webhooks:
            rsps.add_callback(responses.PATCH, f"{ACCOUNT}/webhooks/{hook['id']}", callback=self._update_webhook)
        rsps.add_callback(responses.GET, f"{ACCOUNT}/custom_attribute_definitions",
                          callback=lambda r: self._json(self.definitions))
        rsps.add_callback(responses.POST, f"{ACCOUNT}/custom_attribute_definitions", callback=self._define)

    def _define(self, request):
        body = json.loads(request.body)
        if any(d["attribute_key"] == body["attribute_key"] for d in self.definitions):
            return self._json({"message": "Attribute key has already been taken"}, 422)
        definition = dict(body, id=self.next_id, attribute_model="conversation_attribute",
                          attribute_display_type=DISPLAY_NAMES[body["attribute_display_type"]])
        self.next_id += 1
        self.definitions.append(definition)
        return self._json(definition)

    @staticmethod
    def _json(body, status=200):
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    def _profile(self, request):
        return self._json({"id": 7, "name": "Ana Souza", "available_name": "Ana",
                           "accounts": [{"id": 1, "name": "Loja", "role": self.role}]})

    def _create_inbox(self, request):
        body = json.loads(request.body)
        inbox = {"id": self.next_id, "name": body["name"], "channel_type": "Channel::Api"}
        self.next_id += 1
        self.inboxes.append(inbox)
        return self._json(inbox)

    def _shown(self, hook):
        shown = {k: v for k, v in hook.items() if k != "secret"}
        if self.secret_mode == "returned":
            shown["secret"] = hook.get("secret")
        elif self.secret_mode == "hidden":
            shown["secret"] = None
        return shown

    def _create_webhook(self, request):
        body = json.loads(request.body)
        hook = {"id": self.next_id, "name": body["name"], "url": body["url"], "account_id": 1,
                "subscriptions": body["subscriptions"], "secret": "whsec-created-7d2e"}
        self.next_id += 1
        self.webhooks.append(hook)
        return self._json({"payload": {"webhook": self._shown(hook)}})

    def _update_webhook(self, request):
        hook_id = int(request.url.rsplit("/", 1)[1])
        hook = next(h for h in self.webhooks if h["id"] == hook_id)
        hook.update(json.loads(request.body))
        return self._json({"payload": {"webhook": self._shown(hook)}})


DISPLAY_NAMES = ["text", "number", "currency", "percent", "link", "date", "list", "checkbox"]
DEFINED = [{"id": 100 + n, "attribute_key": key, "attribute_display_type": DISPLAY_NAMES[display_type],
            "attribute_model": "conversation_attribute", "attribute_values": values or []}
           for n, (key, _name, display_type, values) in enumerate(CONVERSATION_ATTRIBUTES)]


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def first_setup(settings):
    """What the CLI passes for a first setup: no inbox ids, no webhook secret."""
    return dataclasses.replace(settings, chatwoot_questions_inbox_id=None, chatwoot_messages_inbox_id=None,
                               chatwoot_webhook_secrets=())


def setup(settings, public_url=PUBLIC):
    lines = []
    code = run_setup(settings, public_url, out=lines.append, **NO_SLEEP)
    return code, "\n".join(lines)


def writes(rsps):
    return [(c.request.method, c.request.url) for c in rsps.calls if c.request.method != "GET"]


def api_inbox(inbox_id, name):
    """An API inbox as an agent's token sees it: wired to the listener, its secret not shown."""
    return {"id": inbox_id, "name": name, "channel_type": "Channel::Api", "webhook_url": HOOK_URL}


# ---- setup ----------------------------------------------------------------------------------------


# ---- setup against the fake Chatwoot server (the shapes real Chatwoot answers with) -------------

QUESTIONS, MESSAGES, CLAIMS = "Mercado Livre - Perguntas", "Mercado Livre - Vendas", "Mercado Livre - Reclamações"


@pytest.fixture
def chatwoot():
    from tests.fakes import ChatwootState, create_chatwoot_app, serve
    state = ChatwootState()
    handle = serve(create_chatwoot_app(state), 0, state)
    yield handle
    state.stop()
    handle.shutdown()


@pytest.fixture
def on_fake(tmp_path, chatwoot):
    """Settings as `main.py setup` loads them, against the fake server; no arguments: a first setup."""
    from config import load_settings
    from tests.conftest import base_env

    def make(**env):
        first = {"CHATWOOT_QUESTIONS_INBOX_ID": None, "CHATWOOT_MESSAGES_INBOX_ID": None,
                 "CHATWOOT_WEBHOOK_SECRET": None}
        return load_settings(base_env(tmp_path, CHATWOOT_URL=chatwoot.url, **{**first, **env}),
                             require_inboxes=False)
    return make


def fake_writes(chatwoot) -> list[tuple[str, str]]:
    with chatwoot.state.lock:
        return [(c["method"], c["path"]) for c in chatwoot.state.calls if c["method"] != "GET"]


def webhook_writes(chatwoot) -> list[tuple[str, str]]:
    """The writes about inboxes and webhooks (a fresh account also gets the attribute definitions)."""
    return [w for w in fake_writes(chatwoot) if "custom_attribute_definitions" not in w[1]]


def printed_env(output: str) -> dict:
    """The lines setup asks the operator to paste, as a dict."""
    return dict(line.split("=", 1) for line in output.splitlines() if line.startswith("CHATWOOT_"))


def inbox_named(state, name) -> dict:
    return next(i for i in state.inboxes.values() if i["name"] == name)


def test_a_first_setup_points_each_inbox_webhook_at_the_listener_and_prints_their_secrets(chatwoot, on_fake):
    state = chatwoot.state
    code, output = setup(on_fake())
    assert code == 0
    inboxes = [inbox_named(state, name) for name in (QUESTIONS, MESSAGES, CLAIMS)]
    assert [i["webhook_url"] for i in inboxes] == [HOOK_URL] * 3
    assert state.webhooks == []  # no account webhook: it would deliver every reply a second time
    env = printed_env(output)
    assert env == {"CHATWOOT_QUESTIONS_INBOX_ID": str(inboxes[0]["id"]),
                   "CHATWOOT_MESSAGES_INBOX_ID": str(inboxes[1]["id"]),
                   "CHATWOOT_CLAIMS_INBOX_ID": str(inboxes[2]["id"]),
                   "CHATWOOT_WEBHOOK_SECRET": ",".join(i["secret"] for i in inboxes)}
    assert output.count(f"webhook to {HOOK_URL} (it was empty)") == 3
    assert "Add these lines" in output


def test_a_second_setup_with_the_printed_lines_changes_nothing(chatwoot, on_fake):
    code, output = setup(on_fake())
    assert code == 0
    before = len(fake_writes(chatwoot))
    code, again = setup(on_fake(**printed_env(output)))
    assert code == 0
    assert len(fake_writes(chatwoot)) == before  # not one write
    assert again.count("already exists") == 3 and again.count(f"webhook already set to {HOOK_URL}") == 3
    assert "Your configuration already holds these values:" in again
    assert printed_env(again) == printed_env(output)


def test_a_stale_or_empty_inbox_webhook_is_fixed_and_the_right_one_left_alone(chatwoot, on_fake):
    state = chatwoot.state
    ids = [state.add_inbox(QUESTIONS, webhook_url="https://old-host.example.test/webhook"),
           state.add_inbox(MESSAGES, webhook_url=HOOK_URL),
           state.add_inbox(CLAIMS)]
    secrets = ",".join(state.inboxes[i]["secret"] for i in ids)
    settings = on_fake(CHATWOOT_QUESTIONS_INBOX_ID=str(ids[0]), CHATWOOT_MESSAGES_INBOX_ID=str(ids[1]),
                       CHATWOOT_CLAIMS_INBOX_ID=str(ids[2]), CHATWOOT_WEBHOOK_SECRET=secrets)
    code, output = setup(settings)
    assert code == 0
    assert webhook_writes(chatwoot) == [("PATCH", f"/api/v1/accounts/1/inboxes/{ids[0]}"),
                                       ("PATCH", f"/api/v1/accounts/1/inboxes/{ids[2]}")]
    assert [state.inboxes[i]["webhook_url"] for i in ids] == [HOOK_URL] * 3
    assert "(it was https://old-host.example.test/webhook)" in output
    assert f"inbox '{MESSAGES}' webhook already set" in output
    assert printed_env(output)["CHATWOOT_WEBHOOK_SECRET"] == secrets


def test_an_account_webhook_of_an_earlier_setup_goes_once_the_bridge_holds_the_inbox_secrets(chatwoot, on_fake):
    state = chatwoot.state
    ids = [state.add_inbox(name) for name in (QUESTIONS, MESSAGES, CLAIMS)]
    state.add_webhook(HOOK_URL, "whsec-one-5f3a")
    ids_env = {"CHATWOOT_QUESTIONS_INBOX_ID": str(ids[0]), "CHATWOOT_MESSAGES_INBOX_ID": str(ids[1]),
               "CHATWOOT_CLAIMS_INBOX_ID": str(ids[2])}
    code, output = setup(on_fake(**ids_env, CHATWOOT_WEBHOOK_SECRET="whsec-one-5f3a"))
    assert code == 0
    # The running listener knows only the account webhook's secret: that webhook must keep working.
    assert len(state.webhooks) == 1 and "kept until the bridge runs with the lines below" in output
    line = printed_env(output)["CHATWOOT_WEBHOOK_SECRET"].split(",")
    assert line == [state.inboxes[i]["secret"] for i in ids] + ["whsec-one-5f3a"]
    # Restarted with that line: the account webhook only doubles every delivery now.
    code, output = setup(on_fake(**printed_env(output)))
    assert code == 0 and state.webhooks == []
    assert fake_writes(chatwoot)[-1] == ("DELETE", "/api/v1/accounts/1/webhooks/1")
    assert "deleted account webhook 1" in output
    writes_so_far = len(fake_writes(chatwoot))
    assert setup(on_fake(**printed_env(output)))[0] == 0
    assert len(fake_writes(chatwoot)) == writes_so_far


def test_a_chatwoot_that_does_not_sign_inbox_webhooks_gets_one_token_in_their_urls(chatwoot, on_fake, caplog):
    state = chatwoot.state
    state.signs_inbox_webhooks = False
    code, output = setup(on_fake())
    assert code == 0
    token = printed_env(output)["CHATWOOT_WEBHOOK_SECRET"]
    assert len(token) >= 40 and "," not in token
    assert [i["webhook_url"] for i in state.inboxes.values()] == [f"{HOOK_URL}?token={token}"] * 3
    assert "does not sign inbox webhooks (4.13 and later do)" in output
    assert token not in caplog.text  # printed for the operator, never logged
    before = len(fake_writes(chatwoot))
    code, again = setup(on_fake(**printed_env(output)))
    assert code == 0 and len(fake_writes(chatwoot)) == before
    assert "already holds these values" in again


def test_an_inbox_without_a_signing_secret_gets_one(chatwoot, on_fake):
    state = chatwoot.state
    inbox_id = state.add_inbox(QUESTIONS, webhook_url=HOOK_URL)
    state.inboxes[inbox_id]["secret"] = None
    code, output = setup(on_fake())
    assert code == 0
    assert ("POST", f"/api/v1/accounts/1/inboxes/{inbox_id}/reset_secret") in fake_writes(chatwoot)
    secret = state.inboxes[inbox_id]["secret"]
    assert secret and printed_env(output)["CHATWOOT_WEBHOOK_SECRET"].split(",")[0] == secret


def test_configured_api_inboxes_are_kept_even_under_another_name(chatwoot, on_fake):
    state = chatwoot.state
    ids = [state.add_inbox(name, webhook_url=HOOK_URL) for name in ("Perguntas ML", "Vendas ML", "Recl ML")]
    code, output = setup(on_fake(CHATWOOT_QUESTIONS_INBOX_ID=str(ids[0]), CHATWOOT_MESSAGES_INBOX_ID=str(ids[1]),
                                 CHATWOOT_CLAIMS_INBOX_ID=str(ids[2])))
    assert code == 0 and webhook_writes(chatwoot) == []
    assert [printed_env(output)[f"CHATWOOT_{k}_INBOX_ID"] for k in ("QUESTIONS", "MESSAGES", "CLAIMS")] == \
        [str(i) for i in ids]


def test_setup_on_a_deployment_made_before_claims_adds_only_the_claims_inbox(chatwoot, on_fake):
    state = chatwoot.state
    ids = [state.add_inbox(name, webhook_url=HOOK_URL) for name in ("Perguntas ML", "Vendas ML")]
    secrets = ",".join(state.inboxes[i]["secret"] for i in ids)
    code, output = setup(on_fake(CHATWOOT_QUESTIONS_INBOX_ID=str(ids[0]), CHATWOOT_MESSAGES_INBOX_ID=str(ids[1]),
                                 CHATWOOT_WEBHOOK_SECRET=secrets))
    assert code == 0
    claims = inbox_named(state, CLAIMS)
    assert [m for m, _ in webhook_writes(chatwoot)] == ["POST", "PATCH"] and claims["webhook_url"] == HOOK_URL
    assert printed_env(output)["CHATWOOT_CLAIMS_INBOX_ID"] == str(claims["id"])
    assert printed_env(output)["CHATWOOT_WEBHOOK_SECRET"] == f"{secrets},{claims['secret']}"
    assert "Add these lines" in output


def test_what_setup_wires_is_what_the_listener_verifies(chatwoot, on_fake, make_client):
    """An agent's reply in a wired inbox reaches /webhook signed with a secret of the printed line."""
    import threading

    from werkzeug.serving import make_server

    code, output = setup(on_fake())
    env = printed_env(output)
    listener = make_client(on_fake(**env))
    received = []

    from flask import Flask, request
    relay = Flask("relay")

    @relay.post("/webhook")
    def forward():
        resp = listener.post("/webhook", data=request.get_data(), headers=dict(request.headers))
        received.append(resp.status_code)
        return "", resp.status_code

    server = make_server("127.0.0.1", 0, relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state = chatwoot.state
        for inbox in state.inboxes.values():
            inbox["webhook_url"] = f"http://127.0.0.1:{server.server_port}/webhook"
        inbox_id = int(env["CHATWOOT_MESSAGES_INBOX_ID"])
        contact, _ = state.create_contact({"name": "b", "identifier": "meli:buyer:1", "inbox_id": inbox_id,
                                           "source_id": "src-1"})
        conv, _ = state.create_conversation({"source_id": "src-1", "inbox_id": inbox_id,
                                             "contact_id": contact["id"]})
        state.agent_reply(conv["id"], "Olá")
        assert state.wait_webhooks_idle(10)
    finally:
        server.shutdown()
    assert received == [200]  # one delivery (the inbox webhook), its signature verified


def test_an_invalid_token_is_explained_and_exits_1(rsps, first_setup):
    rsps.get(f"{CW}/api/v1/profile", status=401, json={"errors": ["Invalid Access Token"]})
    code, output = setup(first_setup)
    assert code == 1
    assert "refused the API token (401)" in output and "CHATWOOT_API_TOKEN" in output
    assert "cw-token-abc" not in output
    assert writes(rsps) == []


def test_a_token_without_administrator_rights_is_explained(rsps, first_setup):
    FakeChatwoot(rsps, role="agent")
    code, output = setup(first_setup)
    assert code == 1
    assert "an agent of account 1, not an administrator" in output
    assert "administrator's access token" in output
    assert writes(rsps) == []


def test_a_wrong_account_id_is_explained(rsps, make_settings):
    FakeChatwoot(rsps)
    code, output = setup(make_settings(CHATWOOT_ACCOUNT_ID="9"))
    assert code == 1
    assert "not a member of account 9" in output and "CHATWOOT_ACCOUNT_ID" in output


def test_an_unreachable_chatwoot_names_the_url(rsps, first_setup):
    rsps.get(f"{CW}/api/v1/profile", body=requests.ConnectionError("connection refused"))
    code, output = setup(first_setup)
    assert code == 1
    assert f"Chatwoot not reachable at CHATWOOT_URL={CW}" in output
    assert "Traceback" not in output


def test_a_chatwoot_server_error_is_explained(rsps, first_setup):
    FakeChatwoot(rsps)
    rsps.replace(responses.GET, f"{ACCOUNT}/inboxes", status=502, body="bad gateway")
    code, output = setup(first_setup)
    assert code == 1
    assert "Chatwoot failed while listing the inboxes (502" in output


def test_an_inbox_of_that_name_that_is_not_an_api_inbox_stops_setup(rsps, first_setup):
    FakeChatwoot(rsps, inboxes=[{"id": 3, "name": "Mercado Livre - Perguntas", "channel_type": "Channel::Email"}])
    code, output = setup(first_setup)
    assert code == 1
    assert "already exists (id 3) but it is a Channel::Email inbox, not an API inbox" in output
    assert writes(rsps) == []


def test_a_public_url_with_a_query_is_refused_before_calling_chatwoot(rsps, first_setup):
    code, output = setup(first_setup, "https://bridge.example.test/?x=1")
    assert code == 1 and "query" in output
    assert len(rsps.calls) == 0


# ---- check ----------------------------------------------------------------------------------------


def authorize(db):
    now = time.time()
    db.auth.store_authorized(555, "LOJA", "AT-1", "RT-1", now + 21600, now)


def check(settings, public_url=PUBLIC):
    lines = []
    code = run_check(settings, public_url, out=lines.append, **NO_SLEEP)
    return code, lines


@pytest.fixture
def healthy(rsps, db):
    FakeChatwoot(rsps, role="agent", inboxes=[api_inbox(1, "Mercado Livre - Perguntas"),
                                              api_inbox(2, "Mercado Livre - Vendas")])
    authorize(db)
    rsps.get(f"{MELI}/users/me", json={"id": 555, "nickname": "LOJA"})
    rsps.get(f"{PUBLIC}/health", status=200, json={"ok": True, "failing": []})
    return rsps


def test_check_passes_when_everything_is_in_place(healthy, settings):
    code, lines = check(settings)
    assert code == 0
    assert lines == [
        "ok   chatwoot: reachable, token of Ana (agent)",
        "ok   inboxes: questions 1 'Mercado Livre - Perguntas', messages 2 'Mercado Livre - Vendas' (API inboxes); "
        "claims off (CHATWOOT_CLAIMS_INBOX_ID not set: setup creates the inbox and prints the line)",
        "ok   mercado livre: authorized as LOJA (seller 555)",
        f"ok   listener: reachable at {PUBLIC}/health; it reports ok=true",
        f"ok   inbox webhooks: every inbox sends to {HOOK_URL} (the signing secret of Mercado Livre - Perguntas, "
        "Mercado Livre - Vendas is shown only to administrators: not compared)",
        "ok   custom attributes: the 21 conversation custom attributes of the bridge are defined",
        f"WARN token encryption: TOKEN_ENCRYPTION_KEY is not set: the Mercado Livre tokens are stored in plain "
        f"text in {settings.database_path}",
    ]
    assert writes(healthy) == []


def test_check_names_the_claims_inbox_when_it_is_configured(rsps, db, make_settings):
    FakeChatwoot(rsps, role="agent", inboxes=[api_inbox(1, "Mercado Livre - Perguntas"),
                                              api_inbox(2, "Mercado Livre - Vendas"),
                                              api_inbox(5, "Mercado Livre - Reclamações")])
    authorize(db)
    rsps.get(f"{MELI}/users/me", json={"id": 555, "nickname": "LOJA"})
    code, lines = check(make_settings(CHATWOOT_CLAIMS_INBOX_ID="5"), None)
    assert lines[1] == ("ok   inboxes: questions 1 'Mercado Livre - Perguntas', messages 2 'Mercado Livre - Vendas', "
                        "claims 5 'Mercado Livre - Reclamações' (API inboxes)")


def test_check_fails_while_an_account_webhook_still_sends_to_the_listener(rsps, db, settings):
    """Left by an older setup beside the inbox webhooks: each reply arrives twice, and when the inbox
    delivery of a reply the account one already brought fails, Chatwoot marks failed a reply the
    bridge delivers. Check says so and how to remove it (setup does)."""
    FakeChatwoot(rsps, inboxes=[api_inbox(1, "Mercado Livre - Perguntas"), api_inbox(2, "Mercado Livre - Vendas")],
                 webhooks=[{"id": 4, "name": "Mercado Livre bridge", "url": HOOK_URL, "account_id": 1,
                            "subscriptions": ["message_created"], "secret": "whsec-old"},
                           {"id": 5, "name": "CRM", "url": "https://crm.example.test/hook", "account_id": 1,
                            "subscriptions": ["message_created"], "secret": "whsec-crm"}])
    authorize(db)
    rsps.get(f"{MELI}/users/me", json={"id": 555, "nickname": "LOJA"})
    rsps.get(f"{PUBLIC}/health", status=200, json={"ok": True, "failing": []})
    code, lines = check(settings)
    assert code == 1
    [line] = [line for line in lines if " inbox webhooks:" in line]
    assert line.startswith(f"FAIL inbox webhooks: account webhook 4 also sends to {HOOK_URL}")
    assert "failed" in line and f"./bridge.sh setup {PUBLIC}" in line and "crm" not in line
    assert writes(rsps) == []


def test_check_says_account_webhooks_were_not_looked_at_without_an_administrators_token(healthy, settings):
    _code, lines = check(settings)
    [line] = [line for line in lines if " inbox webhooks:" in line]
    assert line.startswith("ok   inbox webhooks:") and "account webhooks" not in line


def test_check_fails_when_a_configured_inbox_is_missing(healthy, make_settings):
    code, lines = check(make_settings(CHATWOOT_MESSAGES_INBOX_ID="8"), None)
    assert code == 1
    assert lines[1].startswith("FAIL inboxes: CHATWOOT_MESSAGES_INBOX_ID=8 is not an inbox of account 1")
    assert len(lines) == 5


def test_check_asks_for_authorization_when_mercado_livre_requires_it(healthy, settings, db):
    db.auth.require_reauthorization("Mercado Livre refused the refresh token (invalid_grant)", time.time())
    code, lines = check(settings)
    assert code == 1
    assert lines[2].startswith("FAIL mercado livre: authorization required")
    assert "./bridge.sh authorize" in lines[2]


def test_check_fails_when_the_listener_is_unreachable(healthy, settings):
    healthy.replace(responses.GET, f"{PUBLIC}/health", body=requests.ConnectionError("refused"))
    code, lines = check(settings)
    assert code == 1
    assert lines[3].startswith(f"FAIL listener: not reachable at {PUBLIC}/health")


def test_an_unhealthy_listener_is_still_reachable_and_says_what_fails(healthy, settings):
    healthy.replace(responses.GET, f"{PUBLIC}/health", status=503, json={"ok": False, "failing": ["outbox"]})
    code, lines = check(settings)
    assert code == 0
    assert lines[3] == f"ok   listener: reachable at {PUBLIC}/health; it reports ok=false (failing: outbox)"


def test_check_with_an_unreachable_chatwoot_skips_the_inbox_check(rsps, settings, db):
    authorize(db)
    rsps.get(f"{CW}/api/v1/profile", body=requests.ConnectionError("refused"))
    rsps.get(f"{MELI}/users/me", json={"id": 555, "nickname": "LOJA"})
    code, lines = check(settings, None)
    assert code == 1
    assert lines[0].startswith("FAIL chatwoot: Chatwoot not reachable at CHATWOOT_URL=")
    assert lines[1] == "FAIL inboxes: not checked (see the chatwoot line)"
    assert lines[2].startswith("ok   mercado livre")


# ---- conversation custom attributes ----------------------------------------------------------------------


def test_setup_defines_the_conversation_attributes_once_the_claim_receiver_as_a_list(chatwoot, on_fake):
    definitions = chatwoot.state.attribute_definitions
    code, output = setup(on_fake())
    assert code == 0
    assert [d["attribute_key"] for d in definitions] == [key for key, *_rest in CONVERSATION_ATTRIBUTES]
    assert all(d["attribute_model"] == "conversation_attribute" for d in definitions)
    by_key = {d["attribute_key"]: d for d in definitions}
    assert by_key["meli_pack_id"]["attribute_display_type"] == "text"
    reply_to = by_key["meli_claim_reply_to"]
    assert (reply_to["attribute_display_type"], reply_to["attribute_values"]) == ("list", ["comprador", "mediador"])
    assert "created conversation custom attributes: meli_question_id," in output

    defined = len(definitions)
    code, output = setup(on_fake(**printed_env(output)))
    assert code == 0 and len(definitions) == defined
    assert f"ok   {defined} conversation custom attributes already defined" in output


def test_setup_defines_only_the_missing_attributes_and_keeps_one_an_agent_made_as_text(chatwoot, on_fake):
    state = chatwoot.state
    for key, _name, display_type, values in CONVERSATION_ATTRIBUTES:
        if key not in ("meli_pack_id", "meli_claim_reply_to"):
            state.define_attribute(key, display_type, values=values)
    state.define_attribute("meli_claim_reply_to", "text")  # an agent made it first, as free text
    before = len(fake_writes(chatwoot))
    code, output = setup(on_fake())
    assert code == 0
    attribute_writes = [w for w in fake_writes(chatwoot)[before:] if "custom_attribute_definitions" in w[1]]
    assert attribute_writes == [("POST", "/api/v1/accounts/1/custom_attribute_definitions")]
    assert state.attribute_definitions[-1]["attribute_key"] == "meli_pack_id"
    assert "note: the conversation custom attribute meli_claim_reply_to already exists but is of type text" in output


def test_check_names_the_conversation_attributes_missing_and_writes_nothing(healthy, settings):
    healthy.replace(responses.GET, f"{ACCOUNT}/custom_attribute_definitions",
                    json=[d for d in DEFINED if d["attribute_key"] not in ("meli_pack_id", "meli_claim_id")])
    code, lines = check(settings)
    assert code == 1
    assert lines[-2].startswith("FAIL custom attributes: conversation custom attributes not defined: meli_pack_id, "
                               "meli_claim_id (run ./bridge.sh setup <public_url>;")
    assert writes(healthy) == []


def test_every_conversation_attribute_the_bridge_writes_is_defined_by_setup():
    from bridge.sync import claims, questions, sales

    written = set(questions.conversation_attributes({"id": 1}, None)) \
        | set(sales.sale_attributes("1", [])) \
        | set(claims.claim_attributes({"id": 1}, None, None, zone="America/Sao_Paulo")) \
        | {claims.REPLY_TO_ATTRIBUTE}
    assert written == {key for key, *_rest in CONVERSATION_ATTRIBUTES}


def test_attributes_chatwoot_refuses_to_define_still_leave_the_env_lines_and_exit_1(chatwoot, on_fake):
    chatwoot.state.fail_next("POST", "/api/v1/accounts/1/custom_attribute_definitions", 403,
                             body={"error": "You are not authorized to do this action"})
    code, output = setup(on_fake())
    assert code == 1
    assert "CHATWOOT_QUESTIONS_INBOX_ID=" in output
    assert output.splitlines()[-1].startswith("error: Chatwoot refused creating the conversation custom attribute "
                                              "meli_question_id in account 1 (403)")


def test_check_names_an_inbox_whose_webhook_would_not_reach_the_listener(chatwoot, on_fake, db):
    code, output = setup(on_fake())
    settings = on_fake(**printed_env(output))
    state = chatwoot.state
    ids = [settings.chatwoot_questions_inbox_id, settings.chatwoot_messages_inbox_id]
    state.inboxes[ids[0]]["webhook_url"] = ""
    state.inboxes[ids[1]]["secret"] = "rotated-in-chatwoot-since"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as public:
        public.add_passthru("http://127.0.0.1")
        public.get(f"{PUBLIC}/health", json={"ok": True, "failing": []})
        _code, lines = check(settings)
    [line] = [line for line in lines if " inbox webhooks:" in line]
    assert line.startswith(f"FAIL inbox webhooks: inbox '{QUESTIONS}' sends to nowhere (empty), not {HOOK_URL}; "
                           f"CHATWOOT_WEBHOOK_SECRET does not hold the secret of inbox '{MESSAGES}'")
    assert line.endswith(f"(run ./bridge.sh setup {PUBLIC}, paste the lines it prints and restart)")
