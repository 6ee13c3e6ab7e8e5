"""Chatwoot webhook bodies in the shape Chatwoot sends (see shared/api-facts.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

SECRET = "whsec-one-5f3a"


def message_created(message_id=9123, conversation_id=77, inbox_id=1, content="Olá! Temos sim.",
                    message_type="outgoing", private=False, source_id=None, sender_type="user",
                    custom_attributes=None, attachments=None) -> dict:
    body = {
        "event": "message_created", "id": message_id, "content": content, "content_type": "text",
        "message_type": message_type, "private": private, "source_id": source_id,
        "created_at": "2026-11-20T12:00:00.000Z", "content_attributes": {}, "additional_attributes": {},
        "sender": ({"id": 1, "name": "Ana", "email": "ana@example.test", "type": sender_type}
                   if sender_type else {"id": 5, "name": "Comprador"}),
        "inbox": {"id": inbox_id, "name": "Mercado Livre"},
        "account": {"id": 1, "name": "Loja"},
        "conversation": {"id": conversation_id, "inbox_id": inbox_id, "status": "open",
                         "channel": "Channel::Api", "contact_inbox": {"source_id": "meli:buyer:1"},
                         "custom_attributes": custom_attributes or {}, "additional_attributes": {},
                         "meta": {"sender": {"id": 5, "name": "Comprador"}}},
    }
    if attachments:
        body["attachments"] = attachments
    return body


def signed(body: dict | bytes, secret: str = SECRET, timestamp: int | None = None) -> tuple[bytes, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
    return raw, {"X-Chatwoot-Timestamp": ts, "X-Chatwoot-Signature": signature,
                 "X-Chatwoot-Delivery": "0b1f7c1e-1111-4c1e-9a4b-6f0f0f0f0f0f", "Content-Type": "application/json"}
