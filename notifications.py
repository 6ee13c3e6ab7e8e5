"""Mercado Livre notifications recorded by the listener, processed by the poller."""

from __future__ import annotations

import logging
import re
import time

import sync_messages
import sync_questions
from http_client import ApiError
from mercado_livre_api import ReauthorizationRequired
from outbox import retry_delay
from services import Services

log = logging.getLogger("bridge.notifications")

GIVE_UP_ATTEMPTS = 12
QUESTION_RESOURCE = re.compile(r"^/questions/(\d+)$")


def process_notifications(s: Services) -> dict:
    counts = {"processed": 0, "retry": 0}
    for note in s.db.notifications_due(s.clock()):
        if s.stopping.is_set():
            break
        started = time.monotonic()
        try:
            outcome = handle(s, note)
        except ReauthorizationRequired:
            raise
        except ApiError as exc:
            if exc.transient and note["attempts"] < GIVE_UP_ATTEMPTS:
                s.db.notification_retry_later(note["id"], s.clock() + retry_delay(note["attempts"] + 1,
                                                                                  exc.retry_after), exc.short())
                counts["retry"] += 1
                log.warning("notification retry id=%s topic=%s resource=%s error=%r", note["id"], note["topic"],
                            note["resource"], exc.short())
                continue
            outcome = f"gave up: {exc.short()}"
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
