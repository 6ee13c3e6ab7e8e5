"""Mercado Livre notifications recorded by the listener, processed by the poller."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter

from bridge import failures
from bridge.backoff import retry_delay
from bridge.http import ApiError
from bridge.services import Services
from bridge.sync import claims as sync_claims
from bridge.sync import questions as sync_questions
from bridge.sync import sales as sync_messages
from config import Settings
from db_manager import Database
from mercado_livre_api import ReauthorizationRequired

log = logging.getLogger("bridge.notifications")

GIVE_UP_ATTEMPTS = 12
# Beyond this many waiting notifications new ones are dropped (still answered 200):
# whoever floods the callback cannot make the bridge queue unlimited Mercado Livre calls,
# and polling finds anything a dropped notification was about.
MAX_PENDING = 5000
# What each topic's resource looks like; anything else is not from Mercado Livre.
# A `messages` resource is the message id, bare or as /messages/<id>. [0-9], not \d, which
# also takes other scripts' digits.
RESOURCES = {
    "questions": re.compile(r"/questions/([0-9]{1,20})"),
    "messages": re.compile(r"(?:/messages/)?([0-9A-Za-z][0-9A-Za-z_-]{0,63})"),
    "claims": re.compile(r"/post-purchase/v1/claims/([0-9]{1,20})"),
}
CANONICAL = {"questions": "/questions/{}", "messages": "{}", "claims": "/post-purchase/v1/claims/{}"}
LOG_EVERY = 60.0


class LogTally:
    """Counts a repeated event and logs it at most once a minute: the first at once, then a count.

    Forged notifications arrive by the thousand; one log line each would bury everything else.
    """

    def __init__(self, message: str, every: float = LOG_EVERY):
        self.message = message
        self.every = every
        self.counts: Counter = Counter()
        self.last = float("-inf")
        self.lock = threading.Lock()

    def add(self, reason: str, now: float) -> None:
        with self.lock:
            self.counts[reason] += 1
            if now - self.last < self.every:
                return
            counts, self.counts, self.last = self.counts, Counter(), now
        log.warning("%s: %s", self.message, " ".join(f"{k.replace(' ', '_')}={n}" for k, n in sorted(counts.items())))


IGNORED = LogTally("notifications ignored since the last line")
DROPPED = LogTally(f"notifications dropped since the last line, over {MAX_PENDING} waiting")


def same_id(value, expected) -> bool:
    """An id as Mercado Livre sends it (number or decimal string) equal to ours."""
    if expected in (None, ""):
        return False
    if type(value) is int:
        return str(value) == str(expected)
    return isinstance(value, str) and value == str(expected)


def classify(payload: dict, app_id, seller_id) -> tuple[str, str] | str:
    """Pure: (topic, canonical resource) for a notification worth recording, or why it is ignored."""
    if not same_id(payload.get("application_id"), app_id):
        return "other application" if payload.get("application_id") is not None else "no application_id"
    if seller_id in (None, ""):
        return "seller not known yet"
    if not same_id(payload.get("user_id"), seller_id):
        return "other user" if payload.get("user_id") is not None else "no user_id"
    topic, resource = payload["topic"], payload["resource"].strip()
    shape = RESOURCES.get(topic)
    if shape is None:
        return "topic not used"
    match = shape.fullmatch(resource)
    if not match:
        return "resource not recognised"
    return topic, CANONICAL[topic].format(match.group(1))


def accept(payload: dict, settings: Settings, db: Database, now: float) -> tuple[str, int, dict]:
    """Record a notification for the poller. Answers (status, http code, extra); never makes ML retry for nothing."""
    topic, resource = payload.get("topic"), payload.get("resource")
    if not isinstance(topic, str) or not isinstance(resource, str) or not resource:
        return "error", 400, {"reason": "topic and resource are required"}
    decision = classify(payload, settings.meli_app_id, settings.meli_user_id or db.auth.current()["user_id"])
    if isinstance(decision, str):
        IGNORED.add(decision, now)
        return "ignored", 200, {"reason": decision}
    topic, resource = decision
    notification_id = payload.get("_id")
    if not isinstance(notification_id, str) or not 0 < len(notification_id) <= 100:
        sent = payload.get("sent")
        notification_id = f"{topic}:{resource}:{sent if isinstance(sent, str) else ''}"[:200]
    outcome = db.notifications.record(notification_id, topic, resource, now, max_pending=MAX_PENDING)
    if outcome == "full":
        DROPPED.add(topic, now)
        return "dropped", 200, {}
    if outcome == "recorded":
        log.info("notification recorded topic=%s resource=%s", topic, resource)
        return "recorded", 200, {}
    log.debug("notification %s topic=%s resource=%s", outcome, topic, resource)
    return "duplicate", 200, {}


def read_missed_feeds(s: Services) -> dict:
    """Notifications Mercado Livre could not deliver (bridge down, network): record them like pushed ones."""
    counts = {"missed": 0, "recorded": 0}
    for entry in s.meli.missed_feeds():
        counts["missed"] += 1
        status, _code, _extra = accept(entry, s.settings, s.db, s.clock())
        counts["recorded"] += status == "recorded"
    return counts


def process_notifications(s: Services) -> dict:
    counts = {"processed": 0, "retry": 0, "item_errors": 0}
    for note in s.db.notifications.due(s.clock()):
        if s.stopping.is_set():
            break
        started = time.monotonic()
        try:
            outcome = handle(s, note)
        except ReauthorizationRequired:
            raise
        except Exception as exc:  # noqa: BLE001 — a notification that breaks must not hold up the ones after it
            permanent = isinstance(exc, ApiError) and not exc.transient
            error = exc.short() if permanent else failures.describe(exc)
            if not permanent and note["attempts"] < GIVE_UP_ATTEMPTS:
                s.db.notifications.retry_later(note["id"], s.clock() + retry_delay(
                    note["attempts"] + 1, exc.retry_after if isinstance(exc, ApiError) else None), error)
                counts["retry"] += 1
                counts["item_errors"] += not isinstance(exc, ApiError)
                log.warning("notification retry id=%s topic=%s resource=%s attempt=%d error=%s", note["id"],
                            note["topic"], note["resource"], note["attempts"] + 1, error)
                continue
            outcome = f"gave up: {error}"
            if not permanent:
                # Tried GIVE_UP_ATTEMPTS times: the polls still cover the question or thread, but a person
                # must hear of it.
                counts["item_errors"] += 1
                failures.gave_up(s, "notification", note["id"], error, attempts=note["attempts"] + 1)
        if not s.db.notifications.mark_done(note["id"], s.clock(), repeats=note["repeats"]):
            # Mercado Livre notified this resource again while we fetched it: fetch once more.
            log.info("notification again id=%s topic=%s resource=%s outcome=%s in %dms", note["id"], note["topic"],
                     note["resource"], outcome, (time.monotonic() - started) * 1000)
            continue
        counts["processed"] += 1
        log.info("notification processed id=%s topic=%s resource=%s outcome=%s in %dms", note["id"],
                 note["topic"], note["resource"], outcome, (time.monotonic() - started) * 1000)
    return counts


def handle(s: Services, note: dict) -> str:
    if note["topic"] == "questions":
        match = RESOURCES["questions"].fullmatch(note["resource"].strip())
        if not match:
            return "unrecognised resource"
        return sync_questions.sync_one_question(s, match.group(1))
    if note["topic"] == "messages":
        message_id = note["resource"].strip().rsplit("/", 1)[-1]
        if not message_id:
            return "unrecognised resource"
        return sync_messages.sync_message_resource(s, message_id)
    if note["topic"] == "claims":
        match = RESOURCES["claims"].fullmatch(note["resource"].strip())
        if not match:
            return "unrecognised resource"
        return sync_claims.sync_claim_resource(s, match.group(1))
    return "topic not handled"
