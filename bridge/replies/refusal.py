"""Why a reply cannot go, said once: a short error and a note telling the agent what to do.

The same pair is the listener's refusal, the failed mark of the Chatwoot message, the row's
`error`/`note` and the private note in the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    error: str  # short: the failed mark, /health, the listener's answer
    note: str  # for the agent: what happened, what was (not) sent, what to do
    # The cause alone (no "nothing was sent", no "send it again"): when earlier parts already
    # reached the buyer, the note is rebuilt around it.
    why: str | None = None
    # What the log says: `error` without personal data (a file's name can name the buyer).
    logged: str | None = None

    @property
    def cause(self) -> str:
        return self.why or self.note

    @property
    def for_log(self) -> str:
        return self.logged or self.error

    def after(self, parts: list[dict], to: str = "comprador") -> Refusal:
        """The refusal as shown once some parts may have reached `to` (receiver_name)."""
        error, note = partial_failure(parts, self.error, self.note, self.cause, to)
        return Refusal(error, note)


RECEIVER_NAMES = {"complainant": "comprador", "mediator": "mediador do Mercado Livre"}


def receiver_name(reply: dict) -> str:
    """Who a reply's parts reach, as notes name it: a claim reply may go to Mercado Livre's mediator."""
    return RECEIVER_NAMES.get(reply.get("receiver") or "", "comprador") if reply.get("kind") == "claim" \
        else "comprador"


def partial_failure(parts: list[dict], error: str, note: str, why: str, to: str = "comprador") -> tuple[str, str]:
    """The failed mark and note of a reply; when some parts reached `to`, they say which and what is left.

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
               f"{'chegou' if len(sent) == 1 else 'chegaram'} ao {to}")
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
    # The mark names the receiver only when it is not the buyer (a claim reply to the mediator).
    mark = (f"{'parte' if len(sent) == 1 else 'partes'} {arrived} enviada{'s' if len(sent) > 1 else ''}"
            f"{'' if to == 'comprador' else f' ao {to}'}; {error}")
    return mark[:200], note


def _part_list(numbers: list[int]) -> str:
    """[1, 2, 3] -> "1, 2 e 3"."""
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} e {words[-1]}"
