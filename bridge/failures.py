"""One bad item never blocks the queue.

A question, a sale (pack), a claim, a notification or a reply whose processing raises — an API
error, or a bug meeting a payload shape nobody expected — fails alone: the failure is
counted against that item in `item_attempts`, the item waits with backoff and the rest
of the batch goes on. After GIVE_UP_ATTEMPTS the item is reported once, loudly (an error
line with its ids, a private note in its Chatwoot conversation when it has one, a count
in /health and `main.py status`) and from then on retried once a day, or at once after
`main.py retry`: a buyer message is never dropped silently.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any, Callable, Iterable, Iterator

from bridge import source_ids
from bridge.backoff import retry_delay
from bridge.http import ApiError
from bridge.services import Services
from mercado_livre_api import ReauthorizationRequired

log = logging.getLogger("bridge.failures")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

GIVE_UP_ATTEMPTS = 10
RETRY_FIRST = 120.0        # with doubling, the tenth attempt comes some 9 to 17 hours after the first
RETRY_LONGEST = 8 * 3600.0
TRANSIENT_LONGEST = 300.0
AFTER_GIVE_UP = 24 * 3600.0
KEEP_REPORTED = 7 * 86400.0  # given-up notifications and replies stay visible in /health this long
# Transient failures of this many items in a row mean the service is down, not the items:
# the rest of the batch waits for the next run instead of each item counting a failure.
OUTAGE_STREAK = 3
# Their messages name types and keys, not data; other exceptions (ValueError...) may quote
# the value they choked on, which can be buyer text: only their class and place are kept.
MESSAGE_SAFE = (KeyError, AttributeError, TypeError, IndexError)
NEXT = {"question": "tried once a day from now", "pack": "tried once a day from now",
        "claim": "tried once a day from now",
        "notification": "the polls still cover its question or thread", "reply": "its outcome is not in Chatwoot"}
AFTERWARDS = {"question": "Ela continua tentando uma vez por dia. ", "pack": "Ela continua tentando uma vez por dia. ",
              "claim": "Ela continua tentando uma vez por dia. "}
WHAT = {"question": "esta pergunta", "pack": "as mensagens desta venda", "claim": "esta reclamação",
        "notification": "um aviso do Mercado Livre sobre esta conversa", "reply": "o resultado desta resposta"}


# ---- pure decisions -------------------------------------------------------------------------------

def next_attempt(attempts: int, now: float, retry_after: float | None = None, *, transient: bool = False,
                 failing_for: float = 0.0) -> tuple[float, bool]:
    """When an item that has now failed `attempts` times is tried again, and whether it was given up.

    A transient failure (5xx, 429, a timeout) is the service's, not the item's: waits stop growing at
    TRANSIENT_LONGEST, so every item a Chatwoot or Mercado Livre outage caught is back minutes after
    it ends (a 30-minute soak saw a claim's messages wait 27 minutes for their sixth try), and it is
    given up only once it has been failing for a day.
    """
    if attempts >= GIVE_UP_ATTEMPTS and (not transient or failing_for >= AFTER_GIVE_UP):
        return now + AFTER_GIVE_UP, True
    longest = TRANSIENT_LONGEST if transient else RETRY_LONGEST
    return now + retry_delay(attempts, retry_after, first=RETRY_FIRST, longest=longest), False


def describe(exc: BaseException) -> str:
    """Exception class, a short reason and where it was raised; never buyer text or secrets."""
    if isinstance(exc, ApiError):
        return f"{type(exc).__name__}: {exc.short()}"[:300]
    text = type(exc).__name__
    if isinstance(exc, MESSAGE_SAFE):
        message = str(exc)[:120]
        if message:
            text += f": {message}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" at {_place(frames[-1].filename)}:{frames[-1].lineno}"
    return text[:300]


def _place(filename: str) -> str:
    """bridge/sync/questions.py for the bridge package's files (names repeat across its folders), else the name."""
    path = os.path.abspath(filename)
    if path.startswith(PACKAGE_DIR + os.sep):
        return os.path.relpath(path, os.path.dirname(PACKAGE_DIR))
    return os.path.basename(path)


# ---- I/O --------------------------------------------------------------------------------------------

class Batch:
    """One loop over items of one kind (questions of a poll, threads of a poll)."""

    def __init__(self, s: Services, kind: str):
        self.s = s
        self.kind = kind
        self.failed = 0
        self._streak = 0
        self._waiting = s.db.items.waiting(kind, s.clock())

    def waiting(self, item_id: Any) -> bool:
        """In backoff after a failure: skipped until due."""
        return str(item_id) in self._waiting

    @property
    def interrupted(self) -> bool:
        return self._streak >= OUTAGE_STREAK

    @property
    def stopped(self) -> bool:
        """The poller is stopping, or the service looks down: the rest waits for the next run."""
        return self.s.stopping.is_set() or self.interrupted

    def due(self, items: Iterable, key: Callable[[Any], Any] = lambda item: item) -> Iterator:
        """The items in order, skipping those in backoff, until the batch is stopped."""
        for item in items:
            if self.stopped:
                return
            if self.waiting(key(item)):
                continue
            yield item

    def keep_only(self, item_ids: set[str]) -> None:
        """The items that still need work; failures of any other item are forgotten."""
        forgotten = self.s.db.items.forget_others(self.kind, {str(i) for i in item_ids})
        if forgotten:
            log.info("item failures forgotten kind=%s count=%d: no work left for them", self.kind, forgotten)

    def run(self, item_id: Any, func: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Call func(*args) for one item. Returns (True, result), or (False, None) when it failed."""
        try:
            result = func(*args)
        except ReauthorizationRequired:
            raise  # nobody's item: the job waits for a person
        except Exception as exc:  # noqa: BLE001 — whatever one item does, the others go on
            self.failed += 1
            self._streak = self._streak + 1 if isinstance(exc, ApiError) and exc.transient else 0
            failed(self.s, self.kind, item_id, exc)
            return False, None
        self._streak = 0
        succeeded(self.s, self.kind, item_id)
        return True, result


def failed(s: Services, kind: str, item_id: Any, exc: BaseException) -> dict:
    """Count a failed attempt; give up (and report) when the bound is reached."""
    now = s.clock()
    previous = s.db.items.get(kind, item_id)
    attempts = (previous["attempts"] if previous else 0) + 1
    retry_after = exc.retry_after if isinstance(exc, ApiError) else None
    failing_for = now - (previous["first_failed_at"] if previous else now)
    next_at, give_up = next_attempt(attempts, now, retry_after, transient=isinstance(exc, ApiError) and exc.transient,
                                    failing_for=failing_for)
    error = describe(exc)
    row = s.db.items.record_failure(kind, item_id, error, next_at, now, give_up=give_up)
    log.warning("item failed %s=%s attempt=%d retry_in=%ds error=%s", kind, item_id, attempts, next_at - now, error)
    log.debug("item failure trace %s=%s", kind, item_id, exc_info=exc)
    if row["gave_up_at"] is not None and row["reported_at"] is None:
        report_safely(s, row)
    return row


def gave_up(s: Services, kind: str, item_id: Any, error: str, attempts: int | None = None) -> None:
    """An item whose own queue stopped trying it (a notification, a reply): report it like the others."""
    now = s.clock()
    row = s.db.items.record_failure(kind, item_id, error, now + AFTER_GIVE_UP, now, give_up=True, attempts=attempts)
    if row["reported_at"] is None:
        report_safely(s, row)


def succeeded(s: Services, kind: str, item_id: Any) -> None:
    if s.db.items.mark_succeeded(kind, item_id):
        log.info("item recovered %s=%s after earlier failures", kind, item_id)


def report_safely(s: Services, row: dict) -> bool:
    try:
        report(s, row)
        return True
    except ReauthorizationRequired:
        return False
    except Exception as exc:  # noqa: BLE001 — the report is retried by housekeeping
        log.warning("item report postponed %s=%s error=%s", row["kind"], row["item_id"], describe(exc))
        return False


def report(s: Services, row: dict) -> None:
    """Once per give-up: an error line with ids, and a private note where the item has a conversation."""
    kind, item_id = row["kind"], row["item_id"]
    conversation_id = conversation_for(s, kind, item_id)
    log.error("item given up %s=%s attempts=%d conversation=%s last_error=%s; %s; `./bridge.sh retry %s %s` "
              "retries now", kind, item_id, row["attempts"], conversation_id, row["last_error"],
              NEXT.get(kind, "not retried"), kind, item_id)
    if conversation_id:
        tries = f"{row['attempts']} tentativas" if row["attempts"] > 1 else "um dia de tentativas"
        s.chatwoot.note(conversation_id,
                        f"A ponte não conseguiu processar {WHAT.get(kind, 'este item')} depois de "
                        f"{tries} (erro: {row['last_error']}). {AFTERWARDS.get(kind, '')}O problema aparece no "
                        "/health da ponte. Enquanto isso, confira esta conversa direto no Mercado Livre para não "
                        "deixar o comprador sem resposta.",
                        source_id=source_ids.note("failing", kind, item_id, int(row["gave_up_at"])))
    s.db.items.mark_reported(kind, item_id, s.clock())


def conversation_for(s: Services, kind: str, item_id: Any) -> int | None:
    if kind in ("question", "pack", "claim"):
        return (s.db.links.get(kind, item_id) or {}).get("conversation_id")
    if kind == "reply":
        return (s.db.replies.get(int(item_id)) or {}).get("conversation_id")
    if kind == "notification":
        # The question's or the message's conversation, when the bridge already made it.
        note = s.db.notifications.get(str(item_id)) or {}
        resource = (note.get("resource") or "").strip()
        link_kind = {"questions": "question", "messages": "message", "claims": "claim"}.get(note.get("topic"))
        if link_kind and resource:
            return (s.db.links.get(link_kind, resource.rsplit("/", 1)[-1]) or {}).get("conversation_id")
    return None


def report_pending(s: Services) -> dict:
    """Housekeeping: reports a Chatwoot failure postponed, and old records of items not retried."""
    reported = 0
    for row in s.db.items.unreported():
        if s.stopping.is_set():
            break
        reported += report_safely(s, row)
    return {"failures_reported": reported, "failures_forgotten": s.db.items.forget_reported(s.clock() - KEEP_REPORTED)}
