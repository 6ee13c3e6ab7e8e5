"""`main.py setup` and `main.py check`: connect a Chatwoot account to the bridge, then verify it.

`run_setup` finds or creates what the bridge needs in Chatwoot (three API inboxes, each with its
own webhook to the listener, and the conversation custom attributes it writes) with an
administrator's token, and prints the `.env` lines to add.
It is safe to run again: what exists is reused, nothing is created twice, and a run that finds
everything in place changes nothing.

`run_check` writes nothing in Chatwoot: it tells, one line per check, whether a configured
bridge can reach Chatwoot, Mercado Livre and its own listener.

Both print through `out` (the operator's console) and never raise: every failure becomes one
sentence saying what is wrong and what to do. The webhook secret is printed on purpose — the
operator asked for it on their own console — and never goes through `logging`.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from bridge.http import ApiError, HttpClient
from chatwoot_api import ChatwootClient
from config import Settings
from db_manager import Database, DatabaseError
from mercado_livre_api import MeliClient, ReauthorizationRequired

log = logging.getLogger("bridge.setup")

QUESTIONS_INBOX_NAME = "Mercado Livre - Perguntas"
MESSAGES_INBOX_NAME = "Mercado Livre - Vendas"
CLAIMS_INBOX_NAME = "Mercado Livre - Reclamações"
API_CHANNEL = "Channel::Api"
PRIVATE_NETWORK_HINT = (": the URL must be reachable from Chatwoot, and Chatwoot 4.14+ refuses private-network "
                        "addresses unless SAFE_FETCH_ALLOW_PRIVATE_NETWORK=true is set on Chatwoot")
TOKEN_PLACE = "Chatwoot → Profile settings → Access Token"
LISTENER_TIMEOUT = (5, 10)

Out = Callable[[str], Any]

# Chatwoot's attribute_display_type numbers.
TEXT, NUMBER, LINK, LIST = 0, 1, 4, 6
DISPLAY_TYPE_NAMES = {TEXT: "text", NUMBER: "number", LINK: "link", LIST: "list"}
REPLY_TO_VALUES = ["comprador", "mediador"]
# The conversation custom attributes the bridge writes: (key, name agents see, display type, values).
# Defined, Chatwoot's conversation filter can find a conversation by its id wherever a contact
# merge carried it (an undefined key is ignored by the filter); ids are text, as they are written.
CONVERSATION_ATTRIBUTES: list[tuple[str, str, int, list[str] | None]] = [
    ("meli_question_id", "ML: pergunta", TEXT, None),
    ("meli_item_id", "ML: anúncio", TEXT, None),
    ("meli_item_title", "ML: título do anúncio", TEXT, None),
    ("meli_item_url", "ML: link do anúncio", LINK, None),
    ("meli_item_thumbnail", "ML: imagem do anúncio", LINK, None),
    ("meli_pack_id", "ML: venda (pacote)", TEXT, None),
    ("meli_order_ids", "ML: pedidos", TEXT, None),
    ("meli_item_titles", "ML: produtos", TEXT, None),
    ("meli_total_amount", "ML: valor total", NUMBER, None),
    ("meli_sale_url", "ML: link da venda", LINK, None),
    ("meli_claim_id", "ML: reclamação", TEXT, None),
    ("meli_order_id", "ML: pedido", TEXT, None),
    ("meli_claim_type", "ML: tipo de reclamação", TEXT, None),
    ("meli_claim_stage", "ML: etapa da reclamação", TEXT, None),
    ("meli_claim_status", "ML: situação da reclamação", TEXT, None),
    ("meli_claim_reason", "ML: motivo da reclamação", TEXT, None),
    ("meli_claim_next_action", "ML: próxima ação", TEXT, None),
    ("meli_claim_due_date", "ML: prazo", TEXT, None),
    ("meli_claim_affects_reputation", "ML: afeta a reputação", TEXT, None),
    ("meli_claim_url", "ML: link da reclamação", LINK, None),
    ("meli_claim_reply_to", "ML: responder para", LIST, REPLY_TO_VALUES),
]
ATTRIBUTE_DESCRIPTION = "Escrito pela ponte Mercado Livre (meli-chatwoot)."
REPLY_TO_DESCRIPTION = ("Na reclamação, a quem vai a resposta do agente: comprador, ou mediador (a mediação do "
                        "Mercado Livre, quando a reclamação está em disputa).")


class SetupError(Exception):
    """A step that cannot go on; the message is the sentence the operator reads."""


# ---- helpers shared by setup and check ----------------------------------------------------------


def normalize_public_url(public_url: str) -> str:
    """The bridge's base URL without a trailing slash, or SetupError saying what is wrong with it."""
    url = (public_url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"the public URL must be the bridge's http(s) address, e.g. https://bridge.example.com "
                         f"(got {url!r})")
    if parts.query or parts.fragment:
        raise SetupError("the public URL must not carry a query or fragment: give the bridge's base address, "
                         "e.g. https://bridge.example.com")
    url = url.rstrip("/")
    if url.endswith("/webhook"):
        # Otherwise the webhook would point at /webhook/webhook.
        raise SetupError("give the bridge's base address without /webhook, e.g. https://bridge.example.com")
    return url


def _same_endpoint(url: Any, target: str) -> bool:
    """Same scheme, host and path; the query is ignored so a `?token=` URL still counts as ours."""
    if not isinstance(url, str):
        return False
    a, b = urlsplit(url.strip()), urlsplit(target)
    return ((a.scheme.lower(), a.netloc.lower(), a.path.rstrip("/"))
            == (b.scheme.lower(), b.netloc.lower(), b.path.rstrip("/")))


def _same_id(a: Any, b: Any) -> bool:
    return a is not None and b is not None and str(a) == str(b)


def _is_api_inbox(inbox: dict) -> bool:
    return inbox.get("channel_type") == API_CHANNEL


def _explain(exc: ApiError, settings: Settings, doing: str, *, account_path: bool = True, hint: str = "") -> str:
    """One sentence for a failed Chatwoot call: what happened and what to do."""
    where = f"CHATWOOT_URL={settings.chatwoot_url}"
    account = settings.chatwoot_account_id
    status = exc.status
    if status is None:
        return (f"Chatwoot not reachable at {where} while {doing} ({exc.message}): check the URL and that "
                f"Chatwoot is running and reachable from this machine")
    if status < 400:
        return (f"{where} answered {doing} with something that is not Chatwoot's API: check CHATWOOT_URL "
                f"(the address you open Chatwoot at, without /app)")
    if status == 401 and not account_path:
        return (f"Chatwoot refused the API token (401) while {doing}: CHATWOOT_API_TOKEN is wrong, revoked, or not "
                f"a user's access token; copy it from {TOKEN_PLACE}")
    if status == 404 and not account_path:
        return f"{where} has no Chatwoot API (404 while {doing}): check CHATWOOT_URL"
    if status in (401, 403, 404):
        return (f"Chatwoot refused {doing} in account {account} ({status}): the token's user is not an "
                f"administrator of that account, or CHATWOOT_ACCOUNT_ID is wrong")
    if status == 429:
        return f"Chatwoot is rate-limiting this machine (429 while {doing}): wait a minute and run it again"
    if status >= 500:
        return (f"Chatwoot failed while {doing} ({exc.short()}): try again later, or look at Chatwoot's logs "
                f"if it keeps failing")
    return f"Chatwoot refused {doing} ({exc.short()}){hint}"


def _call(settings: Settings, doing: str, func: Callable, *args: Any, account_path: bool = True,
          hint: str = "") -> Any:
    try:
        return func(*args)
    except ApiError as exc:
        raise SetupError(_explain(exc, settings, doing, account_path=account_path, hint=hint)) from None


def _token_owner(chatwoot: ChatwootClient, settings: Settings) -> tuple[str, str | None]:
    """(user name, role in the configured account) of the API token; SetupError if not a member."""
    profile = _call(settings, "reading /api/v1/profile", chatwoot.profile, account_path=False)
    if not isinstance(profile, dict):
        raise SetupError(f"CHATWOOT_URL={settings.chatwoot_url} answered /api/v1/profile in an unexpected shape: "
                         f"check CHATWOOT_URL")
    name = profile.get("available_name") or profile.get("name") or profile.get("email") or f"user {profile.get('id')}"
    accounts = [a for a in profile.get("accounts") or [] if isinstance(a, dict)]
    entry = next((a for a in accounts if _same_id(a.get("id"), settings.chatwoot_account_id)), None)
    if entry is None:
        theirs = ", ".join(f"{a.get('id')} ({a.get('name')})" for a in accounts) or "none"
        raise SetupError(f"the token belongs to {name}, who is not a member of account "
                         f"{settings.chatwoot_account_id}: check CHATWOOT_ACCOUNT_ID (this user's accounts: {theirs})")
    return name, entry.get("role")


# ---- setup ------------------------------------------------------------------------------------


def run_setup(settings: Settings, public_url: str, out: Out = print, *,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Wire a Chatwoot account to the bridge; print the `.env` lines. 0 on success, 1 on failure.

    1. Check the token: a user who is an administrator of CHATWOOT_ACCOUNT_ID.
    2. Find or create the three API inboxes (by their configured id, else by name).
    3. Point each inbox's own webhook at `public_url`/webhook — the argument is the one source
       of the listener's public address — creating a signing secret where one is missing
       (`_wire_inbox_webhooks`).
    4. Remove an account webhook to the same URL once the running bridge no longer needs it
       (`_retire_account_webhooks`).
    5. Print the ids and CHATWOOT_WEBHOOK_SECRET (the inbox secrets, comma-separated).
    Every step says "already ..." for what it found in place and writes only what is missing
    or wrong. Only CHATWOOT_URL, CHATWOOT_API_TOKEN and CHATWOOT_ACCOUNT_ID are needed; the
    inbox ids and webhook secrets in `settings` are used when present (a first setup has none).
    """
    try:
        base = normalize_public_url(public_url)
        chatwoot = ChatwootClient(settings, sleep=sleep)
        name, role = _token_owner(chatwoot, settings)
        if role != "administrator":
            raise SetupError(
                f"the token belongs to {name}, who is {_article(role)} of account {settings.chatwoot_account_id}, "
                f"not an administrator: creating inboxes and webhooks needs an administrator's access token. "
                f"Run setup once with one (CHATWOOT_API_TOKEN=<administrator's token> ./bridge.sh setup {base}); "
                f"the bridge itself can keep this token if its user is a member of both inboxes")
        out(f"ok   chatwoot: reachable, token of {name} (administrator of account {settings.chatwoot_account_id})")

        inboxes = list(_call(settings, "listing the inboxes", chatwoot.inboxes))
        questions = _ensure_inbox(chatwoot, settings, inboxes, QUESTIONS_INBOX_NAME, "CHATWOOT_QUESTIONS_INBOX_ID",
                                  settings.chatwoot_questions_inbox_id, None, out)
        messages = _ensure_inbox(chatwoot, settings, inboxes, MESSAGES_INBOX_NAME, "CHATWOOT_MESSAGES_INBOX_ID",
                                 settings.chatwoot_messages_inbox_id, questions["id"], out)
        claims = _ensure_inbox(chatwoot, settings, inboxes, CLAIMS_INBOX_NAME, "CHATWOOT_CLAIMS_INBOX_ID",
                               settings.chatwoot_claims_inbox_id, messages["id"], out)
        target = f"{base}/webhook"
        needed, in_place = _wire_inbox_webhooks(chatwoot, settings, [questions, messages, claims], target, out)
        needed += [s for s in _retire_account_webhooks(chatwoot, settings, target, needed, in_place, out)
                   if s not in needed]
        attributes_problem = _attribute_definitions_problem(chatwoot, settings, out)
    except SetupError as exc:
        out(f"error: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 — an operator command answers in a sentence, never a traceback
        log.debug("setup failed unexpectedly", exc_info=True)
        out(f"error: Chatwoot answered in a shape this setup does not understand ({type(exc).__name__}: {exc}); "
            f"create the inboxes and the webhook by hand as the README explains")
        return 1

    _print_env(settings, questions["id"], messages["id"], needed, out, claims["id"])
    if attributes_problem:
        out(f"error: {attributes_problem}")
        return 1
    return 0


def _article(role: str | None) -> str:
    role = role or "member with no role"
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def _ensure_inbox(chatwoot: ChatwootClient, settings: Settings, inboxes: list[dict], name: str, env_name: str,
                  configured_id: int | None, taken_id: Any, out: Out) -> dict:
    """The configured inbox if it is an API inbox, else the API inbox of that name, else a new one."""
    inboxes[:] = [i for i in inboxes if isinstance(i, dict)]
    if configured_id is not None:
        found = next((i for i in inboxes if _same_id(i.get("id"), configured_id)), None)
        if found is None:
            out(f"note: {env_name}={configured_id} is not an inbox of account {settings.chatwoot_account_id}; "
                f"looking for {name!r} instead")
        elif _same_id(found.get("id"), taken_id):
            out(f"note: {env_name}={configured_id} is already the questions inbox; looking for {name!r} instead")
        elif not _is_api_inbox(found):
            out(f"note: {env_name}={configured_id} ({found.get('name')!r}) is a {found.get('channel_type')} inbox, "
                f"not an API inbox; looking for {name!r} instead")
        else:
            out(f"ok   inbox {found.get('name')!r} already exists (id {found['id']}, API inbox, from {env_name})")
            return found

    same_name = [i for i in inboxes if i.get("name") == name and not _same_id(i.get("id"), taken_id)]
    api = sorted((i for i in same_name if _is_api_inbox(i)), key=lambda i: str(i.get("id")))
    if api:
        out(f"ok   inbox {name!r} already exists (id {api[0]['id']})")
        if len(api) > 1:
            others = ", ".join(str(i.get("id")) for i in api[1:])
            out(f"note: more API inboxes are named {name!r} (ids {others}); the bridge uses id {api[0]['id']}")
        return api[0]
    if same_name:
        other = same_name[0]
        raise SetupError(f"an inbox named {name!r} already exists (id {other.get('id')}) but it is a "
                         f"{other.get('channel_type')} inbox, not an API inbox: rename or delete it in Chatwoot "
                         f"(Settings → Inboxes), then run setup again")

    created = _call(settings, f"creating the inbox {name!r}", chatwoot.create_inbox, name)
    if not isinstance(created, dict) or created.get("id") is None:
        raise SetupError(f"Chatwoot accepted the inbox {name!r} but answered without its id: find it in "
                         f"Settings → Inboxes and run setup again")
    out(f"created inbox {name!r} (id {created['id']})")
    inboxes.append(created)
    return created


def _url_token(url: Any) -> str | None:
    """The `?token=` of a webhook URL: the secret of a delivery Chatwoot cannot sign."""
    return (parse_qs(urlsplit(str(url or "")).query).get("token") or [None])[0]


def inbox_webhook_change(inbox: dict, target: str, token: str) -> str | None:
    """The webhook URL an API inbox must be given, or None when the one it has already works.

    An inbox JSON with a `secret` (Chatwoot 4.13+ shows it to administrators) means signed
    deliveries: any URL of the listener's /webhook will do. Without one, Chatwoot sends them
    unsigned, and the listener accepts those only with `?token=` one of its secrets.
    """
    current = inbox.get("webhook_url")
    signed = "secret" in inbox
    if _same_endpoint(current, target) and (signed or _url_token(current)):
        return None
    return target if signed else f"{target}?token={token}"


def _wire_inbox_webhooks(chatwoot: ChatwootClient, settings: Settings, inboxes: list[dict], target: str,
                         out: Out) -> tuple[list[str], bool]:
    """Point each bridge inbox's own webhook at the listener.

    Returns (the secrets their deliveries carry, True when every one was already in place).
    The inbox webhook rather than an account webhook: Chatwoot marks the agent's message
    failed when its inbox webhook cannot be delivered, so a reply written while the listener
    is down is seen, and only the bridge's inboxes are sent.
    """
    configured = settings.chatwoot_webhook_secrets
    token = configured[0] if configured else secrets.token_urlsafe(32)
    needed: list[str] = []
    in_place = True
    unsigned = False
    for inbox in inboxes:
        name, inbox_id = inbox.get("name"), inbox.get("id")
        if "secret" in inbox and not inbox.get("secret"):
            inbox = {**inbox, **_call(settings, f"creating a signing secret for the inbox {name!r}",
                                      chatwoot.reset_inbox_secret, inbox_id)}
            if not inbox.get("secret"):
                raise SetupError(f"Chatwoot shows no signing secret for the inbox {name!r} (id {inbox_id}): "
                                 f"check that the token's user is an administrator, then run setup again")
            out(f"created a signing secret for inbox {name!r} (id {inbox_id})")
            in_place = False
        new_url = inbox_webhook_change(inbox, target, token)
        if new_url is None:
            out(f"ok   inbox {name!r} webhook already set to {target}")
        else:
            answer = _call(settings, f"setting the webhook of the inbox {name!r}", chatwoot.set_inbox_webhook,
                           inbox_id, new_url, hint=PRIVATE_NETWORK_HINT)
            if "webhook_url" in answer and answer["webhook_url"] != new_url:
                raise SetupError(f"Chatwoot accepted the webhook of the inbox {name!r} but did not keep it: set "
                                 f"{target} by hand in Settings → Inboxes → {name} → Webhook URL, then run setup again")
            was = str(inbox.get("webhook_url") or "")
            out(f"set  inbox {name!r} webhook to {target} (" + (f"it was {was}" if was else "it was empty") + ")")
            inbox = {**inbox, "webhook_url": new_url}
            in_place = False
        unsigned = unsigned or "secret" not in inbox
        secret = str(inbox["secret"]) if inbox.get("secret") else _url_token(inbox.get("webhook_url"))
        if secret and secret not in needed:
            needed.append(secret)
    if unsigned:
        out("note: this Chatwoot does not sign inbox webhooks (4.13 and later do): their URLs carry ?token= "
            "instead, the secret in the CHATWOOT_WEBHOOK_SECRET line below")
    return needed, in_place


def _retire_account_webhooks(chatwoot: ChatwootClient, settings: Settings, target: str, inbox_secrets: list[str],
                             inboxes_in_place: bool, out: Out) -> list[str]:
    """Account webhooks to the listener (made by setup before it wired the inbox webhooks).

    Each reply arrives through both (the listener records it once), so they go, but only
    once the running bridge accepts the inbox deliveries: the inbox webhooks were already in
    place before this run and CHATWOOT_WEBHOOK_SECRET holds their secrets. Until then one is
    kept, and its secret stays in the printed line; returns the secrets kept that way.
    """
    hooks = [h for h in _call(settings, "listing the webhooks", chatwoot.webhooks)
             if isinstance(h, dict) and _same_endpoint(h.get("url"), target)]
    if not hooks:
        return []
    configured = settings.chatwoot_webhook_secrets
    if inboxes_in_place and set(inbox_secrets) <= set(configured):
        for hook in hooks:
            _call(settings, f"deleting the account webhook {hook.get('id')}", chatwoot.delete_webhook, hook.get("id"))
            out(f"deleted account webhook {hook.get('id')} to {target}: the inbox webhooks deliver the same "
                f"replies (it made each one arrive twice)")
        return []
    kept: list[str] = []
    for hook in hooks:
        secret = hook.get("secret") or _url_token(hook.get("url"))
        # Unknown (not shown): whatever the listener holds now must stay.
        kept.extend([str(secret)] if secret else configured)
        out(f"note: account webhook {hook.get('id')} to {target} is kept until the bridge runs with the lines "
            f"below (meanwhile each reply arrives twice and is recorded once); run setup again after the "
            f"restart and it is removed")
    return kept


def _attribute_definitions_problem(chatwoot: ChatwootClient, settings: Settings, out: Out) -> str | None:
    """_ensure_attribute_definitions, its failure said after the `.env` lines (which hold regardless)."""
    try:
        _ensure_attribute_definitions(chatwoot, settings, out)
    except SetupError as exc:
        return f"{exc}; the rest of setup is done: run it again to define the attributes"
    return None


def _ensure_attribute_definitions(chatwoot: ChatwootClient, settings: Settings, out: Out) -> None:
    """Define each of CONVERSATION_ATTRIBUTES that the account lacks; one already there (by key) is
    kept as it is, and said when its type is not what the bridge expects (an agent made it first)."""
    existing = {d.get("attribute_key"): d for d in _call(settings, "listing the conversation custom attributes",
                                                          chatwoot.conversation_attribute_definitions)}
    created, kept = [], 0
    for key, name, display_type, values in CONVERSATION_ATTRIBUTES:
        found = existing.get(key)
        if found is None:
            _call(settings, f"creating the conversation custom attribute {key}",
                  chatwoot.create_conversation_attribute_definition, key, name, display_type,
                  REPLY_TO_DESCRIPTION if values else ATTRIBUTE_DESCRIPTION, values)
            created.append(key)
            continue
        kept += 1
        problem = attribute_mismatch(found, display_type, values)
        if problem:
            out(f"note: the conversation custom attribute {key} already exists but {problem}; the bridge keeps "
                f"it as it is (change it in Chatwoot → Settings → Custom attributes)")
    if created:
        out(f"created conversation custom attributes: {', '.join(created)}")
    if kept:
        out(f"ok   {kept} conversation custom attribute{'s' if kept != 1 else ''} already defined")


def attribute_mismatch(definition: dict, display_type: int, values: list[str] | None) -> str | None:
    """Pure: what differs from the type (and list values) the bridge expects, or None."""
    shown = definition.get("attribute_display_type")
    if shown not in (display_type, DISPLAY_TYPE_NAMES[display_type], str(display_type)):
        return f"is of type {shown}, not {DISPLAY_TYPE_NAMES[display_type]}"
    have = [str(v).strip().lower() for v in definition.get("attribute_values") or []]
    missing = [v for v in values or [] if v not in have]
    if missing:
        return f"its list lacks {', '.join(missing)}"
    return None


def _print_env(settings: Settings, questions_id: Any, messages_id: Any, needed: list[str], out: Out,
               claims_id: Any = None) -> None:
    configured = settings.chatwoot_webhook_secrets
    unchanged = (_same_id(questions_id, settings.chatwoot_questions_inbox_id)
                 and _same_id(messages_id, settings.chatwoot_messages_inbox_id)
                 and (claims_id is None or _same_id(claims_id, settings.chatwoot_claims_inbox_id))
                 and set(needed) <= set(configured))
    out("")
    if unchanged:
        out("Your configuration already holds these values:")
    else:
        out("Add these lines to .env (a variable set in the environment wins over .env), then restart the bridge:")
    out(f"CHATWOOT_QUESTIONS_INBOX_ID={questions_id}")
    out(f"CHATWOOT_MESSAGES_INBOX_ID={messages_id}")
    if claims_id is not None:
        out(f"CHATWOOT_CLAIMS_INBOX_ID={claims_id}")
    out(f"CHATWOOT_WEBHOOK_SECRET={','.join(configured if unchanged else needed)}")


# ---- check ------------------------------------------------------------------------------------


class _Listener(HttpClient):
    """The bridge's own listener, seen from outside through its public URL."""

    service = "listener"

    def health(self):
        # Any answer counts: /health says 503 when the bridge is unhealthy, and that is still reachable.
        return self._request("GET", "/health", raw=True, retry=False, ok_statuses=tuple(range(400, 600)))


def run_check(settings: Settings, public_url: str | None, out: Out = print, *,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """One line per check, nothing written in Chatwoot. 0 when every check passes, 1 otherwise."""
    results: list[bool] = []

    def report(ok: bool | None, name: str, text: str) -> None:
        # None: a warning, which does not fail the check.
        results.append(ok is not False)
        out(f"{'WARN' if ok is None else 'ok  ' if ok else 'FAIL'} {name}: {text}")

    checks: list[tuple[str, Callable[[], tuple[bool | None, str]]]] = []
    chatwoot = ChatwootClient(settings, sleep=sleep)
    state: dict[str, Any] = {}
    checks.append(("chatwoot", lambda: _check_chatwoot(chatwoot, settings, state)))
    checks.append(("inboxes", lambda: _check_inboxes(chatwoot, settings, state)))
    checks.append(("mercado livre", lambda: _check_meli(settings, sleep)))
    if public_url is not None:
        checks.append(("listener", lambda: _check_listener(public_url, sleep)))
        checks.append(("inbox webhooks", lambda: _check_inbox_webhooks(chatwoot, settings, public_url, state)))
    checks.append(("custom attributes", lambda: _check_attribute_definitions(chatwoot, settings, state)))
    # Last: after `mercado livre`, whose seeding rewrote what it could under the first key.
    checks.append(("token encryption", lambda: _check_token_encryption(settings)))

    for name, check in checks:
        try:
            ok, text = check()
        except SetupError as exc:
            ok, text = False, str(exc)
        except Exception as exc:  # noqa: BLE001 — one broken check must not hide the others
            log.debug("check %s failed unexpectedly", name, exc_info=True)
            ok, text = False, f"unexpected {type(exc).__name__}: {exc}"
        report(ok, name, text)
    return 0 if all(results) else 1


def _check_chatwoot(chatwoot: ChatwootClient, settings: Settings, state: dict) -> tuple[bool, str]:
    try:
        name, role = _token_owner(chatwoot, settings)
    except SetupError:
        state["unreachable"] = True
        raise
    state["role"] = role
    return True, f"reachable, token of {name} ({role})"


def _check_inboxes(chatwoot: ChatwootClient, settings: Settings, state: dict) -> tuple[bool, str]:
    if state.get("unreachable"):
        return False, "not checked (see the chatwoot line)"
    inboxes = [i for i in _call(settings, "listing the inboxes", chatwoot.inboxes) if isinstance(i, dict)]
    state["inboxes"] = inboxes
    problems, found_text = [], []
    expected = [("CHATWOOT_QUESTIONS_INBOX_ID", settings.chatwoot_questions_inbox_id, "questions"),
                ("CHATWOOT_MESSAGES_INBOX_ID", settings.chatwoot_messages_inbox_id, "messages")]
    if settings.chatwoot_claims_inbox_id is not None:
        expected.append(("CHATWOOT_CLAIMS_INBOX_ID", settings.chatwoot_claims_inbox_id, "claims"))
    for env_name, inbox_id, kind in expected:
        if inbox_id is None:
            problems.append(f"{env_name} is not set (run ./bridge.sh setup <public_url>)")
            continue
        inbox = next((i for i in inboxes if _same_id(i.get("id"), inbox_id)), None)
        if inbox is None:
            problems.append(f"{env_name}={inbox_id} is not an inbox of account {settings.chatwoot_account_id} "
                            f"(or the token's user is not a member of it)")
        elif not _is_api_inbox(inbox):
            problems.append(f"{env_name}={inbox_id} ({inbox.get('name')!r}) is a {inbox.get('channel_type')} inbox, "
                            f"not an API inbox")
        else:
            found_text.append(f"{kind} {inbox_id} {inbox.get('name')!r}")
    if problems:
        return False, "; ".join(problems)
    claims = "" if settings.chatwoot_claims_inbox_id is not None else \
        "; claims off (CHATWOOT_CLAIMS_INBOX_ID not set: setup creates the inbox and prints the line)"
    return True, ", ".join(found_text) + " (API inboxes)" + claims


def _check_inbox_webhooks(chatwoot: ChatwootClient, settings: Settings, public_url: str,
                          state: dict) -> tuple[bool, str]:
    """Each configured inbox's own webhook reaches this listener with a secret it holds: else an
    agent's reply never arrives (wrong URL) or is refused (401) and shows failed.

    And no account webhook (an older setup's) sends there too: Chatwoot then delivers each reply
    twice, and marks the agent's message failed when the inbox delivery fails, though the account
    one brought the reply and the bridge delivers it. Only an administrator's token lists them."""
    if "inboxes" not in state:
        return False, "not checked (see the inboxes line)"
    target = f"{normalize_public_url(public_url)}/webhook"
    configured = set(settings.chatwoot_webhook_secrets)
    problems, unknown = [], []
    for inbox_id in (settings.chatwoot_questions_inbox_id, settings.chatwoot_messages_inbox_id,
                     settings.chatwoot_claims_inbox_id):
        inbox = next((i for i in state["inboxes"] if inbox_id is not None and _same_id(i.get("id"), inbox_id)), None)
        if inbox is None:
            continue  # said on the inboxes line
        name, url = inbox.get("name"), inbox.get("webhook_url")
        token = _url_token(url)
        if not _same_endpoint(url, target):
            problems.append(f"inbox {name!r} sends to {url or 'nowhere (empty)'}, not {target}")
        elif token is not None and token not in configured:
            problems.append(f"inbox {name!r} webhook carries a ?token= that CHATWOOT_WEBHOOK_SECRET does not hold")
        elif inbox.get("secret") and str(inbox["secret"]) not in configured:
            problems.append(f"CHATWOOT_WEBHOOK_SECRET does not hold the secret of inbox {name!r}: its replies get 401")
        elif token is None and not inbox.get("secret"):
            unknown.append(str(name))
    if state.get("role") == "administrator":
        for hook in _call(settings, "listing the webhooks", chatwoot.webhooks):
            if isinstance(hook, dict) and _same_endpoint(hook.get("url"), target):
                problems.append(f"account webhook {hook.get('id')} also sends to {target}: each reply arrives "
                                f"twice, and one whose inbox delivery fails shows failed though the bridge "
                                f"delivers it")
    if problems:
        return False, "; ".join(problems) + " (run ./bridge.sh setup " + normalize_public_url(public_url) + \
            ", paste the lines it prints and restart)"
    text = f"every inbox sends to {target}"
    if unknown:
        text += f" (the signing secret of {', '.join(unknown)} is shown only to administrators: not compared)"
    return True, text


def _check_attribute_definitions(chatwoot: ChatwootClient, settings: Settings, state: dict) -> tuple[bool, str]:
    if state.get("unreachable"):
        return False, "not checked (see the chatwoot line)"
    existing = {d.get("attribute_key"): d for d in _call(settings, "listing the conversation custom attributes",
                                                          chatwoot.conversation_attribute_definitions)}
    missing = [key for key, _name, _type, _values in CONVERSATION_ATTRIBUTES if key not in existing]
    odd = [f"{key} {problem}" for key, _name, display_type, values in CONVERSATION_ATTRIBUTES
           if key in existing and (problem := attribute_mismatch(existing[key], display_type, values))]
    if missing:
        return False, (f"conversation custom attributes not defined: {', '.join(missing)} (run ./bridge.sh setup "
                       f"<public_url>; without them a conversation a contact merge carried off cannot be found, and "
                       f"agents type meli_claim_reply_to instead of picking it)")
    text = f"the {len(CONVERSATION_ATTRIBUTES)} conversation custom attributes of the bridge are defined"
    if odd:
        text += f" (note: {'; '.join(odd)})"
    return True, text


def _check_token_encryption(settings: Settings) -> tuple[bool | None, str]:
    """How the stored secrets are kept: a warning while TOKEN_ENCRYPTION_KEY is unset."""
    try:
        db = Database(settings.database_path, settings.token_encryption_keys).open()
    except DatabaseError as exc:
        return False, f"database: {exc}"
    try:
        stored = db.auth.secrets_at_rest()
    finally:
        db.close()
    if stored["unreadable"]:
        return False, (f"{stored['unreadable']} stored secret(s) that no key in TOKEN_ENCRYPTION_KEY decrypts: "
                       f"put back the key that encrypted them, or run ./bridge.sh authorize again")
    if not settings.token_encryption_keys:
        return None, (f"TOKEN_ENCRYPTION_KEY is not set: the Mercado Livre tokens are stored in plain text in "
                      f"{settings.database_path}")
    text = f"on, {stored['encrypted']} stored secret(s) encrypted"
    if stored["stale"]:
        text += (f"; {stored['stale']} still under an older key or in plain text, rewritten at the "
                 f"poller's next start: keep the older keys until then")
    return True, text


def _check_meli(settings: Settings, sleep: Callable[[float], None]) -> tuple[bool, str]:
    try:
        db = Database(settings.database_path, settings.token_encryption_keys).open()
    except DatabaseError as exc:
        return False, f"database: {exc}"
    try:
        meli = MeliClient(settings, db, sleep=sleep)
        # Exactly how the bridge itself uses the tokens: seeding an empty store from
        # MELI_REFRESH_TOKEN, and refreshing an expiring access token (which writes the
        # token store) — a check must not behave differently from the poller.
        meli.seed_tokens()
        me = meli.me()
    except ReauthorizationRequired as exc:
        return False, f"authorization required ({exc.message}): run ./bridge.sh authorize"
    except ApiError as exc:
        if exc.status is None:
            return False, (f"Mercado Livre not reachable at MELI_API_URL={settings.meli_api_url} ({exc.message}); "
                           f"try again later")
        return False, f"Mercado Livre refused /users/me ({exc.short()})"
    finally:
        db.close()
    seller = me.get("id") if isinstance(me, dict) else None
    nickname = me.get("nickname") if isinstance(me, dict) else None
    if settings.meli_user_id and not _same_id(seller, settings.meli_user_id):
        return False, (f"the authorized account is {nickname} ({seller}), but MELI_USER_ID={settings.meli_user_id}: "
                       f"run ./bridge.sh authorize logged in as the right seller")
    return True, f"authorized as {nickname} (seller {seller})"


def _check_listener(public_url: str, sleep: Callable[[float], None]) -> tuple[bool, str]:
    base = normalize_public_url(public_url)
    url = f"{base}/health"
    try:
        resp = _Listener(base, attempts=1, timeout=LISTENER_TIMEOUT, sleep=sleep).health()
    except ApiError as exc:
        return False, f"not reachable at {url} ({exc.message}): is the listener running, and the URL and proxy right?"
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "ok" not in body:
        return False, (f"something answered at {url} (HTTP {resp.status_code}) but not the bridge's /health: check "
                       f"the public URL and that the proxy forwards to the listener's port")
    text = f"reachable at {url}; it reports ok={str(bool(body['ok'])).lower()}"
    failing = [str(f) for f in body.get("failing") or []]
    if failing:
        text += f" (failing: {', '.join(failing)})"
    return True, text
