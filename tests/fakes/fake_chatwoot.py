"""A fake Chatwoot (v4.12+ behaviour, see /work/shared/api-facts.md).

The traps it reproduces: API responses and webhooks have different shapes (integer vs
string message_type, unix vs ISO dates, `attachments` only when there are files); EVERY
created message is echoed as a `message_created` webhook, the bridge's own included,
after the HTTP response, signed with HMAC-SHA256, from one worker, with a 5 s timeout
and no retry; a failed API-inbox webhook marks the message failed; `data_url` redirects
to storage; contact identifiers are unique; a flood guard answers 429.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import re
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote, unquote

import requests
from flask import Flask, Response, jsonify, redirect, request

from .control import Controls, install_controls, json_error, reason

MESSAGE_TYPES = {"incoming": 0, "outgoing": 1, "activity": 2, "template": 3}
TYPE_NAMES = {v: k for k, v in MESSAGE_TYPES.items()}
STATUSES = ("open", "resolved", "pending", "snoozed")
DISPLAY_TYPES = ("text", "number", "currency", "percent", "link", "date", "list", "checkbox")
ATTRIBUTE_MODELS = ("conversation_attribute", "contact_attribute")
FILTER_PAGE_SIZE = 25  # Chatwoot's conversations per page
PRIORITIES = ("urgent", "high", "medium", "low", None)  # Chatwoot 3.x and later
MESSAGE_STATUSES = ("sent", "delivered", "read", "failed")
MAX_CONTENT = 150_000
MAX_FILES = 15
FLOOD_LIMIT = 200  # messages per conversation per minute
WEBHOOK_TIMEOUT = 5.0  # Chatwoot's WEBHOOK_TIMEOUT
PAGE = 20
# Kept on the stored message for tests; not part of Chatwoot's JSON.
INTERNAL_MESSAGE_KEYS = ("t_created", "created_at_exact", "external_error", "attachments")
ACCOUNT_PATH = re.compile(r"^/api/v1/accounts/([^/]+)(/|$)")


def _iso_ms(unix: float) -> str:
    moment = datetime.fromtimestamp(unix, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rails_json(obj: Any) -> bytes:
    """JSON the way Rails writes it: compact, raw UTF-8, but <, > and & escaped as \\u00XX.

    Receivers must verify the signature over these exact bytes, not over a re-serialisation.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def sign(secret: str, timestamp: str, raw: bytes) -> str:
    """The X-Chatwoot-Signature value for a body (also handy for tests)."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()


class FloodError(Exception):
    """More than FLOOD_LIMIT messages in one conversation within a minute."""


class _NotFound(Exception):
    """Raised by route helpers; answered as Chatwoot's JSON 404."""


class ChatwootState(Controls):
    def __init__(self, account_id: int = 1, api_token: str = "cw-token-abc", account_name: str = "Loja"):
        super().__init__()
        self.account_id = account_id
        self.api_token = api_token
        self.account_name = account_name
        # The token's user. Same person as the UI agent on purpose: a message the bridge
        # creates through the API looks exactly like one Ana typed (only source_id tells).
        self.token_user = {"id": 1, "name": "Ana", "email": "ana@loja.test", "type": "user"}
        self.agent = dict(self.token_user)
        self.bot = {"id": 7, "name": "Robô", "type": "agent_bot"}
        self.base_url = ""  # this server's URL; set by start_fakes() or the first request
        self.storage_base: str | None = None  # where data_url redirects to (None: this server)
        self.inboxes: dict[int, dict] = {}
        self.contacts: dict[int, dict] = {}
        self.contact_inboxes: list[dict] = []
        self.conversations: dict[int, dict] = {}
        self.messages: dict[int, dict] = {}
        # Messages of deleted conversations (with "deleted_at", monotonic), kept for the tests' checks.
        self.deleted_messages: dict[int, dict] = {}
        self.blobs: dict[str, dict] = {}
        self.webhooks: list[dict] = []
        self.webhook_deliveries: list[dict] = []
        # False: a Chatwoot before 4.13, whose API inboxes have no secret (not shown, deliveries unsigned).
        self.signs_inbox_webhooks = True
        # What the fake Mercado Livre received, for the /sandbox page (sandbox.py sets it).
        self.sandbox_meli: Callable[[], dict] | None = None
        self._ids = {"inbox": 0, "contact": 1000, "conversation": 0, "message": 9000, "webhook": 0,
                     "attachment": 500}
        # Custom attribute definitions (Settings → Custom attributes); the conversation filter needs them.
        self.attribute_definitions: list[dict] = []
        self._ids["attribute"] = 0
        self._queue: queue.Queue = queue.Queue()
        self._running = threading.Event()
        self._running.set()
        self._stopping = False
        self._idle = threading.Condition()
        self._pending = 0
        self._worker = threading.Thread(target=self._deliver_loop, name="fake-chatwoot-webhooks", daemon=True)
        self._worker.start()

    def _next(self, kind: str) -> int:
        with self.lock:
            self._ids[kind] += 1
            return self._ids[kind]

    def error_body(self, status: int, message: str | None = None, error: str | None = None) -> dict:
        return {"error": message or error or reason(status)}

    def gate(self) -> Response | None:
        if not self.base_url:
            self.base_url = request.host_url.rstrip("/")
        if not request.path.startswith("/api/v1/"):
            return None  # blob redirects and storage are signed links: no token
        if not hmac.compare_digest(request.headers.get("api_access_token", ""), self.api_token):
            return json_error(self, 401, "Invalid Access Token")
        match = ACCOUNT_PATH.match(request.path)
        if match and match.group(1) != str(self.account_id):
            return json_error(self, 404, "Resource could not be found")
        return None

    # ---- setup helpers --------------------------------------------------------------------------

    def add_inbox(self, name: str, channel_type: str = "Channel::Api", webhook_url: str = "") -> int:
        inbox_id = self._next("inbox")
        with self.lock:
            self.inboxes[inbox_id] = {"id": inbox_id, "name": name, "channel_type": channel_type,
                                      "channel_id": inbox_id, "account_id": self.account_id,
                                      "webhook_url": webhook_url, "secret": secrets.token_urlsafe(24)}
        return inbox_id

    def add_webhook(self, url: str, secret: str | None = None, subscriptions: tuple = ("message_created",),
                    name: str = "bridge") -> dict:
        """An account webhook; deliveries are signed only when it has a secret."""
        hook = {"id": self._next("webhook"), "url": url, "name": name, "subscriptions": list(subscriptions),
                "account_id": self.account_id, "secret": secret}
        with self.lock:
            self.webhooks.append(hook)
        return hook

    # ---- custom attribute definitions and the conversation filter --------------------------------

    def define_attribute(self, key: str, display_type: Any = "text", model: Any = "conversation_attribute",
                         values: list | None = None, name: str | None = None, description: str = "") -> dict:
        """A custom attribute definition, as Chatwoot stores it (its enums by name). Raises
        ValueError(message, attribute) (422) for an invalid one or a key the model already has."""
        display = _enum(display_type, DISPLAY_TYPES)
        model_name = _enum(model, ATTRIBUTE_MODELS)
        if not key or display is None or model_name is None:
            raise ValueError("attribute_key, attribute_display_type and attribute_model must be valid", "attribute_key")
        with self.lock:
            if any(d["attribute_key"] == key and d["attribute_model"] == model_name
                   for d in self.attribute_definitions):
                raise ValueError("Attribute key has already been taken", "attribute_key")
            definition = {"id": self._next("attribute"), "attribute_key": key, "attribute_display_name": name or key,
                          "attribute_display_type": display, "attribute_model": model_name,
                          "attribute_description": description, "attribute_values": list(values or []),
                          "regex_pattern": None, "regex_cue": None, "default_value": None,
                          "created_at": _iso_ms(time.time()), "updated_at": _iso_ms(time.time())}
            self.attribute_definitions.append(definition)
            return definition

    def filter_conversations(self, filters: list[dict], page: int) -> tuple[list[dict], int]:
        """(one page of the matching conversations, newest first, how many match in all).

        As Chatwoot's FilterService: a custom attribute condition counts only when the account
        defines that key for conversations; otherwise it is dropped, silently, and with every
        condition dropped every conversation matches. Values compare case-insensitively as text."""
        with self.lock:
            defined = {d["attribute_key"] for d in self.attribute_definitions
                       if d["attribute_model"] == "conversation_attribute"}

            def matching(f: dict) -> set[int] | None:
                key = f.get("attribute_key")
                if key in ("status", "inbox_id"):
                    return {c["id"] for c in self.conversations.values() if _filter_value_match(c.get(key), f)}
                if key in defined:
                    return {c["id"] for c in self.conversations.values()
                            if _filter_value_match((c.get("custom_attributes") or {}).get(key), f)}
                return None  # an undefined attribute: the condition is dropped

            found = _filtered(filters, matching)
            ids = sorted(self.conversations if found is None else found, reverse=True)
            start = (max(page, 1) - 1) * FILTER_PAGE_SIZE
            shown = ids[start:start + FILTER_PAGE_SIZE]
            return [self.conversation_json(self.conversations[i]) for i in shown], len(ids)

    # ---- views for tests --------------------------------------------------------------------------

    def message(self, message_id: int) -> dict:
        with self.lock:
            return self.messages[int(message_id)]

    def messages_in(self, conversation_id: int, include_activity: bool = False) -> list[dict]:
        """The live message dicts of a conversation, oldest first (activity messages left out)."""
        with self.lock:
            return [m for m in self.conversations[int(conversation_id)]["messages"]
                    if include_activity or m["message_type"] != MESSAGE_TYPES["activity"]]

    def find_conversation(self, **custom_attrs: Any) -> dict | None:
        """The first conversation whose custom attributes include all given (compared as strings)."""
        with self.lock:
            for conv in self.conversations.values():
                attrs = conv["custom_attributes"]
                if all(k in attrs and str(attrs[k]) == str(v) for k, v in custom_attrs.items()):
                    return conv
        return None

    # ---- simulated people -----------------------------------------------------------------------------

    def agent_reply(self, conversation_id: int, content: str | None, private: bool = False,
                    attachments: list[tuple[str, bytes, str]] | None = None, sender_type: str = "user") -> dict:
        """An agent (or agent bot) typed in the Chatwoot UI; the webhook fires as for any message."""
        sender = dict(self.bot if sender_type == "agent_bot" else self.agent)
        message, deliveries = self._create_message(conversation_id, content, MESSAGE_TYPES["outgoing"],
                                                   private=private, files=attachments or [], sender=sender)
        self._release(deliveries)
        return message

    def contact_message(self, conversation_id: int, content: str | None,
                        attachments: list[tuple[str, bytes, str]] | None = None) -> dict:
        """The contact wrote (an incoming message not created by the bridge)."""
        message, deliveries = self._create_message(conversation_id, content, MESSAGE_TYPES["incoming"],
                                                   files=attachments or [])
        self._release(deliveries)
        return message

    # ---- what agents do in the Chatwoot UI ------------------------------------------------------------

    def delete_conversation(self, conversation_id: int) -> None:
        """An administrator deleted the conversation: it and its messages are gone (API answers 404)."""
        with self.lock:
            conv = self.conversations.pop(int(conversation_id), None)
            if conv is None:
                raise LookupError(f"conversation {conversation_id} not found")
            now = time.monotonic()
            for message in conv["messages"]:
                self.messages.pop(message["id"], None)
                self.deleted_messages[message["id"]] = dict(message, deleted_at=now)

    def delete_contact(self, contact_id: int) -> None:
        """The contact is deleted with its conversations and contact_inboxes (also how an erasure is done)."""
        with self.lock:
            if int(contact_id) not in self.contacts:
                raise LookupError(f"contact {contact_id} not found")
            for conv_id in [c["id"] for c in self.conversations.values() if c["contact_id"] == int(contact_id)]:
                self.delete_conversation(conv_id)
            self.contact_inboxes = [ci for ci in self.contact_inboxes if ci["contact_id"] != int(contact_id)]
            del self.contacts[int(contact_id)]

    def merge_contacts(self, base_id: int, mergee_id: int) -> dict:
        """Chatwoot's ContactMergeAction: the base keeps its id and gains the mergee's conversations and
        contact_inboxes; attributes are merged with the base's winning (a blank base identifier takes
        the mergee's); the mergee is deleted."""
        with self.lock:
            base, mergee = self.contacts.get(int(base_id)), self.contacts.get(int(mergee_id))
            if base is None or mergee is None:
                raise LookupError("contact not found")
            if base is mergee:
                raise ValueError("contacts must be different", "mergee_contact_id")
            for conv in self.conversations.values():
                if conv["contact_id"] == mergee["id"]:
                    conv["contact_id"] = base["id"]
            for contact_inbox in self.contact_inboxes:
                if contact_inbox["contact_id"] == mergee["id"]:
                    contact_inbox["contact_id"] = base["id"]
            del self.contacts[mergee["id"]]
            for key in ("identifier", "name", "email", "phone_number"):
                if not base.get(key) and mergee.get(key):
                    base[key] = mergee[key]
            for key in ("additional_attributes", "custom_attributes"):
                base[key] = {**mergee.get(key, {}), **base.get(key, {})}
            for conv in self.conversations.values():
                if conv["contact_id"] == base["id"]:
                    conv["meta"] = self.conversation_json(conv)["meta"]
            return base

    def resolve_conversation(self, conversation_id: int) -> None:
        """An agent marked the conversation resolved."""
        with self.lock:
            self.set_status(self.conversations[int(conversation_id)], "resolved")

    # ---- the sandbox page (/sandbox) ---------------------------------------------------------------

    def sandbox_view(self) -> dict:
        """Both inboxes' conversations (newest first) and the fake Mercado Livre panel, for /sandbox."""
        with self.lock:
            inboxes = [{"id": inbox["id"], "name": inbox["name"],
                        "conversations": [self._sandbox_conversation(c) for c in reversed(self.conversations.values())
                                          if c["inbox_id"] == inbox["id"]]}
                       for inbox in self.inboxes.values()]
        return {"inboxes": inboxes, "meli": self.sandbox_meli() if self.sandbox_meli else None}

    def _sandbox_conversation(self, conv: dict) -> dict:
        attrs = conv["custom_attributes"]
        titles = attrs.get("meli_item_titles")
        if isinstance(titles, list):
            titles = ", ".join(str(t) for t in titles)
        if attrs.get("meli_question_id"):
            kind = f"Pergunta {attrs['meli_question_id']}"
        elif attrs.get("meli_claim_id"):
            kind = f"Reclamação {attrs['meli_claim_id']}"
        elif attrs.get("meli_pack_id"):
            kind = f"Venda {attrs['meli_pack_id']}"
        else:
            kind = f"Conversa {conv['id']}"
        messages = [{"id": m["id"], "type": TYPE_NAMES[m["message_type"]], "private": m["private"],
                     "content": m["content"] or "", "status": m["status"], "external_error": m["external_error"],
                     "sender": (m["sender"] or {}).get("name") or "", "created_at": m["created_at"],
                     "attachments": [{"name": unquote(a["data_url"].rsplit("/", 1)[-1]), "url": a["data_url"]}
                                     for a in m["attachments"]]}
                    for m in conv["messages"]]
        return {"id": conv["id"], "status": conv["status"], "kind": kind,
                "title": attrs.get("meli_item_title") or titles or "",
                "contact": self.contacts[conv["contact_id"]]["name"], "messages": messages}

    # ---- JSON shapes ----------------------------------------------------------------------------------

    def inbox_json(self, inbox: dict) -> dict:
        shown = dict(inbox)
        if not self.signs_inbox_webhooks:
            shown.pop("secret", None)
        return shown

    def contact_json(self, contact: dict) -> dict:
        return dict(contact)

    def contact_push(self, contact: dict) -> dict:
        """A contact as sender/meta.sender: no "type" key (agents have one)."""
        keys = ("id", "name", "email", "phone_number", "identifier", "thumbnail", "additional_attributes",
                "custom_attributes")
        return {k: contact.get(k) for k in keys}

    def conversation_json(self, conv: dict) -> dict:
        out = {k: v for k, v in conv.items() if k not in ("messages", "contact_id")}
        out["meta"] = {"sender": self.contact_push(self.contacts[conv["contact_id"]]), "assignee": None,
                       "channel": self.inboxes[conv["inbox_id"]]["channel_type"]}
        return out

    def api_message(self, message: dict) -> dict:
        """A message as API responses show it: integer message_type, unix created_at."""
        out = {k: v for k, v in message.items() if k not in INTERNAL_MESSAGE_KEYS}
        out["content_attributes"] = dict(message["content_attributes"])
        if message.get("external_error"):
            out["content_attributes"]["external_error"] = message["external_error"]
        if message["attachments"]:
            out["attachments"] = [dict(a) for a in message["attachments"]]
        return out

    def webhook_payload(self, message: dict) -> dict:
        """The message_created body: string message_type, ISO date, `attachments` only with files."""
        conv = self.conversations[message["conversation_id"]]
        inbox = self.inboxes[conv["inbox_id"]]
        conv_json = self.conversation_json(conv)
        payload = {
            "event": "message_created", "id": message["id"], "content": message["content"],
            "content_type": message["content_type"], "message_type": TYPE_NAMES[message["message_type"]],
            "private": message["private"], "source_id": message["source_id"],
            "created_at": _iso_ms(message["created_at_exact"]),
            "content_attributes": dict(message["content_attributes"]), "additional_attributes": {},
            "sender": dict(message["sender"]),
            "inbox": {"id": inbox["id"], "name": inbox["name"]},
            "account": {"id": self.account_id, "name": self.account_name},
            "conversation": {"id": conv["id"], "inbox_id": conv["inbox_id"], "status": conv["status"],
                             "channel": inbox["channel_type"], "contact_inbox": dict(conv["contact_inbox"]),
                             "custom_attributes": dict(conv["custom_attributes"]),
                             "additional_attributes": dict(conv["additional_attributes"]),
                             "labels": list(conv["labels"]), "meta": conv_json["meta"]},
        }
        if message["attachments"]:
            payload["attachments"] = [dict(a) for a in message["attachments"]]
        return payload

    # ---- contacts and conversations -----------------------------------------------------------------

    def create_contact(self, body: dict) -> tuple[dict, dict | None]:
        """Raises ValueError(message, attribute) on validation errors (422)."""
        identifier = body.get("identifier") or None
        with self.lock:
            if identifier and any(c["identifier"] == identifier for c in self.contacts.values()):
                raise ValueError("Identifier has already been taken", "identifier")
            inbox_id = body.get("inbox_id")
            if inbox_id is not None and int(inbox_id) not in self.inboxes:
                raise ValueError("Inbox not found", "inbox_id")
            source_id = body.get("source_id")
            # One transaction in Chatwoot: a refused contact_inbox leaves no contact behind.
            if inbox_id is not None and source_id and any(
                    ci["inbox_id"] == int(inbox_id) and ci["source_id"] == str(source_id)
                    for ci in self.contact_inboxes):
                raise ValueError("Source has already been taken", "source_id")
            contact_id = self._next("contact")
            contact = {"id": contact_id, "name": body.get("name") or "", "identifier": identifier,
                       "email": body.get("email"), "phone_number": body.get("phone_number"),
                       "thumbnail": body.get("avatar_url") or "",
                       "additional_attributes": dict(body.get("additional_attributes") or {}),
                       "custom_attributes": dict(body.get("custom_attributes") or {}),
                       "availability_status": "offline", "created_at": int(time.time()), "last_activity_at": None}
            self.contacts[contact_id] = contact
            contact_inbox = None
            if inbox_id is not None:
                contact_inbox = self.add_contact_inbox(contact_id, int(inbox_id), body.get("source_id"))
            return contact, contact_inbox

    def add_contact_inbox(self, contact_id: int, inbox_id: int, source_id: str | None = None) -> dict:
        with self.lock:
            source_id = str(source_id) if source_id else str(uuid.uuid4())
            if any(ci["inbox_id"] == inbox_id and ci["source_id"] == source_id for ci in self.contact_inboxes):
                raise ValueError("Source has already been taken", "source_id")
            link = {"contact_id": contact_id, "inbox_id": inbox_id, "source_id": source_id}
            self.contact_inboxes.append(link)
            return {"source_id": source_id, "inbox": self.inbox_json(self.inboxes[inbox_id])}

    def filter_contacts(self, filters: list[dict]) -> list[dict]:
        """Supports attribute_key identifier/name/email/phone_number with equal_to/not_equal_to/contains."""
        with self.lock:
            found = _filtered(filters, lambda f: {c["id"] for c in self.contacts.values()
                                                  if _filter_value_match(c.get(f.get("attribute_key") or ""), f)})
            return [self.contacts[i] for i in sorted(found or ())]

    def create_conversation(self, body: dict) -> tuple[dict, list[dict]]:
        """Raises LookupError (404) or ValueError(message, attribute) (422)."""
        with self.lock:
            inbox_id, contact_id = _int(body.get("inbox_id")), _int(body.get("contact_id"))
            if inbox_id not in self.inboxes:
                raise ValueError("Inbox not found", "inbox_id")
            if contact_id not in self.contacts:
                raise LookupError("Contact not found")
            source_id = str(body.get("source_id") or "")
            if not any(ci["source_id"] == source_id and ci["contact_id"] == contact_id and ci["inbox_id"] == inbox_id
                       for ci in self.contact_inboxes):
                raise ValueError("source_id does not match a contact inbox of this contact and inbox", "source_id")
            status = body.get("status") or "open"
            if status not in STATUSES:
                raise ValueError(f"'{status}' is not a valid status", "status")
            conv_id = self._next("conversation")
            conv = {"id": conv_id, "account_id": self.account_id, "inbox_id": inbox_id, "contact_id": contact_id,
                    "status": status, "custom_attributes": dict(body.get("custom_attributes") or {}),
                    "additional_attributes": dict(body.get("additional_attributes") or {}), "labels": [],
                    "priority": None, "contact_inbox": {"source_id": source_id}, "created_at": int(time.time()),
                    "created_at_exact": time.time(), "unread_count": 0, "can_reply": True, "messages": []}
            conv["meta"] = self.conversation_json(conv)["meta"]  # stored too, so tests can read it
            self.conversations[conv_id] = conv
            deliveries: list[dict] = []
            initial = body.get("message") or {}
            if initial.get("content") is not None:
                # Created OUTGOING unless message_type says otherwise (a common surprise).
                kind = _message_type(initial.get("message_type") or "outgoing")
                _message, deliveries = self._create_message(conv_id, initial["content"], kind)
            return conv, deliveries

    def set_status(self, conv: dict, status: str) -> None:
        """Change the status; like Chatwoot, a change adds an activity message (never webhooked)."""
        with self.lock:
            if conv["status"] == status:
                return
            conv["status"] = status
            self._create_message(conv["id"], f"Conversation was marked {status} by {self.token_user['name']}",
                                 MESSAGE_TYPES["activity"])

    # ---- messages ------------------------------------------------------------------------------------

    def _create_message(self, conversation_id: int, content: str | None, message_type: int, *,
                        private: bool = False, source_id: str | None = None, files: list | tuple = (),
                        sender: dict | None = None, content_attributes: dict | None = None,
                        flood_guard: bool = False) -> tuple[dict, list[dict]]:
        """Store a message; returns it and its webhook deliveries (counted as pending, not yet queued)."""
        with self.lock:
            conv = self.conversations.get(int(conversation_id))
            if conv is None:
                raise _NotFound()  # deleted by an agent while the request was on its way
            now = time.monotonic()
            if flood_guard and sum(1 for m in conv["messages"] if now - m["t_created"] < 60.0) >= FLOOD_LIMIT:
                raise FloodError()
            message_id = self._next("message")
            if sender is None:
                incoming = message_type == MESSAGE_TYPES["incoming"]
                sender = self.contact_push(self.contacts[conv["contact_id"]]) if incoming else dict(self.token_user)
            exact = time.time()
            message = {"id": message_id, "content": content, "content_type": "text", "message_type": message_type,
                       "private": bool(private), "source_id": source_id, "status": "sent", "external_error": None,
                       "content_attributes": dict(content_attributes or {}), "created_at": int(exact),
                       "created_at_exact": exact, "conversation_id": conv["id"], "inbox_id": conv["inbox_id"],
                       "account_id": self.account_id, "sender_type": _sender_type(sender), "sender": sender,
                       "attachments": [self._store_attachment(message_id, *f) for f in files], "t_created": now}
            conv["messages"].append(message)
            self.messages[message_id] = message
            if message_type == MESSAGE_TYPES["activity"]:
                return message, []  # Chatwoot only webhooks incoming/outgoing/template messages
            return message, self._plan_deliveries(message)

    def _store_attachment(self, message_id: int, filename: str, content: bytes, content_type: str) -> dict:
        token = secrets.token_urlsafe(24)
        self.blobs[token] = {"content": content, "content_type": content_type, "filename": filename}
        base = self.base_url or "http://127.0.0.1"
        url = f"{base}/rails/active_storage/blobs/redirect/{token}/{quote(filename)}"
        kind = content_type.split("/", 1)[0]
        return {"id": self._next("attachment"), "message_id": message_id,
                "file_type": kind if kind in ("image", "audio", "video") else "file",
                "extension": filename.rsplit(".", 1)[-1].lower() if "." in filename else None,
                "content_type": content_type, "data_url": url, "thumb_url": url if kind == "image" else "",
                "file_size": len(content)}

    def update_message_status(self, message: dict, status: str, external_error: str | None) -> None:
        with self.lock:
            message["status"] = status
            message["external_error"] = external_error

    # ---- webhook delivery ---------------------------------------------------------------------------

    def _plan_deliveries(self, message: dict) -> list[dict]:
        """One delivery per account webhook subscribed to message_created, plus the inbox webhook."""
        raw = rails_json(self.webhook_payload(message))
        targets = [(h["url"], h.get("secret"), False) for h in self.webhooks
                   if "message_created" in h["subscriptions"]]
        inbox = self.inboxes[message["inbox_id"]]
        if inbox.get("webhook_url"):
            targets.append((inbox["webhook_url"], inbox.get("secret") if self.signs_inbox_webhooks else None, True))
        deliveries = [{"message_id": message["id"], "url": url, "secret": secret, "raw": raw,
                       "inbox_webhook": is_inbox, "ready": threading.Event()} for url, secret, is_inbox in targets]
        with self._idle:
            self._pending += len(deliveries)
        # Queued now, in creation order; the worker waits for `ready` (set once the creating
        # HTTP response has been written) so deliveries keep message order.
        for delivery in deliveries:
            self._queue.put(delivery)
        return deliveries

    def _release(self, deliveries: list[dict]) -> None:
        for delivery in deliveries:
            delivery["ready"].set()

    def pause_webhooks(self) -> None:
        """Hold deliveries in the queue (the one in flight finishes)."""
        self._running.clear()

    def resume_webhooks(self) -> None:
        self._running.set()

    def wait_webhooks_idle(self, timeout: float = 10.0) -> bool:
        """True once every planned delivery has been attempted; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self) -> None:
        """Stop the delivery worker (queued deliveries are dropped)."""
        self._stopping = True
        for delivery in list(self._queue.queue):
            if delivery:
                delivery["ready"].set()
        self._running.set()
        self._queue.put(None)
        self._worker.join(timeout=WEBHOOK_TIMEOUT + 1)

    def _deliver_loop(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            self._running.wait()
            delivery["ready"].wait(timeout=10.0)
            try:
                if not self._stopping:
                    self._deliver(delivery)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, delivery: dict) -> None:
        headers = {"Content-Type": "application/json"}
        if delivery["secret"]:
            timestamp = str(int(time.time()))
            headers.update({"X-Chatwoot-Timestamp": timestamp,
                            "X-Chatwoot-Signature": sign(delivery["secret"], timestamp, delivery["raw"]),
                            "X-Chatwoot-Delivery": str(uuid.uuid4())})
        started = time.monotonic()
        error = None
        try:
            resp = requests.post(delivery["url"], data=delivery["raw"], headers=headers, timeout=WEBHOOK_TIMEOUT,
                                 allow_redirects=False)
            status: int | str = resp.status_code
            if not 200 <= resp.status_code < 300:
                error = f"Webhook delivery failed: HTTP {resp.status_code}"
        except requests.RequestException as exc:
            status, error = "error", f"Webhook delivery failed: {type(exc).__name__}"
        with self.lock:
            self.webhook_deliveries.append({"message_id": delivery["message_id"], "url": delivery["url"],
                                            "status": status, "ms": (time.monotonic() - started) * 1000.0,
                                            "t": started, "signed": bool(delivery["secret"])})
            message = self.messages.get(delivery["message_id"])
            # Only an API-inbox webhook failure marks the message (as Chatwoot does; no retry).
            if error and delivery["inbox_webhook"] and message:
                message["status"], message["external_error"] = "failed", error


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _message_type(value: Any) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        if int(value) in TYPE_NAMES:
            return int(value)
    elif value in MESSAGE_TYPES:
        return MESSAGE_TYPES[value]
    raise ValueError(f"'{value}' is not a valid message_type", "message_type")


def _sender_type(sender: dict) -> str:
    return {"user": "User", "agent_bot": "AgentBot"}.get(sender.get("type") or "", "Contact")


def _filtered(filters: list[dict], matching: Callable[[dict], set[int] | None]) -> set[int] | None:
    """Chatwoot's filter payload: each condition's ids joined to the previous by that one's
    query_operator (and/or), left to right; None when no condition counted."""
    found: set[int] | None = None
    operator = None
    for f in filters:
        matched = matching(f)
        if matched is None:
            continue
        if found is None:
            found = matched
        elif operator == "or":
            found |= matched
        else:
            found &= matched
        operator = (f.get("query_operator") or "and").lower()
    return found


def _filter_value_match(value: Any, f: dict) -> bool:
    value = "" if value is None else str(value).lower()
    wanted = [str(v).lower() for v in f.get("values") or []]
    operator = f.get("filter_operator")
    if operator == "equal_to":
        return value in wanted
    if operator == "not_equal_to":
        return value not in wanted
    if operator == "contains":
        return any(w in value for w in wanted)
    return False


def _enum(value: Any, names: tuple[str, ...]) -> str | None:
    """A Rails enum given by number or by name, as its name (None when neither)."""
    if type(value) is int and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.isdigit() and int(value) < len(names):
        return names[int(value)]
    return value if value in names else None


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def create_chatwoot_app(state: ChatwootState) -> Flask:
    app = Flask("fake_chatwoot")
    install_controls(app, state)
    base = "/api/v1/accounts/<int:account_id>"

    @app.url_value_preprocessor
    def _drop_account(_endpoint: str | None, values: dict | None) -> None:
        if values:
            values.pop("account_id", None)  # checked once in state.gate()

    def invalid(message: str, attribute: str | None = None) -> Response:
        resp = jsonify({"message": message, "attributes": [attribute] if attribute else []})
        resp.status_code = 422
        return resp

    def conversation_or_404(conv_id: int) -> dict:
        conv = state.conversations.get(conv_id)
        if conv is None:
            raise _NotFound()
        return conv

    @app.errorhandler(_NotFound)
    def _missing(_exc: Exception) -> Response:
        return json_error(state, 404, "Resource could not be found")

    def after_response(resp: Response, deliveries: list[dict]) -> Response:
        # Webhooks leave only once the creating response has been written.
        resp.call_on_close(lambda: state._release(deliveries))
        return resp

    # ---- profile, inboxes, webhooks ----

    @app.get("/api/v1/profile")
    def profile():
        user = state.token_user
        return jsonify({"id": user["id"], "name": user["name"], "email": user.get("email"),
                        "accounts": [{"id": state.account_id, "name": state.account_name, "role": "administrator"}]})

    @app.get(f"{base}/inboxes")
    def inboxes():
        return jsonify({"payload": [state.inbox_json(i) for i in state.inboxes.values()]})

    @app.get(f"{base}/inboxes/<int:inbox_id>")
    def inbox(inbox_id: int):
        found = state.inboxes.get(inbox_id)
        return jsonify(state.inbox_json(found)) if found else json_error(state, 404, "Resource could not be found")

    @app.post(f"{base}/inboxes")
    def create_inbox():
        body = request.get_json(silent=True) or {}
        channel = body.get("channel") or {}
        if channel.get("type") != "api" or not body.get("name"):
            return invalid("the fake only creates API inboxes: {name, channel: {type: 'api'}}", "channel")
        inbox_id = state.add_inbox(body["name"], webhook_url=channel.get("webhook_url") or "")
        return jsonify(state.inbox_json(state.inboxes[inbox_id]))

    @app.post(f"{base}/inboxes/<int:inbox_id>/reset_secret")
    def reset_secret(inbox_id: int):
        found = state.inboxes.get(inbox_id)
        if not found:
            return json_error(state, 404, "Resource could not be found")
        with state.lock:
            found["secret"] = secrets.token_urlsafe(24)
        return jsonify(state.inbox_json(found))

    @app.patch(f"{base}/inboxes/<int:inbox_id>")
    def update_inbox(inbox_id: int):
        """Chatwoot: top-level inbox fields, and the channel's own (`webhook_url` for an API inbox)."""
        found = state.inboxes.get(inbox_id)
        if not found:
            return json_error(state, 404, "Resource could not be found")
        body = request.get_json(silent=True) or {}
        channel = body.get("channel") or {}
        with state.lock:
            if body.get("name"):
                found["name"] = body["name"]
            if "webhook_url" in channel and found["channel_type"] == "Channel::Api":
                found["webhook_url"] = channel["webhook_url"] or ""
        return jsonify(state.inbox_json(found))

    def public_hook(hook: dict) -> dict:
        # Chatwoot 4.11.2+ shows every webhook's secret to administrators, in lists too.
        return dict(hook)

    @app.get(f"{base}/webhooks")
    def webhooks():
        return jsonify({"payload": {"webhooks": [public_hook(h) for h in state.webhooks]}})

    @app.post(f"{base}/webhooks")
    def create_webhook():
        body = request.get_json(silent=True) or {}
        if not str(body.get("url") or "").startswith(("http://", "https://")):
            return invalid("Url is invalid", "url")
        hook = state.add_webhook(body["url"], secrets.token_urlsafe(24),
                                 tuple(body.get("subscriptions") or ("message_created",)), body.get("name") or "")
        return jsonify({"payload": {"webhook": dict(hook)}})

    @app.route(f"{base}/webhooks/<int:hook_id>", methods=["PATCH", "PUT", "DELETE"])
    def change_webhook(hook_id: int):
        hook = next((h for h in state.webhooks if h["id"] == hook_id), None)
        if hook is None:
            return json_error(state, 404, "Resource could not be found")
        with state.lock:
            if request.method == "DELETE":
                state.webhooks.remove(hook)
                return jsonify({})
            body = request.get_json(silent=True) or {}
            hook.update({k: body[k] for k in ("url", "name", "subscriptions") if k in body})
        return jsonify({"payload": {"webhook": public_hook(hook)}})

    # ---- contacts ----

    @app.post(f"{base}/contacts")
    def create_contact():
        try:
            contact, contact_inbox = state.create_contact(request.get_json(silent=True) or {})
        except ValueError as exc:
            return invalid(*exc.args)
        return jsonify({"payload": {"contact": state.contact_json(contact), "contact_inbox": contact_inbox}})

    @app.post(f"{base}/contacts/filter")
    def filter_contacts():
        found = state.filter_contacts((request.get_json(silent=True) or {}).get("payload") or [])
        return jsonify({"meta": {"count": len(found), "current_page": 1},
                        "payload": [state.contact_json(c) for c in found]})

    @app.get(f"{base}/contacts/search")
    def search_contacts():
        # Substring search: exists in Chatwoot, and the bridge must NOT use it for identity.
        q = request.args.get("q", "").lower()
        found = [c for c in state.contacts.values()
                 if q and any(q in str(c.get(k) or "").lower() for k in ("name", "identifier", "email"))]
        return jsonify({"meta": {"count": len(found), "current_page": 1},
                        "payload": [state.contact_json(c) for c in found]})

    @app.get(f"{base}/contacts/<int:contact_id>")
    def contact(contact_id: int):
        found = state.contacts.get(contact_id)
        if not found:
            return json_error(state, 404, "Resource could not be found")
        return jsonify({"payload": state.contact_json(found)})

    @app.delete(f"{base}/contacts/<int:contact_id>")
    def delete_contact(contact_id: int):
        try:
            state.delete_contact(contact_id)
        except LookupError:
            return json_error(state, 404, "Resource could not be found")
        return Response(status=200)

    @app.post(f"{base}/actions/contact_merge")
    def contact_merge():
        body = request.get_json(silent=True) or {}
        try:
            merged = state.merge_contacts(_int(body.get("base_contact_id")), _int(body.get("mergee_contact_id")))
        except LookupError:
            return json_error(state, 404, "Resource could not be found")
        except (TypeError, ValueError) as exc:
            return invalid(*(exc.args if len(exc.args) == 2 else ("invalid contacts", "base_contact_id")))
        return jsonify(state.contact_json(merged))

    @app.post(f"{base}/contacts/<int:contact_id>/contact_inboxes")
    def contact_inboxes(contact_id: int):
        body = request.get_json(silent=True) or {}
        if contact_id not in state.contacts:
            return json_error(state, 404, "Resource could not be found")
        if _int(body.get("inbox_id")) not in state.inboxes:
            return invalid("Inbox not found", "inbox_id")
        try:
            return jsonify(state.add_contact_inbox(contact_id, int(body["inbox_id"]), body.get("source_id")))
        except ValueError as exc:
            return invalid(*exc.args)

    @app.get(f"{base}/contacts/<int:contact_id>/conversations")
    def contact_conversations(contact_id: int):
        if contact_id not in state.contacts:
            return json_error(state, 404, "Resource could not be found")
        with state.lock:
            convs = [state.conversation_json(c) for c in state.conversations.values()
                     if c["contact_id"] == contact_id]
        return jsonify({"payload": convs})

    # ---- conversations ----

    @app.post(f"{base}/conversations")
    def create_conversation():
        try:
            conv, deliveries = state.create_conversation(request.get_json(silent=True) or {})
        except LookupError as exc:
            return json_error(state, 404, str(exc))
        except ValueError as exc:
            return invalid(*exc.args)
        return after_response(jsonify(state.conversation_json(conv)), deliveries)

    @app.post(f"{base}/conversations/filter")
    def filter_conversations():
        body = request.get_json(silent=True) or {}
        filters = body.get("payload")
        if not isinstance(filters, list) or not all(isinstance(f, dict) for f in filters):
            return invalid("payload must be a list of filters", "payload")
        page = request.args.get("page", "1")
        found, total = state.filter_conversations(filters, int(page) if page.isdigit() else 1)
        return jsonify({"meta": {"mine_count": 0, "unassigned_count": total, "all_count": total}, "payload": found})

    @app.get(f"{base}/custom_attribute_definitions")
    def attribute_definitions():
        model = request.args.get("attribute_model")
        wanted = _enum(model, ATTRIBUTE_MODELS) if model not in (None, "") else None
        with state.lock:
            return jsonify([dict(d) for d in state.attribute_definitions
                            if wanted is None or d["attribute_model"] == wanted])

    @app.post(f"{base}/custom_attribute_definitions")
    def create_attribute_definition():
        body = request.get_json(silent=True) or {}
        body = body.get("custom_attribute_definition") or body  # Rails wraps params either way
        try:
            definition = state.define_attribute(
                str(body.get("attribute_key") or ""), body.get("attribute_display_type", "text"),
                body.get("attribute_model", 0), body.get("attribute_values"), body.get("attribute_display_name"),
                body.get("attribute_description") or "")
        except ValueError as exc:
            return invalid(*exc.args)
        return jsonify(definition)

    @app.get(f"{base}/conversations/<int:conv_id>")
    def conversation(conv_id: int):
        return jsonify(state.conversation_json(conversation_or_404(conv_id)))

    @app.delete(f"{base}/conversations/<int:conv_id>")
    def delete_conversation(conv_id: int):
        conversation_or_404(conv_id)
        state.delete_conversation(conv_id)
        return Response(status=200)

    @app.post(f"{base}/conversations/<int:conv_id>/toggle_status")
    def toggle_status(conv_id: int):
        conv = conversation_or_404(conv_id)
        status = (request.get_json(silent=True) or {}).get("status")
        if status is None:  # no status: Chatwoot toggles between open and resolved
            status = "open" if conv["status"] == "resolved" else "resolved"
        if status not in STATUSES:
            return invalid(f"'{status}' is not a valid status", "status")
        state.set_status(conv, status)
        return jsonify({"payload": {"success": True, "current_status": status, "conversation_id": conv_id}})

    @app.post(f"{base}/conversations/<int:conv_id>/custom_attributes")
    def custom_attributes(conv_id: int):
        conv = conversation_or_404(conv_id)
        attrs = (request.get_json(silent=True) or {}).get("custom_attributes")
        if not isinstance(attrs, dict):
            return invalid("custom_attributes must be an object", "custom_attributes")
        with state.lock:
            conv["custom_attributes"] = dict(attrs)  # replaces the whole hash
        return jsonify({"custom_attributes": conv["custom_attributes"]})

    @app.post(f"{base}/conversations/<int:conv_id>/toggle_priority")
    def toggle_priority(conv_id: int):
        conv = conversation_or_404(conv_id)
        priority = (request.get_json(silent=True) or {}).get("priority")
        if priority not in PRIORITIES:
            return invalid(f"'{priority}' is not a valid priority", "priority")
        with state.lock:
            conv["priority"] = priority
        return Response(status=200)

    @app.route(f"{base}/conversations/<int:conv_id>/labels", methods=["GET", "POST"])
    def labels(conv_id: int):
        conv = conversation_or_404(conv_id)
        if request.method == "POST":
            with state.lock:
                conv["labels"] = [str(x) for x in (request.get_json(silent=True) or {}).get("labels") or []]
        return jsonify({"payload": list(conv["labels"])})

    # ---- messages ----

    @app.get(f"{base}/conversations/<int:conv_id>/messages")
    def list_messages(conv_id: int):
        conv = conversation_or_404(conv_id)
        before, after = _int(request.args.get("before")), _int(request.args.get("after"))
        with state.lock:
            conversation_or_404(conv_id)  # not deleted meanwhile
            messages = conv["messages"]
            if after is not None:
                page = [m for m in messages if m["id"] > after][:100]
            else:
                page = [m for m in messages if before is None or m["id"] < before][-PAGE:]
            payload = [state.api_message(m) for m in page]
            meta = {"labels": list(conv["labels"]), "additional_attributes": dict(conv["additional_attributes"]),
                    "contact": state.contact_push(state.contacts[conv["contact_id"]]), "assignee": None,
                    "agent_last_seen_at": None, "assignee_last_seen_at": None}
        return jsonify({"meta": meta, "payload": payload})

    @app.post(f"{base}/conversations/<int:conv_id>/messages")
    def create_message(conv_id: int):
        conv = conversation_or_404(conv_id)
        if request.files or request.mimetype == "multipart/form-data":
            body: dict = request.form.to_dict()
            files = [(f.filename or "file", f.read(), f.mimetype or "application/octet-stream")
                     for f in request.files.getlist("attachments[]")]
            if isinstance(body.get("content_attributes"), str):
                try:
                    body["content_attributes"] = json.loads(body["content_attributes"])
                except ValueError:
                    return invalid("content_attributes must be JSON", "content_attributes")
        else:
            body, files = request.get_json(silent=True) or {}, []
        content = body.get("content")
        if content is not None and len(str(content)) > MAX_CONTENT:
            return invalid(f"Content is too long (maximum is {MAX_CONTENT} characters)", "content")
        if len(files) > MAX_FILES:
            return invalid(f"Too many attachments (maximum is {MAX_FILES})", "attachments")
        try:
            kind = _message_type(body.get("message_type") or "outgoing")
            message, deliveries = state._create_message(
                conv["id"], content, kind, private=_truthy(body.get("private")), source_id=body.get("source_id"),
                files=files, content_attributes=body.get("content_attributes"), flood_guard=True)
        except ValueError as exc:
            return invalid(*exc.args)
        except FloodError:
            return json_error(state, 429, "Too many messages in this conversation", headers={"Retry-After": "60"})
        return after_response(jsonify(state.api_message(message)), deliveries)

    @app.patch(f"{base}/conversations/<int:conv_id>/messages/<int:message_id>")
    def update_message(conv_id: int, message_id: int):
        conv = conversation_or_404(conv_id)
        message = state.messages.get(message_id)
        if message is None or message["conversation_id"] != conv["id"]:
            return json_error(state, 404, "Resource could not be found")
        if state.inboxes[conv["inbox_id"]]["channel_type"] != "Channel::Api":
            return invalid("Message status can only be updated in API inboxes", "status")
        body = request.get_json(silent=True) or {}
        if body.get("status") not in MESSAGE_STATUSES:
            return invalid(f"status must be one of {', '.join(MESSAGE_STATUSES)}", "status")
        state.update_message_status(message, body["status"], body.get("external_error"))
        return jsonify(state.api_message(message))

    # ---- attachments: signed redirect, then storage ----

    @app.get("/rails/active_storage/blobs/redirect/<token>/<path:filename>")
    def blob_redirect(token: str, filename: str):
        if token not in state.blobs:
            return json_error(state, 404, "Not Found")
        storage = state.storage_base or state.base_url
        return redirect(f"{storage}/storage/{token}", code=302)

    @app.get("/storage/<token>")
    def storage(token: str):
        blob = state.blobs.get(token)
        if blob is None:
            return json_error(state, 404, "Not Found")
        return Response(blob["content"], mimetype=blob["content_type"],
                        headers={"Content-Disposition": f'inline; filename="{quote(blob["filename"])}"'})

    # ---- the sandbox page: read both inboxes, answer as an agent (not Chatwoot's API) ----

    @app.get("/sandbox")
    def sandbox_page():
        return Response(SANDBOX_PAGE, mimetype="text/html")

    @app.get("/sandbox/state")
    def sandbox_state():
        return jsonify(state.sandbox_view())

    @app.post("/sandbox/conversations/<int:conv_id>/messages")
    def sandbox_reply(conv_id: int):
        conversation_or_404(conv_id)
        body = request.get_json(silent=True) or {}
        content = str(body.get("content") or "").strip()
        if not content:
            return invalid("Escreva uma mensagem", "content")
        message = state.agent_reply(conv_id, content, private=_truthy(body.get("private")))
        return jsonify({"id": message["id"]})

    return app


SANDBOX_PAGE = """<!doctype html>
<html lang="pt-BR">
<head>
<meta charset="utf-8">
<title>Sandbox — Mercado Livre ⇄ Chatwoot</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1f2d3d; background: #f4f6fb; height: 100vh;
         display: grid; grid-template-rows: auto 1fr; }
  header { background: #1f93ff; color: #fff; padding: 10px 16px; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 17px; margin: 0; }
  header small { opacity: .9; }
  #online { margin-left: auto; }
  main { display: grid; grid-template-columns: 290px 1fr 330px; min-height: 0; }
  section { display: flex; flex-direction: column; min-height: 0; border-right: 1px solid #dde3ec; }
  h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #6b7a90; margin: 14px 12px 6px; }
  .scroll { overflow-y: auto; flex: 1; }
  ul { list-style: none; margin: 0; padding: 0; }
  .conv { padding: 8px 12px; border-bottom: 1px solid #e8edf3; cursor: pointer; background: #fff; }
  .conv:hover { background: #eef5ff; }
  .conv.selected { background: #dcebff; border-left: 3px solid #1f93ff; }
  .conv b { display: block; }
  .conv .preview { color: #5a6b80; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .badge { font-size: 11px; padding: 1px 6px; border-radius: 8px; background: #e8edf3; color: #44546a; }
  .badge.resolved { background: #d9f5e3; color: #17713a; }
  .empty { color: #8595a8; padding: 8px 12px; }
  #conversation { background: #fafbfd; }
  #conv-head { padding: 10px 16px; background: #fff; border-bottom: 1px solid #dde3ec; min-height: 46px; }
  #messages { padding: 12px 16px; display: flex; flex-direction: column; gap: 8px; }
  .msg { max-width: 75%; padding: 8px 10px; border-radius: 8px; background: #fff; border: 1px solid #dde3ec;
         white-space: pre-wrap; word-wrap: break-word; }
  .msg.outgoing { align-self: flex-end; background: #e3f0ff; border-color: #bcd9ff; }
  .msg.private { align-self: flex-end; background: #fff6d6; border-color: #f0d877; }
  .msg.activity { align-self: center; background: none; border: 0; color: #8595a8; font-size: 12px; padding: 0; }
  .meta { font-size: 11px; color: #6b7a90; margin-bottom: 2px; }
  .status { font-size: 11px; margin-top: 4px; text-align: right; color: #6b7a90; }
  .status.delivered, .status.read { color: #17713a; }
  .status.failed { color: #c62828; font-weight: 600; }
  form { display: grid; grid-template-columns: 1fr auto; gap: 6px 8px; padding: 10px 16px;
         background: #fff; border-top: 1px solid #dde3ec; }
  textarea { grid-row: span 2; resize: vertical; min-height: 56px; font: inherit; padding: 6px 8px;
             border: 1px solid #c5d0de; border-radius: 6px; }
  button { background: #1f93ff; color: #fff; border: 0; border-radius: 6px; padding: 8px 18px; font: inherit;
           cursor: pointer; }
  button:disabled { background: #9cc9f5; cursor: default; }
  label { font-size: 12px; color: #44546a; }
  #form-error { grid-column: span 2; color: #c62828; font-size: 12px; min-height: 1em; }
  #meli { background: #fffdf0; border-right: 0; }
  #meli > h2 { color: #8a6d00; font-size: 14px; text-transform: none; letter-spacing: 0; }
  .ml { padding: 8px 12px; border-bottom: 1px solid #efe8c4; }
  .ml .meta { margin: 0; }
</style>
</head>
<body>
<header>
  <h1>Sandbox: Mercado Livre ⇄ Chatwoot</h1>
  <small>Tudo aqui é falso: Mercado Livre e Chatwoot de mentira, a ponte de verdade.</small>
  <small id="online">conectando…</small>
</header>
<main>
  <section>
    <div class="scroll" id="inboxes"></div>
  </section>
  <section id="conversation">
    <div id="conv-head"><span class="empty">Escolha uma conversa à esquerda.</span></div>
    <div class="scroll"><div id="messages"></div></div>
    <form id="reply-form">
      <textarea id="reply" placeholder="Responder como agente… (Ctrl+Enter envia)" disabled></textarea>
      <button id="send" type="submit" disabled>Enviar</button>
      <label><input type="checkbox" id="private"> Nota privada</label>
      <div id="form-error"></div>
    </form>
  </section>
  <section id="meli">
    <h2>Mercado Livre (falso) recebeu</h2>
    <div class="scroll">
      <h2>Respostas publicadas</h2><ul id="ml-answers"></ul>
      <h2>Mensagens enviadas</h2><ul id="ml-messages"></ul>
    </div>
  </section>
</main>
<script>
"use strict";
const STATUS = {sent: "enviada", delivered: "entregue ✓", read: "lida ✓", failed: "falhou"};
const CONV_STATUS = {open: "aberta", resolved: "resolvida", pending: "pendente", snoozed: "adiada"};
let selected = null;
const shown = {};  // last JSON rendered per panel: unchanged panels are left alone (scroll, selection)

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function changed(panel, value) {
  const json = JSON.stringify(value);
  if (shown[panel] === json) return false;
  shown[panel] = json;
  return true;
}
function time(unix) {
  return new Date(unix * 1000).toLocaleTimeString("pt-BR", {hour: "2-digit", minute: "2-digit"});
}

function renderInboxes(inboxes) {
  const root = document.getElementById("inboxes");
  root.replaceChildren();
  for (const inbox of inboxes) {
    root.append(el("h2", "", inbox.name));
    const list = el("ul");
    if (!inbox.conversations.length) list.append(el("li", "empty", "Nada ainda: a ponte busca em segundos."));
    for (const conv of inbox.conversations) {
      const item = el("li", "conv" + (conv.id === selected ? " selected" : ""));
      item.dataset.id = conv.id;
      const head = el("b", "", conv.contact + " ");
      head.append(el("span", "badge " + conv.status, CONV_STATUS[conv.status] || conv.status));
      const first = conv.messages.find(m => m.type === "incoming") || conv.messages[0];
      item.append(head, el("div", "meta", conv.kind + (conv.title ? " · " + conv.title : "")),
                  el("div", "preview", first ? first.content : ""));
      item.onclick = () => { selected = conv.id; shown.inboxes = shown.conversation = null; refresh(); };
      list.append(item);
    }
    root.append(list);
  }
}

function renderConversation(conv) {
  const head = document.getElementById("conv-head"), box = document.getElementById("messages");
  const reply = document.getElementById("reply"), send = document.getElementById("send");
  reply.disabled = send.disabled = !conv;
  if (!conv) return;
  head.replaceChildren(el("b", "", conv.contact + " — " + conv.kind),
                       el("div", "meta", conv.title + " · " + (CONV_STATUS[conv.status] || conv.status)));
  box.replaceChildren();
  for (const m of conv.messages) {
    const kind = m.type === "activity" ? "activity" : m.private ? "private" : m.type;
    const node = el("div", "msg " + kind);
    node.dataset.id = m.id;
    node.dataset.status = m.status;
    if (kind !== "activity") {
      const who = kind === "private" ? "Nota privada" : kind === "incoming" ? "Comprador" : "Agente";
      node.append(el("div", "meta", who + " · " + m.sender + " · " + time(m.created_at)));
    }
    node.append(el("div", "content", m.content));
    for (const file of m.attachments) {
      const link = el("a", "", "📎 " + file.name);
      link.href = file.url;
      link.target = "_blank";
      node.append(el("br"), link);
    }
    if (m.type === "outgoing" && !m.private) {
      const status = el("div", "status " + m.status, STATUS[m.status] || m.status);
      if (m.external_error) status.textContent += ": " + m.external_error;
      node.append(status);
    }
    box.append(node);
  }
  box.parentElement.scrollTop = box.parentElement.scrollHeight;
}

function renderMeli(meli) {
  const answers = document.getElementById("ml-answers"), messages = document.getElementById("ml-messages");
  answers.replaceChildren();
  messages.replaceChildren();
  if (!meli) return;
  for (const a of meli.answers) {
    const item = el("li", "ml");
    item.append(el("div", "meta", "Pergunta " + a.question_id + (a.item ? " · " + a.item : "")), el("div", "", a.text));
    answers.append(item);
  }
  for (const m of meli.messages) {
    const item = el("li", "ml");
    const files = m.attachments ? " · " + m.attachments + " anexo(s)" : "";
    item.append(el("div", "meta", (m.label || "Venda " + m.pack_id) + files), el("div", "", m.text));
    messages.append(item);
  }
  if (!meli.answers.length) answers.append(el("li", "empty", "Nenhuma ainda."));
  if (!meli.messages.length) messages.append(el("li", "empty", "Nenhuma ainda."));
}

async function refresh() {
  let data;
  try {
    const resp = await fetch("/sandbox/state");
    data = await resp.json();
    document.getElementById("online").textContent = "atualizado " + new Date().toLocaleTimeString("pt-BR");
  } catch (err) {
    document.getElementById("online").textContent = "sem conexão com o sandbox";
    return;
  }
  const all = data.inboxes.flatMap(inbox => inbox.conversations);
  if (selected === null && all.length) selected = all[0].id;
  if (changed("inboxes", [selected, data.inboxes])) renderInboxes(data.inboxes);
  const conv = all.find(c => c.id === selected) || null;
  if (changed("conversation", conv)) renderConversation(conv);
  if (changed("meli", data.meli)) renderMeli(data.meli);
}

async function sendReply(event) {
  event.preventDefault();
  const reply = document.getElementById("reply"), send = document.getElementById("send");
  const error = document.getElementById("form-error");
  if (!reply.value.trim() || selected === null) return;
  send.disabled = true;
  error.textContent = "";
  try {
    const resp = await fetch("/sandbox/conversations/" + selected + "/messages", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({content: reply.value, private: document.getElementById("private").checked})});
    if (!resp.ok) throw new Error((await resp.json()).message || resp.status);
    reply.value = "";
  } catch (err) {
    error.textContent = "Não foi enviada: " + err.message;
  }
  send.disabled = false;
  refresh();
}

document.getElementById("reply-form").onsubmit = sendReply;
document.getElementById("reply").onkeydown = event => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) sendReply(event);
};
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
