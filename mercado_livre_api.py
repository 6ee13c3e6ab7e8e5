"""Mercado Livre: HTTP calls, and the seller's tokens.

Refresh tokens are single use. Both processes share the token store, so a refresh is
single-flight across processes: a lease on the token row is taken in a `BEGIN
IMMEDIATE` transaction after re-reading the row (refresh only if still needed and no
live lease), the HTTP call runs outside any transaction, and the new pair replaces the
old one only if the stored refresh token is still the one we used. Holding SQLite's
write lock across the HTTP call would give the same guarantee but would stall the
listener's writes — and Chatwoot's 5-second webhook timeout — whenever Mercado Livre
is slow.
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

from config import Settings
from db_manager import Database, crashpoint
from http_client import ApiError, HttpClient, PermanentError, TransientError

log = logging.getLogger("bridge.meli")

REFRESH_MARGIN = 300.0  # refresh 5 minutes before the access token expires
REFRESH_LEASE = 120.0  # longer than a token call can take (connect + read timeouts)
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

    def __init__(self, settings: Settings, db: Database, *, clock: Callable[[], float] = time.time, **kwargs):
        super().__init__(settings.meli_api_url, **kwargs)
        self.settings = settings
        self.db = db
        self.clock = clock
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        # The lease's owner is this process: its own threads must take turns, or two of them
        # spend the same single-use refresh token and the loser marks the authorization dead.
        self._refresh_turn = threading.RLock()
        self.refreshes = 0

    # ---- tokens ------------------------------------------------------------------------------

    def seed_tokens(self) -> None:
        """MELI_REFRESH_TOKEN seeds an empty store once; afterwards the store wins."""
        if self.settings.meli_refresh_token and self.db.auth_seed(
                self.settings.meli_access_token, self.settings.meli_refresh_token, self.clock()):
            log.info("token store seeded from MELI_REFRESH_TOKEN")

    def access_token(self, wait_seconds: float = 60.0) -> str:
        deadline = time.monotonic() + wait_seconds
        while True:
            with self._refresh_turn:
                decision, row = self.db.auth_claim_refresh(self.owner, self.clock(), REFRESH_MARGIN, REFRESH_LEASE)
                if decision == "refresh":
                    return self._refresh(row)
            if decision == "fresh":
                return row["access_token"]
            if decision == "reauth":
                raise ReauthorizationRequired(row["status_reason"] or "Mercado Livre authorization is missing",
                                              code="reauthorization_required")
            if time.monotonic() > deadline:
                raise TransientError("another process is refreshing the Mercado Livre token; gave up waiting")
            time.sleep(0.05)

    def _refresh(self, row: dict) -> str:
        used = row["refresh_token"]
        started = time.monotonic()
        try:
            token = self._token_call({"grant_type": "refresh_token", "refresh_token": used})
        except PermanentError as exc:
            reason = (f"Mercado Livre refused the refresh token ({exc.code or exc.status}); "
                      "run `python main.py authorize`")
            self.db.auth_require_reauthorization(reason, self.clock(), used_refresh_token=used)
            log.error("mercado livre authorization lost: %s", reason)
            raise ReauthorizationRequired(reason, status=exc.status, code="reauthorization_required") from None
        except BaseException:
            self.db.auth_release_lease(self.owner)
            raise
        crashpoint("token_refreshed")
        expected = self.settings.meli_user_id or row["user_id"]
        user_id = _int_or_none(token.get("user_id"))
        if expected and user_id and user_id != expected:
            reason = f"the stored tokens belong to user {user_id}, not seller {expected}; authorize the right account"
            self.db.auth_require_reauthorization(reason, self.clock(), used_refresh_token=used)
            raise ReauthorizationRequired(reason, code="reauthorization_required")
        stored = self.db.auth_store_refreshed(self.owner, used, token["access_token"], token["refresh_token"],
                                              self.clock() + float(token.get("expires_in") or 21600), user_id,
                                              self.clock())
        self.refreshes += 1
        if not stored:
            # Our lease ran out and the row changed under us; never overwrite a newer pair.
            log.error("mercado livre token refreshed but the store changed meanwhile; keeping the stored pair")
            return self.access_token()
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
        self.db.oauth_state_create(state, verifier, self.clock(), STATE_TTL)
        return f"{self.settings.meli_auth_url}/authorization?{urlencode(params)}"

    def exchange_code(self, code: str, state: str | None, *, require_state: bool = True) -> dict:
        """Trade an authorization code for tokens and store them; returns {user_id, nickname}."""
        verifier = None
        if require_state:
            valid, verifier = self.db.oauth_state_consume(state or "", self.clock())
            if not valid:
                raise AuthorizationRefused("the authorization link is unknown, already used or expired; "
                                           "run `python main.py authorize` for a new one")
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
        current = self.db.auth()
        expected = self.settings.meli_user_id or current["user_id"]
        if expected and user_id != expected:
            log.warning("authorization refused: tokens of user %s, this bridge serves seller %s", user_id, expected)
            raise AuthorizationRefused(f"this bridge serves seller {expected}; the account that authorized "
                                       f"is {user_id}. Log in to Mercado Livre as the right seller and try again")
        me = self._request("GET", "/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
        nickname = me.get("nickname") if isinstance(me, dict) else None
        user_id = user_id or _int_or_none(me.get("id"))
        self.db.auth_store_authorized(user_id, nickname, token["access_token"], token["refresh_token"],
                                      self.clock() + float(token.get("expires_in") or 21600), self.clock())
        log.info("mercado livre authorized for seller %s (%s)", user_id, nickname)
        return {"user_id": user_id, "nickname": nickname}

    # ---- authenticated calls -------------------------------------------------------------------

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An authenticated call; a 401 gets one refresh and one retry."""
        token = self.access_token()
        try:
            return self._request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        except PermanentError as exc:
            if exc.status != 401:
                raise
        self.db.auth_invalidate_access(token)
        token = self.access_token()
        return self._request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)

    def seller_id(self) -> int:
        if self.settings.meli_user_id:
            return self.settings.meli_user_id
        row = self.db.auth()
        if row["user_id"]:
            return row["user_id"]
        me = self._api("GET", "/users/me")
        self.db.auth_set_identity(int(me["id"]), me.get("nickname"))
        return int(me["id"])

    def me(self) -> dict:
        return self._api("GET", "/users/me")

    def user(self, user_id: int | str) -> dict:
        return self._api("GET", f"/users/{user_id}")

    def unanswered_questions(self, seller_id: int) -> Iterator[dict]:
        """Every unanswered question, oldest first, all pages."""
        offset = 0
        while True:
            page = self._api("GET", "/questions/search", params={
                "seller_id": seller_id, "status": "UNANSWERED", "api_version": 4, "offset": offset,
                "limit": QUESTIONS_PAGE, "sort_fields": "date_created", "sort_types": "ASC"})
            questions = page.get("questions") or []
            yield from questions
            offset += len(questions)
            if not questions or offset >= int(page.get("total") or 0):
                return

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
        return self._api("GET", f"/messages/packs/{pack_id}/sellers/{seller_id}", params={
            "tag": "post_sale", "mark_as_read": "false", "limit": limit, "offset": offset})

    def mark_thread_read(self, pack_id: str, seller_id: int, limit: int = 10) -> None:
        """Reading without mark_as_read=false is what marks the buyer's messages read."""
        self._api("GET", f"/messages/packs/{pack_id}/sellers/{seller_id}",
                  params={"tag": "post_sale", "limit": limit, "offset": 0})

    def message(self, message_id: str) -> dict:
        return self._api("GET", f"/messages/{message_id}", params={"tag": "post_sale"})

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

    def pack(self, pack_id: str) -> dict:
        return self._api("GET", f"/packs/{pack_id}")

    def missed_feeds(self) -> list[dict]:
        result = self._api("GET", "/missed_feeds", params={"app_id": self.settings.meli_app_id}) or {}
        return result.get("messages") or []


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
