"""Record intent → find by source id → create: the one way the bridge writes a Chatwoot message.

The caller records its intent in the database first (`ensure_linked_message` does). A row that
was already pending means an earlier attempt may have created the message and crashed, or
lost the create's answer (a timeout, a 5xx), before recording it: the message is then looked
for by its `meli:` source id before it is created again, and once that earlier create has
settled (CREATE_SETTLE after it went out), so neither a crash nor a create Chatwoot
still holds ever shows a buyer message twice. A fresh intent skips the look-up (one call less).
"""

from __future__ import annotations

from typing import Callable, Iterable

from bridge.http import SETTLE, PermanentError, TransientError, on_departure
from bridge.http import settle as http_settle
from bridge.services import Services
from bridge.store.links import Link
from db_manager import crashpoint

CHATWOOT_MAX_FILE = 40 * 1024 * 1024  # Chatwoot's default attachment limit
CHATWOOT_MAX_FILES = 15
TOO_BIG = "acima do limite do Chatwoot"
CREATE_SETTLE = SETTLE  # a create whose answer was lost, still held by Chatwoot until then
TRIED = "message_tried_at"  # link data: when its message's create last went out


def ensure_linked_message(s: Services, kind: str, external_id: str, conversation_id: int, source_id: str,
                          create: Callable[[], dict], *, crash: str) -> tuple[dict, bool]:
    """Intent `kind/external_id` recorded, then ensure_message. Returns (message, fresh intent)."""
    link, fresh = s.db.links.record_intent(kind, external_id, s.clock(), conversation_id=conversation_id)
    return ensure_message(s, kind, external_id, conversation_id, source_id, create, crash=crash,
                          earlier=None if fresh else link), fresh


def mirror_message(s: Services, kind: str, key: str, conversation_id: int, source_id: str, content: str,
                   direction: str, files: Callable[[], tuple[list, list]], data: dict, *,
                   crash: str) -> tuple[dict, bool, list]:
    """One Mercado Livre message (a sale's or a claim's) in Chatwoot, once, whatever crashes in between.

    1. Its intent `kind/key` is recorded; a row left pending is looked for by `source_id` first.
    2. Made only when not found: `files()` fetches its files then ((name, content, type) that fit,
       (name, why) of those left behind, named in the message).
    3. The row records the Chatwoot message, with the flow's `data`.
    Returns (message, fresh intent, the files fetched now).
    """
    fetched: list = []

    def create() -> dict:
        downloaded, skipped = files()
        fetched.extend(downloaded)
        return mirror_with_files(s, conversation_id, source_id, content, direction, downloaded, skipped)

    existing, fresh = ensure_linked_message(s, kind, key, conversation_id, source_id, create, crash=crash)
    s.db.links.mark_created(kind, key, s.clock(), conversation_id=conversation_id, message_id=existing["id"],
                            data=data)
    return existing, fresh, fetched


def ensure_message(s: Services, kind: str, external_id: str, conversation_id: int, source_id: str,
                   create: Callable[[], dict], *, crash: str | None, earlier: Link | None) -> dict:
    """The message carrying `source_id` in the conversation: found, or made by `create()`.

    `earlier`: the pending row `kind/external_id` as the previous attempts left it (None when
    none was made). Its data keeps when its last create went out (TRIED, written as each
    leaves): a create whose answer was lost may still be held by Chatwoot, so the message not
    found before that create has settled is looked for again later rather than made twice.
    """
    # A row left for another (deleted) conversation says nothing about this one.
    if earlier is not None and earlier["conversation_id"] == conversation_id:
        message = s.chatwoot.find_message_by_source(conversation_id, source_id)
        if message is not None:
            return message
        if earlier["data"].get(TRIED) is not None:
            settle(s, earlier["data"][TRIED], source_id)
    data = (s.db.links.get(kind, external_id) or {}).get("data") or {}
    message = stamped_create(s, kind, external_id, TRIED, data, create, conversation_id=conversation_id)
    if crash:  # None: the caller's window comes later, after what goes with the message
        crashpoint(crash)
    return message


def stamped_create(s: Services, kind: str, external_id: str, key: str, data: dict, create: Callable[[], dict],
                   **fields) -> dict:
    """`create()` for the row `kind/external_id`, stamped (`data` with `key`: now, and `fields`) as
    it leaves: after any rate-budget pause, so a crash in flight settles from when it really left.

    Refused, nothing is held: the stamp goes (`data` without it), the next attempt need not
    wait. Its answer lost, Chatwoot may apply it as late as now: stamped again, settling counts
    from when we stopped waiting.
    """
    def stamp() -> None:
        s.db.links.update(kind, external_id, s.clock(), **fields, data=dict(data, **{key: s.clock()}))

    try:
        with on_departure(stamp):
            return create()
    except PermanentError:
        s.db.links.update(kind, external_id, s.clock(), **fields, data=data)
        raise
    except TransientError:
        stamp()
        raise


def settle(s: Services, attempted_at: float, what: str) -> None:
    """Raise TransientError until a Chatwoot create sent at `attempted_at` has settled."""
    http_settle(attempted_at, s.clock(), f"an earlier create of {what}", "chatwoot")


def ensure_note(s: Services, conversation_id: int, note: str, source_id: str, *, look_first: bool = True) -> None:
    """A private note, once: `look_first` unless the conversation was made just now."""
    if not look_first or s.chatwoot.find_message_by_source(conversation_id, source_id) is None:
        s.chatwoot.note(conversation_id, note, source_id=source_id)


def mirror_with_files(s: Services, conversation_id: int, source_id: str, content: str, direction: str,
                      files: list, skipped: list[tuple[str, str]]) -> dict:
    """A Mercado Livre message mirrored with its files; those left behind are named in the content."""
    if skipped:
        content += "\n\n" + "\n".join(f"[Anexo não trazido para o Chatwoot: {name} ({why})]" for name, why in skipped)
    return s.chatwoot.create_message(conversation_id, content.strip() or None, message_type=direction,
                                     source_id=source_id, files=files)


File = tuple[str, bytes, str]  # name, content, content type


def fetch_files(attachments: Iterable[tuple[str, int, Callable[[], tuple[bytes, str]]]],
                unavailable: Callable[[PermanentError], str]) -> tuple[list[File], list[tuple[str, str]]]:
    """(name, size, download) of a message's files -> (name, content, type) of those that fit in
    Chatwoot, and (name, why) of those left behind (`unavailable` says why for Mercado Livre's refusals)."""
    files, skipped = [], []
    for name, size, download in attachments:
        if size > CHATWOOT_MAX_FILE or len(files) >= CHATWOOT_MAX_FILES:
            skipped.append((name, TOO_BIG))
            continue
        try:
            content, ctype = download()
        except PermanentError as exc:
            skipped.append((name, unavailable(exc)))
            continue
        if len(content) > CHATWOOT_MAX_FILE:
            skipped.append((name, TOO_BIG))
            continue
        files.append((name, content, ctype))
    return files, skipped
