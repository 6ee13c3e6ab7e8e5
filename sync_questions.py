"""Pre-sale questions: Mercado Livre → Chatwoot.

Decisions (what is new, what left the list, what a changed question means) are pure
functions at the top; the I/O below follows them. Every Chatwoot object is preceded by
an intent row in `links`; a row still `pending` on the next run means "this may be
half-created: look in Chatwoot before creating".
"""

from __future__ import annotations

import logging
import time

import outbox
from contacts import ensure_contact, ensure_conversation
from db_manager import crashpoint
from services import Services

log = logging.getLogger("bridge.questions")

CACHE_MAX_AGE = 24 * 3600.0
CHUNK = 50
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

def questions_to_create(unanswered: list[dict], created_ids: set[str]) -> list[dict]:
    """Questions not yet fully in Chatwoot, oldest first (pending intents included: they need finishing)."""
    return [q for q in unanswered if str(q["id"]) not in created_ids]


def questions_that_left(open_links: list[dict], unanswered_ids: set[str]) -> list[dict]:
    return [link for link in open_links if link["external_id"] not in unanswered_ids]


def questions_back(links: list[dict], unanswered_ids: set[str]) -> list[dict]:
    """Questions we stopped watching (e.g. under review) that are answerable again."""
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


def change_for(question: dict, answer_known: bool) -> tuple[str, str | None]:
    """What a question that left the unanswered list means in Chatwoot.

    Returns (action, note): action is 'mirror_answer' (answered elsewhere), 'resolve'
    (answered by our bridge), 'note' (a state worth telling the agent), or 'reopen'.
    """
    status = question.get("status")
    if status == "ANSWERED":
        return ("resolve", None) if answer_known else ("mirror_answer", None)
    if status == "UNANSWERED":
        return "reopen", None
    return "note", STATE_NOTES.get(status, f"A pergunta mudou para o status {status} no Mercado Livre.")


# ---- I/O --------------------------------------------------------------------------------------

def sync_questions(s: Services) -> dict:
    """One poll: create what is new, follow what left the list. Returns counts."""
    started = time.monotonic()
    seller_id = s.meli.seller_id()
    unanswered = list(s.meli.unanswered_questions(seller_id))
    new = questions_to_create(unanswered, s.db.link_ids("question", "created"))
    counts = {"unanswered": len(unanswered), "created": 0, "changed": 0}
    # A chunk at a time: lookups and creations interleave (both APIs' budgets work at
    # once) and what a chunk fetched is cached before a restart could lose it.
    for start in range(0, len(new), CHUNK):
        chunk = new[start:start + CHUNK]
        if s.stopping.is_set():
            break
        items = cached_items(s, [str(q["item_id"]) for q in chunk])
        nicknames = cached_nicknames(s, [(q.get("from") or {}).get("id") for q in chunk])
        for question in chunk:
            if s.stopping.is_set():
                break
            with s.locks.hold(f"question:{question['id']}"):
                if (s.db.link("question", question["id"]) or {}).get("status") == "created":
                    continue  # a notification was faster
                create_question(s, question, items.get(str(question["item_id"])),
                                nicknames.get(str((question.get("from") or {}).get("id"))))
            counts["created"] += 1
    unanswered_ids = {str(q["id"]) for q in unanswered}
    created = s.db.links_by_status("question", "created")
    open_links = [link for link in created if link["data"].get("state", "open") == "open"]
    for link in questions_that_left(open_links, unanswered_ids):
        if s.stopping.is_set():
            break
        with s.locks.hold(f"question:{link['external_id']}"):
            follow_question(s, link, s.meli.question(link["external_id"]))
        counts["changed"] += 1
    # Back from review: the search already says it is unanswered again; no fetch needed.
    for link in questions_back(created, unanswered_ids):
        with s.locks.hold(f"question:{link['external_id']}"):
            follow_question(s, link, {"status": "UNANSWERED"})
        counts["changed"] += 1
    counts["ms"] = int((time.monotonic() - started) * 1000)
    return counts


def sync_one_question(s: Services, question_id: str) -> str:
    """A notification named this question: bring Chatwoot in line with it."""
    with s.locks.hold(f"question:{question_id}"):
        return _sync_one_question(s, question_id)


def _sync_one_question(s: Services, question_id: str) -> str:
    question = s.meli.question(question_id)
    link = s.db.link("question", question_id)
    if link and link["status"] == "created":
        if question.get("status") == "UNANSWERED" and link["data"].get("state", "open") == "open":
            return "unchanged"
        follow_question(s, link, question)
        return "changed"
    if question.get("status") != "UNANSWERED":
        return "not unanswered"
    if str(question.get("seller_id")) != str(s.meli.seller_id()):
        return "other seller"
    item = cached_items(s, [str(question["item_id"])]).get(str(question["item_id"]))
    buyer = (question.get("from") or {}).get("id")
    create_question(s, question, item, cached_nicknames(s, [buyer]).get(str(buyer)))
    return "created"


def create_question(s: Services, question: dict, item: dict | None, nickname: str | None) -> None:
    started = time.monotonic()
    qid = str(question["id"])
    buyer_id = (question.get("from") or {}).get("id")
    inbox_id = s.settings.chatwoot_questions_inbox_id
    contact_id, source_id = ensure_contact(s, buyer_id, nickname, inbox_id)
    conversation_id, fresh = ensure_conversation(
        s, kind="question", external_id=qid, inbox_id=inbox_id, contact_id=contact_id, source_id=source_id,
        custom_attributes=conversation_attributes(question, item), buyer_id=buyer_id)
    # A conversation made just now holds no message yet: no need to look for one.
    source = f"meli:question:{qid}"
    message = None if fresh else s.chatwoot.find_message_by_source(conversation_id, source)
    if message is None:
        message = s.chatwoot.create_message(conversation_id, first_message(question, item),
                                            message_type="incoming", source_id=source)
        crashpoint("question_message_created")
    s.db.link_created("question", qid, s.clock(), contact_id=contact_id, conversation_id=conversation_id,
                      message_id=message["id"], data={"state": "open", "item_id": str(question.get("item_id"))})
    log.info("question in chatwoot question=%s buyer=%s item=%s conversation=%s message=%s in %dms%s", qid,
             buyer_id, question.get("item_id"), conversation_id, message["id"],
             (time.monotonic() - started) * 1000, "" if fresh else " (reconciled)")


def follow_question(s: Services, link: dict, question: dict) -> None:
    """A question we mirrored changed on Mercado Livre."""
    qid, conversation_id = link["external_id"], link["conversation_id"]
    answer_known = _answer_linked(s, qid)
    if question.get("status") == "ANSWERED" and not answer_known:
        # The agent's reply may have reached Mercado Livre just before a crash; or the
        # outbox recorded it a moment ago, between the two reads.
        answer_known = outbox.adopt_answer_in_flight(s, qid, (question.get("answer") or {}).get("text") or "") \
            or _answer_linked(s, qid)
    action, note = change_for(question, answer_known=answer_known)
    status = question.get("status")
    state = "open" if action == "reopen" else ("closed" if status in FINAL_STATES else "watch")
    if action == "mirror_answer":
        _mirror_answer(s, qid, conversation_id, question)
    elif action == "note":
        note_source = f"meli:note:question:{qid}:{status}"
        if s.chatwoot.find_message_by_source(conversation_id, note_source) is None:
            s.chatwoot.note(conversation_id, note, source_id=note_source)
    elif action == "reopen":
        # Keyed on the row's last change: the same reopening after a crash finds its note.
        note_source = f"meli:note:question:{qid}:reopened:{int(link['updated_at'])}"
        if s.chatwoot.find_message_by_source(conversation_id, note_source) is None:
            s.chatwoot.note(conversation_id, "A pergunta voltou a aceitar resposta no Mercado Livre.",
                            source_id=note_source)
        s.chatwoot.set_status(conversation_id, "open")
    if state == "closed":
        s.chatwoot.set_status(conversation_id, "resolved")
    crashpoint("question_followed")
    s.db.link_update("question", qid, s.clock(), data=dict(link["data"], state=state, ml_status=status))
    log.info("question changed question=%s conversation=%s status=%s action=%s", qid, conversation_id, status, action)


def _answer_linked(s: Services, qid: str) -> bool:
    return (s.db.link("answer", qid) or {}).get("status") == "created"


def _mirror_answer(s: Services, qid: str, conversation_id: int, question: dict) -> None:
    """Answered on the Mercado Livre site or app: show the answer as the seller's message."""
    source = f"meli:answer:{qid}"
    link, fresh = s.db.link_intent("answer", qid, s.clock(), conversation_id=conversation_id)
    message = None if fresh else s.chatwoot.find_message_by_source(conversation_id, source)
    if message is None:
        answer = (question.get("answer") or {}).get("text") or ""
        message = s.chatwoot.create_message(conversation_id, answer, message_type="outgoing", source_id=source)
        crashpoint("answer_mirrored")
    s.db.link_created("answer", qid, s.clock(), conversation_id=conversation_id, message_id=message["id"],
                      data={"by": "mercadolivre"})


def cached_items(s: Services, item_ids: list[str]) -> dict[str, dict]:
    """Items by id; fetched with multiget only when not seen in the last day."""
    wanted = sorted(set(item_ids))
    found = s.db.cache_get_many("item", wanted, CACHE_MAX_AGE, s.clock())
    missing = [i for i in wanted if i not in found]
    if missing:
        fetched = {k: {f: v.get(f) for f in ("id", "title", "permalink", "secure_thumbnail", "thumbnail", "price")}
                   for k, v in s.meli.items(missing).items()}
        s.db.cache_put_many("item", fetched, s.clock())
        found.update(fetched)
    return found


def cached_nicknames(s: Services, user_ids: list) -> dict[str, str]:
    wanted = sorted({str(u) for u in user_ids if u})
    found = s.db.cache_get_many("user", wanted, CACHE_MAX_AGE, s.clock())
    fetched = {}
    for user_id in wanted:
        if user_id in found:
            continue
        try:
            fetched[user_id] = s.meli.user(user_id).get("nickname") or f"Comprador {user_id}"
        except Exception as exc:  # noqa: BLE001 — a nickname is cosmetic; never block a question on it
            log.warning("buyer nickname unavailable user=%s error=%s", user_id, exc)
            found[user_id] = f"Comprador {user_id}"
    s.db.cache_put_many("user", fetched, s.clock())
    found.update(fetched)
    return found
