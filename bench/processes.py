"""What the benchmarks in this folder share: the fakes plus the real listener and poller, and figures.

The processes are started by tests.e2e.Bridge (gunicorn listener, `python main.py` poller);
this module only wraps it so a benchmark gets a fresh installation in a temporary
directory and tears everything down, and it prints the numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.e2e import LOG_DIR, WEBHOOK_SECRET, Bridge  # noqa: E402
from tests.fakes import start_fakes  # noqa: E402
from tests.fakes.fake_chatwoot import rails_json, sign  # noqa: E402

__all__ = ["LOG_DIR", "WEBHOOK_SECRET", "installation", "percentile", "summary", "print_table", "wait_for",
           "seed_questions", "question_conversations", "listener_log_ms", "signed_webhook", "post_raw",
           "read_db", "rails_json"]

# Production-like defaults: the .env.example values and INFO logs (the test Bridge uses DEBUG and 0.5 s polls).
PRODUCTION_ENV = {"LOG_LEVEL": "INFO", "QUESTIONS_POLL_SECONDS": "120", "MESSAGES_POLL_SECONDS": "180"}


class Installation:
    """Both fakes, the two Chatwoot inboxes, and a Bridge (processes started on demand)."""

    def __init__(self, fakes, bridge: Bridge, tmp: Path):
        self.fakes = fakes
        self.bridge = bridge
        self.tmp = tmp
        self.meli = fakes.meli.state
        self.chatwoot = fakes.chatwoot.state
        self.questions_inbox = fakes.questions_inbox
        self.messages_inbox = fakes.messages_inbox

    @property
    def url(self) -> str:
        return self.bridge.url

    @property
    def database_path(self) -> str:
        return self.bridge.env["DATABASE_PATH"]


@contextlib.contextmanager
def installation(**env: str) -> Iterator[Installation]:
    """Fresh fakes + bridge environment; `env` overrides PRODUCTION_ENV. Nothing is started yet."""
    tmp = Path(tempfile.mkdtemp(prefix="meli-chatwoot-bench-"))
    fakes = start_fakes()
    fakes.questions_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Perguntas")
    fakes.messages_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Vendas")
    bridge = Bridge(tmp, fakes, **{**PRODUCTION_ENV, **env})
    try:
        yield Installation(fakes, bridge, tmp)
    finally:
        bridge.close()
        fakes.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- figures ----------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float], points=(50, 95, 99)) -> dict:
    out = {"n": len(values)}
    for p in points:
        out[f"p{p}"] = percentile(values, p)
    out["max"] = max(values) if values else math.nan
    out["mean"] = sum(values) / len(values) if values else math.nan
    return out


def fmt(value, unit: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if unit == "ms":
            return f"{value:.1f} ms"
        if unit == "s":
            return f"{value:.2f} s"
        return f"{value:.2f}"
    return f"{value}{(' ' + unit) if unit and value != '-' else ''}"


def print_table(title: str, headers: list[str], rows: list[list], left: int = 1) -> None:
    """A plain-text table; the first `left` columns are left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "-+-".join("-" * w for w in widths)
    print(f"\n{title}")
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)))
    print(line)
    for row in cells:
        padded = (c.rjust(w) if i >= left else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print(" | ".join(padded))
    sys.stdout.flush()


# ---- waiting and seeding -------------------------------------------------------------------------------

def wait_for(predicate, timeout: float, interval: float = 0.05):
    """The predicate's first truthy value, or None after `timeout` seconds (no exception)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def seed_questions(meli, questions: int, buyers: int, items: int, buyer_base: int = 900_000,
                   item_base: int = 100_000) -> list[dict]:
    for b in range(buyers):
        meli.add_user(buyer_base + b, f"COMPRADOR{b}")
    for i in range(items):
        meli.add_item(f"MLB{item_base + i}", f"Produto {i}")
    return [meli.add_question(item_id=f"MLB{item_base + (n % items)}", buyer_id=buyer_base + (n % buyers),
                              text=f"Pergunta número {n}?") for n in range(questions)]


def question_conversations(chatwoot, inbox_id: int, with_message: bool = True) -> dict[str, list[int]]:
    """meli_question_id -> ids of the conversations carrying it (a list, so duplicates show)."""
    found: dict[str, list[int]] = {}
    with chatwoot.lock:
        for conv in chatwoot.conversations.values():
            if conv["inbox_id"] != inbox_id:
                continue
            qid = conv["custom_attributes"].get("meli_question_id")
            if qid is None or (with_message and not any(m["message_type"] == 0 for m in conv["messages"])):
                continue
            found.setdefault(str(qid), []).append(conv["id"])
    return found


# ---- talking to the listener ---------------------------------------------------------------------------

def signed_webhook(chatwoot, message: dict, secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict]:
    """The exact message_created delivery the fake Chatwoot would send for `message` (body and headers)."""
    with chatwoot.lock:
        raw = rails_json(chatwoot.webhook_payload(message))
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Chatwoot-Timestamp": timestamp,
               "X-Chatwoot-Signature": sign(secret, timestamp, raw),
               "X-Chatwoot-Delivery": f"bench-{message['id']}"}
    return raw, headers


def post_raw(url: str, raw: bytes, headers: dict, timeout: float = 30.0) -> tuple[int, float, float, dict]:
    """POST on a new connection (as Chatwoot's sender does). Returns (status, sent_at, acked_at, json)."""
    sent = time.monotonic()
    try:
        resp = requests.post(url, data=raw, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        return -1, sent, time.monotonic(), {"error": type(exc).__name__}
    acked = time.monotonic()
    try:
        body = resp.json()
    except ValueError:
        body = {}
    return resp.status_code, sent, acked, body


LISTENER_MS = re.compile(r"webhook (\w+) message=(\d+) .* in (\d+)ms")


def listener_log_ms(bridge: Bridge, message_ids: set[int]) -> list[float]:
    """Handler times the listener logged ('webhook accepted message=… in Nms') for these messages."""
    found = []
    for path in LOG_DIR.glob(f"{bridge.tmp.name}-listener-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            match = LISTENER_MS.search(line)
            if match and int(match.group(2)) in message_ids:
                found.append(float(match.group(3)))
    return found


def read_db(path: str, sql: str, args: tuple = ()) -> list[dict]:
    """A read-only query on the bridge's database (WAL: does not block the processes)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)
