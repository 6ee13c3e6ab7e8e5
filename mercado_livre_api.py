"""Mercado Livre: HTTP calls, and the seller's tokens.

Refresh tokens are single use. Both processes share the token store, and every
scheduler job and outbox worker shares one client, so a refresh is single-flight
across threads and processes: the threads of a process queue on one lock, and the one
at the front takes a lease on the token row in a `BEGIN IMMEDIATE` transaction after
re-reading the row (refresh only if still needed and no live lease). The lease is
owned by that one attempt, never by the client: a shared owner let two threads both
"win" it and spend the same token. The HTTP call runs outside any transaction, and the
new pair is written if the stored refresh token is still the one we used. Holding
SQLite's write lock across the HTTP call would give the same guarantee but would stall
the listener's writes — and Chatwoot's 5-second webhook timeout — whenever Mercado
Livre is slow.

A refused refresh ends the authorization only when the store still holds the token we
used and no other refresh is in flight; otherwise the stored pair (or the one about to
be stored) is used. A pair Mercado Livre issued is never dropped while its refresh
token is the only live one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

from bridge import stopping
from bridge.http import ApiError, HttpClient, PermanentError, TransientError
from bridge.paging import Pages
from bridge.store.auth import auth_decision
from config import Settings
from db_manager import Database, crashpoint

log = logging.getLogger("bridge.meli")

REFRESH_MARGIN = 300.0  # refresh 5 minutes before the access token expires
REFRESH_LEASE = 120.0  # longer than a token call can take (connect + read timeouts)
# After a refresh that failed transiently nobody tries again for this long: one attempt at a
# time, not one per waiting thread. The next attempt reuses the same refresh token.
REFRESH_PAUSE = 5.0
REFRESH_PAUSE_MAX = 60.0
TOKEN_POLL = 0.05
STATE_TTL = 600.0
MELI_AGENT_ID = 3037675074  # Mercado Livre's own agent in migrated post-sale threads
QUESTIONS_PAGE = 50
ITEMS_PER_MULTIGET = 20


class ReauthorizationRequired(ApiError):
    """Mercado Livre refused the stored authorization: a person must authorize again."""


class AuthorizationRefused(Exception):
    """The authorization code cannot be used (wrong user, bad state, refused code)."""


class MeliClient(HttpClient):
    service = "mercadolivre"

    def __init__(self, settings: Settings, db: Database, *, clock: Callable[[], float] = time.time,
                 refresh_margin: float = REFRESH_MARGIN, **kwargs):
        super().__init__(settings.meli_api_url, **kwargs)
        self.settings = settings
        self.db = db
        self.clock = clock
        self.refresh_margin = refresh_margin
        self.refreshes = 0
        self._asked_identity = False

    # ---- tokens ------------------------------------------------------------------------------

    def seed_tokens(self) -> None:
        """MELI_REFRESH_TOKEN seeds an empty store once; afterwards the store wins."""
        if self.settings.meli_refresh_token and self.db.auth.seed(
                self.settings.meli_access_token, self.settings.meli_refresh_token, self.clock()):
            log.info("token store seeded from MELI_REFRESH_TOKEN")
        # A key just set, or a new key put first: rewrite at once, so the old key can be dropped.
        resealed = self.db.auth.reseal()
        if resealed:
            log.info("%d stored secret(s) rewritten under the first TOKEN_ENCRYPTION_KEY", resealed)
        if self.db.auth.secrets_at_rest()["unreadable"]:
            log.error("mercado livre authorization unusable: %s", self.db.auth.current()["status_reason"])

    def access_token(self, wait_seconds: float = 60.0) -> str:
        deadline = time.monotonic() + wait_seconds
        # A plain read first: nearly every call finds a fresh token and needs no write lock.
        row = self.db.auth.current()
        decision = auth_decision(row, self.clock(), self.refresh_margin)
        if decision == "fresh":
            return row["access_token"]
        if decision == "reauth":
            raise _reauthorization(row)
        lock = _refresh_lock(self.db.path)
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TransientError("another thread is refreshing the Mercado Livre token; gave up waiting")
        try:
            return self._access_token_single_flight(deadline)
        finally:
            lock.release()

    def _access_token_single_flight(self, deadline: float) -> str:
        """Under this process's refresh lock: use the stored token, wait for another process, or refresh."""
        while True:
            owner = f"{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"
            decision, row = self.db.auth.claim_refresh(owner, self.clock(), self.refresh_margin, REFRESH_LEASE)
            if decision == "fresh":
                return row["access_token"]
            if decision == "reauth":
                raise _reauthorization(row)
            if decision == "refresh":
                token = self._refresh(row, owner)
                if token is not None:
                    return token
                continue  # the store holds a newer pair, or another refresh is in flight
            if time.monotonic() > deadline:
                raise TransientError("another process is refreshing the Mercado Livre token; gave up waiting")
            stopping.wait(TOKEN_POLL)

    def _refresh(self, row: dict, owner: str) -> str | None:
        """Refresh with the lease held by `owner`; None when the stored pair should be used instead."""
        used = row["refresh_token"]
        started = time.monotonic()
        try:
            token = self._token_call({"grant_type": "refresh_token", "refresh_token": used})
        except PermanentError as exc:
            reason = (f"Mercado Livre refused the refresh token ({exc.code or exc.status}); "
                      "run `./bridge.sh authorize`")
            if self.db.auth.require_reauthorization(reason, self.clock(), used_refresh_token=used, owner=owner):
                log.error("mercado livre authorization lost: %s", reason)
                raise ReauthorizationRequired(reason, status=exc.status, code="reauthorization_required") from None
            # Refused because another caller spent the token first: its pair is (or is about
            # to be) in the store.
            self.db.auth.release_lease(owner)
            log.warning("mercado livre refused a refresh token already replaced in the store; using the stored pair")
            return None
        except TransientError as exc:
            # The answer may have been lost after Mercado Livre spent the token. Nothing newer
            # can be known, so the next attempt — after a pause, by whichever caller comes
            # first — retries the same token; only a refusal of that ends the authorization.
            pause = min(REFRESH_PAUSE_MAX, max(REFRESH_PAUSE, exc.retry_after or 0.0))
            self.db.auth.release_lease(owner, pause_until=self.clock() + pause)
            log.warning("mercado livre token refresh failed after %dms (%s); next attempt in %.0fs",
                        (time.monotonic() - started) * 1000, exc.short(), pause)
            raise
        except BaseException:
            self.db.auth.release_lease(owner)
            raise
        crashpoint("token_refreshed")
        expected = self.settings.meli_user_id or row["user_id"]
        user_id = _int_or_none(token.get("user_id"))
        if expected and user_id and user_id != expected:
            reason = f"the stored tokens belong to user {user_id}, not seller {expected}; authorize the right account"
            if self.db.auth.require_reauthorization(reason, self.clock(), used_refresh_token=used, owner=owner):
                raise ReauthorizationRequired(reason, code="reauthorization_required")
            self.db.auth.release_lease(owner)
            return None  # an authorization meanwhile replaced the wrong account's tokens
        stored = self.db.auth.store_refreshed(used, token["access_token"], token["refresh_token"],
                                              self.clock() + float(token.get("expires_in") or 21600), user_id,
                                              self.clock())
        self.refreshes += 1
        if not stored:
            # Only an authorization replaces the refresh token we held under the lease, and its
            # pair is live: keep it (ours is live too, so using it once here is fine).
            log.warning("mercado livre token refreshed but a new authorization was stored meanwhile; keeping it")
            return token["access_token"]
        log.info("mercado livre token refreshed for seller %s in %dms", user_id or expected,
                 (time.monotonic() - started) * 1000)
        return token["access_token"]

    def _token_call(self, fields: dict) -> dict:
        data = {"client_id": str(self.settings.meli_app_id), "client_secret": self.settings.meli_secret_key, **fields}
        # No automatic retry: a refresh token is single use, and a lost answer to a
        # successful call cannot be replayed.
        return self._request("POST", "/oauth/token", data=data, headers={"Accept": "application/json"},
                             retry=False)

    def authorization_url(self) -> str:
        """A fresh single-use state (10 minutes), with a PKCE verifier when enabled."""
        if not self.settings.meli_redirect_uri:
            raise AuthorizationRefused("MELI_REDIRECT_URI is not set")
        state = secrets.token_urlsafe(24)
        params = {"response_type": "code", "client_id": str(self.settings.meli_app_id),
                  "redirect_uri": self.settings.meli_redirect_uri, "state": state}
        verifier = None
        if self.settings.meli_use_pkce:
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            params.update(code_challenge=challenge, code_challenge_method="S256")
        self.db.auth.create_oauth_state(state, verifier, self.clock(), STATE_TTL)
        return f"{self.settings.meli_auth_url}/authorization?{urlencode(params)}"

    def exchange_code(self, code: str, state: str | None, *, require_state: bool = True) -> dict:
        """Trade an authorization code for tokens and store them; returns {user_id, nickname}."""
        verifier = None
        if require_state:
            valid, verifier = self.db.auth.consume_oauth_state(state or "", self.clock())
            if not valid:
                raise AuthorizationRefused("the authorization link is unknown, already used or expired; "
                                           "run `./bridge.sh authorize` for a new one")
        if not self.settings.meli_redirect_uri:
            raise AuthorizationRefused("MELI_REDIRECT_URI is not set")
        fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.meli_redirect_uri}
        if verifier:
            fields["code_verifier"] = verifier
        try:
            token = self._token_call(fields)
        except PermanentError as exc:
            raise AuthorizationRefused(f"Mercado Livre refused the code: {exc.code or exc.message}") from None
        user_id = _int_or_none(token.get("user_id"))
        current = self.db.auth.current()
        expected = self.settings.meli_user_id or current["user_id"]
        if expected and user_id != expected:
            log.warning("authorization refused: tokens of user %s, this bridge serves seller %s", user_id, expected)
            raise AuthorizationRefused(f"this bridge serves seller {expected}; the account that authorized "
                                       f"is {user_id}. Log in to Mercado Livre as the right seller and try again")
        me = self._request("GET", "/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
        nickname = me.get("nickname") if isinstance(me, dict) else None
        user_id = user_id or _int_or_none(me.get("id"))
        self.db.auth.store_authorized(user_id, nickname, token["access_token"], token["refresh_token"],
                                      self.clock() + float(token.get("expires_in") or 21600), self.clock())
        log.info("mercado livre authorized for seller %s (%s)", user_id, nickname)
        return {"user_id": user_id, "nickname": nickname}

    # ---- authenticated calls -------------------------------------------------------------------

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An authenticated call; a 401 gets one refresh and one retry."""
        for retried in (False, True):
            token = self.access_token()
            try:
                return self._request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            except PermanentError as exc:
                if exc.status != 401:
                    raise
                if retried:
                    # Refused again right after a refresh: tokens racing (expiring under us, a
                    # refresh in another process), not the request. Never a refusal the agent
                    # must act on, so it is retried like any other transient failure.
                    raise TransientError(exc.message, status=401, code=exc.code, service=exc.service) from None
            self.db.auth.invalidate_access(token)
        raise AssertionError("unreachable")

    def seller_id(self) -> int:
        """The seller's id; the first call of a process also learns its nickname when none is stored.

        Tokens seeded from the environment (or MELI_USER_ID) name no nickname, and /health and
        `check` would show the seller as null: one /users/me per process fills it in, and a
        failure there never holds up work when the id is already known.
        """
        row = self.db.auth.current()
        known = self.settings.meli_user_id or row["user_id"]
        if known and (row["nickname"] or self._asked_identity):
            return known
        self._asked_identity = True
        try:
            me = self._api("GET", "/users/me")
        except ApiError:
            if known:
                return known
            raise
        if known and int(me["id"]) != known:
            return known  # tokens of another account are refused where they are stored, not here
        self.db.auth.set_identity(int(me["id"]), me.get("nickname"))
        return int(me["id"])

    def me(self) -> dict:
        return self._api("GET", "/users/me")

    def user(self, user_id: int | str) -> dict:
        return self._api("GET", f"/users/{user_id}")

    def unanswered_questions(self, seller_id: int) -> Iterator[dict]:
        """Every unanswered question, oldest first, all pages."""
        pages = Pages(lambda offset: self._api("GET", "/questions/search", params={
            "seller_id": seller_id, "status": "UNANSWERED", "api_version": 4, "offset": offset,
            "limit": QUESTIONS_PAGE, "sort_fields": "date_created", "sort_types": "ASC"}),
            items=lambda page: page.get("questions") or [], total=lambda page: int(page.get("total") or 0))
        for _page, questions in pages:
            yield from questions

    def question(self, question_id: int | str) -> dict:
        return self._api("GET", f"/questions/{question_id}", params={"api_version": 4})

    def answer_question(self, question_id: int, text: str) -> Any:
        # Safe to retry: a repeat after a lost success answers `not_unanswered_question`,
        # which the outbox reconciles by reading the question.
        return self._api("POST", "/answers", json={"question_id": int(question_id), "text": text})

    def items(self, item_ids: list[str]) -> dict[str, dict]:
        """Multiget in chunks of 20; missing items are left out."""
        found: dict[str, dict] = {}
        for start in range(0, len(item_ids), ITEMS_PER_MULTIGET):
            chunk = item_ids[start:start + ITEMS_PER_MULTIGET]
            for entry in self._api("GET", "/items", params={"ids": ",".join(chunk)}) or []:
                body = entry.get("body") or {}
                if entry.get("code") == 200 and body.get("id"):
                    found[str(body["id"])] = body
        return found

    # ---- post-sale -----------------------------------------------------------------------------

    def unread_threads(self) -> list[dict]:
        return (self._api("GET", "/messages/unread", params={"role": "seller", "tag": "post_sale"})
                or {}).get("results") or []

    def thread_page(self, pack_id: str, seller_id: int, offset: int = 0, limit: int = 10) -> dict:
        # mark_as_read=false: buyer messages are marked read only once safely in Chatwoot.
        return as_thread_page(self._api("GET", f"/messages/packs/{pack_id}/sellers/{seller_id}", params={
            "tag": "post_sale", "mark_as_read": "false", "limit": limit, "offset": offset}))

    def mark_thread_read(self, pack_id: str, seller_id: int, offset: int = 0, limit: int = 10) -> dict:
        """Reading without mark_as_read=false is what marks the buyer's messages read.

        Exactly the messages of the returned page are marked: the caller checks that page,
        since a message may have arrived after its own read of the thread. Never repeated here:
        one whose answer was lost may still be applied later, marking what was written since, and
        a repeat that answers would hide that from the caller (its thread stays flagged instead).
        """
        return as_thread_page(self._api("GET", f"/messages/packs/{pack_id}/sellers/{seller_id}",
                                        params={"tag": "post_sale", "limit": limit, "offset": offset},
                                        retry=False) or {})

    def message(self, message_id: str) -> dict:
        """One post-sale message (an answer wrapping it in a `messages` list is unwrapped)."""
        result = self._api("GET", f"/messages/{message_id}", params={"tag": "post_sale"})
        if isinstance(result, dict) and isinstance(result.get("messages"), list) and result["messages"]:
            result = result["messages"][0]
        # An answer shaped like nothing known goes up as it came: its reader fails, and says so.
        return post_sale_message(result) if isinstance(result, dict) else result

    def send_message(self, pack_id: str, seller_id: int, to_user_id: int, text: str,
                     attachment_ids: list[str] | None = None) -> Any:
        body: dict[str, Any] = {"from": {"user_id": seller_id}, "to": {"user_id": to_user_id}, "text": text}
        if attachment_ids:
            body["attachments"] = attachment_ids
        return self._api("POST", f"/messages/packs/{pack_id}/sellers/{seller_id}", params={"tag": "post_sale"},
                         json=body, retry=False)

    def upload_attachment(self, filename: str, content: bytes, content_type: str) -> str:
        result = self._api("POST", "/messages/attachments",
                           params={"tag": "post_sale", "site_id": self.settings.meli_site_id},
                           files={"file": (filename, content, content_type)})
        return str(result["id"])

    def download_attachment(self, filename: str) -> tuple[bytes, str]:
        resp = self._api("GET", f"/messages/attachments/{filename}",
                         params={"tag": "post_sale", "site_id": self.settings.meli_site_id}, raw=True)
        return resp.content, resp.headers.get("Content-Type", "application/octet-stream")

    def order(self, order_id: str) -> dict:
        return self._api("GET", f"/orders/{order_id}")

    def orders_search(self, seller_id: int, updated_from: str, offset: int = 0, limit: int = 50) -> dict:
        """The seller's orders changed since `updated_from` (ISO date), newest first."""
        return self._api("GET", "/orders/search", params={
            "seller": seller_id, "order.date_last_updated.from": updated_from, "sort": "date_desc",
            "offset": offset, "limit": limit}) or {}

    def pack(self, pack_id: str) -> dict:
        return self._api("GET", f"/packs/{pack_id}")

    # ---- claims -----------------------------------------------------------------------------------

    def claims_search(self, status: str = "opened", offset: int = 0, limit: int = 50) -> dict:
        """Claims against the seller only (respondent): without the two players filters, which go
        together, the search also returns the account's own purchases' claims."""
        return self._api("GET", "/post-purchase/v1/claims/search",
                         params={"players.role": "respondent", "players.user_id": self.seller_id(),
                                 "status": status, "offset": offset, "limit": limit}) or {}

    def claim(self, claim_id: str) -> dict:
        return self._api("GET", f"/post-purchase/v1/claims/{claim_id}") or {}

    def claim_messages(self, claim_id: str) -> list[dict]:
        result = self._api("GET", f"/post-purchase/v1/claims/{claim_id}/messages")
        # Documented as a bare list; a wrapped one is accepted too.
        if isinstance(result, dict):
            result = result.get("data") or result.get("messages") or []
        return [claim_message(m) for m in result or [] if isinstance(m, dict)]

    def claim_reason(self, reason_id: str) -> str | None:
        """The readable sentence (`detail`) of a claim reason such as PDD9939; None when it has none."""
        result = self._api("GET", f"/post-purchase/v1/claims/reasons/{reason_id}") or {}
        value = result.get("detail") if isinstance(result, dict) else None
        return value.strip() if isinstance(value, str) and value.strip() else None

    def claim_affects_reputation(self, claim_id: str) -> str | None:
        result = self._api("GET", f"/post-purchase/v1/claims/{claim_id}/affects-reputation") or {}
        value = result.get("affects_reputation") if isinstance(result, dict) else None
        return value if isinstance(value, str) else None

    def send_claim_message(self, claim_id: str, receiver_role: str, text: str,
                           attachments: list[str] | None = None) -> Any:
        body: dict[str, Any] = {"receiver_role": receiver_role, "message": text}
        if attachments:
            body["attachments"] = attachments
        return self._api("POST", f"/post-purchase/v1/claims/{claim_id}/actions/send-message", json=body,
                         retry=False)

    def upload_claim_attachment(self, claim_id: str, filename: str, content: bytes, content_type: str) -> str:
        result = self._api("POST", f"/post-purchase/v1/claims/{claim_id}/attachments",
                           files={"file": (filename, content, content_type)})
        return str(result.get("filename") or result.get("file_name") or result["id"])

    def download_claim_attachment(self, claim_id: str, filename: str) -> tuple[bytes, str]:
        resp = self._api("GET", f"/post-purchase/v1/claims/{claim_id}/attachments/{filename}/download", raw=True)
        return resp.content, resp.headers.get("Content-Type", "application/octet-stream")

    def missed_feeds(self) -> list[dict]:
        result = self._api("GET", "/missed_feeds", params={"app_id": self.settings.meli_app_id}) or {}
        return result.get("messages") or []


# ---- messages as every flow reads them ---------------------------------------------------------------
# Mercado Livre gives a message's text as a string, or in older answers as {"plain": "..."}.
# Normalized here, once, for every flow: nothing above this module sees the older shape.

def _text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("plain")
    return value if isinstance(value, str) else ""


def post_sale_message(message: dict) -> dict:
    """A post-sale message whose `text` is a string (empty when it has none)."""
    return dict(message, text=_text(message.get("text")))


def as_thread_page(page: Any) -> Any:
    """A thread page whose messages are post-sale messages as above. An answer shaped like
    nothing known goes up as it came: its reader fails, and says so, rather than see no messages."""
    if not isinstance(page, dict) or not isinstance(page.get("messages"), list):
        return page
    return dict(page, messages=[post_sale_message(m) if isinstance(m, dict) else m for m in page["messages"]])


def claim_message(message: dict) -> dict:
    """A claim message whose `message` is its text as a string: the original, or the translation
    when only that is given (empty when neither)."""
    text = _text(message.get("message")) or _text(message.get("translated_message"))
    return dict(message, message=text)


_refresh_locks: dict[tuple[int, str], threading.Lock] = {}
_refresh_locks_guard = threading.Lock()


def _refresh_lock(database_path: str) -> threading.Lock:
    """One lock per token store in this process, shared by every client on it.

    Keyed by pid as well: a lock inherited through fork could be held by a thread that
    does not exist in the child.
    """
    key = (os.getpid(), os.path.abspath(database_path))
    with _refresh_locks_guard:
        return _refresh_locks.setdefault(key, threading.Lock())


def _reauthorization(row: dict) -> ReauthorizationRequired:
    return ReauthorizationRequired(row["status_reason"] or "Mercado Livre authorization is missing",
                                   code="reauthorization_required")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
