"""Pre-sale questions: Mercado Livre → Chatwoot.

Decisions (what is new, what left the list, what a changed question means) are pure
functions at the top; the I/O below follows them. Every Chatwoot object is preceded by
an intent row in `links`; a row still `pending` on the next run means "this may be
half-created: look in Chatwoot before creating".
"""

from __future__ import annotations

import logging
import time

from bridge import failures, source_ids, text
from bridge.http import PermanentError
from bridge.rules import own_parts
from bridge.services import Services
from bridge.sync.contacts import (
    NOT_CLOSED,
    forget_conversation,
    is_gone,
    mark_conversation_created,
    open_conversation,
    open_with_buyer_words,
)
from bridge.sync.ensure import TRIED, ensure_message, ensure_note
from db_manager import crashpoint
from mercado_livre_api import ReauthorizationRequired

log = logging.getLogger("bridge.questions")

CACHE_MAX_AGE = 24 * 3600.0
CHUNK = 50
REMOVED = "removed"  # link state: an agent deleted the conversation; it is not followed any more
FINAL_STATES = {"ANSWERED", "CLOSED_UNANSWERED", "BANNED", "DELETED", "DISABLED"}
STATE_NOTES = {
    "UNDER_REVIEW": "A pergunta está em análise pelo Mercado Livre e não pode ser respondida agora. Se ela voltar "
                    "a ficar disponível, a ponte avisa aqui.",
    "BANNED": "A pergunta foi banida pelo Mercado Livre e não pode mais ser respondida.",
    "DELETED": "A pergunta foi apagada (pelo comprador ou pelo Mercado Livre) e não pode mais ser respondida.",
    "DISABLED": "A pergunta foi desativada no Mercado Livre (anúncio pausado ou encerrado) e não pode mais ser "
                "respondida.",
    "CLOSED_UNANSWERED": "A pergunta foi encerrada sem resposta no Mercado Livre (anúncio finalizado) e não pode "
                         "mais ser respondida.",
}


# ---- pure decisions -------------------------------------------------------------------------------

def is_agents_answer(message: dict, answer: str) -> bool:
    """A Chatwoot message that is an agent's public reply with the published answer's text (not
    one the bridge mirrored, which carries a `meli:` source id), as the outbox sent it (plan_reply)."""
    if message.get("message_type") not in (1, "outgoing") or message.get("private") or not answer \
            or str(message.get("source_id") or "").startswith("meli:"):
        return False
    sent, _bad = text.normalize_latin1(text.markdown_to_plain(message.get("content") or ""))
    return own_parts.same_text(sent, answer)


def questions_to_create(unanswered: list[dict], created_ids: set[str]) -> list[dict]:
    """Questions not yet fully in Chatwoot, oldest first (pending intents included: they need finishing)."""
    return [q for q in unanswered if str(q["id"]) not in created_ids]


def questions_that_left(links: list[dict], unanswered_ids: set[str]) -> list[dict]:
    """Questions absent from this listing: candidates only. The list is read page by page
    with offsets, so a question answered while paging shifts the rest and one still-unanswered
    question goes missing from the listing; only the question itself says what happened."""
    return [link for link in links if link["external_id"] not in unanswered_ids]


def questions_back(links: list[dict], unanswered_ids: set[str]) -> list[dict]:
    """Watched questions (e.g. under review) the listing shows as unanswered: candidates to
    fetch; they are back only when the question's own status says UNANSWERED."""
    return [link for link in links if link["data"].get("state") == "watch" and link["external_id"] in unanswered_ids]


def first_message(question: dict, item: dict | None) -> str:
    lines = [question.get("text") or ""]
    if item:
        lines += ["", f"Produto: {item.get('title') or question.get('item_id')}"]
        if item.get("permalink"):
            lines.append(item["permalink"])
    else:
        lines += ["", f"Anúncio: {question.get('item_id')}"]
    return "\n".join(lines)


def conversation_attributes(question: dict, item: dict | None) -> dict:
    item = item or {}
    return {
        "meli_question_id": str(question["id"]),
        "meli_item_id": str(question.get("item_id") or ""),
        "meli_item_title": item.get("title") or "",
        "meli_item_url": item.get("permalink") or "",
        "meli_item_thumbnail": item.get("secure_thumbnail") or item.get("thumbnail") or "",
    }


def change_for(question: dict, answer_known: bool, state: str = "open",
               known_status: str | None = None) -> tuple[str, str | None]:
    """What a question's current status means in Chatwoot, given what we last showed.

    `state` is the link's: 'open' (answerable, shown as such) or 'watch' (we told the agent
    it cannot be answered now); `known_status` is the status that was last acted on.
    Returns (action, note): action is 'mirror_answer' (answered elsewhere), 'resolve'
    (answered by our bridge), 'note' (a state worth telling the agent), 'reopen' (answerable
    again after a note said otherwise) or 'none' (nothing changed for the agent).
    """
    status = question.get("status")
    if status == "ANSWERED":
        return ("resolve", None) if answer_known else ("mirror_answer", None)
    if status == "UNANSWERED":
        # Still unanswered while shown open is no change: missing from one listing is not news.
        return ("reopen", None) if state == "watch" else ("none", None)
    if state == "watch" and status == known_status:
        return "none", None
    return "note", STATE_NOTES.get(status, f"A pergunta mudou para o status {status} no Mercado Livre.")


# ---- I/O --------------------------------------------------------------------------------------

def sync_questions(s: Services) -> dict:
    """One poll: create what is new, follow what left the list. Returns counts."""
    started = time.monotonic()
    seller_id = s.meli.seller_id()
    unanswered = list(s.meli.unanswered_questions(seller_id))
    shapeless = [q for q in unanswered if not isinstance(q, dict) or not q.get("id")]
    if shapeless:
        # Nothing to retry or report without an id; the rest must not fail over them.
        log.warning("question search returned %d entries without an id: skipped", len(shapeless))
        unanswered = [q for q in unanswered if q not in shapeless]
    # A question that keeps failing waits for its turn; the others go on meanwhile.
    batch = failures.Batch(s, "question")
    # A question pruned or erased (closed watermark) is never imported again.
    to_create = questions_to_create(unanswered, s.db.links.ids("question", "created")
                                    | s.db.watermarks.closed("question"))
    new = [q for q in to_create if not batch.waiting(q["id"])]
    counts = {"unanswered": len(unanswered), "created": 0, "changed": 0}
    # A chunk at a time: lookups and creations interleave (both APIs' budgets work at
    # once) and what a chunk fetched is cached before a restart could lose it.
    for start in range(0, len(new), CHUNK):
        chunk = new[start:start + CHUNK]
        if batch.stopped:
            break
        items = _chunk_items(s, chunk)
        nicknames = cached_nicknames(s, [_buyer(q) for q in chunk])
        for question in chunk:
            if batch.stopped:
                break
            _ok, created = batch.run(question["id"], _create_new, s, question, items, nicknames)
            counts["created"] += bool(created)
    unanswered_ids = {str(q["id"]) for q in unanswered}
    created = s.db.links.by_status("question", "created")
    open_links = [link for link in created if link["data"].get("state", "open") == "open"]
    left, back = questions_that_left(open_links, unanswered_ids), questions_back(created, unanswered_ids)
    # Half made in Chatwoot (a crash between the conversation and its first message) and gone
    # from the listing since: the listing will never bring them back.
    stranded = questions_that_left(s.db.links.by_status("question", "pending"), unanswered_ids)
    batch.keep_only({str(q["id"]) for q in to_create} | {link["external_id"] for link in left + back + stranded})
    for link in batch.due(stranded, key=lambda link: link["external_id"]):
        _ok, created_now = batch.run(link["external_id"], _finish_stranded, s, link["external_id"])
        counts["created"] += bool(created_now)
    # Both lists are only candidates (a listing shifted by paging misses questions): the
    # question itself is fetched before anything is shown.
    for link in batch.due(left + back, key=lambda link: link["external_id"]):
        _ok, changed = batch.run(link["external_id"], _follow_fetched, s, link)
        counts["changed"] += bool(changed)
    counts["item_errors"] = batch.failed
    counts["ms"] = int((time.monotonic() - started) * 1000)
    return counts


def _chunk_items(s: Services, chunk: list[dict]) -> dict[str, dict] | None:
    """One lookup for a chunk's items; None when it failed, so each question looks up its own."""
    try:
        return cached_items(s, [str(q.get("item_id")) for q in chunk])
    except ReauthorizationRequired:
        raise
    except Exception as exc:  # noqa: BLE001 — one bad item must not fail the chunk's questions
        log.warning("item lookup failed for %d questions, each looks up its own: %s", len(chunk),
                    failures.describe(exc))
        return None


def _buyer(question: dict):
    asker = question.get("from")
    return asker.get("id") if isinstance(asker, dict) else None


def _create_new(s: Services, question: dict, items: dict[str, dict] | None, nicknames: dict[str, str]) -> bool:
    with s.locks.hold(f"question:{question['id']}"):
        if (s.db.links.get("question", question["id"]) or {}).get("status") == "created":
            return False  # a notification was faster
        item_id = str(question["item_id"])
        item = items.get(item_id) if items is not None else cached_items(s, [item_id]).get(item_id)
        # Listed because no closed watermark named it: one closed since is an erasure meanwhile.
        create_question(s, question, item, nicknames.get(str((question.get("from") or {}).get("id"))), NOT_CLOSED)
    return True


def _finish_stranded(s: Services, qid: str) -> bool:
    """Its conversation may exist, and an agent may have answered from it (it carries
    meli_question_id): the buyer's question is shown there whatever its status now."""
    with s.locks.hold(f"question:{qid}"):
        if (s.db.links.get("question", qid) or {}).get("status") == "created":
            return False  # a notification was faster
        if (s.db.watermarks.get("question", qid) or {}).get("closed_at") is not None:
            return False  # erased or pruned: never shown again
        question = s.meli.question(qid)
        item_id = str(question.get("item_id"))
        buyer = (question.get("from") or {}).get("id")
        create_question(s, question, cached_items(s, [item_id]).get(item_id),
                        cached_nicknames(s, [buyer]).get(str(buyer)), NOT_CLOSED)
        follow_question(s, s.db.links.get("question", qid), question)
    return True


def _follow_fetched(s: Services, link: dict) -> bool:
    with s.locks.hold(f"question:{link['external_id']}"):
        # A notification may have moved it on while we waited for the lock.
        current = s.db.links.get("question", link["external_id"]) or link
        return follow_question(s, current, s.meli.question(link["external_id"]))


def sync_one_question(s: Services, question_id: str) -> str:
    """A notification named this question: bring Chatwoot in line with it."""
    with s.locks.hold(f"question:{question_id}"):
        return _sync_one_question(s, question_id)


def _sync_one_question(s: Services, question_id: str) -> str:
    question = s.meli.question(question_id)
    link = s.db.links.get("question", question_id)
    if link and link["status"] == "created":
        if link["data"].get("state") == REMOVED:
            return "conversation deleted in chatwoot"
        return "changed" if follow_question(s, link, question) else "unchanged"
    if question.get("status") != "UNANSWERED":
        return "not unanswered"
    if (s.db.watermarks.get("question", question_id) or {}).get("closed_at") is not None:
        return "erased or pruned"
    if str(question.get("seller_id")) != str(s.meli.seller_id()):
        return "other seller"
    item = cached_items(s, [str(question["item_id"])]).get(str(question["item_id"]))
    buyer = (question.get("from") or {}).get("id")
    create_question(s, question, item, cached_nicknames(s, [buyer]).get(str(buyer)), NOT_CLOSED)
    return "created"


def create_question(s: Services, question: dict, item: dict | None, nickname: str | None,
                    mark_seen: float | None = None, *, again: bool = True) -> None:
    """`mark_seen`: the question's watermark as the caller saw it (contacts.open_conversation).
    `again`: whether a conversation found gone before the question went in is made again now."""
    started = time.monotonic()
    qid = str(question["id"])
    buyer_id = (question.get("from") or {}).get("id")
    inbox_id = s.settings.chatwoot_questions_inbox_id
    contact_id, conversation_id, fresh = open_conversation(
        s, kind="question", external_id=qid, inbox_id=inbox_id, buyer_id=buyer_id, nickname=nickname,
        custom_attributes=conversation_attributes(question, item), mark_seen=mark_seen)
    # A conversation made just now holds no message yet: no need to look for one.
    source = source_ids.question(qid)
    try:
        message = ensure_message(
            s, "question", qid, conversation_id, source, lambda: s.chatwoot.create_message(
                conversation_id, first_message(question, item), message_type="incoming", source_id=source),
            crash="question_message_created", earlier=None if fresh else s.db.links.get("question", qid))
    except PermanentError as exc:
        if not again or not is_gone(exc):
            raise
        # Deleted before the question went in (half-created before a crash, or made just now and
        # deleted with its contact meanwhile): it was never shown, and the agent never saw it go.
        # Started over now, once: a failure would leave it out of Chatwoot for the item's backoff.
        forget_conversation(s, "question", qid, conversation_id)
        create_question(s, question, item, nickname, mark_seen, again=False)
        return
    # Found too (a row still pending): the question may have gone in just before a crash, unseen.
    open_with_buyer_words(s, conversation_id)
    mark_conversation_created(s, "question", qid, contact_id=contact_id, conversation_id=conversation_id,
                              message_id=message["id"], data={"state": "open", "item_id": str(question.get("item_id")),
                                                              "buyer_id": buyer_id})
    log.info("question in chatwoot question=%s buyer=%s item=%s conversation=%s message=%s in %dms%s", qid,
             buyer_id, question.get("item_id"), conversation_id, message["id"],
             (time.monotonic() - started) * 1000, "" if fresh else " (reconciled)")


def follow_question(s: Services, link: dict, question: dict) -> bool:
    """Bring a mirrored question's conversation in line with the question. Returns False when
    nothing changed for the agent."""
    qid, conversation_id = link["external_id"], link["conversation_id"]
    answer_known = _answer_linked(s, qid)
    if question.get("status") == "ANSWERED" and not answer_known:
        # The agent's reply may have reached Mercado Livre just before a crash; or the
        # outbox recorded it a moment ago, between the two reads.
        answer_known = own_parts.adopt_answer_in_flight(s, qid, (question.get("answer") or {}).get("text") or "") \
            or _answer_linked(s, qid)
    action, note = change_for(question, answer_known=answer_known, state=link["data"].get("state", "open"),
                              known_status=link["data"].get("ml_status"))
    status = question.get("status")
    if action == "none":
        log.debug("question unchanged question=%s status=%s", qid, status)
        return False
    state = "open" if action == "reopen" else ("closed" if status in FINAL_STATES else "watch")
    try:
        _show_change(s, link, question, action, note, state)
    except PermanentError as exc:
        if not is_gone(exc):
            raise
        # Deleted by an agent (or with its contact, e.g. an erasure). Decision: it is not
        # created again, and not followed any more. Whatever is left to show (an answer
        # given on the site, a status note) is not worth undoing a deliberate deletion, and
        # a person erased must not come back. A question still unanswered stays answerable
        # on Mercado Livre itself; the buyer's later questions get conversations as usual.
        s.db.links.update("question", qid, s.clock(), data=dict(link["data"], state=REMOVED, ml_status=status))
        log.warning("question conversation deleted in chatwoot question=%s conversation=%s status=%s: not "
                    "recreated", qid, conversation_id, status)
        return True
    crashpoint("question_followed")
    s.db.links.update("question", qid, s.clock(), data=dict(link["data"], state=state, ml_status=status))
    log.info("question changed question=%s conversation=%s status=%s action=%s", qid, conversation_id, status, action)
    return True


def _show_change(s: Services, link: dict, question: dict, action: str, note: str | None, state: str) -> None:
    qid, conversation_id = link["external_id"], link["conversation_id"]
    status = question.get("status")
    if action == "mirror_answer":
        _mirror_answer(s, qid, conversation_id, question)
    elif action == "note":
        ensure_note(s, conversation_id, note, source_ids.note("question", qid, status))
    elif action == "reopen":
        # Keyed on the row's last change: the same reopening after a crash finds its note.
        ensure_note(s, conversation_id, "A pergunta voltou a aceitar resposta no Mercado Livre.",
                    source_ids.note("question", qid, "reopened", int(link["updated_at"])))
        s.chatwoot.set_status(conversation_id, "open")
    if state == "closed":
        s.chatwoot.set_status(conversation_id, "resolved")


def _answer_linked(s: Services, qid: str) -> bool:
    return (s.db.links.get("answer", qid) or {}).get("status") == "created"


def _mirror_answer(s: Services, qid: str, conversation_id: int, question: dict) -> None:
    """Answered on the Mercado Livre site or app: show the answer as the seller's message.

    1. The intent `answer/qid` is recorded. Not fresh and never tried (a crash before the mirror
       left, or a restore: the state put back may not know a reply the bridge delivered after the
       backup), the conversation is read first: an agent's message there with the published
       text is that answer, adopted as it.
    2. Otherwise the answer is mirrored once (looked for by its source id when not fresh; a mirror
       that left and lost its answer is waited for: one look per attempt, as for every create).
    """
    source = source_ids.answer(qid)
    answer = (question.get("answer") or {}).get("text") or ""
    link, fresh = s.db.links.record_intent("answer", qid, s.clock(), conversation_id=conversation_id)
    if not fresh and (link["data"] or {}).get(TRIED) is None:
        own = next((m for m in s.chatwoot.all_messages(conversation_id) if is_agents_answer(m, answer)), None)
        if own is not None:
            s.db.links.mark_created("answer", qid, s.clock(), conversation_id=conversation_id,
                                    message_id=own["id"], data={"by": "bridge"})
            log.info("answer found as an agent's message question=%s conversation=%s message=%s", qid,
                     conversation_id, own["id"])
            return
    message = ensure_message(
        s, "answer", qid, conversation_id, source,
        lambda: s.chatwoot.create_message(conversation_id, answer, message_type="outgoing", source_id=source),
        crash="answer_mirrored", earlier=None if fresh else link)
    s.db.links.mark_created("answer", qid, s.clock(), conversation_id=conversation_id, message_id=message["id"],
                            data={"by": "mercadolivre"})


def cached_items(s: Services, item_ids: list[str]) -> dict[str, dict]:
    """Items by id; fetched with multiget only when not seen in the last day."""
    wanted = sorted(set(item_ids))
    found = s.db.cache.get_many("item", wanted, CACHE_MAX_AGE, s.clock())
    missing = [i for i in wanted if i not in found]
    if missing:
        fetched = {k: {f: v.get(f) for f in ("id", "title", "permalink", "secure_thumbnail", "thumbnail", "price")}
                   for k, v in s.meli.items(missing).items()}
        s.db.cache.put_many("item", fetched, s.clock())
        found.update(fetched)
    return found


def cached_nicknames(s: Services, user_ids: list) -> dict[str, str]:
    wanted = sorted({str(u) for u in user_ids if u})
    found = s.db.cache.get_many("user", wanted, CACHE_MAX_AGE, s.clock())
    fetched = {}
    for user_id in wanted:
        if user_id in found:
            continue
        try:
            fetched[user_id] = s.meli.user(user_id).get("nickname") or f"Comprador {user_id}"
        except Exception as exc:  # noqa: BLE001 — a nickname is cosmetic; never block a question on it
            log.warning("buyer nickname unavailable user=%s error=%s", user_id, exc)
            found[user_id] = f"Comprador {user_id}"
    s.db.cache.put_many("user", fetched, s.clock())
    found.update(fetched)
    return found
