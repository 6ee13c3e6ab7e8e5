"""Agent replies, the poller's side: recorded replies delivered to Mercado Livre, part after part.

The poller claims due replies (`pending`, or `sending` whose worker died) and sends part
after part, each part's progress committed; then the outcomes are shown in Chatwoot
(bridge.replies.report). A part found `sending` when claimed may have reached Mercado Livre
before a crash, so the remote side is checked first.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

from bridge.backoff import retry_delay
from bridge.http import SETTLE, ApiError, PermanentError, TransientError, on_departure, settle
from bridge.replies.accept import ANSWER_TAKEN, LINK_KIND, UNLINKED
from bridge.replies.refusal import Refusal, receiver_name
from bridge.replies.report import GIVE_UP_AFTER, report_outcomes, report_reply
from bridge.rules import claims as claim_rules
from bridge.rules import own_parts
from bridge.rules.conversations import (
    bridge_items,
    chatwoot_record,
    confirmed_conversation,
    knows_conversation,
    made_for,
    names_buyer,
    names_item,
    owner,
)
from bridge.rules.sale import sale_context
from bridge.services import Services
from bridge.store.replies import BUSY
from db_manager import crashpoint
from mercado_livre_api import MELI_AGENT_ID, ReauthorizationRequired

log = logging.getLogger("bridge.outbox")

LEASE_SECONDS = 300.0
IN_DOUBT_SETTLE = SETTLE  # a send whose answer was lost, still held by Mercado Livre until then
WORKERS = 8
REAUTH_RECHECK = 30.0

SEE_LOGS = "Se o problema continuar, verifique os logs da ponte."


class ReplyGone(Exception):
    """The reply was deleted (an erasure of its buyer) while it was in hand: what the last call
    returned belongs to nobody now and is dropped."""


def _still_there(found: bool | str | None) -> None:
    """Every write after a remote call reports whether the reply was still there to write to."""
    if found is None or found is False:
        raise ReplyGone


class DeliveryFailed(Exception):
    """A reply that cannot reach the buyer, and why."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.error)
        self.refusal = refusal


def run_outbox(s: Services, max_items: int = 200) -> dict:
    """Deliver what is due, then show outcomes in Chatwoot. Returns counts.

    Replies to different questions or sales go out in parallel (Mercado Livre may take
    seconds per call); replies to the same one go in order, in one worker.
    """
    counts: Counter = Counter()
    groups = _in_order_groups(s.db.replies.due(s.clock(), limit=max_items))
    if groups:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(groups)), thread_name_prefix="outbox") as pool:
            # Each worker keeps the job's context (its rate-budget priority).
            futures = [pool.submit(contextvars.copy_context().run, _deliver_in_order, s, ids)
                       for ids in groups.values()]
            for future in futures:
                counts.update(future.result())
    counts["reported"] += report_outcomes(s)
    return {k: counts[k] for k in ("delivered", "failed", "retry", "reported")}


def _in_order_groups(due: list[dict]) -> dict[tuple, list[int]]:
    """Due replies in groups each delivered in order by one worker: those to the same question, sale or
    claim, and those written in the same conversation (a reply whose item is decided at its delivery goes
    to that conversation's item, after the replies written before it and before those written after)."""
    group_of: dict[tuple, tuple] = {}
    groups: dict[tuple, list[int]] = {}
    for row in due:  # oldest first
        keys = [(row["kind"], "target", row["target_id"]), (row["kind"], "conversation", row["conversation_id"])]
        if row["target_id"] is None:
            keys = keys[1:]
        found = []
        for key in keys:
            if key in group_of and group_of[key] not in found:
                found.append(group_of[key])
        name = found[0] if found else keys[0]
        ids = groups.setdefault(name, [])
        for other in found[1:]:  # this reply joins two groups: one worker, still oldest first
            ids.extend(groups.pop(other))
            group_of.update({key: name for key, group in group_of.items() if group == other})
        ids.append(row["id"])
        ids.sort()
        group_of.update({key: name for key in keys})
    return groups


def _deliver_in_order(s: Services, reply_ids: list[int]) -> Counter:
    counts: Counter = Counter()
    for reply_id in reply_ids:
        if s.stopping.is_set():
            break
        try:
            outcome = deliver(s, reply_id)
        except Exception:  # noqa: BLE001 — not even the bookkeeping of one reply may stop the others
            # The reply stays `sending`: its lease runs out and it is claimed (and counted) again.
            log.exception("reply delivery bookkeeping crashed reply=%s", reply_id)
            counts["retry"] += 1
            break
        if outcome:
            counts[outcome] += 1
        if outcome in ("delivered", "failed") and (finished := s.db.replies.get(reply_id)):
            # Tell the agent now, not after the whole batch (unless the reply was erased meanwhile).
            counts["reported"] += report_reply(s, finished)
        elif outcome in ("retry", None):
            # The next replies to this target wait for this one, in order (None: another
            # poller claimed it between our listing and our claim, and may still be sending it).
            break
    return counts


def deliver(s: Services, reply_id: int) -> str | None:
    """Try one reply once. Returns 'delivered', 'failed', 'retry' or None (not ours to take, or gone).

    A reply erased while it is in hand (`forget-buyer`) is gone for good: its id is never given
    to another reply, and each write after a remote call finds nothing to write to (ReplyGone),
    so what the call returned is dropped and logged by ids.
    """
    reply = s.db.replies.claim(reply_id, s.clock(), LEASE_SECONDS)
    if reply is None:
        return None
    ids = f"reply={reply_id} message={reply['chatwoot_message_id']} conversation={reply['conversation_id']} " \
          f"{LINK_KIND.get(reply['kind'], 'pack')}={reply['target_id']}"
    try:
        return _deliver_claimed(s, reply, ids)
    except ReplyGone:
        log.warning("reply erased while in hand, its outcome dropped %s", ids)
        return None


def _deliver_claimed(s: Services, reply: dict, ids: str) -> str:
    reply_id = reply["id"]
    started = time.monotonic()
    try:
        reply = _check_addressee(s, reply)
        if reply["kind"] == "answer":
            _deliver_answer(s, reply)
        elif reply["kind"] == "claim":
            _deliver_claim(s, reply)
        else:
            _deliver_message(s, reply)
    except ReauthorizationRequired:
        # Waiting for a person: not an attempt, but the same 24 h limit as every reply, so
        # an agent is not left thinking a day-old reply is still on its way.
        if s.clock() - reply["created_at"] > GIVE_UP_AFTER:
            # Parts sent before the authorization was lost are said, as for every other failure.
            shown = REAUTH_GAVE_UP.after(s.db.replies.parts(reply_id), receiver_name(s.db.replies.get(reply_id)))
            _still_there(s.db.replies.mark_failed(reply_id, shown.error, shown.note, s.clock()))
            log.error("reply failed after 24h waiting for reauthorization %s", ids)
            return "failed"
        _still_there(s.db.replies.retry_later(reply_id, s.clock() + REAUTH_RECHECK,
                                              "aguardando reautorização do Mercado Livre", s.clock(),
                                              count_attempt=False))
        log.warning("reply waiting for reauthorization %s", ids)
        return "retry"
    except DeliveryFailed as exc:
        shown = exc.refusal.after(s.db.replies.parts(reply_id), receiver_name(s.db.replies.get(reply_id)))
        _still_there(s.db.replies.mark_failed(reply_id, shown.error, shown.note, s.clock()))
        log.warning("reply failed %s reason=%r after %dms", ids, exc.refusal.for_log,
                    (time.monotonic() - started) * 1000)
        return "failed"
    except ApiError as exc:
        return _transient(s, reply, exc, ids)
    except ReplyGone:
        raise
    except Exception as exc:  # noqa: BLE001 — an unexpected bug must not lose the reply
        log.exception("reply delivery crashed %s", ids)
        return _transient(s, reply, TransientError(f"unexpected error: {type(exc).__name__}"), ids)
    _still_there(s.db.replies.mark_delivered(reply_id, s.clock()))
    log.info("reply delivered %s attempts=%d in %dms (accepted %.1fs ago)", ids, reply["attempts"],
             (time.monotonic() - started) * 1000, s.clock() - reply["created_at"])
    return "delivered"


def _check_addressee(s: Services, reply: dict) -> dict:
    """A reply goes only to the item the bridge itself showed in its conversation; returns the reply,
    its target now that one.

    The listener takes it from the bridge's rows; known to none of them (a create whose answer was
    lost, a row erased, a database put back from a backup), from the conversation's attribute, which
    agents edit: a typo, another buyer's sale, cleared (soak seeds 53003 and 20261129). So, before its
    first part leaves, a conversation the bridge's rows do not give to the target (made, found and
    checked, or deleted since, by the bridge; or an answer or message it mirrored there) is read from
    Chatwoot, its messages too: the bridge's own messages there (their source ids), and the item it made the
    conversation for (its additional attributes, which agents cannot edit: made_for_item), name its item, and
    the reply goes to that one, whatever the attribute says (rules.conversations.owner). With none of
    them, the attribute as Chatwoot stores it counts, when no other conversation of the bridge's holds
    that item and the buyer the bridge made the conversation for (its additional attributes, which agents
    cannot edit) is that item's: an id typed into another buyer's conversation, one whose item retention
    pruned, reaches nobody. Otherwise nothing goes, and the agent is told why.
    """
    if any(part["status"] == "sent" or (part["status"] == "sending" and part["last_attempt_at"] is not None)
           for part in s.db.replies.parts(reply["id"])):
        # Checked before its first part left. Not a part a restore put in doubt (db.replies.put_in_doubt):
        # 'sending' with no attempt stamped, nothing of it left from this state, and it is checked as any other.
        return reply
    kind, target, conversation_id = LINK_KIND.get(reply["kind"], "pack"), reply["target_id"], reply["conversation_id"]
    if target is not None and (knows_conversation(s.db.links.get(kind, target), conversation_id)
                               or s.db.links.bridge_used(kind, target, conversation_id)) \
            and s.db.links.shown_in(kind, conversation_id) <= {target}:
        return reply  # deleted since it was written, the agent's reply still goes: the bridge showed the item there
    inbox_id = {"question": s.settings.chatwoot_questions_inbox_id, "claim": s.settings.chatwoot_claims_inbox_id}.get(
        kind, s.settings.chatwoot_messages_inbox_id)
    found = chatwoot_record(s, conversation_id)
    shown = bridge_items(s, kind, conversation_id, found) if found is not None else None
    if found is None or shown is None:
        log.warning("reply's conversation is gone in chatwoot reply=%s conversation=%s %s=%s", reply["id"],
                    conversation_id, kind, target)
        raise DeliveryFailed(NOT_ITS_CONVERSATION)
    item, why = owner(target, shown,
                      attribute_confirmed=target is not None and names_item(found, kind, target, inbox_id),
                      claimed_elsewhere=target is not None and (
                          s.db.links.others_using(kind, target, conversation_id)
                          or confirmed_conversation(s.db.links.get(kind, target)) not in (None, conversation_id)))
    if item is not None and not shown and made_for(found) is not None \
            and not names_buyer(found, _target_buyer(s, kind, item)):
        item, why = None, "unconfirmed"  # the attribute alone named it, in another buyer's conversation
    if item is None:
        log.warning("reply's conversation is not its target's reply=%s conversation=%s %s=%s: %s (the bridge "
                    "showed %s there)", reply["id"], conversation_id, kind, target, why, sorted(shown) or "nothing")
        raise DeliveryFailed(ADDRESSEE_REFUSALS[why])
    if item != target:
        moved = s.db.replies.retarget(reply["id"], item, exclusive=reply["kind"] == "answer", now=s.clock())
        if moved is None:
            raise ReplyGone
        if moved == BUSY:
            # Sent beside it, the two replies' parts would interleave in the buyer's thread; sent before an
            # earlier one, they would read out of order. Moved once that one is done.
            raise TransientError(f"another reply to {kind} {item} goes first", retry_after=5.0)
        if moved is False:  # the question the bridge showed there already has its answer
            raise DeliveryFailed(Refusal(*ANSWER_TAKEN))
        log.warning("reply goes to the %s the bridge showed in its conversation, not the one its attribute named "
                    "reply=%s conversation=%s %s=%s attribute=%s", kind, reply["id"], conversation_id, kind, item,
                    target)
    return dict(reply, target_id=item)


def _target_buyer(s: Services, kind: str, target: str):
    """The buyer of the item a reply names: from its row, or (pruned by retention: no row) from
    Mercado Livre for a sale or a question. None when not known."""
    buyer_id = (((s.db.links.get(kind, target) or {}).get("data")) or {}).get("buyer_id")
    if buyer_id is None and kind == "pack":
        buyer_id = sale_context(s, target, [])["buyer_id"]
    elif buyer_id is None and kind == "question":
        buyer_id = ((s.meli.question(target) or {}).get("from") or {}).get("id")
    return buyer_id


NOT_ITS_CONVERSATION = Refusal(
    "conversa não confirmada pelo Chatwoot",
    "O Chatwoot não registra esta conversa como a deste item do Mercado Livre (os atributos meli_ da conversa "
    "indicam outro item, ou a conversa foi apagada). Por segurança, a mensagem não foi enviada a ninguém. "
    "Responda na conversa do comprador no Chatwoot ou pelo Mercado Livre.")
ADDRESSEE_REFUSALS = {
    "unlinked": UNLINKED,
    "unconfirmed": NOT_ITS_CONVERSATION,
    "elsewhere": Refusal(
        "conversa não é a deste item",
        "Só o atributo meli_ desta conversa (que os agentes podem editar) indica este item do Mercado Livre, e a "
        "ponte não mostrou nada dele aqui: o item tem outra conversa, criada pela ponte. Por segurança, a "
        "mensagem não foi enviada a ninguém. Responda na conversa do item no Chatwoot ou pelo Mercado Livre."),
    "several": Refusal(
        "conversa com mais de um item",
        "A ponte mostrou mais de um item do Mercado Livre nesta conversa e não sabe a qual deles a mensagem se "
        "refere. Por segurança, ela não foi enviada a ninguém. Responda na conversa de cada item no Chatwoot ou "
        "pelo Mercado Livre."),
}


REAUTH_GAVE_UP = Refusal("Mercado Livre sem autorização por 24 h",
                         "A resposta esperou 24 horas pela reautorização da conta no Mercado Livre e não foi "
                         "enviada. Peça a quem administra a ponte para autorizar de novo (./bridge.sh authorize) "
                         "e depois envie a resposta outra vez, ou responda pelo Mercado Livre.",
                         "A conta da ponte ficou 24 horas sem autorização do Mercado Livre (peça a quem administra a "
                         "ponte para autorizar de novo: ./bridge.sh authorize).")


def _transient(s: Services, reply: dict, exc: ApiError, ids: str) -> str:
    now = s.clock()
    if now - reply["created_at"] > GIVE_UP_AFTER:
        shown = Refusal(
            "Mercado Livre indisponível por 24 h",
            "A resposta não pôde ser entregue ao Mercado Livre durante 24 horas de tentativas "
            f"(último erro: {exc.short()}). Envie de novo ou responda pelo Mercado Livre.",
            f"O Mercado Livre ficou indisponível durante 24 horas de tentativas (último erro: {exc.short()}).",
        ).after(s.db.replies.parts(reply["id"]), receiver_name(s.db.replies.get(reply["id"])))
        _still_there(s.db.replies.mark_failed(reply["id"], shown.error, shown.note, now))
        log.error("reply failed after 24h of retries %s last_error=%r", ids, exc.short())
        return "failed"
    delay = retry_delay(reply["attempts"], exc.retry_after)
    _still_there(s.db.replies.retry_later(reply["id"], now + delay, exc.short()[:300], now))
    log.warning("reply retry in %.1fs %s attempt=%d error=%r", delay, ids, reply["attempts"], exc.short())
    return "retry"


def _deliver_answer(s: Services, reply: dict) -> None:
    part = s.db.replies.parts(reply["id"])[0]
    question_id = reply["target_id"]
    if part["status"] != "sent":
        _still_there(s.db.replies.mark_part_sending(reply["id"], 0, s.clock()))
        try:
            # Stamped as it leaves: an answer in doubt is one that left (see _check_addressee).
            with on_departure(partial(_attempt_ended, s, reply, part)):
                s.meli.answer_question(int(question_id), part["text"])
        except PermanentError as exc:
            if exc.code != "not_unanswered_question" and "not_unanswered" not in (exc.message or ""):
                raise DeliveryFailed(_refusal(exc, "a resposta")) from None
            _check_already_answered(s, question_id, part["text"])
        crashpoint("answer_posted")
    # The agent's own message is the answer in Chatwoot: the question sync must not mirror it again.
    _still_there(s.db.replies.mark_answer_sent(reply["id"], question_id, reply["conversation_id"],
                                               reply["chatwoot_message_id"], s.clock()))


def _check_already_answered(s: Services, question_id: str, sent_text: str) -> None:
    """`not_unanswered_question`: our own earlier attempt, or someone else's answer?"""
    question = s.meli.question(question_id)
    answer = (question.get("answer") or {}).get("text") or ""
    if answer and own_parts.same_text(answer, sent_text):
        return  # our previous attempt reached Mercado Livre before a crash or a lost response
    status = question.get("status") or "?"
    if answer:
        raise DeliveryFailed(Refusal(
            "pergunta já respondida no Mercado Livre",
            "Esta pergunta já foi respondida por outro canal (site ou app do Mercado Livre), "
            f"então sua resposta não foi enviada. Resposta que está publicada:\n\n> {answer}"))
    raise DeliveryFailed(Refusal(
        f"pergunta não aceita mais resposta ({status})",
        f"A pergunta está com status {status} no Mercado Livre (apagada, banida ou em análise) e "
        "não aceita resposta. Nada foi enviado ao comprador."))


def _deliver_message(s: Services, reply: dict) -> None:
    pack_id = reply["target_id"]
    seller_id = s.meli.seller_id()
    link = s.db.links.get("pack", pack_id)
    data = (link or {}).get("data") or {}
    parts = s.db.replies.parts(reply["id"])
    if all(part["status"] == "sent" for part in parts):
        return  # every part recorded sent before a crash: delivered, whatever the thread is now
    # A part in doubt is looked for first (the loop): it may have arrived before the thread was blocked,
    # and a send refused for the block still says so.
    if data.get("blocked") and not any(part["status"] == "sending" for part in parts):
        thread = s.meli.thread_page(pack_id, seller_id, limit=1)
        if (thread.get("conversation_status") or {}).get("status") == "blocked":
            raise DeliveryFailed(BLOCKED)
    buyer_id = data.get("buyer_id")
    if not buyer_id:
        # A sale conversation the poller has not described yet: ask Mercado Livre.
        buyer_id = sale_context(s, pack_id, [])["buyer_id"]
    to_user = MELI_AGENT_ID if data.get("migrated") else buyer_id
    if not to_user:
        raise DeliveryFailed(Refusal(
            "comprador desconhecido",
            "A ponte não sabe quem é o comprador desta venda, então a mensagem não foi enviada. " + SEE_LOGS))
    for part in parts:
        if part["status"] == "sent":
            continue
        # A reply of many parts may outlast one lease; renewed per part, it is never taken
        # over (and a part sent twice) while this worker is alive.
        _still_there(s.db.replies.extend_lease(reply["id"], s.clock() + LEASE_SECONDS))
        previous = s.db.replies.mark_part_sending(reply["id"], part["seq"], s.clock())
        _still_there(previous)
        if previous == "sending":
            _wait_until_settled(s, reply, part)
            # Not beside a sync of this thread: that sync read the thread before this look and
            # marks it read after; a buyer message this look shows it would only find then.
            with s.locks.hold(f"pack:{pack_id}"):
                found = _find_sent_part(s, pack_id, seller_id, part, part["first_attempt_at"] or reply["created_at"])
            if found:
                _still_there(s.db.replies.mark_part_sent(reply["id"], part["seq"], found, s.clock()))
                log.info("reply part already on mercado livre reply=%s part=%d pack=%s ml_message=%s",
                         reply["id"], part["seq"], pack_id, found)
                continue
            # Sent again (by design: assumed never to land now), the earlier send is remembered in
            # case it still does: its copy is then the bridge's own, not a message typed on the site.
            _still_there(s.db.replies.stray_possible(reply["id"], part["seq"], "message", pack_id,
                                                     part["first_attempt_at"] or reply["created_at"], s.clock()))
        attachment_ids = _upload_files(s, reply, part)
        try:
            sent = _send_part(s, reply, part, partial(s.meli.send_message, pack_id, seller_id, to_user, part["text"],
                                                      attachment_ids))
        except PermanentError as exc:
            if exc.status == 403 or exc.code == "blocked_conversation_send_message_forbidden":
                raise DeliveryFailed(BLOCKED) from None
            raise DeliveryFailed(_refusal(exc, "a mensagem" if len(parts) == 1 else f"a parte {part['seq'] + 1}"))\
                from None
        crashpoint("message_sent")
        remote_id = str((sent or {}).get("id") or (sent or {}).get("message_id") or "") if isinstance(sent, dict) \
            else ""
        if not remote_id:
            # Accepted, but no id to know it by when the thread is read: its text's hash stands in.
            log.warning("send answer names no message id reply=%s part=%d pack=%s", reply["id"], part["seq"], pack_id)
            _still_there(s.db.replies.stray_possible(reply["id"], part["seq"], "message", pack_id,
                                                     part["first_attempt_at"] or reply["created_at"], s.clock()))
        _still_there(s.db.replies.mark_part_sent(reply["id"], part["seq"], remote_id or None, s.clock()))
        log.info("reply part sent reply=%s part=%d/%d pack=%s ml_message=%s", reply["id"], part["seq"] + 1,
                 len(parts), pack_id, remote_id)


def _send_part(s: Services, reply: dict, part: dict, send: Callable[[], Any]) -> Any:
    """`send()` one part, its attempt stamped as it leaves. Refused (4xx, or a 429 before it was
    applied), nothing was sent: the part may go again. Its answer lost otherwise, it may still
    reach Mercado Livre: stamped again, so the look for it waits until it has settled."""
    try:
        with on_departure(partial(_attempt_ended, s, reply, part)):
            return send()
    except PermanentError:
        s.db.replies.mark_part_unsent(reply["id"], part["seq"])
        raise
    except TransientError as exc:
        if exc.status == 429:
            s.db.replies.mark_part_unsent(reply["id"], part["seq"])
        else:
            _attempt_ended(s, reply, part)
        raise


def _attempt_ended(s: Services, reply: dict, part: dict) -> None:
    """Stamped as each send leaves (after any rate-budget or token wait: a crash in flight settles
    from there), and again when its answer is lost: Mercado Livre may hold it past our timeout, so
    settling counts from when we stopped waiting."""
    # Gone before it left (erased while it waited for the budget): it does not leave at all.
    _still_there(s.db.replies.mark_part_attempted(reply["id"], part["seq"], s.clock()))


def _wait_until_settled(s: Services, reply: dict, part: dict) -> None:
    """A send whose answer was lost (timeout, 5xx, a crash) may still be applied after we stopped
    waiting: a request held in Mercado Livre's queue is processed whether or not we listen. Looking
    for it in the thread before then finds nothing and sends it again, so the look waits until the
    send has settled (assumed: a request not applied within IN_DOUBT_SETTLE never will be).
    """
    last = part.get("last_attempt_at") or part.get("first_attempt_at") or reply["created_at"]
    settle(last, s.clock(), f"part {part['seq'] + 1}", "Mercado Livre")


BLOCKED = Refusal(
    "conversa bloqueada no Mercado Livre",
    "O Mercado Livre bloqueou o envio nesta conversa. Isso acontece quando o comprador ainda não escreveu "
    "(o vendedor não pode iniciar a conversa) ou quando a venda está em mediação. Aguarde o comprador "
    "escrever ou acompanhe a mediação no Mercado Livre. Nada foi enviado.",
    "O Mercado Livre bloqueou o envio nesta conversa (venda em mediação, por exemplo): o restante só pode "
    "ir quando a conversa for liberada, ou pelo Mercado Livre.")


def _upload_files(s: Services, reply: dict, part: dict, upload: Callable | None = None) -> list[str]:
    """Upload each file once; ids are kept so a retry does not upload again (valid 48 h).

    `upload(name, content, content_type)` → id; post-sale attachments unless given.
    """
    upload = upload or s.meli.upload_attachment
    files = part["attachments"] or []
    ids = []
    changed = False
    for item in files:
        if not item.get("meli_id"):
            try:
                content, _ctype = s.chatwoot.download(item["url"])
                item["meli_id"] = upload(item["name"], content, item["content_type"])
                crashpoint("attachment_uploaded")
            except PermanentError as exc:
                raise DeliveryFailed(Refusal(
                    f"anexo {item['name']} recusado",
                    f"O arquivo {item['name']} não pôde ser enviado: {exc.short()}. Nada foi enviado ao comprador.",
                    logged=f"anexo .{_extension(item['name'])} recusado")) from None
            changed = True
            # A file name can name the buyer (RG-joao-silva.pdf): extension and size only.
            log.info("attachment uploaded reply=%s ext=%s bytes=%d ml_attachment=%s", reply["id"],
                     _extension(item["name"]), len(content), item["meli_id"])
        ids.append(item["meli_id"])
    if changed:
        _still_there(s.db.replies.set_part_attachments(reply["id"], part["seq"], files))
    return ids


def _find_sent_part(s: Services, pack_id: str, seller_id: int, part: dict, since: float) -> str | None:
    """Look in the thread for this part's send whose answer we lost.

    Short texts repeat ("Ok", "Obrigado!"): only a seller message created after the
    part's first attempt and not already accounted for (another part's or reply's send,
    or a message typed on the site and mirrored) counts. When in doubt, the part is sent
    again: a repeated line is better than a reply that never arrived but shows delivered.
    """
    # The first page, then the others from the last one back: a recent send is at one end
    # or the other (the page order is not relied on), and a long thread is read only in part.
    # Another part with this text may have sent it again after a look like this one, its first send
    # still landing (a stray): a copy that may be that send counts only beyond their number.
    others = s.db.replies.strays_of_others("message", pack_id, part.get("text"),
                                           f"{part.get('reply_id')}:{part.get('seq')}")
    ambiguous: list[str] = []
    offsets = [0]
    for _ in range(20):
        offset = offsets.pop(0)
        page = s.meli.thread_page(pack_id, seller_id, offset=offset, limit=10)
        messages = page.get("messages") or []
        ids = [str(m.get("id")) for m in messages]
        taken = s.db.replies.sent_ids(ids) | s.db.links.ids_among("message", ids)
        for message in messages:
            if own_parts.is_lost_send(message, seller_id, part, since, taken):
                if not own_parts.may_be_stray(message, others):
                    return str(message.get("id"))
                if str(message.get("id")) not in ambiguous:
                    ambiguous.append(str(message.get("id")))
        if offset == 0:
            if not messages:
                break
            total = int((page.get("paging") or {}).get("total") or 0)
            offsets = list(range(len(messages), total, len(messages)))[::-1]
        if not offsets:
            break
    return own_parts.lost_send_among(ambiguous, others)


def _deliver_claim(s: Services, reply: dict) -> None:
    """Each part to `actions/send-message`, to the receiver fixed when the reply was accepted."""
    claim_id = reply["target_id"]
    parts = s.db.replies.parts(reply["id"])
    if all(part["status"] == "sent" for part in parts):
        return  # every part recorded sent before a crash: whatever the claim is now, it was delivered
    try:
        claim = s.meli.claim(claim_id)
    except PermanentError as exc:
        if exc.status not in (403, 404):
            raise
        # Another account's, or removed: retrying for a day would only tell the agent a day late.
        raise DeliveryFailed(CLAIM_UNREADABLE) from None
    if not claim_rules.against_seller(claim, s.meli.seller_id()):
        raise DeliveryFailed(CLAIM_NOT_AGAINST_SELLER)
    # Fixed at acceptance (or, for a claim not known then, here before any part leaves): every part
    # goes there or not at all (half a reply to each reader reaches nobody).
    allowed = claim_rules.allowed_receivers(claim)
    receiver = reply.get("receiver") or s.db.replies.fix_receiver(reply["id"], claim_rules.resolve_receiver(
        reply.get("addressed") or "complainant", allowed) or "complainant")
    _still_there(receiver)
    addressed = reply.get("addressed")
    wanted = addressed and claim_rules.resolve_receiver(addressed, allowed)
    if wanted and receiver != wanted and wanted in allowed:
        # Decided from an older read of the claim (the sync's, at acceptance): while no part can have
        # arrived, the receiver is decided again from this one, as at acceptance. The one the agent
        # addressed once Mercado Livre allows it; the buyer addressed after the mediator joined, the
        # mediator: refusing it as "the buyer takes no message now" fails a reply nobody refused.
        receiver = s.db.replies.readdress_unsent(reply["id"], wanted)
        _still_there(receiver)
    reply = dict(reply, receiver=receiver)
    # Decided now, said only once the parts in doubt are settled: a part whose answer was lost may
    # have reached the claim before it closed or moved on, and then it was delivered, not refused.
    refused = CLAIM_CLOSED if claim.get("status") != "opened" else \
        None if receiver in allowed else _receiver_refused(receiver, claim)
    for part in parts:
        if part["status"] == "sent":
            continue
        if refused and part["status"] != "sending":
            raise DeliveryFailed(refused)
        # Renewed per part, as a sale's: a reply outlasting one lease is never taken over by another
        # worker (and its parts sent again) while this one is alive.
        _still_there(s.db.replies.extend_lease(reply["id"], s.clock() + LEASE_SECONDS))
        remote = claim_rules.sent_key(claim_id, part["text"] or "")
        previous = s.db.replies.mark_part_sending(reply["id"], part["seq"], s.clock())
        _still_there(previous)
        if previous == "sending":
            _wait_until_settled(s, reply, part)
        if previous == "sending" and _claim_part_arrived(s, claim_id, remote,
                                                         part["first_attempt_at"] or reply["created_at"], part):
            _still_there(s.db.replies.mark_part_sent(reply["id"], part["seq"], remote, s.clock()))
            log.info("reply part already on mercado livre reply=%s part=%d claim=%s", reply["id"], part["seq"],
                     claim_id)
            continue
        if previous == "sending":
            # Settled and not in the claim: sent again (or refused), though that send may still land. Its
            # copy is then the bridge's own, not a message typed on the site (as a sale's stray send).
            _still_there(s.db.replies.stray_possible(reply["id"], part["seq"], "claim", claim_id,
                                                     part["first_attempt_at"] or reply["created_at"], s.clock()))
        if refused:
            # Settled and not there: it did not go.
            s.db.replies.mark_part_unsent(reply["id"], part["seq"])
            if refused is CLAIM_CLOSED or not wanted or wanted not in allowed:
                raise DeliveryFailed(refused)
            # Nothing of the reply went (a 5xx alone is no refusal): decided again from this read of
            # the claim, as if it were accepted now; a part already sent keeps the rest where it went.
            receiver = s.db.replies.readdress_unsent(reply["id"], wanted)
            _still_there(receiver)
            if receiver != wanted:
                raise DeliveryFailed(refused)
            reply, refused = dict(reply, receiver=receiver), None
            _still_there(s.db.replies.mark_part_sending(reply["id"], part["seq"], s.clock()))
        filenames = _upload_files(s, reply, part, lambda name, content, ctype: s.meli.upload_claim_attachment(
            claim_id, name, content, ctype))
        try:
            _send_part(s, reply, part, partial(s.meli.send_claim_message, claim_id, receiver, part["text"], filenames))
        except PermanentError as exc:
            if exc.code == "claim_closed":
                raise DeliveryFailed(CLAIM_CLOSED) from None
            if exc.status == 403:
                raise DeliveryFailed(_receiver_refused(receiver, _claim_after_refusal(s, reply, claim_id))) from None
            raise DeliveryFailed(_refusal(exc, "a mensagem" if len(parts) == 1 else f"a parte {part['seq'] + 1}"))\
                from None
        crashpoint("claim_message_sent")
        _still_there(s.db.replies.mark_part_sent(reply["id"], part["seq"], remote, s.clock()))
        log.info("reply part sent reply=%s part=%d/%d claim=%s receiver=%s", reply["id"], part["seq"] + 1,
                 len(parts), claim_id, receiver)


def _claim_after_refusal(s: Services, reply: dict, claim_id: str) -> dict:
    """Mercado Livre refused the receiver our read of the claim allowed: it may have moved on since
    (the mediator joined). Read again: when nothing of the reply went and the claim now takes it for
    another receiver (as it would be decided now), the reply goes there at its next attempt. Else the
    claim as it is now, for the refusal's words."""
    claim = s.meli.claim(claim_id)
    allowed = claim_rules.allowed_receivers(claim)
    addressed = reply.get("addressed")
    wanted = addressed and claim_rules.resolve_receiver(addressed, allowed)
    if claim.get("status") == "opened" and wanted and wanted != reply.get("receiver") and wanted in allowed:
        moved = s.db.replies.readdress_unsent(reply["id"], wanted)
        _still_there(moved)
        if moved == wanted:
            log.info("claim moved on before the reply's send, sent to the %s next reply=%s claim=%s", wanted,
                     reply["id"], claim_id)
            raise TransientError(f"the claim takes messages for the {wanted} now; the reply goes there next",
                                 retry_after=1.0)
    return claim


def _claim_part_arrived(s: Services, claim_id: str, remote: str, since: float, part: dict | None = None) -> bool:
    """Did this part's send reach the claim before its answer was lost?

    Claim messages have no id: count the seller messages with this text since the first
    attempt that no sync has accounted for, against sent parts with the same text not
    adopted yet. When in doubt the part goes again: a repeat beats a reply that shows
    delivered and never arrived.
    """
    links = s.db.links.with_prefix("claim_message", f"{claim_id}:")
    linked = {link["external_id"] for link in links if link["status"] == "created"}
    adopted = claim_rules.adopted_parts(links)
    # Only the parts whose messages may fall in the window counted below: an older equal reply
    # not matched yet would otherwise hide this part's arrival, and it would go twice.
    waiting = sum(1 for p in s.db.replies.claim_parts_sent(remote)
                  if (p["chatwoot_message_id"], p["seq"]) not in adopted
                  and (p["sent_at"] is None or p["sent_at"] >= since - 2 * own_parts.SEND_CLOCK_SKEW))
    fresh = 0
    for key, message in claim_rules.message_keys(claim_id, s.meli.claim_messages(claim_id)):
        fresh += (own_parts.is_claim_copy_since(message, since) and key not in linked
                  and claim_rules.sent_key(claim_id, message.get("message") or "") == remote)
    # Another part's send of this text that may land unrecorded (a stray, never mirrored: the sync knows it as
    # the bridge's) may be one of these copies too: each counts against them, as a sale's (_find_sent_part).
    strays = s.db.replies.strays_of_others("claim", claim_id, (part or {}).get("text"),
                                           f"{(part or {}).get('reply_id')}:{(part or {}).get('seq')}")
    return fresh > waiting + len(strays)


CLAIM_CLOSED = Refusal(
    "reclamação encerrada",
    "A reclamação já foi encerrada no Mercado Livre e não aceita mais mensagens. Nada foi enviado. Se "
    "precisar falar com o comprador, use a conversa da venda (caixa Mercado Livre - Vendas), se ela "
    "estiver liberada.",
    "A reclamação foi encerrada no Mercado Livre e não aceita mais mensagens.")


CLAIM_NOT_AGAINST_SELLER = Refusal(
    "reclamação não é contra a loja",
    "Nesta reclamação a conta da ponte não é o vendedor reclamado (é, por exemplo, uma reclamação sobre uma "
    "compra da própria conta), então a ponte não responde por ela. Nada foi enviado. Confira o atributo "
    "meli_claim_id desta conversa, ou responda pelo Mercado Livre.",
    "Nesta reclamação a conta da ponte não é o vendedor reclamado.")


CLAIM_UNREADABLE = Refusal(
    "reclamação não acessível",
    "O Mercado Livre não mostra mais esta reclamação para a conta da ponte (removida, ou de outra "
    "conta). Nada foi enviado. Responda pelo Mercado Livre, se a reclamação ainda estiver lá.",
    "O Mercado Livre não mostra mais esta reclamação para a conta da ponte.")


def _receiver_refused(wanted: str | None, claim: dict) -> Refusal:
    allowed = claim_rules.allowed_receivers(claim)
    url = claim_rules.CLAIM_URL.format(claim_id=claim.get("id"))
    if wanted == "mediator" and "mediator" not in allowed:
        why = "O Mercado Livre não permite escrever para a mediação nesta reclamação agora (ela ainda não está em "\
              "mediação, ou o mediador não espera mensagem do vendedor)."
        return Refusal(
            "mediação não aceita mensagem agora",
            f"{why} Nada foi enviado. Para escrever ao comprador, apague o atributo "
            f"{claim_rules.REPLY_TO_ATTRIBUTE} desta conversa (ou mude para comprador) e envie de novo.", why)
    why = "O Mercado Livre não permite que o vendedor envie mensagens ao comprador nesta reclamação agora."
    if "mediator" in allowed:
        return Refusal(
            "comprador não aceita mensagem agora",
            f"{why} Nada foi enviado. Para escrever à mediação, defina o atributo "
            f"{claim_rules.REPLY_TO_ATTRIBUTE} = mediador nesta conversa e envie de novo.", why)
    return Refusal(
        "reclamação não aceita mensagem agora",
        f"{why} Nada foi enviado. Veja o que o Mercado Livre espera do vendedor na reclamação: {url}", why)


def _refusal(exc: ApiError, what: str) -> Refusal:
    reason = _plain_reason(exc)
    return Refusal(f"recusado pelo Mercado Livre: {reason}"[:200],
                   f"O Mercado Livre recusou {what} (erro {exc.status}: {reason}). Nada foi enviado ao comprador. "
                   "Corrija o texto e envie de novo. " + SEE_LOGS,
                   f"O Mercado Livre recusou {what} (erro {exc.status}: {reason}).")


def _plain_reason(exc: ApiError) -> str:
    message = re.sub(r"^\S+ answered \d+: ", "", exc.message or "")
    return message or exc.code or "erro desconhecido"


def _extension(name) -> str:
    return os.path.splitext(str(name))[1].lstrip(".").lower()[:10] or "-"
