"""A fake Mercado Livre API with the traps of the real one (see /work/shared/api-facts.md).

Everything mutable lives in MeliState so tests can set up scenarios and inspect effects
directly; create_meli_app(state) is a thin HTTP layer over it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode

from flask import Flask, Response, g, has_request_context, jsonify, redirect, request

from .control import Controls, install_controls, json_error, reason

AGENT_ID = 3037675074  # Mercado Livre's agent in migrated (Brazil, 2026) post-sale threads
MAX_ANSWER_CHARS = 2000
MAX_MESSAGE_CHARS = 350
MAX_SEARCH_LIMIT = 50
MAX_MULTIGET = 20
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
UPLOAD_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "pdf": "application/pdf",
                "txt": "text/plain"}
# Claim reasons by id: (flow, name, the readable sentence Mercado Livre shows).
CLAIM_REASONS = {
    "PDD9939": ("post_purchase_delivered", "repentant_buyer", "O comprador se arrependeu da compra"),
    "PDD9944": ("post_purchase_delivered", "defective_item", "O produto chegou com defeito"),
    "PNR9501": ("post_purchase_not_received", "not_received", "O produto não chegou"),
}
DEFAULT_REDIRECT_URI = "https://bridge.example.com/oauth/callback"
INVALID_GRANT = ("Error validating grant. Your authorization code or refresh token may be expired "
                 "or it was already used")
# Dates the fake hands out start here and only move forward (one minute per new object).
EPOCH = datetime(2026, 11, 20, 16, 0, 0, tzinfo=timezone.utc)
BRT = timezone(timedelta(hours=-4))  # the offset Mercado Livre writes question dates with
OLD_SHAPE = "_text_in_old_shape"  # on a stored message: answered with its text as {"plain": ...}


def _iso(moment: datetime, tz: timezone = timezone.utc) -> str:
    text = moment.astimezone(tz).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class MeliState(Controls):
    def __init__(self, app_id: int = 123456, secret: str = "meli-secret-xyz", seller_id: int = 555000111,
                 seller_nickname: str = "LOJA_TESTE", access_ttl: float = 21600.0):
        super().__init__()
        self.app_id = app_id
        self.secret = secret
        self.seller_id = seller_id
        self.seller_nickname = seller_nickname
        self.access_ttl = access_ttl  # read at issue time: tests may change it between refreshes
        self.users: dict[int, dict] = {}
        self.items: dict[str, dict] = {}
        self.questions: dict[int, dict] = {}
        self.orders: dict[int, dict] = {}
        self.packs: dict[int, dict] = {}
        self.threads: dict[str, dict] = {}  # keyed by pack id (or order id when no pack), as str
        self.messages: dict[str, dict] = {}  # every post-sale message by id (same dicts as in threads)
        self.files: dict[str, dict] = {}  # attachment filename -> {content, content_type, original_filename}
        self.uploads: list[dict] = []
        self.answers_posted: list[tuple[int, str]] = []
        self.sent_messages: list[dict] = []
        self.mark_read_events: list[tuple[str, list[str], float]] = []
        # Called as on_mark_read(pack key, message ids) under the lock, at the moment of marking
        # (the soak records there what Chatwoot held at that instant).
        self.on_mark_read: Any = None
        self.missed: list[dict] = []
        self.claims: dict[int, dict] = {}
        self.claim_messages: dict[int, list[dict]] = {}
        self.claim_sent: list[dict] = []
        self.claim_uploads: list[dict] = []
        # api-facts: a message's text is a string, or in older answers {"plain": "..."}. Every
        # Nth message made (post-sale and claim alike) is answered in that older shape; 1 = all,
        # 0 = none. Stored texts stay strings: tests and the soak read them as such.
        self.old_text_every = 3
        self._texts_made = 0
        # Called with the thread's key just before a read without mark_as_read=false marks its
        # page: a test injects here what happens "meanwhile" (e.g. the buyer writes again).
        self.before_mark_read: Callable[[str], None] | None = None
        self._last_real = datetime.fromtimestamp(0, timezone.utc)
        self.refresh_count = 0
        self.invalid_grant_count = 0
        # Every refresh granted: {"t" (monotonic), "spent" (the refresh token it used up),
        # "access_token", "refresh_token" (the new pair), "access_presented", "refresh_presented"}.
        # A pair never presented afterwards existed only in the answer: the soak tells a client
        # killed inside that window from a client that lost a pair it had received.
        self.refresh_grants: list[dict] = []
        # Refresh tokens refused with invalid_grant: {"t", "token"}.
        self.refused_refreshes: list[dict] = []
        # Called with the grant's record after a refresh is applied, before it is answered.
        self.on_refresh_granted: Callable[[dict], None] | None = None
        self._grant_of: dict[str, dict] = {}  # new access or refresh token -> its grant record
        self.unauthorized_count = 0
        self.rate_limited = 0
        self._codes: dict[str, dict] = {}
        self._access: dict[str, dict] = {}
        self._refresh: dict[str, int] = {}
        self._issued: list[str] = []
        self._rate_limits: dict[str, int] = {}
        self._rate_hits: dict[str, list[float]] = {}
        self._next_question_id = 13_000_000_001
        self._ticks = 0
        self.add_user(seller_id, seller_nickname)

    # ---- small utilities ------------------------------------------------------------------------

    def _next_moment(self) -> datetime:
        with self.lock:
            self._ticks += 1
            return EPOCH + timedelta(minutes=self._ticks)

    def _real_moment(self) -> datetime:
        """Now, strictly after the previous one: post-sale messages and orders carry real dates,
        since the bridge compares them with its own clock (a send's first attempt, a sweep's window)."""
        with self.lock:
            self._last_real = max(datetime.now(timezone.utc), self._last_real + timedelta(milliseconds=1))
            return self._last_real

    def error_body(self, status: int, message: str | None = None, error: str | None = None) -> dict:
        default = reason(status).lower().replace(" ", "_")
        return {"message": message or reason(status), "error": error or default, "status": status, "cause": []}

    # ---- control: rate limits -------------------------------------------------------------------

    def rate_limit(self, method: str, per_minute: int | None) -> None:
        """Answer 429 too_many_requests past `per_minute` requests of `method` in 60 s; None/0 = off."""
        with self.lock:
            if per_minute:
                self._rate_limits[method.upper()] = per_minute
            else:
                self._rate_limits.pop(method.upper(), None)
            self._rate_hits.pop(method.upper(), None)

    def _over_rate_limit(self, method: str) -> float | None:
        """Seconds until a slot frees up when over the limit, else None (and the hit is counted)."""
        with self.lock:
            limit = self._rate_limits.get(method)
            if not limit:
                return None
            now = time.monotonic()
            hits = [t for t in self._rate_hits.get(method, []) if now - t < 60.0]
            if len(hits) >= limit:
                self._rate_hits[method] = hits
                self.rate_limited += 1
                return max(0.0, 60.0 - (now - hits[0]))
            hits.append(now)
            self._rate_hits[method] = hits
            return None

    def gate(self) -> Response | None:
        wait = self._over_rate_limit(request.method.upper())
        if wait is not None:
            return json_error(self, 429, "too many requests", "too_many_requests",
                              headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        if request.path in ("/oauth/token", "/authorization"):
            return None
        user_id = self._user_for_header(request.headers.get("Authorization", ""))
        if user_id is None:
            with self.lock:
                self.unauthorized_count += 1
            return json_error(self, 401, "invalid_token", "unauthorized")
        g.user_id = user_id
        return None

    # ---- OAuth ------------------------------------------------------------------------------------

    def issue_code(self, user_id: int | None = None, redirect_uri: str = DEFAULT_REDIRECT_URI,
                   code_verifier: str | None = None, code_challenge: str | None = None) -> str:
        """A single-use authorization code, as if the user had approved the app in the browser.

        With code_challenge (or a code_verifier, turned into its S256 challenge) the exchange
        must present the matching code_verifier (PKCE).
        """
        if code_verifier and not code_challenge:
            code_challenge = _pkce_challenge(code_verifier)
        code = f"TG-{secrets.token_hex(12)}-{user_id or self.seller_id}"
        with self.lock:
            self._codes[code] = {"user_id": user_id or self.seller_id, "redirect_uri": redirect_uri,
                                 "code_challenge": code_challenge}
        return code

    def seed_tokens(self) -> tuple[str, str]:
        """A valid (access, refresh) pair for the seller, as after an authorization."""
        pair = self._issue_pair(self.seller_id)
        return pair["access_token"], pair["refresh_token"]

    def revoke_all(self) -> None:
        """The user revoked the app: every access and refresh token stops working."""
        with self.lock:
            self._access.clear()
            self._refresh.clear()

    def expire_access_tokens(self) -> None:
        """Make every access token expired now (refresh tokens stay valid)."""
        with self.lock:
            for info in self._access.values():
                info["expires_at"] = time.monotonic() - 1.0

    def all_tokens(self) -> list[str]:
        """Every access/refresh token ever issued (for secret-leak checks)."""
        with self.lock:
            return list(self._issued)

    def _issue_pair(self, user_id: int) -> dict:
        stamp = datetime.now(timezone.utc).strftime("%m%d%H")
        access = f"APP_USR-{self.app_id}-{stamp}-{secrets.token_hex(16)}-{user_id}"
        refresh = f"TG-{secrets.token_hex(12)}-{user_id}"
        with self.lock:
            ttl = float(self.access_ttl)
            self._access[access] = {"user_id": user_id, "expires_at": time.monotonic() + ttl}
            self._refresh[refresh] = user_id
            self._issued += [access, refresh]
        return {"access_token": access, "token_type": "Bearer", "expires_in": int(ttl),
                "scope": "offline_access read write", "user_id": user_id, "refresh_token": refresh}

    def _user_for_header(self, header: str) -> int | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        with self.lock:
            grant = self._grant_of.get(token.strip())
            if grant is not None:
                grant["access_presented"] = True
            info = self._access.get(token.strip())
            if not info or info["expires_at"] <= time.monotonic():
                return None
            return info["user_id"]

    def _grant_error(self, description: str = INVALID_GRANT) -> Response:
        with self.lock:
            self.invalid_grant_count += 1
        resp = jsonify({"error": "invalid_grant", "error_description": description, "status": 400, "cause": []})
        resp.status_code = 400
        return resp

    def token_endpoint(self, form: dict) -> Response:
        if form.get("client_id") != str(self.app_id) or form.get("client_secret") != self.secret:
            return json_error(self, 400, "invalid client_id or client_secret", "invalid_client")
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return self._exchange_code(form)
        if grant == "refresh_token":
            presented = form.get("refresh_token", "")
            with self.lock:
                user_id = self._refresh.pop(presented, None)  # single use: dies now
                earlier = self._grant_of.get(presented)
                if earlier is not None:
                    earlier["refresh_presented"] = True
                if user_id is not None:
                    self.refresh_count += 1
                else:
                    self.refused_refreshes.append({"t": time.monotonic(), "token": presented})
            if user_id is None:
                return self._grant_error()
            pair = self._issue_pair(user_id)
            grant = {"t": time.monotonic(), "spent": presented, "access_token": pair["access_token"],
                     "refresh_token": pair["refresh_token"], "access_presented": False, "refresh_presented": False}
            with self.lock:
                self.refresh_grants.append(grant)
                self._grant_of[pair["access_token"]] = self._grant_of[pair["refresh_token"]] = grant
            hook = self.on_refresh_granted
            if hook is not None:
                hook(grant)
            return jsonify(pair)
        return json_error(self, 400, "unsupported grant_type", "unsupported_grant_type")

    def _exchange_code(self, form: dict) -> Response:
        with self.lock:
            code = self._codes.get(form.get("code", ""))
            if code is None:
                return self._grant_error()
            if form.get("redirect_uri") != code["redirect_uri"]:
                return self._grant_error("redirect_uri does not match the one of the authorization")
            if code["code_challenge"]:
                verifier = form.get("code_verifier") or ""
                if _pkce_challenge(verifier) != code["code_challenge"]:
                    return self._grant_error("code_verifier does not match the code_challenge")
            del self._codes[form["code"]]  # single use
        return jsonify(self._issue_pair(code["user_id"]))

    # ---- users and items ----------------------------------------------------------------------------

    def add_user(self, user_id: int, nickname: str) -> dict:
        user = {"id": int(user_id), "nickname": nickname, "site_id": "MLB"}
        with self.lock:
            self.users[int(user_id)] = user
        return user

    def add_item(self, item_id: str, title: str, price: float = 99.9) -> dict:
        slug = "-".join(title.lower().split())
        item = {"id": item_id, "site_id": "MLB", "title": title, "seller_id": self.seller_id, "price": price,
                "currency_id": "BRL", "status": "active",
                "permalink": f"https://produto.mercadolivre.com.br/{item_id[:3]}-{item_id[3:]}-{slug}-_JM",
                "secure_thumbnail": f"https://http2.mlstatic.com/D_{item_id}-I.jpg"}
        with self.lock:
            self.items[item_id] = item
        return item

    # ---- questions ----------------------------------------------------------------------------------

    def add_question(self, question_id: int | None = None, *, item_id: str, buyer_id: int, text: str,
                     status: str = "UNANSWERED", date_created: str | None = None) -> dict:
        """A buyer's question on one of the seller's items; ids and dates increase."""
        with self.lock:
            if question_id is None:
                question_id = self._next_question_id
            self._next_question_id = max(self._next_question_id, int(question_id)) + 1
            question = {"id": int(question_id), "seller_id": self.seller_id, "item_id": item_id,
                        "status": status, "text": text,
                        "date_created": date_created or _iso(self._next_moment(), BRT),
                        "from": {"id": int(buyer_id)}, "answer": None}
            self.questions[int(question_id)] = question
        return question

    def answer_elsewhere(self, question_id: int, text: str) -> None:
        """The seller answered on the Mercado Livre site: not through the API."""
        with self.lock:
            self._set_answer(self.questions[int(question_id)], text)

    def set_question_status(self, question_id: int, status: str) -> None:
        with self.lock:
            self.questions[int(question_id)]["status"] = status

    def _set_answer(self, question: dict, text: str) -> None:
        question["answer"] = {"text": text, "status": "ACTIVE", "date_created": _iso(self._next_moment(), BRT)}
        question["status"] = "ANSWERED"

    def search_questions(self, args: dict) -> Response:
        try:
            offset = int(args.get("offset", 0))
            limit = int(args.get("limit", MAX_SEARCH_LIMIT))
        except ValueError:
            return json_error(self, 400, "offset and limit must be numbers", "bad_request")
        if limit > MAX_SEARCH_LIMIT or limit < 1 or offset < 0:
            return json_error(self, 400, f"limit must be between 1 and {MAX_SEARCH_LIMIT}", "bad_request")
        with self.lock:
            found = [q for q in self.questions.values()
                     if str(q["seller_id"]) == args.get("seller_id", str(g.user_id))
                     and (not args.get("status") or q["status"] == args["status"])]
            descending = args.get("sort_types", "ASC").upper() == "DESC"
            found.sort(key=lambda q: (q["date_created"], q["id"]), reverse=descending)
            page = [dict(q) for q in found[offset:offset + limit]]
        return jsonify({"total": len(found), "limit": limit, "questions": page})

    def post_answer(self, body: dict) -> Response:
        try:
            question_id = int(body.get("question_id"))
        except (TypeError, ValueError):
            return json_error(self, 400, "question_id is required", "bad_request")
        text = body.get("text")
        with self.lock:
            question = self.questions.get(question_id)
            if question is None:
                return json_error(self, 404, f"Question {question_id} not found", "not_found")
            if question["status"] != "UNANSWERED":
                return json_error(self, 400, "Question is not unanswered", "not_unanswered_question")
            if not isinstance(text, str) or not text.strip():
                return json_error(self, 400, "text is required", "bad_request")
            if len(text) > MAX_ANSWER_CHARS:
                return json_error(self, 400, f"text must be at most {MAX_ANSWER_CHARS} characters", "bad_request")
            self._set_answer(question, text)
            self.answers_posted.append((question_id, text))
            return jsonify(question)

    # ---- orders, packs and post-sale threads -----------------------------------------------------------

    def add_order(self, order_id: int, buyer_id: int, buyer_nickname: str,
                  items: list[tuple[str, str, int, float]], pack_id: int | None = None) -> dict:
        """A paid order; with pack_id it joins that pack (created when new)."""
        order = {"id": int(order_id), "pack_id": int(pack_id) if pack_id else None, "status": "paid",
                 "buyer": {"id": int(buyer_id), "nickname": buyer_nickname},
                 "order_items": [{"item": {"id": i, "title": t}, "quantity": q, "unit_price": p}
                                 for i, t, q, p in items],
                 "total_amount": round(sum(q * p for _i, _t, q, p in items), 2), "currency_id": "BRL",
                 "seller": {"id": self.seller_id}}
        order["date_created"] = order["date_last_updated"] = _iso(self._real_moment(), BRT)
        with self.lock:
            self.users.setdefault(int(buyer_id), {"id": int(buyer_id), "nickname": buyer_nickname, "site_id": "MLB"})
            self.orders[int(order_id)] = order
            if pack_id:
                pack = self.packs.setdefault(int(pack_id), {"id": int(pack_id), "orders": [],
                                                             "buyer": {"id": int(buyer_id)}})
                pack["orders"].append({"id": int(order_id)})
        return order

    def touch_order(self, order_id: int) -> None:
        """Something changed on the sale (payment, shipping): its date_last_updated moves."""
        with self.lock:
            self.orders[int(order_id)]["date_last_updated"] = _iso(self._real_moment(), BRT)

    def search_orders(self, args: dict) -> Response:
        """GET /orders/search: seller, order.date_last_updated.from/.to, sort date_asc|date_desc, paging."""
        try:
            offset, limit = int(args.get("offset", 0)), int(args.get("limit", 50))
        except ValueError:
            return json_error(self, 400, "offset and limit must be numbers", "bad_request")
        if limit < 1 or limit > 51 or offset < 0:
            return json_error(self, 400, "limit must be between 1 and 51", "bad_request")
        if args.get("seller") != str(g.user_id):
            return json_error(self, 403, "caller is not the seller", "forbidden")
        bounds = {}
        for side in ("from", "to"):
            value = args.get(f"order.date_last_updated.{side}")
            if value:
                try:
                    bounds[side] = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    return json_error(self, 400, f"invalid date {value}", "bad_request")
        with self.lock:
            found = [o for o in self.orders.values()
                     if ("from" not in bounds or datetime.fromisoformat(o["date_last_updated"]) >= bounds["from"])
                     and ("to" not in bounds or datetime.fromisoformat(o["date_last_updated"]) <= bounds["to"])]
            found.sort(key=lambda o: (o["date_created"], o["id"]), reverse=args.get("sort") == "date_desc")
            page = [dict(o) for o in found[offset:offset + limit]]
        return jsonify({"query": "", "results": page, "sort": {"id": args.get("sort", "date_asc")},
                        "paging": {"total": len(found), "offset": offset, "limit": limit}})

    def _thread(self, pack_id: Any) -> dict | None:
        """The thread of a pack, or of an order without pack; None when neither exists."""
        key = str(pack_id)
        with self.lock:
            if key in self.threads:
                return self.threads[key]
            if not key.isdigit():
                return None
            pack, order = self.packs.get(int(key)), self.orders.get(int(key))
            if pack:
                buyer_id, resource = pack["buyer"]["id"], "packs"
            elif order and not order["pack_id"]:
                buyer_id, resource = order["buyer"]["id"], "orders"
            else:
                return None
            thread = {"key": key, "resource": resource, "buyer_id": buyer_id, "messages": [],
                      "blocked": False, "substatus": None, "migrated": False}
            self.threads[key] = thread
            return thread

    def _existing_thread(self, pack_id: Any) -> dict:
        thread = self._thread(pack_id)
        if thread is None:
            raise KeyError(f"no order or pack {pack_id!r}: call add_order first")
        return thread

    def _store_file(self, owner_id: int, filename: str, content: bytes, content_type: str) -> dict:
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
        stored = f"{owner_id}_{uuid.uuid4()}.{ext}"
        with self.lock:
            self.files[stored] = {"content": content, "content_type": content_type, "original_filename": filename}
        return {"filename": stored, "original_filename": filename, "type": content_type, "size": len(content)}

    def _new_message(self, thread: dict, from_id: int, to_id: int, text: str, attachments: list[dict]) -> dict:
        created = _iso(self._real_moment())
        message = {"id": uuid.uuid4().hex, "from": {"user_id": from_id}, "to": {"user_id": to_id}, "text": text,
                   "status": "available",
                   "message_date": {"created": created, "received": created, "read": None},
                   "message_moderation": {"status": "clean", "reason": None, "source": None},
                   "message_attachments": attachments,
                   "message_resources": [{"id": thread["key"], "name": thread["resource"]}]}
        with self.lock:
            message[OLD_SHAPE] = self._old_shape_due()
            thread["messages"].append(message)
            self.messages[message["id"]] = message
        return message

    def _old_shape_due(self) -> bool:
        """Whether the message being made is answered in the older text shape (under the lock)."""
        self._texts_made += 1
        return bool(self.old_text_every) and self._texts_made % self.old_text_every == 0

    def add_buyer_message(self, pack_id: Any, text: str, attachments: list[tuple[str, bytes, str]] | None = None,
                          migrated: bool = False) -> dict:
        """The buyer wrote; in a migrated thread the message comes from Mercado Livre's agent."""
        thread = self._existing_thread(pack_id)
        if migrated:
            thread["migrated"] = True
        sender = AGENT_ID if thread["migrated"] else thread["buyer_id"]
        files = [self._store_file(thread["buyer_id"], *a) for a in attachments or []]
        return self._new_message(thread, sender, self.seller_id, text, files)

    def add_seller_message(self, pack_id: Any, text: str) -> dict:
        """The seller wrote on the Mercado Livre site (not through the API)."""
        thread = self._existing_thread(pack_id)
        return self._new_message(thread, self.seller_id, self._seller_recipient(thread), text, [])

    def read_elsewhere(self, pack_id: Any) -> None:
        """The seller opened the thread on Mercado Livre's site: every buyer message is read now."""
        thread = self._existing_thread(pack_id)
        with self.lock:
            for message in self._unread(thread):
                message["message_date"]["read"] = _iso(datetime.now(timezone.utc))

    def set_migrated(self, pack_id: Any, migrated: bool = True) -> None:
        self._existing_thread(pack_id)["migrated"] = migrated

    def block_thread(self, pack_id: Any, substatus: str | None = "blocked_by_mediation") -> None:
        thread = self._existing_thread(pack_id)
        with self.lock:
            thread["blocked"], thread["substatus"] = True, substatus

    def moderate(self, message_id: str, reason: str = "PERSONAL_DATA") -> None:
        """Moderation rejected a message after it was accepted (links, phones, e-mails...)."""
        with self.lock:
            message = self.messages[message_id]
            message["status"] = "rejected"
            message["message_moderation"] = {"status": "rejected", "reason": reason, "source": "online"}

    def _seller_recipient(self, thread: dict) -> int:
        return AGENT_ID if thread["migrated"] else thread["buyer_id"]

    def _unread(self, thread: dict) -> list[dict]:
        return [m for m in thread["messages"]
                if m["from"]["user_id"] != self.seller_id and m["message_date"]["read"] is None]

    def unread_results(self) -> list[dict]:
        with self.lock:
            return [{"resource": f"/packs/{t['key']}/sellers/{self.seller_id}", "count": len(self._unread(t))}
                    for t in self.threads.values() if self._unread(t)]

    def thread_page(self, thread: dict, args: dict) -> dict:
        limit, offset = _int_arg(args, "limit", 10), _int_arg(args, "offset", 0)
        mark = args.get("mark_as_read", "true").lower() != "false"
        hook = self.before_mark_read
        if mark and hook:
            hook(thread["key"])
        with self.lock:
            # Chronological (oldest first) here; the real API's order is not documented,
            # so the bridge must sort by message_date itself rather than rely on this.
            page = thread["messages"][offset:offset + limit]
            if mark:
                self._mark_read(thread, page)
            else:
                # What the bridge could have seen before marking (the soak tells a message the
                # bridge saw and did not store from one the marking read itself revealed).
                # Only an answer the client receives shows it anything (a timed-out read does not).
                if not (has_request_context() and g.get("answer_lost")):
                    peeked = thread.setdefault("peeked", {})
                    for m in page:
                        peeked.setdefault(m["id"], time.monotonic())
            status = "blocked" if thread["blocked"] else "active"
            return {"paging": {"limit": limit, "offset": offset, "total": len(thread["messages"])},
                    "conversation_status": {"status": status, "substatus": thread["substatus"]},
                    "messages": [answered(m) for m in page], "seller_max_message_length": MAX_MESSAGE_CHARS}

    def _mark_read(self, thread: dict, page: list[dict]) -> None:
        now = _iso(datetime.now(timezone.utc))
        read = [m for m in page if m["from"]["user_id"] != self.seller_id and m["message_date"]["read"] is None]
        for message in read:
            message["message_date"]["read"] = now
        if read:
            self.mark_read_events.append((thread["key"], [m["id"] for m in read], time.monotonic()))
            if self.on_mark_read:
                # Seen = shown before this marking request arrived. A request held by the server
                # (chaos "delay") marks when it is finally applied; what the bridge read in the
                # meantime it could not have mirrored before asking to mark.
                arrived = g.get("t0") if has_request_context() else None
                peeked = thread.get("peeked", {})
                seen = [m["id"] for m in read if m["id"] in peeked and (arrived is None or peeked[m["id"]] < arrived)]
                self.on_mark_read(thread["key"], [m["id"] for m in read], seen)

    def send_message(self, thread: dict, body: dict) -> Response:
        text = body.get("text") or ""
        attachment_ids = body.get("attachments") or []
        if thread["blocked"]:
            return json_error(self, 403, "The conversation is blocked", "blocked_conversation_send_message_forbidden")
        if _user_id(body.get("from")) != self.seller_id:
            return json_error(self, 400, "from.user_id must be the seller", "bad_request")
        if _user_id(body.get("to")) != self._seller_recipient(thread):
            return json_error(self, 400, "to.user_id is not the other party of this conversation", "bad_request")
        if not text and not attachment_ids:
            return json_error(self, 400, "text is required", "bad_request")
        if len(text) > MAX_MESSAGE_CHARS:
            return json_error(self, 400, "message length exceeded", "bad_request")
        # The real API also lets a short list of emoji through; the fake rejects every
        # non-Latin-1 character, so the bridge must clean text before sending.
        bad = sorted({c for c in text if ord(c) > 255})
        if bad:
            codes = ", ".join(f"U+{ord(c):04X}" for c in bad)
            return json_error(self, 400, f"invalid characters: {codes}", "invalid_characters")
        with self.lock:
            uploads = {u["id"]: u for u in self.uploads}
            unknown = [a for a in attachment_ids if a not in uploads]
            if unknown:
                return json_error(self, 422, f"unknown attachment {unknown[0]}", "invalid_attachment")
            files = [{"filename": a, "original_filename": uploads[a]["filename"], "type": uploads[a]["content_type"],
                      "size": uploads[a]["size"]} for a in attachment_ids]
            message = self._new_message(thread, self.seller_id, self._seller_recipient(thread), text, files)
            # How long the server held it before applying it: a send applied later than the bridge
            # assumes a held request can be (its settle) explains a send made twice.
            held = time.monotonic() - g.t0 if has_request_context() and "t0" in g else 0.0
            self.sent_messages.append(dict(body, pack_id=thread["key"], message_id=message["id"], held=held))
        resp = jsonify(answered(message))
        resp.status_code = 201
        return resp

    def _checked_upload(self, file: Any) -> tuple[Response | None, str, bytes, str]:
        """The rules both upload routes apply: (refusal or None, name, content, extension)."""
        if file is None:
            return json_error(self, 400, "multipart field 'file' is required", "bad_request"), "", b"", ""
        content = file.read()
        name = file.filename or ""
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if ext not in UPLOAD_TYPES:
            return (json_error(self, 400, "file type not allowed (jpg, png, pdf, txt)", "invalid_file_type"),
                    name, content, ext)
        if len(content) > MAX_UPLOAD_BYTES:
            return json_error(self, 400, "file larger than 25 MB", "file_too_large"), name, content, ext
        return None, name, content, ext

    def upload(self, file: Any) -> Response:
        refused, name, content, ext = self._checked_upload(file)
        if refused is not None:
            return refused
        stored = self._store_file(self.seller_id, name, content, UPLOAD_TYPES[ext])
        entry = {"id": stored["filename"], "filename": name, "content_type": UPLOAD_TYPES[ext],
                 "size": len(content), "t": time.monotonic()}
        with self.lock:
            self.uploads.append(entry)
        return jsonify({"id": entry["id"]})

    # ---- claims (reclamações) ---------------------------------------------------------------------------

    def add_claim(self, claim_id: int, order_id: int, *, reason_id: str = "PDD9939", claim_type: str = "mediations",
                  due_in_hours: float = 72.0) -> dict:
        """The buyer of `order_id` opened a claim: stage `claim`, the seller may write to the buyer."""
        with self.lock:
            buyer_id = self.orders[int(order_id)]["buyer"]["id"]
        return self._add_claim(claim_id, order_id, buyer_id, self.seller_id, reason_id, claim_type, due_in_hours)

    def add_purchase_claim(self, claim_id: int, order_id: int, other_seller_id: int = 9000001) -> dict:
        """The seller's account opened a claim on something it bought: it is the complainant, another
        seller the respondent (no order of the seller's own)."""
        return self._add_claim(claim_id, order_id, self.seller_id, other_seller_id, "PNR9501", "mediations", 72.0)

    def _add_claim(self, claim_id: int, order_id: int, complainant_id: int, respondent_id: int, reason_id: str,
                   claim_type: str, due_in_hours: float) -> dict:
        now = self._real_moment()
        with self.lock:
            claim = {"id": int(claim_id), "resource": "order", "resource_id": int(order_id), "type": claim_type,
                     "stage": "claim", "status": "opened", "reason_id": reason_id, "parent_id": None,
                     "date_created": _iso(now), "last_updated": _iso(now), "resolution": None,
                     "site_id": "MLB", "players": [
                         {"role": "complainant", "type": "buyer", "user_id": complainant_id,
                          "available_actions": []},
                         {"role": "respondent", "type": "seller", "user_id": respondent_id,
                          "available_actions": [
                              {"action": "send_message_to_complainant", "due_date": _iso(now + timedelta(
                                  hours=due_in_hours)), "mandatory": True},
                              {"action": "refund", "due_date": None, "mandatory": False}]}]}
            self.claims[int(claim_id)] = claim
            self.claim_messages[int(claim_id)] = []
        return claim

    def _touch_claim(self, claim: dict) -> None:
        claim["last_updated"] = _iso(self._real_moment())

    def _respondent(self, claim: dict) -> dict:
        return next(p for p in claim["players"] if p["role"] == "respondent")

    def add_claim_message(self, claim_id: int, sender_role: str, text: str,
                          attachments: list[tuple[str, bytes, str]] | None = None) -> dict:
        """The buyer (`complainant`) or Mercado Livre's mediator (`mediator`) wrote in the claim."""
        with self.lock:
            claim = self.claims[int(claim_id)]
            owner = self.seller_id if sender_role == "respondent" else claim["players"][0]["user_id"]
            files = [self._store_claim_file(claim_id, owner, *a) for a in attachments or []]
            receiver = "respondent" if sender_role != "respondent" else "complainant"
            return self._new_claim_message(claim, sender_role, receiver, text, files)

    def _new_claim_message(self, claim: dict, sender_role: str, receiver_role: str, text: str,
                           files: list[dict]) -> dict:
        created = _iso(self._real_moment())
        message = {"sender_role": sender_role, "receiver_role": receiver_role, "message": text,
                   "translated_message": None, "date_created": created, "message_date": created,
                   "date_read": None, "attachments": files, "status": "available",
                   "moderation": {"status": "clean", "reason": None, "source": None, "date_moderated": None}}
        with self.lock:
            message[OLD_SHAPE] = self._old_shape_due()
            self.claim_messages[claim["id"]].append(message)
            self._touch_claim(claim)
        return message

    def _store_claim_file(self, claim_id: Any, owner_id: int, filename: str, content: bytes,
                          content_type: str) -> dict:
        stored = self._store_file(owner_id, filename, content, content_type)
        with self.lock:
            self.files[stored["filename"]]["claim_id"] = int(claim_id)
        created = _iso(self._real_moment())
        return {"filename": stored["filename"], "original_filename": filename, "size": stored["size"],
                "type": content_type, "date_created": created}

    def open_dispute(self, claim_id: int, due_in_hours: float = 48.0) -> None:
        """Mercado Livre's mediator joins: the seller may now write to the mediator (and no longer to the buyer)."""
        with self.lock:
            claim = self.claims[int(claim_id)]
            claim["stage"] = "dispute"
            due = _iso(self._real_moment() + timedelta(hours=due_in_hours))
            claim["players"].append({"role": "mediator", "type": "internal", "user_id": 1000000001,
                                     "available_actions": []})
            self._respondent(claim)["available_actions"] = [
                {"action": "send_message_to_mediator", "due_date": due, "mandatory": True}]
            self._touch_claim(claim)

    def set_claim_due(self, claim_id: int, hours_from_now: float) -> None:
        """The seller's mandatory action is now due in `hours_from_now`."""
        with self.lock:
            claim = self.claims[int(claim_id)]
            due = _iso(datetime.now(timezone.utc) + timedelta(hours=hours_from_now))
            for action in self._respondent(claim)["available_actions"]:
                if action.get("mandatory"):
                    action["due_date"] = due
            self._touch_claim(claim)

    def close_claim(self, claim_id: int, reason: str = "payment_refunded", benefited: str = "complainant") -> None:
        with self.lock:
            claim = self.claims[int(claim_id)]
            claim["status"] = "closed"
            claim["resolution"] = {"reason": reason, "date_created": _iso(self._real_moment()),
                                   "benefited": [benefited], "closed_by": "mediator"}
            for player in claim["players"]:
                player["available_actions"] = []
            self._touch_claim(claim)

    def moderate_claim_message(self, claim_id: int, index: int, reason: str = "PERSONAL_DATA") -> None:
        with self.lock:
            message = self.claim_messages[int(claim_id)][index]
            message["status"] = "rejected"
            message["moderation"] = {"status": "rejected", "reason": reason, "source": "online",
                                     "date_moderated": _iso(self._real_moment())}
            self._touch_claim(self.claims[int(claim_id)])

    def search_claims(self, args: dict) -> Response:
        try:
            offset, limit = int(args.get("offset", 0)), int(args.get("limit", 30))
        except ValueError:
            return json_error(self, 400, "offset and limit must be numbers", "bad_request")
        if limit < 1 or limit > 100 or offset < 0:
            return json_error(self, 400, "limit must be between 1 and 100", "bad_request")
        role, player = args.get("players.role"), args.get("players.user_id")
        if (role is None) != (player is None):
            return json_error(self, 400, "players.role and players.user_id must be given together", "bad_request")
        with self.lock:
            # Without the players filter, every claim the caller plays any role in (its own purchases too).
            found = [c for c in self.claims.values()
                     if all(str(c.get(k)) == args[k] for k in ("status", "stage", "resource_id") if k in args)
                     and any(p["user_id"] == g.user_id for p in c["players"])
                     and (role is None or any(p["role"] == role and str(p["user_id"]) == player
                                              for p in c["players"]))]
            found.sort(key=lambda c: c["id"])
            page = [dict(c) for c in found[offset:offset + limit]]
        return jsonify({"paging": {"offset": offset, "limit": limit, "total": len(found)}, "data": page})

    def send_claim_message(self, claim: dict, body: dict) -> Response:
        receiver = body.get("receiver_role")
        text = body.get("message") or ""
        attachments = body.get("attachments") or []
        if claim["status"] != "opened":
            return json_error(self, 400, "The claim is closed", "claim_closed")
        if receiver not in ("complainant", "mediator"):
            return json_error(self, 400, "receiver_role must be complainant or mediator", "bad_request")
        allowed = {a["action"] for a in self._respondent(claim)["available_actions"]}
        if f"send_message_to_{receiver}" not in allowed or (receiver == "mediator" and claim["stage"] != "dispute"):
            return json_error(self, 403, f"The respondent cannot send messages to the {receiver} now",
                              "receiver_not_allowed")
        if not text.strip():
            return json_error(self, 400, "message is required", "bad_request")
        bad = sorted({c for c in text if ord(c) > 255})
        if bad:
            return json_error(self, 400, "invalid characters", "invalid_characters")
        with self.lock:
            known = {f: info for f, info in self.files.items() if info.get("claim_id") == claim["id"]}
            unknown = [a for a in attachments if a not in known]
            if unknown:
                return json_error(self, 422, f"unknown attachment {unknown[0]}", "invalid_attachment")
            files = [{"filename": a, "original_filename": known[a]["original_filename"],
                      "size": len(known[a]["content"]), "type": known[a]["content_type"],
                      "date_created": _iso(self._real_moment())} for a in attachments]
            message = self._new_claim_message(claim, "respondent", receiver, text, files)
            self.claim_sent.append(dict(body, claim_id=claim["id"]))
            # Writing meets the seller's pending "send a message" action.
            for action in self._respondent(claim)["available_actions"]:
                if action["action"] == f"send_message_to_{receiver}":
                    action["due_date"] = None
        # The real answer's body is not documented; the bridge must not rely on it.
        return jsonify({"status": "ok", "date_created": message["date_created"]})

    def upload_claim_file(self, claim: dict, file: Any) -> Response:
        refused, name, content, ext = self._checked_upload(file)
        if refused is not None:
            return refused
        stored = self._store_claim_file(claim["id"], self.seller_id, name, content, UPLOAD_TYPES[ext])
        with self.lock:
            self.claim_uploads.append(stored)
        return jsonify({"filename": stored["filename"]})

    # ---- notifications ---------------------------------------------------------------------------------

    def notification(self, topic: str, resource: str) -> dict:
        """A notification body as Mercado Livre would POST it to the app's callback URL."""
        now = _iso(datetime.now(timezone.utc))
        return {"_id": uuid.uuid4().hex, "resource": resource, "user_id": self.seller_id, "topic": topic,
                "application_id": self.app_id, "attempts": 1, "sent": now, "received": now}


def answered(message: dict) -> dict:
    """A stored post-sale or claim message as the API answers it: its text in the older
    {"plain": ...} shape when it was made so (the builders return the stored dicts, text a string)."""
    shown = {k: v for k, v in message.items() if k != OLD_SHAPE}
    if message.get(OLD_SHAPE):
        field = "message" if "sender_role" in message else "text"
        shown[field] = {"plain": message[field]}
    return shown


def in_old_shape(message: dict) -> dict:
    """A post-sale or claim message as an older answer gives it: its text as {"plain": ...}."""
    return answered(dict(message, **{OLD_SHAPE: True}))


def _int_arg(args: dict, name: str, default: int) -> int:
    try:
        return max(0, int(args.get(name, default)))
    except ValueError:
        return default


def _user_id(party: Any) -> int | None:
    try:
        return int(party["user_id"])
    except (TypeError, KeyError, ValueError):
        return None


def create_meli_app(state: MeliState) -> Flask:
    app = Flask("fake_meli")
    install_controls(app, state)

    def not_found(what: str) -> Response:
        return json_error(state, 404, f"{what} not found", "not_found")

    def seller_only(seller_id: str) -> Response | None:
        if str(seller_id) != str(g.user_id):
            return json_error(state, 403, "caller is not the seller of this resource", "forbidden")
        return None

    @app.post("/oauth/token")
    def oauth_token():
        return state.token_endpoint(request.form.to_dict())

    @app.get("/authorization")
    def authorization():
        # The link `authorize` prints, opened logged in as the seller who approves at once: back to
        # the redirect URI with a code and the state, as Mercado Livre's consent page does.
        args = request.args
        if args.get("response_type") != "code" or str(args.get("client_id")) != str(state.app_id) \
                or not args.get("redirect_uri"):
            return json_error(state, 400, "invalid authorization request", "invalid_request")
        code = state.issue_code(redirect_uri=args["redirect_uri"], code_challenge=args.get("code_challenge"))
        query = urlencode({"code": code, **({"state": args["state"]} if args.get("state") else {})})
        return redirect(f"{args['redirect_uri']}?{query}")

    @app.get("/users/me")
    def users_me():
        # A token issued for a user the test never added still answers, with a made-up nickname.
        fallback = {"id": g.user_id, "nickname": f"USER{g.user_id}", "site_id": "MLB"}
        return jsonify(state.users.get(g.user_id) or fallback)

    @app.get("/users/<int:user_id>")
    def user(user_id: int):
        found = state.users.get(user_id)
        return jsonify(found) if found else not_found(f"user {user_id}")

    @app.get("/items/<item_id>")
    def item(item_id: str):
        found = state.items.get(item_id)
        return jsonify(found) if found else not_found(f"Item with id {item_id}")

    @app.get("/items")
    def items_multiget():
        ids = [i for i in request.args.get("ids", "").split(",") if i]
        if not ids or len(ids) > MAX_MULTIGET:
            return json_error(state, 400, f"ids: between 1 and {MAX_MULTIGET} item ids", "bad_request")
        return jsonify([{"code": 200, "body": state.items[i]} if i in state.items
                        else {"code": 404, "body": state.error_body(404, f"Item with id {i} not found", "not_found")}
                        for i in ids])

    @app.get("/questions/search")
    def questions_search():
        return state.search_questions(request.args.to_dict())

    @app.get("/questions/<int:question_id>")
    def question(question_id: int):
        found = state.questions.get(question_id)
        return jsonify(found) if found else not_found(f"Question {question_id}")

    @app.post("/answers")
    def answers():
        return state.post_answer(request.get_json(silent=True) or {})

    @app.get("/orders/search")
    def orders_search():
        return state.search_orders(request.args.to_dict())

    @app.get("/orders/<int:order_id>")
    def order(order_id: int):
        found = state.orders.get(order_id)
        return jsonify(found) if found else not_found(f"order {order_id}")

    @app.get("/packs/<int:pack_id>")
    def pack(pack_id: int):
        found = state.packs.get(pack_id)  # an order id is not a pack id, even when used as one for messages
        return jsonify(found) if found else not_found(f"pack {pack_id}")

    @app.get("/messages/unread")
    def unread():
        return jsonify({"results": state.unread_results()})

    @app.get("/messages/unread/packs/<pack_id>/sellers/<seller_id>")
    def unread_thread(pack_id: str, seller_id: str):
        thread = state._thread(pack_id)
        if thread is None:
            return not_found(f"pack {pack_id}")
        with state.lock:
            count = len(state._unread(thread))
        return jsonify({"results": [{"resource": f"/packs/{pack_id}/sellers/{seller_id}", "count": count}]})

    @app.get("/messages/packs/<pack_id>/sellers/<seller_id>")
    def thread_messages(pack_id: str, seller_id: str):
        thread = state._thread(pack_id)
        if thread is None:
            return not_found(f"pack {pack_id}")
        return seller_only(seller_id) or jsonify(state.thread_page(thread, request.args.to_dict()))

    @app.post("/messages/packs/<pack_id>/sellers/<seller_id>")
    def send(pack_id: str, seller_id: str):
        thread = state._thread(pack_id)
        if thread is None:
            return not_found(f"pack {pack_id}")
        return seller_only(seller_id) or state.send_message(thread, request.get_json(silent=True) or {})

    @app.post("/messages/attachments")
    def upload():
        return state.upload(request.files.get("file"))

    @app.get("/messages/attachments/<filename>")
    def download(filename: str):
        found = state.files.get(filename)
        if not found:
            return not_found(f"attachment {filename}")
        return Response(found["content"], mimetype=found["content_type"])

    @app.get("/messages/<message_id>")
    def message(message_id: str):
        found = state.messages.get(message_id)
        return jsonify(answered(found)) if found else not_found(f"message {message_id}")

    @app.get("/post-purchase/v1/claims/search")
    def claims_search():
        return state.search_claims(request.args.to_dict())

    def claim_or_404(claim_id: int) -> dict | None:
        found = state.claims.get(claim_id)
        if found and any(p["user_id"] == g.user_id for p in found["players"]):
            return found
        return None

    @app.get("/post-purchase/v1/claims/<int:claim_id>")
    def claim(claim_id: int):
        found = claim_or_404(claim_id)
        return jsonify(found) if found else not_found(f"claim {claim_id}")

    @app.get("/post-purchase/v1/claims/<int:claim_id>/messages")
    def claim_messages(claim_id: int):
        if not claim_or_404(claim_id):
            return not_found(f"claim {claim_id}")
        with state.lock:
            return jsonify([answered(m) for m in state.claim_messages[claim_id]])

    @app.post("/post-purchase/v1/claims/<int:claim_id>/actions/send-message")
    def claim_send(claim_id: int):
        found = claim_or_404(claim_id)
        if not found:
            return not_found(f"claim {claim_id}")
        return state.send_claim_message(found, request.get_json(silent=True) or {})

    @app.post("/post-purchase/v1/claims/<int:claim_id>/attachments")
    def claim_upload(claim_id: int):
        found = claim_or_404(claim_id)
        if not found:
            return not_found(f"claim {claim_id}")
        return state.upload_claim_file(found, request.files.get("file"))

    @app.get("/post-purchase/v1/claims/<int:claim_id>/attachments/<filename>/download")
    def claim_download(claim_id: int, filename: str):
        found = state.files.get(filename)
        if not claim_or_404(claim_id) or not found or found.get("claim_id") != claim_id:
            return not_found(f"attachment {filename}")
        return Response(found["content"], mimetype=found["content_type"])

    @app.get("/post-purchase/v1/claims/reasons/<reason_id>")
    def claim_reason(reason_id: str):
        found = CLAIM_REASONS.get(reason_id)
        if not found:
            return not_found(f"reason {reason_id}")
        flow, name, detail = found
        return jsonify({"id": reason_id, "flow": flow, "name": name, "detail": detail, "settings": {},
                        "status": "active"})

    @app.get("/post-purchase/v1/claims/<int:claim_id>/affects-reputation")
    def claim_affects_reputation(claim_id: int):
        found = claim_or_404(claim_id)
        if not found:
            return not_found(f"claim {claim_id}")
        affected = "affected" if found["stage"] == "dispute" else "not_affected"
        return jsonify({"affects_reputation": affected, "has_incentive": False, "due_date": None})

    @app.get("/missed_feeds")
    def missed_feeds():
        if request.args.get("app_id") != str(state.app_id):
            return json_error(state, 403, "app_id does not match the token's application", "forbidden")
        with state.lock:
            return jsonify({"messages": list(state.missed)})

    return app
