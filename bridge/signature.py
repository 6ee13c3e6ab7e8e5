"""Is a webhook delivery from our Chatwoot? Framework-free and pure, so it is tested alone.

Chatwoot (4.12 and later) signs a delivery with
``X-Chatwoot-Signature: sha256=HMAC-SHA256(secret, "{timestamp}.{raw body}")`` and
``X-Chatwoot-Timestamp``; older versions sign nothing, so their webhook URL carries
``?token=<secret>`` instead.  Several secrets may be configured at once, so a secret can be
rotated without losing deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping, Sequence

SIGNATURE_TOLERANCE = 300  # seconds either side of now


def verify_signature(raw_body: bytes, headers: Mapping[str, str], secrets: Sequence[str],
                     now: float, tolerance: float = SIGNATURE_TOLERANCE) -> tuple[bool, str]:
    """Chatwoot's signature: sha256=HMAC(secret, "{timestamp}.{raw body}"), any configured secret.

    Pure: the caller passes the clock's reading as `now`. Returns (ok, reason).
    """
    signature = headers.get("X-Chatwoot-Signature") or ""
    timestamp = headers.get("X-Chatwoot-Timestamp") or ""
    if not signature or not timestamp:
        return False, "missing signature"
    # ASCII digits only: str.isdigit() and int() also take "²" or "١٢٣", and int() refuses
    # over 4300 digits — either would have been a 500.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False, "malformed timestamp"
    if abs(now - int(timestamp)) > tolerance:
        return False, "timestamp outside the allowed window"
    signed = timestamp.encode() + b"." + raw_body
    matched = False
    for secret in secrets:
        expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        # Every secret is compared; no early exit that would time which one matched.
        matched |= hmac.compare_digest(expected.encode(), signature.strip().encode())
    return (True, "ok") if matched else (False, "invalid signature")


def token_matches(token: str | None, secrets: Sequence[str]) -> bool:
    """The ``?token=`` of an unsigned delivery equals one of the secrets (constant time)."""
    if not token:
        return False
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(secret.encode(), token.encode())
    return matched
