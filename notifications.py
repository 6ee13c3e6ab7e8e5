"""Mercado Livre notifications recorded by the listener, processed by the poller."""

from __future__ import annotations

import logging
import re
import time

import failures
import sync_messages
import sync_questions
from config import Settings
from db_manager import Database
from http_client import ApiError
from mercado_livre_api import ReauthorizationRequired
from outbox import retry_delay
from services import Services

log = logging.getLogger("bridge.notifications")

GIVE_UP_ATTEMPTS = 12
QUESTION_RESOURCE = re.compile(r"^/questions/(\d+)$")


def accept(payload: dict, settings: Settings, db: Database, now: float) -> tuple[str, int, dict]:
    """Record a notification for the poller. Answers (status, http code, extra); never makes ML retry for nothing."""
    topic, resource = payload.get("topic"), payload.get("resource")
    if not isinstance(topic, str) or not isinstance(resource, str) or not resource:
        return "error", 400, {"reason": "topic and resource are required"}
    app_id = payload.get("application_id")
    if app_id is not None and str(app_id) != str(settings.meli_app_id):
        log.warning("notification ignored: application %s is not ours", app_id)
        return "ignored", 200, {"reason": "other application"}
    seller = settings.meli_user_id or db.auth()["user_id"]
    user_id = payload.get("user_id")
    if seller and user_id is not None and str(user_id) != str(seller):
        log.warning("notification ignored: user %s is not seller %s (topic %s)", user_id, seller, topic)
        return "ignored", 200, {"reason": "other user"}
    if topic not in ("questions", "messages"):
        log.info("notification ignored: topic %s", topic)
        return "ignored", 200, {"reason": "topic not used"}
    notification_id = str(payload.get("_id") or f"{topic}:{resource}:{payload.get('sent', '')}")
    fresh = db.notification_record(notification_id, topic, resource, now)
    log.info("notification %s topic=%s resource=%s", "recorded" if fresh else "duplicate", topic, resource)
    return ("recorded" if fresh else "duplicate"), 200, {}


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
    for note in s.db.notifications_due(s.clock()):
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
                s.db.notification_retry_later(note["id"], s.clock() + retry_delay(
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
        s.db.notification_done(note["id"], s.clock())
        counts["processed"] += 1
        log.info("notification processed id=%s topic=%s resource=%s outcome=%s in %dms", note["id"],
                 note["topic"], note["resource"], outcome, (time.monotonic() - started) * 1000)
    return counts


def handle(s: Services, note: dict) -> str:
    if note["topic"] == "questions":
        match = QUESTION_RESOURCE.match(note["resource"].strip())
        if not match:
            return "unrecognised resource"
        return sync_questions.sync_one_question(s, match.group(1))
    if note["topic"] == "messages":
        message_id = note["resource"].strip().rsplit("/", 1)[-1]
        if not message_id:
            return "unrecognised resource"
        return sync_messages.sync_message_resource(s, message_id)
    return "topic not handled"
