"""Agent replies: accepted from Chatwoot webhooks, delivered to Mercado Livre, outcome shown to the agent.

Life of a reply: the listener validates the webhook, plans the reply (pure: text
conversion, limits, parts) and commits it with its parts in one transaction before
answering 200. The poller claims due replies (`pending`, or `sending` whose worker died),
sends part after part — each part's progress committed — and finally reports the outcome
in Chatwoot (message status, private note, resolve). A part found `sending` when claimed
may have reached Mercado Livre before a crash, so the remote side is checked first.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import failures
import sync_claims
import sync_messages
import text
from config import Settings
from db_manager import Database, crashpoint
from http_client import TIMEOUT, ApiError, PermanentError, TransientError
from mercado_livre_api import MELI_AGENT_ID, ReauthorizationRequired
from services import Services

log = logging.getLogger("bridge.outbox")

LEASE_SECONDS = 300.0
# Twice the read timeout: a send Mercado Livre has not applied by then is taken as never applied.
IN_DOUBT_SETTLE = 2 * TIMEOUT[1]
WORKERS = 8
GIVE_UP_AFTER = 24 * 3600.0
RETRY_BASE = 2.0
RETRY_MAX = 900.0
REAUTH_RECHECK = 30.0
AGENT_SENDER_TYPES = ("user", "agent_bot")
MELI_FILE_TYPES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "pdf": "application/pdf", "txt": "text/plain"}
MAX_FILE_BYTES = 25 * 1024 * 1024

SEE_LOGS = "Se o problema continuar, verifique os logs da ponte."


class DeliveryFailed(Exception):
    """A reply that cannot reach the buyer; `error` is short, `note` tells the agent what to do.

    `why` is the cause alone (no "nothing was sent", no "send it again"): when earlier
    parts already reached the buyer, the note is rebuilt around it.
    """

    def __init__(self, error: str, note: str, why: str | None = None, logged: str | None = None):
        super().__init__(error)
        self.error = error
        self.note = note
        self.why = why or note
        # What the log says: `error` without personal data (a file's name can name the buyer).
        self.logged = logged or error


@dataclass
class Plan:
    kind: str
    parts: list[dict] = field(default_factory=list)
    error: str | None = None
    note: str | None = None


# ---- accepting (listener side, no network) ----------------------------------------------------

def accept_webhook(payload: dict, settings: Settings, db: Database, now: float) -> tuple[str, int, dict]:
    """Decide what a Chatwoot delivery means. Returns (status, http code, extra fields)."""
    if payload.get("event") != "message_created":
        return "ignored", 200, {"reason": "event not handled"}
    message_id = payload.get("id")
    conversation = payload.get("conversation")
    if not _valid_id(message_id) or not isinstance(conversation, dict) or not _valid_id(conversation.get("id")):
        return "error", 400, {"reason": "id and conversation.id are required"}
    inbox = payload.get("inbox") if isinstance(payload.get("inbox"), dict) else {}
    # Only a real id counts: True == 1 and 1.0 == 1 in Python would match inbox 1.
    inbox_id = next((i for i in (inbox.get("id"), conversation.get("inbox_id")) if _valid_id(i)), None)
    conversation_id = conversation["id"]

    reason = _not_for_us(payload, inbox_id, settings)
    if reason:
        return "ignored", 200, {"reason": reason}
    if db.reply_seen(message_id):
        return "duplicate", 200, {}

    kind = {settings.chatwoot_questions_inbox_id: "answer",
            settings.chatwoot_claims_inbox_id: "claim"}.get(inbox_id, "message")
    link = db.link_by_conversation(LINK_KIND[kind], conversation_id)
    attrs = conversation.get("custom_attributes") if isinstance(conversation.get("custom_attributes"), dict) else {}
    target = link["external_id"] if link else _external_id(attrs.get(f"meli_{LINK_KIND[kind]}_id"))

    plan = plan_reply(kind, payload.get("content"), payload.get("attachments"), settings,
                      limit=CLAIM_TEXT_LIMIT if kind == "claim" else text.POSTSALE_DEFAULT_LIMIT)
    if not plan.error and target is None:
        plan.error = "conversa sem vínculo com o Mercado Livre"
        plan.note = ("Esta conversa não está ligada a uma pergunta, venda ou reclamação do Mercado Livre, então a "
                     "resposta não foi enviada. Responda pelo Mercado Livre.")
    # One answer per question: checked by the database inside the insert's transaction, since
    # two listener workers may accept two agent messages for the same question at once.
    reply_id = db.reply_accept(chatwoot_message_id=message_id, conversation_id=conversation_id, kind=kind,
                               target_id=target, parts=plan.parts, now=now, error=plan.error, note=plan.note,
                               taken=ANSWER_TAKEN if kind == "answer" else None,
                               receiver=claim_receiver(attrs) if kind == "claim" else None)
    if reply_id is None:
        return "duplicate", 200, {}
    extra = {"reply_id": reply_id, "kind": kind, "target": target, "parts": len(plan.parts)}
    error = plan.error or (db.reply(reply_id)["error"] if kind == "answer" else None)
    if error:
        return "refused", 200, dict(extra, reason=error)
    return "accepted", 200, extra


LINK_KIND = {"answer": "question", "message": "pack", "claim": "claim"}
# Not documented for claims: long texts are split as post-sale ones, in parts of this size.
CLAIM_TEXT_LIMIT = 2000


def claim_receiver(attrs: dict) -> str:
    """The conversation attribute agents set in the sidebar: `mediador` sends to Mercado Livre's mediator."""
    value = attrs.get(sync_claims.REPLY_TO_ATTRIBUTE)
    wanted = value.strip().lower() if isinstance(value, str) else ""
    return "mediator" if wanted in ("mediador", "mediator", "mediação", "mediacao") else "complainant"


ANSWER_TAKEN = ("pergunta já tem resposta",
                "O Mercado Livre aceita uma única resposta por pergunta e esta pergunta já tem uma resposta "
                "enviada ou em envio. Esta mensagem não foi enviada ao comprador.")


def _valid_id(value) -> bool:
    # bool is an int in Python; SQLite integers stop at 2**63.
    return type(value) is int and 0 < value < 2**63


def _external_id(value) -> str | None:
    """A Mercado Livre question or pack id from a conversation attribute (anyone can edit those)."""
    if _valid_id(value):
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return value
    return None


def _not_for_us(payload: dict, inbox_id, settings: Settings) -> str | None:
    # The claims inbox counts only when configured: unset, it is None and no id equals it.
    if inbox_id not in (settings.chatwoot_questions_inbox_id, settings.chatwoot_messages_inbox_id) \
            and (inbox_id is None or inbox_id != settings.chatwoot_claims_inbox_id):
        return "not a Mercado Livre inbox"
    message_type = payload.get("message_type")
    if message_type != "outgoing":
        # Echoed in the answer and the log: only a short word, never whatever the body held.
        shown = message_type if isinstance(message_type, str) and message_type.isalnum() and len(message_type) <= 20 \
            else "not outgoing"
        return f"message_type {shown}"
    private = payload.get("private")
    if private is not None and private is not False:
        # Anything but a plain false might be a note: it must never reach the buyer.
        return "private note"
    source_id = payload.get("source_id")
    if isinstance(source_id, str) and source_id.startswith("meli:"):
        return "created by the bridge"
    sender = payload.get("sender") if isinstance(payload.get("sender"), dict) else {}
    if sender.get("type") not in AGENT_SENDER_TYPES:
        return "not sent by an agent"
    return None


def plan_reply(kind: str, content, attachments, settings: Settings, limit: int = text.POSTSALE_DEFAULT_LIMIT) -> Plan:
    """Pure: turn an agent message into Mercado Livre parts, or a reason it cannot go."""
    plain, bad = text.normalize_latin1(text.markdown_to_plain(content if isinstance(content, str) else None))
    plain = plain.strip()
    files = [a for a in attachments if isinstance(a, dict)] if isinstance(attachments, list) else []
    if kind == "answer":
        # Answers are not limited to Latin-1: only the typographic conversions apply.
        if files:
            return Plan(kind, error="respostas não aceitam anexos",
                        note="O Mercado Livre não aceita anexos em respostas a perguntas. Envie a resposta só "
                             "com texto; o arquivo pode ser enviado depois da venda, na conversa de pós-venda.")
        if not plain:
            return Plan(kind, error="resposta vazia", note="A resposta está vazia e não foi enviada.")
        if len(plain) > text.QUESTION_ANSWER_LIMIT:
            return Plan(kind, error=f"resposta com {len(plain)} caracteres (máximo {text.QUESTION_ANSWER_LIMIT})",
                        note=f"O Mercado Livre aceita respostas de até {text.QUESTION_ANSWER_LIMIT} caracteres e "
                             f"esta tem {len(plain)}. Nada foi enviado: escreva uma resposta mais curta.")
        return Plan(kind, parts=[{"text": plain, "attachments": []}])

    if bad:
        return Plan(kind, error="caracteres não aceitos pelo Mercado Livre",
                    note=f"O Mercado Livre não aceita estes caracteres: {text.describe_chars(bad)}. Nada foi "
                         f"enviado: reescreva a mensagem sem eles.")
    planned_files = []
    for attachment in files:
        problem, planned = _plan_file(attachment, settings)
        if problem:
            return Plan(kind, error=problem[0], note=problem[1])
        planned_files.append(planned)
    if not plain and not planned_files:
        return Plan(kind, error="mensagem vazia", note="A mensagem está vazia e não foi enviada.")
    if not plain and kind == "claim":
        return Plan(kind, error="anexo sem texto",
                    note="Na reclamação, o Mercado Livre só aceita anexos junto com uma mensagem. Nada foi enviado: "
                         "envie o arquivo de novo com um texto.")
    pieces = text.split_message(plain, limit) if plain else [""]
    parts = [{"text": piece, "attachments": []} for piece in pieces]
    parts[0]["attachments"] = planned_files
    return Plan(kind, parts=parts)


def _plan_file(attachment: dict, settings: Settings):
    url = _text_field(attachment, "data_url")
    name = _file_name(attachment)
    extension = (_text_field(attachment, "extension") or (name.rsplit(".", 1)[-1] if "." in name else "")).lower()[:20]
    scheme, host = _scheme_and_host(url)
    if host != urlsplit(settings.chatwoot_url).netloc.lower() or scheme not in ("http", "https"):
        return ("anexo fora do Chatwoot configurado",
                f"O anexo {name} não está no Chatwoot configurado na ponte e, por segurança, não foi baixado. "
                f"Nada foi enviado: anexe o arquivo de novo nesta conversa."), None
    if extension not in MELI_FILE_TYPES:
        return (f"tipo de arquivo não aceito ({extension or 'desconhecido'})",
                f"O Mercado Livre só aceita anexos JPG, PNG, PDF ou TXT; {name} não foi enviado, nem o texto "
                f"desta mensagem. Converta o arquivo e envie de novo."), None
    size = attachment.get("file_size")
    if isinstance(size, int) and size > MAX_FILE_BYTES:
        return ("arquivo acima de 25 MB",
                f"O arquivo {name} tem mais de 25 MB, o limite do Mercado Livre. Nada foi enviado."), None
    return None, {"url": url, "name": name, "content_type": MELI_FILE_TYPES[extension]}


def _extension(name) -> str:
    return os.path.splitext(str(name))[1].lstrip(".").lower()[:10] or "-"


def _file_name(attachment: dict) -> str:
    try:
        path = urlsplit(_text_field(attachment, "data_url")).path
    except ValueError:
        path = ""
    file_id = attachment.get("id")
    name = path.rsplit("/", 1)[-1][:200] or f"anexo-{file_id if _valid_id(file_id) else ''}"
    extension = _text_field(attachment, "extension")[:20]
    if extension and not name.lower().endswith("." + extension.lower()):
        name = f"{name}.{extension}"
    return name


def _text_field(attachment: dict, key: str) -> str:
    """A string field of a webhook attachment; anything else (number, list, null) counts as absent."""
    value = attachment.get(key)
    return value if isinstance(value, str) else ""


def _scheme_and_host(url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "https://[" — not a URL we would fetch
        return "", ""
    return parts.scheme, parts.netloc.lower()


# ---- delivering (poller side) -------------------------------------------------------------------

def run_outbox(s: Services, max_items: int = 200) -> dict:
    """Deliver what is due, then show outcomes in Chatwoot. Returns counts.

    Replies to different questions or sales go out in parallel (Mercado Livre may take
    seconds per call); replies to the same one go in order, in one worker.
    """
    counts: Counter = Counter()
    groups: dict[tuple, list[int]] = {}
    for row in s.db.replies_due(s.clock(), limit=max_items):
        groups.setdefault((row["kind"], row["target_id"]), []).append(row["id"])
    if groups:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(groups)), thread_name_prefix="outbox") as pool:
            # Each worker keeps the job's context (its rate-budget priority).
            futures = [pool.submit(contextvars.copy_context().run, _deliver_in_order, s, ids)
                       for ids in groups.values()]
            for future in futures:
                counts.update(future.result())
    counts["reported"] += report_outcomes(s)
    return {k: counts[k] for k in ("delivered", "failed", "retry", "reported")}


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
        if outcome in ("delivered", "failed"):
            # Tell the agent now, not after the whole batch.
            counts["reported"] += report_reply(s, s.db.reply(reply_id))
        elif outcome in ("retry", None):
            # The next replies to this target wait for this one, in order (None: another
            # poller claimed it between our listing and our claim, and may still be sending it).
            break
    return counts


def deliver(s: Services, reply_id: int) -> str | None:
    """Try one reply once. Returns 'delivered', 'failed', 'retry' or None (not ours to take)."""
    reply = s.db.reply_claim(reply_id, s.clock(), LEASE_SECONDS)
    if reply is None:
        return None
    started = time.monotonic()
    ids = f"reply={reply_id} message={reply['chatwoot_message_id']} conversation={reply['conversation_id']} " \
          f"{LINK_KIND.get(reply['kind'], 'pack')}={reply['target_id']}"
    try:
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
            s.db.reply_failed(reply_id, "Mercado Livre sem autorização por 24 h", REAUTH_GAVE_UP, s.clock())
            log.error("reply failed after 24h waiting for reauthorization %s", ids)
            return "failed"
        s.db.reply_retry_later(reply_id, s.clock() + REAUTH_RECHECK, "aguardando reautorização do Mercado Livre",
                               s.clock(), count_attempt=False)
        log.warning("reply waiting for reauthorization %s", ids)
        return "retry"
    except DeliveryFailed as exc:
        error, note = partial_failure(s.db.reply_parts(reply_id), exc.error, exc.note, exc.why)
        s.db.reply_failed(reply_id, error, note, s.clock())
        log.warning("reply failed %s reason=%r after %dms", ids, exc.logged, (time.monotonic() - started) * 1000)
        return "failed"
    except ApiError as exc:
        return _transient(s, reply, exc, ids)
    except Exception as exc:  # noqa: BLE001 — an unexpected bug must not lose the reply
        log.exception("reply delivery crashed %s", ids)
        return _transient(s, reply, TransientError(f"unexpected error: {type(exc).__name__}"), ids)
    s.db.reply_delivered(reply_id, s.clock())
    log.info("reply delivered %s attempts=%d in %dms (accepted %.1fs ago)", ids, reply["attempts"],
             (time.monotonic() - started) * 1000, s.clock() - reply["created_at"])
    return "delivered"


REAUTH_GAVE_UP = ("A resposta esperou 24 horas pela reautorização da conta no Mercado Livre e não foi enviada. "
                  "Peça a quem administra a ponte para autorizar de novo (python main.py authorize) e depois "
                  "envie a resposta outra vez, ou responda pelo Mercado Livre.")


def _transient(s: Services, reply: dict, exc: ApiError, ids: str) -> str:
    now = s.clock()
    if now - reply["created_at"] > GIVE_UP_AFTER:
        error, note = partial_failure(
            s.db.reply_parts(reply["id"]), "Mercado Livre indisponível por 24 h",
            "A resposta não pôde ser entregue ao Mercado Livre durante 24 horas de tentativas "
            f"(último erro: {exc.short()}). Envie de novo ou responda pelo Mercado Livre.",
            f"O Mercado Livre ficou indisponível durante 24 horas de tentativas (último erro: {exc.short()}).")
        s.db.reply_failed(reply["id"], error, note, now)
        log.error("reply failed after 24h of retries %s last_error=%r", ids, exc.short())
        return "failed"
    delay = retry_delay(reply["attempts"], exc.retry_after)
    s.db.reply_retry_later(reply["id"], now + delay, exc.short()[:300], now)
    log.warning("reply retry in %.1fs %s attempt=%d error=%r", delay, ids, reply["attempts"], exc.short())
    return "retry"


def partial_failure(parts: list[dict], error: str, note: str, why: str) -> tuple[str, str]:
    """The failed mark and note of a reply; when some parts reached the buyer, they say which and what is left.

    Parts go out in order, so what reached the buyer is a prefix; a part still
    `sending` may or may not have arrived (its answer was lost).
    """
    sent = [p for p in parts if p["status"] == "sent"]
    if not sent or len(parts) < 2:
        return error, note
    doubt = [p for p in parts if p["status"] == "sending"]
    unsent = [p for p in parts if p["status"] == "pending"]
    rest = [p for p in parts if p["status"] != "sent"]
    arrived = f"{_part_list([p['seq'] + 1 for p in sent])} de {len(parts)}"
    summary = (f"{'A parte' if len(sent) == 1 else 'As partes'} {arrived} "
               f"{'chegou' if len(sent) == 1 else 'chegaram'} ao comprador")
    if unsent:
        summary += (f"; {'a parte' if len(unsent) == 1 else 'as partes'} "
                    f"{_part_list([p['seq'] + 1 for p in unsent])} não")
    summary += "."
    if doubt:
        summary += (f" A parte {_part_list([p['seq'] + 1 for p in doubt])} pode ter chegado: confira no Mercado "
                    "Livre antes de enviar o restante.")
    remaining = "\n".join(f"> {line}" for p in rest for line in (p["text"] or "").splitlines() or [""])
    files = [a.get("name") for p in rest for a in p.get("attachments") or []]
    note = (f"{summary}\n\n{why}\n\nNão envie a mensagem inteira de novo: envie somente o restante:\n\n{remaining}"
            + (f"\n\nAnexos que não foram: {', '.join(files)}" if files else ""))
    mark = f"{'parte' if len(sent) == 1 else 'partes'} {arrived} enviada{'s' if len(sent) > 1 else ''}; {error}"
    return mark[:200], note


def _part_list(numbers: list[int]) -> str:
    """[1, 2, 3] -> "1, 2 e 3"."""
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} e {words[-1]}"


def retry_delay(attempts: int, retry_after: float | None = None, *, first: float = RETRY_BASE,
                longest: float = RETRY_MAX) -> float:
    """The bridge's one backoff: doubling from `first` up to `longest`, jittered by up to half."""
    base = min(longest, first * 2 ** max(0, attempts - 1))
    delay = random.uniform(base / 2, base)
    return max(delay, retry_after or 0.0)


def _deliver_answer(s: Services, reply: dict) -> None:
    part = s.db.reply_parts(reply["id"])[0]
    question_id = reply["target_id"]
    if part["status"] != "sent":
        s.db.part_mark_sending(reply["id"], 0, s.clock())
        try:
            s.meli.answer_question(int(question_id), part["text"])
        except PermanentError as exc:
            if exc.code != "not_unanswered_question" and "not_unanswered" not in (exc.message or ""):
                raise DeliveryFailed(*_refusal(exc, "a resposta")) from None
            _check_already_answered(s, question_id, part["text"])
        crashpoint("answer_posted")
    # The agent's own message is the answer in Chatwoot: the question sync must not mirror it again.
    s.db.answer_sent(reply["id"], question_id, reply["conversation_id"], reply["chatwoot_message_id"], s.clock())


def adopt_answer_in_flight(s: Services, question_id: str, published: str) -> bool:
    """The question is answered on Mercado Livre with this text: is it our reply, sent before a crash?

    A reply whose POST may have gone out (its part `sending`) and whose text is the one
    published is ours: record it as sent, so the questions sync resolves the conversation
    instead of mirroring the agent's answer a second time; the outbox then finishes the
    reply without posting again.
    """
    reply = s.db.answer_in_flight(question_id)
    if reply is None or not published or not _same_text(published, reply["text"] or ""):
        return False
    s.db.answer_sent(reply["id"], question_id, reply["conversation_id"], reply["chatwoot_message_id"], s.clock())
    log.info("answer found on mercado livre before its delivery was recorded reply=%s question=%s conversation=%s",
             reply["id"], question_id, reply["conversation_id"])
    return True


def _check_already_answered(s: Services, question_id: str, sent_text: str) -> None:
    """`not_unanswered_question`: our own earlier attempt, or someone else's answer?"""
    question = s.meli.question(question_id)
    answer = (question.get("answer") or {}).get("text") or ""
    if answer and _same_text(answer, sent_text):
        return  # our previous attempt reached Mercado Livre before a crash or a lost response
    status = question.get("status") or "?"
    if answer:
        raise DeliveryFailed("pergunta já respondida no Mercado Livre",
                             "Esta pergunta já foi respondida por outro canal (site ou app do Mercado Livre), "
                             f"então sua resposta não foi enviada. Resposta que está publicada:\n\n> {answer}")
    raise DeliveryFailed(f"pergunta não aceita mais resposta ({status})",
                         f"A pergunta está com status {status} no Mercado Livre (apagada, banida ou em análise) e "
                         "não aceita resposta. Nada foi enviado ao comprador.")


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _deliver_message(s: Services, reply: dict) -> None:
    pack_id = reply["target_id"]
    seller_id = s.meli.seller_id()
    link = s.db.link("pack", pack_id)
    data = (link or {}).get("data") or {}
    if data.get("blocked"):
        thread = s.meli.thread_page(pack_id, seller_id, limit=1)
        if (thread.get("conversation_status") or {}).get("status") == "blocked":
            raise DeliveryFailed(*BLOCKED)
    buyer_id = data.get("buyer_id")
    if not buyer_id:
        # A sale conversation the poller has not described yet: ask Mercado Livre.
        buyer_id = sync_messages.sale_context(s, pack_id, [])["buyer_id"]
    to_user = MELI_AGENT_ID if data.get("migrated") else buyer_id
    if not to_user:
        raise DeliveryFailed("comprador desconhecido",
                             "A ponte não sabe quem é o comprador desta venda, então a mensagem não foi enviada. "
                             + SEE_LOGS)
    parts = s.db.reply_parts(reply["id"])
    for part in parts:
        if part["status"] == "sent":
            continue
        # A reply of many parts may outlast one lease; renewed per part, it is never taken
        # over (and a part sent twice) while this worker is alive.
        s.db.reply_extend_lease(reply["id"], s.clock() + LEASE_SECONDS)
        previous = s.db.part_mark_sending(reply["id"], part["seq"], s.clock())
        if previous == "sending":
            _wait_until_settled(s, reply, part)
            found = _find_sent_part(s, pack_id, seller_id, part, part["first_attempt_at"] or reply["created_at"])
            if found:
                s.db.part_sent(reply["id"], part["seq"], found, s.clock())
                log.info("reply part already on mercado livre reply=%s part=%d pack=%s ml_message=%s",
                         reply["id"], part["seq"], pack_id, found)
                continue
        attachment_ids = _upload_files(s, reply, part)
        s.db.part_attempted(reply["id"], part["seq"], s.clock())
        try:
            sent = s.meli.send_message(pack_id, seller_id, to_user, part["text"], attachment_ids)
        except PermanentError as exc:
            s.db.part_unsent(reply["id"], part["seq"])
            if exc.status == 403 or exc.code == "blocked_conversation_send_message_forbidden":
                raise DeliveryFailed(*BLOCKED) from None
            raise DeliveryFailed(*_refusal(exc, "a mensagem" if len(parts) == 1 else f"a parte {part['seq'] + 1}"))\
                from None
        except TransientError as exc:
            if exc.status == 429:
                s.db.part_unsent(reply["id"], part["seq"])  # refused outright: nothing was sent
            raise
        crashpoint("message_sent")
        remote_id = str((sent or {}).get("id") or (sent or {}).get("message_id") or "") or None
        s.db.part_sent(reply["id"], part["seq"], remote_id, s.clock())
        log.info("reply part sent reply=%s part=%d/%d pack=%s ml_message=%s", reply["id"], part["seq"] + 1,
                 len(parts), pack_id, remote_id)


def _wait_until_settled(s: Services, reply: dict, part: dict) -> None:
    """A send whose answer was lost (timeout, 5xx, a crash) may still be applied after we stopped
    waiting: a request held in Mercado Livre's queue is processed whether or not we listen. Looking
    for it in the thread before then finds nothing and sends it again, so the look waits until the
    send has settled (assumed: a request not applied within IN_DOUBT_SETTLE never will be).
    """
    last = part.get("last_attempt_at") or part.get("first_attempt_at") or reply["created_at"]
    wait = last + IN_DOUBT_SETTLE - s.clock()
    if wait > 0:
        raise TransientError(f"part {part['seq'] + 1} may still reach Mercado Livre; looked for in {wait:.0f}s",
                             retry_after=wait)


BLOCKED = ("conversa bloqueada no Mercado Livre",
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
                raise DeliveryFailed(f"anexo {item['name']} recusado",
                                     f"O arquivo {item['name']} não pôde ser enviado: {exc.short()}. "
                                     "Nada foi enviado ao comprador.",
                                     logged=f"anexo .{_extension(item['name'])} recusado") from None
            changed = True
            # A file name can name the buyer (RG-joao-silva.pdf): extension and size only.
            log.info("attachment uploaded reply=%s ext=%s bytes=%d ml_attachment=%s", reply["id"],
                     _extension(item["name"]), len(content), item["meli_id"])
        ids.append(item["meli_id"])
    if changed:
        s.db.part_set_attachments(reply["id"], part["seq"], files)
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
    offsets = [0]
    for _ in range(20):
        offset = offsets.pop(0)
        page = s.meli.thread_page(pack_id, seller_id, offset=offset, limit=10)
        messages = page.get("messages") or []
        ids = [str(m.get("id")) for m in messages]
        taken = s.db.bridge_sent_ids(ids) | s.db.link_ids_among("message", ids)
        for message in messages:
            if is_lost_send(message, seller_id, part, since, taken):
                return str(message.get("id"))
        if offset == 0:
            if not messages:
                return None
            total = int((page.get("paging") or {}).get("total") or 0)
            offsets = list(range(len(messages), total, len(messages)))[::-1]
        if not offsets:
            return None
    return None


SEND_CLOCK_SKEW = 60.0  # seconds our clock may run ahead of Mercado Livre's


def _deliver_claim(s: Services, reply: dict) -> None:
    """Each part to `actions/send-message`, to the complainant or the mediator as the claim allows now."""
    claim_id = reply["target_id"]
    try:
        claim = s.meli.claim(claim_id)
    except PermanentError as exc:
        if exc.status not in (403, 404):
            raise
        # Another account's, or removed: retrying for a day would only tell the agent a day late.
        raise DeliveryFailed(*CLAIM_UNREADABLE) from None
    if claim.get("status") != "opened":
        raise DeliveryFailed(*CLAIM_CLOSED)
    parts = s.db.reply_parts(reply["id"])
    if any(part["status"] == "sent" for part in parts):
        # The rest goes where the first parts went, or not at all: half a reply to each reader reaches nobody.
        used = reply.get("receiver") or "complainant"
        receiver = used if used in sync_claims.allowed_receivers(claim) else None
    else:
        receiver = sync_claims.choose_receiver(reply.get("receiver"), claim)
    if receiver is None:
        raise DeliveryFailed(*_receiver_refused(reply.get("receiver"), claim))
    for part in parts:
        if part["status"] == "sent":
            continue
        remote = sync_claims.sent_key(claim_id, part["text"] or "")
        previous = s.db.part_mark_sending(reply["id"], part["seq"], s.clock())
        if previous == "sending":
            _wait_until_settled(s, reply, part)
        if previous == "sending" and _claim_part_arrived(s, claim_id, remote,
                                                         part["first_attempt_at"] or reply["created_at"]):
            s.db.part_sent(reply["id"], part["seq"], remote, s.clock())
            log.info("reply part already on mercado livre reply=%s part=%d claim=%s", reply["id"], part["seq"],
                     claim_id)
            continue
        filenames = _upload_files(s, reply, part, lambda name, content, ctype: s.meli.upload_claim_attachment(
            claim_id, name, content, ctype))
        s.db.part_attempted(reply["id"], part["seq"], s.clock())
        try:
            s.meli.send_claim_message(claim_id, receiver, part["text"], filenames)
        except PermanentError as exc:
            s.db.part_unsent(reply["id"], part["seq"])
            if exc.code == "claim_closed":
                raise DeliveryFailed(*CLAIM_CLOSED) from None
            if exc.status == 403:
                raise DeliveryFailed(*_receiver_refused(receiver, claim)) from None
            raise DeliveryFailed(*_refusal(exc, "a mensagem" if len(parts) == 1 else f"a parte {part['seq'] + 1}"))\
                from None
        except TransientError as exc:
            if exc.status == 429:
                s.db.part_unsent(reply["id"], part["seq"])
            raise
        crashpoint("claim_message_sent")
        s.db.part_sent(reply["id"], part["seq"], remote, s.clock())
        if receiver != reply.get("receiver"):
            s.db.reply_receiver_used(reply["id"], receiver)
            reply = dict(reply, receiver=receiver)
        log.info("reply part sent reply=%s part=%d/%d claim=%s receiver=%s", reply["id"], part["seq"] + 1,
                 len(parts), claim_id, receiver)


def _claim_part_arrived(s: Services, claim_id: str, remote: str, since: float) -> bool:
    """Did this part's send reach the claim before its answer was lost?

    Claim messages have no id: count the seller messages with this text since the first
    attempt that no sync has accounted for, against sent parts with the same text not
    adopted yet. When in doubt the part goes again: a repeat beats a reply that shows
    delivered and never arrived.
    """
    links = s.db.links_with_prefix("claim_message", f"{claim_id}:")
    linked = {link["external_id"] for link in links if link["status"] == "created"}
    adopted = sync_claims.adopted_parts(links)
    # Only the parts whose messages may fall in the window counted below: an older equal reply
    # not matched yet would otherwise hide this part's arrival, and it would go twice.
    waiting = sum(1 for p in s.db.claim_parts_sent(remote)
                  if (p["chatwoot_message_id"], p["seq"]) not in adopted
                  and (p["sent_at"] is None or p["sent_at"] >= since - 2 * SEND_CLOCK_SKEW))
    fresh = 0
    for key, message in sync_claims.message_keys(claim_id, s.meli.claim_messages(claim_id)):
        if message.get("sender_role") != "respondent" \
                or sync_claims.sent_key(claim_id, sync_claims.text_of(message)) != remote or key in linked:
            continue
        created = sync_messages.parse_date(message.get("date_created"))
        fresh += created is not None and created >= since - SEND_CLOCK_SKEW
    return fresh > waiting


CLAIM_CLOSED = ("reclamação encerrada",
                "A reclamação já foi encerrada no Mercado Livre e não aceita mais mensagens. Nada foi enviado. Se "
                "precisar falar com o comprador, use a conversa da venda (caixa Mercado Livre - Vendas), se ela "
                "estiver liberada.",
                "A reclamação foi encerrada no Mercado Livre e não aceita mais mensagens.")


CLAIM_UNREADABLE = ("reclamação não acessível",
                    "O Mercado Livre não mostra mais esta reclamação para a conta da ponte (removida, ou de outra "
                    "conta). Nada foi enviado. Responda pelo Mercado Livre, se a reclamação ainda estiver lá.",
                    "O Mercado Livre não mostra mais esta reclamação para a conta da ponte.")


def _receiver_refused(wanted: str | None, claim: dict) -> tuple[str, str, str]:
    allowed = sync_claims.allowed_receivers(claim)
    url = sync_claims.CLAIM_URL.format(claim_id=claim.get("id"))
    if wanted == "mediator" and "mediator" not in allowed:
        why = "O Mercado Livre não permite escrever para a mediação nesta reclamação agora (ela ainda não está em "\
              "mediação, ou o mediador não espera mensagem do vendedor)."
        return ("mediação não aceita mensagem agora",
                f"{why} Nada foi enviado. Para escrever ao comprador, apague o atributo "
                f"{sync_claims.REPLY_TO_ATTRIBUTE} desta conversa (ou mude para comprador) e envie de novo.", why)
    why = "O Mercado Livre não permite que o vendedor envie mensagens ao comprador nesta reclamação agora."
    if "mediator" in allowed:
        return ("comprador não aceita mensagem agora",
                f"{why} Nada foi enviado. Para escrever à mediação, defina o atributo "
                f"{sync_claims.REPLY_TO_ATTRIBUTE} = mediador nesta conversa e envie de novo.", why)
    return ("reclamação não aceita mensagem agora",
            f"{why} Nada foi enviado. Veja o que o Mercado Livre espera do vendedor na reclamação: {url}", why)


def is_lost_send(message: dict, seller_id: int, part: dict, since: float, taken: set[str]) -> bool:
    """Pure: could this thread message be `part`, sent at or after `since` (epoch seconds)?"""
    if str((message.get("from") or {}).get("user_id")) != str(seller_id) or str(message.get("id")) in taken:
        return False
    if not _same_text(message.get("text") or "", part.get("text") or ""):
        return False
    if bool(message.get("message_attachments")) != bool(part.get("attachments")):
        return False
    created = sync_messages.parse_date((message.get("message_date") or {}).get("created"))
    return created is not None and created >= since - SEND_CLOCK_SKEW


def _refusal(exc: ApiError, what: str) -> tuple[str, str, str]:
    reason = _plain_reason(exc)
    return (f"recusado pelo Mercado Livre: {reason}"[:200],
            f"O Mercado Livre recusou {what} (erro {exc.status}: {reason}). Nada foi enviado ao comprador. "
            "Corrija o texto e envie de novo. " + SEE_LOGS,
            f"O Mercado Livre recusou {what} (erro {exc.status}: {reason}).")


def _plain_reason(exc: ApiError) -> str:
    message = re.sub(r"^\S+ answered \d+: ", "", exc.message or "")
    return message or exc.code or "erro desconhecido"


# ---- reporting (Chatwoot side) --------------------------------------------------------------------

def report_outcomes(s: Services) -> int:
    """Outcomes not shown yet: refused at acceptance, or a Chatwoot call that failed before."""
    reported = 0
    for reply in s.db.replies_unreported(s.clock()):
        if s.stopping.is_set():
            break
        reported += report_reply(s, reply)
    return reported


def report_reply(s: Services, reply: dict) -> int:
    """Show one finished reply's outcome in Chatwoot. Returns 1 when done (or given up), 0 to retry later."""
    try:
        _report(s, reply)
        crashpoint("reply_reported")
    except ApiError as exc:
        if exc.transient:
            delay = retry_delay(max(1, int(s.clock() - reply["updated_at"]) // 10 + 1), exc.retry_after)
            s.db.reply_report_later(reply["id"], s.clock() + delay, s.clock())
            log.warning("reply outcome not shown yet reply=%s message=%s conversation=%s error=%r",
                        reply["id"], reply["chatwoot_message_id"], reply["conversation_id"], exc.short())
            return 0
        log.error("reply outcome could not be shown reply=%s message=%s conversation=%s error=%r",
                  reply["id"], reply["chatwoot_message_id"], reply["conversation_id"], exc.short())
    except Exception as exc:  # noqa: BLE001 — one reply's report must not hold up the others'
        return _report_crashed(s, reply, exc)
    s.db.reply_reported(reply["id"], s.clock())
    return 1


def _report_crashed(s: Services, reply: dict, exc: Exception) -> int:
    """Try again with backoff; after a day the outcome is given up on, loudly (log, /health)."""
    now, error = s.clock(), failures.describe(exc)
    if now - (reply["finished_at"] or reply["created_at"]) > GIVE_UP_AFTER:
        failures.gave_up(s, "reply", reply["id"], error)
        s.db.reply_reported(reply["id"], now)
        return 1
    # Counted from when the reply finished: updated_at moves with every postponement.
    delay = retry_delay(max(1, int(now - (reply["finished_at"] or reply["created_at"])) // 10 + 1))
    s.db.reply_report_later(reply["id"], now + delay, now)
    log.warning("reply outcome not shown yet reply=%s message=%s conversation=%s error=%s",
                reply["id"], reply["chatwoot_message_id"], reply["conversation_id"], error)
    return 0


def _report(s: Services, reply: dict) -> None:
    try:
        _report_in(s, reply)
    except PermanentError as exc:
        if exc.status != 404:
            raise
        # An agent deleted the conversation (or the message) after replying. Success needs no
        # word; a failure is still told, in the conversation that replaced it if there is one
        # (a sale continues in a new conversation).
        link = s.db.link(LINK_KIND.get(reply["kind"], "pack"), reply["target_id"])
        current = (link or {}).get("conversation_id")
        log.warning("reply outcome for a deleted conversation or message reply=%s message=%s conversation=%s "
                    "status=%s now_in=%s", reply["id"], reply["chatwoot_message_id"], reply["conversation_id"],
                    reply["status"], current)
        if reply["status"] == "delivered" or not reply["note"]:
            return
        for conversation_id in dict.fromkeys(c for c in (reply["conversation_id"], current) if c):
            try:
                s.chatwoot.note(conversation_id, f"Resposta não enviada ao Mercado Livre: {reply['error']}.\n\n"
                                                 f"{reply['note']}", source_id=f"meli:note:reply:{reply['id']}")
                return
            except PermanentError as gone:
                if gone.status != 404:
                    raise


def _report_in(s: Services, reply: dict) -> None:
    conversation_id, message_id = reply["conversation_id"], reply["chatwoot_message_id"]
    if reply["status"] == "delivered":
        s.chatwoot.set_message_status(conversation_id, message_id, "delivered")
        if reply["kind"] == "answer":
            s.chatwoot.set_status(conversation_id, "resolved")
        return
    s.chatwoot.set_message_status(conversation_id, message_id, "failed", reply["error"] or "não enviada")
    source_id = f"meli:note:reply:{reply['id']}"
    if reply["note"] and not _recent_source(s, conversation_id, source_id):
        partly = any(p["status"] == "sent" for p in s.db.reply_parts(reply["id"]))
        header = "Resposta enviada só em parte ao Mercado Livre" if partly else "Resposta não enviada ao Mercado Livre"
        s.chatwoot.note(conversation_id, f"{header}: {reply['error']}.\n\n{reply['note']}", source_id=source_id)


def _recent_source(s: Services, conversation_id: int, source_id: str) -> bool:
    """A note posted before a crash is in the latest page of messages."""
    return any(m.get("source_id") == source_id for m in s.chatwoot.messages(conversation_id))
