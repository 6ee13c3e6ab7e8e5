"""Agent replies, the listener's side: a Chatwoot webhook becomes a recorded reply, or a refusal.

The listener validates the webhook, plans the reply (pure: text conversion, limits, parts)
and commits it with its parts in one transaction before answering 200. No network here:
the listener must answer Chatwoot within 5 s whatever Mercado Livre is doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge import source_ids, text
from bridge.replies.refusal import Refusal
from bridge.rules import claims as claim_rules
from bridge.rules.claims import REPLY_TO_ATTRIBUTE
from config import Settings
from db_manager import Database

AGENT_SENDER_TYPES = ("user", "agent_bot")
MELI_FILE_TYPES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "pdf": "application/pdf", "txt": "text/plain"}
MAX_FILE_BYTES = 25 * 1024 * 1024


@dataclass
class Plan:
    kind: str
    parts: list[dict] = field(default_factory=list)
    refused: Refusal | None = None


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
    if db.replies.seen(message_id):
        return "duplicate", 200, {}

    kind = {settings.chatwoot_questions_inbox_id: "answer",
            settings.chatwoot_claims_inbox_id: "claim"}.get(inbox_id, "message")
    link = db.links.by_conversation(LINK_KIND[kind], conversation_id)
    attrs = conversation.get("custom_attributes") if isinstance(conversation.get("custom_attributes"), dict) else {}
    # The item the bridge itself put in this conversation decides, never the attribute: agents edit it
    # (a typo, another sale's id, cleared). Known to none of its rows, the conversation's own messages
    # decide, read from Chatwoot by the delivery (no network here): the attribute is only a candidate
    # then, and no attribute is not a refusal yet (soak seeds 53003 and 20261129).
    shown = {link["external_id"]} if link else db.links.shown_in(LINK_KIND[kind], conversation_id)
    typed = None if shown else _external_id(attrs.get(f"meli_{LINK_KIND[kind]}_id"))
    target = next(iter(shown)) if len(shown) == 1 else typed
    # A claim's conversation carries its sale's ids too: moved by an agent out of the claims inbox,
    # a reply there would go to the buyer's sale chat, whoever the agent addressed in the claim.
    moved_claim = kind != "claim" and is_claim_conversation(db, conversation_id, attrs)
    if moved_claim:
        target = None  # neither sent nor adopted: the sale's row must never take the claim's conversation

    plan = plan_reply(kind, payload.get("content"), payload.get("attachments"), settings,
                      limit=CLAIM_TEXT_LIMIT if kind == "claim" else text.POSTSALE_DEFAULT_LIMIT)
    if moved_claim and not plan.refused:
        plan.refused = CLAIM_MOVED
    addressed = claim_receiver(attrs) if kind == "claim" else None
    if kind == "claim" and not plan.refused and addressed is None:
        plan.refused = RECEIVER_UNKNOWN
    # Final here, for every part: decided per part, a crash or a stage change could split the reply.
    receiver = addressed and claim_rules.resolve_receiver(addressed, ((link or {}).get("data") or {}).get("receivers"))
    # Before the reply is recorded, so a delivery retried after a crash in between adopts it too.
    adopted = link is None and target is not None and db.links.adopt_conversation(
        LINK_KIND[kind], target, conversation_id, now)
    # One answer per question: checked by the database inside the insert's transaction, since
    # two listener workers may accept two agent messages for the same question at once.
    reply_id = db.replies.accept(chatwoot_message_id=message_id, conversation_id=conversation_id, kind=kind,
                                 target_id=target, parts=plan.parts, now=now,
                                 error=plan.refused and plan.refused.error, note=plan.refused and plan.refused.note,
                                 taken=ANSWER_TAKEN if kind == "answer" else None,
                                 receiver=receiver, addressed=addressed)
    if reply_id is None:
        return "duplicate", 200, {}
    extra = {"reply_id": reply_id, "kind": kind, "target": target, "parts": len(plan.parts)}
    if adopted:
        extra["adopted_conversation"] = True
    error = (plan.refused and plan.refused.error) or (db.replies.get(reply_id)["error"] if kind == "answer" else None)
    if error:
        return "refused", 200, dict(extra, reason=error)
    return "accepted", 200, extra


LINK_KIND = {"answer": "question", "message": "pack", "claim": "claim"}
UNLINKED = Refusal("conversa sem vínculo com o Mercado Livre",
                   "Esta conversa não está ligada a uma pergunta, venda ou reclamação do Mercado Livre, então a "
                   "resposta não foi enviada. Responda pelo Mercado Livre.")
# Not documented for claims: long texts are split as post-sale ones, in parts of this size.
CLAIM_TEXT_LIMIT = 2000


def is_claim_conversation(db: Database, conversation_id: int, attrs: dict) -> bool:
    """A claim's conversation, by the bridge's rows or by its attributes (a create not recorded yet)."""
    value = attrs.get("meli_claim_id")
    return db.links.by_conversation("claim", conversation_id) is not None \
        or (value is not None and str(value).strip() != "")


CLAIM_MOVED = Refusal(
    "conversa de reclamação fora da caixa Reclamações",
    "Esta conversa é de uma reclamação do Mercado Livre e foi movida para outra caixa de entrada. A ponte não "
    "sabe se a mensagem iria para a reclamação (comprador ou mediação) ou para o chat da venda, então ela não foi "
    "enviada a ninguém. Mova a conversa de volta para a caixa Mercado Livre - Reclamações e envie de novo, ou "
    "escreva na conversa da venda.")


def claim_receiver(attrs: dict) -> str | None:
    """The conversation attribute agents set in the sidebar; None when it is not one the bridge knows."""
    return claim_rules.parse_reply_to(attrs.get(REPLY_TO_ATTRIBUTE))


RECEIVER_UNKNOWN = Refusal(
    f"{REPLY_TO_ATTRIBUTE} não reconhecido",
    f"O atributo {REPLY_TO_ATTRIBUTE} desta conversa tem um valor que a ponte não reconhece, então a "
    f"mensagem não foi enviada a ninguém (a ponte não adivinha o destinatário). Valores aceitos: "
    f"{claim_rules.REPLY_TO_VALUES}. Corrija o atributo e envie a mensagem de novo.")


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
    if source_ids.is_ours(payload.get("source_id")):
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
            return Plan(kind, refused=Refusal(
                "respostas não aceitam anexos",
                "O Mercado Livre não aceita anexos em respostas a perguntas. Envie a resposta só "
                "com texto; o arquivo pode ser enviado depois da venda, na conversa de pós-venda."))
        if not plain:
            return Plan(kind, refused=Refusal("resposta vazia", "A resposta está vazia e não foi enviada."))
        if len(plain) > text.QUESTION_ANSWER_LIMIT:
            return Plan(kind, refused=Refusal(
                f"resposta com {len(plain)} caracteres (máximo {text.QUESTION_ANSWER_LIMIT})",
                f"O Mercado Livre aceita respostas de até {text.QUESTION_ANSWER_LIMIT} caracteres e "
                f"esta tem {len(plain)}. Nada foi enviado: escreva uma resposta mais curta."))
        return Plan(kind, parts=[{"text": plain, "attachments": []}])

    if bad:
        return Plan(kind, refused=Refusal(
            "caracteres não aceitos pelo Mercado Livre",
            f"O Mercado Livre não aceita estes caracteres: {text.describe_chars(bad)}. Nada foi "
            f"enviado: reescreva a mensagem sem eles."))
    planned_files = []
    for attachment in files:
        problem, planned = _plan_file(attachment, settings)
        if problem:
            return Plan(kind, refused=problem)
        planned_files.append(planned)
    if not plain and not planned_files:
        return Plan(kind, refused=Refusal("mensagem vazia", "A mensagem está vazia e não foi enviada."))
    if not plain and kind == "claim":
        return Plan(kind, refused=Refusal(
            "anexo sem texto",
            "Na reclamação, o Mercado Livre só aceita anexos junto com uma mensagem. Nada foi enviado: "
            "envie o arquivo de novo com um texto."))
    pieces = text.split_message(plain, limit) if plain else [""]
    parts = [{"text": piece, "attachments": []} for piece in pieces]
    parts[0]["attachments"] = planned_files
    return Plan(kind, parts=parts)


def _plan_file(attachment: dict, settings: Settings) -> tuple[Refusal | None, dict | None]:
    url = _text_field(attachment, "data_url")
    name = _file_name(attachment)
    extension = (_text_field(attachment, "extension") or (name.rsplit(".", 1)[-1] if "." in name else "")).lower()[:20]
    scheme, host = _scheme_and_host(url)
    if host != urlsplit(settings.chatwoot_url).netloc.lower() or scheme not in ("http", "https"):
        return Refusal("anexo fora do Chatwoot configurado",
                       f"O anexo {name} não está no Chatwoot configurado na ponte e, por segurança, não foi baixado. "
                       f"Nada foi enviado: anexe o arquivo de novo nesta conversa."), None
    if extension not in MELI_FILE_TYPES:
        return Refusal(f"tipo de arquivo não aceito ({extension or 'desconhecido'})",
                       f"O Mercado Livre só aceita anexos JPG, PNG, PDF ou TXT; {name} não foi enviado, nem o texto "
                       f"desta mensagem. Converta o arquivo e envie de novo."), None
    size = attachment.get("file_size")
    if isinstance(size, int) and size > MAX_FILE_BYTES:
        return Refusal("arquivo acima de 25 MB",
                       f"O arquivo {name} tem mais de 25 MB, o limite do Mercado Livre. Nada foi enviado."), None
    return None, {"url": url, "name": name, "content_type": MELI_FILE_TYPES[extension]}


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
