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
    return {"id": inbox_id, "name": name, "channel_type": "Channel::Api"}


# ---- setup ----------------------------------------------------------------------------------------


def test_a_fresh_chatwoot_gets_three_api_inboxes_and_a_webhook_and_the_env_lines(rsps, first_setup):
    fake = FakeChatwoot(rsps)
    code, output = setup(first_setup)
    assert code == 0
    assert [i["name"] for i in fake.inboxes] == ["Mercado Livre - Perguntas", "Mercado Livre - Vendas",
                                                  "Mercado Livre - Reclamações"]
    inbox_body = json.loads(next(c for c in rsps.calls if c.request.method == "POST").request.body)
    assert inbox_body == {"name": "Mercado Livre - Perguntas", "channel": {"type": "api", "webhook_url": ""}}
    assert fake.webhooks[0]["url"] == HOOK_URL
    assert fake.webhooks[0]["subscriptions"] == ["message_created"]
    assert fake.webhooks[0]["name"] == "meli-chatwoot"
    assert "CHATWOOT_QUESTIONS_INBOX_ID=10" in output
    assert "CHATWOOT_MESSAGES_INBOX_ID=11" in output
    assert "CHATWOOT_CLAIMS_INBOX_ID=12" in output
    assert "CHATWOOT_WEBHOOK_SECRET=whsec-created-7d2e" in output
    assert "token of Ana (administrator" in output


def test_running_setup_twice_creates_nothing_the_second_time(rsps, first_setup):
    FakeChatwoot(rsps)
    assert setup(first_setup)[0] == 0
    created = len(writes(rsps))
    code, output = setup(first_setup)
    assert code == 0
    assert len(writes(rsps)) == created == 4
    assert output.count("already exists") == 4
    assert "CHATWOOT_WEBHOOK_SECRET=whsec-created-7d2e" in output


def test_configured_api_inboxes_are_kept_even_under_another_name(rsps, make_settings):
    FakeChatwoot(rsps, inboxes=[api_inbox(1, "Perguntas ML"), api_inbox(2, "Vendas ML"), api_inbox(3, "Recl ML")],
                 webhooks=[{"id": 5, "url": HOOK_URL, "subscriptions": ["message_created"],
                            "secret": "whsec-one-5f3a"}])
    code, output = setup(make_settings(CHATWOOT_CLAIMS_INBOX_ID="3"))
    assert code == 0 and writes(rsps) == []
    assert "CHATWOOT_QUESTIONS_INBOX_ID=1" in output and "CHATWOOT_MESSAGES_INBOX_ID=2" in output
    assert "CHATWOOT_CLAIMS_INBOX_ID=3" in output
    assert "already holds these values" in output


def test_setup_on_a_deployment_made_before_claims_adds_only_the_claims_inbox(rsps, settings):
    fake = FakeChatwoot(rsps, inboxes=[api_inbox(1, "Perguntas ML"), api_inbox(2, "Vendas ML")],
                        webhooks=[{"id": 5, "url": HOOK_URL, "subscriptions": ["message_created"],
                                   "secret": "whsec-one-5f3a"}])
    code, output = setup(settings)
    assert code == 0 and len(writes(rsps)) == 1
    assert fake.inboxes[-1]["name"] == "Mercado Livre - Reclamações"
    assert f"CHATWOOT_CLAIMS_INBOX_ID={fake.inboxes[-1]['id']}" in output
    assert "Add these lines" in output


def test_a_webhook_without_message_created_is_subscribed_to_it(rsps, first_setup):
    fake = FakeChatwoot(rsps, webhooks=[{"id": 5, "url": HOOK_URL + "/", "subscriptions": ["conversation_created"],
                                         "secret": "whsec-old-11"}])
    code, output = setup(first_setup)
    assert code == 0
    assert ("PATCH", f"{ACCOUNT}/webhooks/5") in writes(rsps)
    assert not any(url.endswith("/webhooks") for _, url in writes(rsps))
    assert fake.webhooks[0]["subscriptions"] == ["message_created"]
    assert "CHATWOOT_WEBHOOK_SECRET=whsec-old-11" in output


def test_an_existing_webhook_whose_secret_is_not_returned_says_where_to_copy_it(rsps, first_setup):
    FakeChatwoot(rsps, secret_mode="hidden",
                 webhooks=[{"id": 5, "url": HOOK_URL, "subscriptions": ["message_created"], "secret": "s"}])
    code, output = setup(first_setup)
    assert code == 0
    assert "Settings → Integrations → Webhooks → the webhook → secret" in output
    assert "copy it from" in output
    assert "CHATWOOT_WEBHOOK_SECRET=<the secret shown in Chatwoot" in output


def test_a_chatwoot_older_than_4_12_gets_the_token_url_alternative(rsps, first_setup, caplog):
    FakeChatwoot(rsps, secret_mode="absent")
    code, output = setup(first_setup)
    assert code == 0
    assert "Chatwoot 4.12" in output
    secret_line = next(line for line in output.splitlines() if line.startswith("CHATWOOT_WEBHOOK_SECRET="))
    secret = secret_line.split("=", 1)[1]
    assert len(secret) >= 40
    assert f"{HOOK_URL}?token={secret}" in output
    assert secret not in caplog.text  # printed for the operator, never logged


def test_a_webhook_already_moved_to_a_token_url_counts_as_ours(rsps, first_setup):
    FakeChatwoot(rsps, secret_mode="absent",
                 webhooks=[{"id": 5, "url": f"{HOOK_URL}?token=tok-123", "subscriptions": ["message_created"]}])
    code, output = setup(first_setup)
    assert code == 0
    assert not any(url.endswith("/webhooks") for _, url in writes(rsps))
    assert "CHATWOOT_WEBHOOK_SECRET=tok-123" in output


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
        "ok   custom attributes: the 21 conversation custom attributes of the bridge are defined",
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


def test_check_fails_when_a_configured_inbox_is_missing(healthy, make_settings):
    code, lines = check(make_settings(CHATWOOT_MESSAGES_INBOX_ID="8"), None)
    assert code == 1
    assert lines[1].startswith("FAIL inboxes: CHATWOOT_MESSAGES_INBOX_ID=8 is not an inbox of account 1")
    assert len(lines) == 4


def test_check_asks_for_authorization_when_mercado_livre_requires_it(healthy, settings, db):
    db.auth.require_reauthorization("Mercado Livre refused the refresh token (invalid_grant)", time.time())
    code, lines = check(settings)
    assert code == 1
    assert lines[2].startswith("FAIL mercado livre: authorization required")
    assert "python main.py authorize" in lines[2]


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


def test_setup_defines_the_conversation_attributes_once_the_claim_receiver_as_a_list(rsps, first_setup):
    fake = FakeChatwoot(rsps, definitions=[])
    code, output = setup(first_setup)
    assert code == 0
    assert [d["attribute_key"] for d in fake.definitions] == [key for key, *_rest in CONVERSATION_ATTRIBUTES]
    by_key = {d["attribute_key"]: d for d in fake.definitions}
    assert by_key["meli_pack_id"]["attribute_display_type"] == "text"
    reply_to = by_key["meli_claim_reply_to"]
    assert (reply_to["attribute_display_type"], reply_to["attribute_values"]) == ("list", ["comprador", "mediador"])
    assert all(d["attribute_model"] == 0 for d in (json.loads(c.request.body) for c in rsps.calls
                                                  if c.request.url.endswith("/custom_attribute_definitions")
                                                  and c.request.method == "POST"))
    assert "created conversation custom attributes: meli_question_id," in output

    defined = len(fake.definitions)
    code, output = setup(first_setup)
    assert code == 0 and len(fake.definitions) == defined
    assert f"ok   {defined} conversation custom attributes already defined" in output


def test_setup_defines_only_the_missing_attributes_and_keeps_one_an_agent_made_as_text(rsps, settings):
    made_by_hand = {"id": 3, "attribute_key": "meli_claim_reply_to", "attribute_display_type": "text",
                    "attribute_model": "conversation_attribute", "attribute_values": []}
    fake = FakeChatwoot(rsps, inboxes=[api_inbox(1, "Perguntas ML"), api_inbox(2, "Vendas ML"), api_inbox(3, "R")],
                        webhooks=[{"id": 5, "url": HOOK_URL, "subscriptions": ["message_created"],
                                   "secret": "whsec-one-5f3a"}],
                        definitions=[d for d in DEFINED if d["attribute_key"] not in ("meli_pack_id",
                                                                                      "meli_claim_reply_to")]
                        + [made_by_hand])
    code, output = setup(dataclasses.replace(settings, chatwoot_claims_inbox_id=3))
    assert code == 0
    assert [url.rsplit("/", 1)[1] for _method, url in writes(rsps)] == ["custom_attribute_definitions"]
    assert fake.definitions[-1]["attribute_key"] == "meli_pack_id"
    assert "note: the conversation custom attribute meli_claim_reply_to already exists but is of type text" in output


def test_check_names_the_conversation_attributes_missing_and_writes_nothing(healthy, settings):
    healthy.replace(responses.GET, f"{ACCOUNT}/custom_attribute_definitions",
                    json=[d for d in DEFINED if d["attribute_key"] not in ("meli_pack_id", "meli_claim_id")])
    code, lines = check(settings)
    assert code == 1
    assert lines[4].startswith("FAIL custom attributes: conversation custom attributes not defined: meli_pack_id, "
                               "meli_claim_id (run python main.py setup <public_url>;")
    assert writes(healthy) == []


def test_every_conversation_attribute_the_bridge_writes_is_defined_by_setup():
    from bridge.sync import claims, questions, sales

    written = set(questions.conversation_attributes({"id": 1}, None)) \
        | set(sales.sale_attributes("1", [])) | set(claims.claim_attributes({"id": 1}, None, None)) \
        | {claims.REPLY_TO_ATTRIBUTE}
    assert written == {key for key, *_rest in CONVERSATION_ATTRIBUTES}


def test_attributes_chatwoot_refuses_to_define_still_leave_the_env_lines_and_exit_1(rsps, first_setup):
    FakeChatwoot(rsps, definitions=[])
    rsps.replace(responses.POST, f"{ACCOUNT}/custom_attribute_definitions", status=403,
                 json={"error": "You are not authorized to do this action"})
    code, output = setup(first_setup)
    assert code == 1
    assert "CHATWOOT_QUESTIONS_INBOX_ID=10" in output
    assert output.splitlines()[-1].startswith("error: Chatwoot refused creating the conversation custom attribute "
                                              "meli_question_id in account 1 (403)")
