"""Shared helpers of the benchmarks: the fakes, the bridge's environment, a measured `main.py --once`.

The fakes run inside the benchmark process (threads); the poller runs as a real
subprocess, started through a tiny wrapper interpreter that reports the wall time and
the peak RSS (RUSAGE_CHILDREN of the wrapper = the poller alone), so several runs in one
benchmark never mix their figures.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e import APP_DIR  # noqa: E402  (where the bridge runs: a developer's .env is not there)
from tests.fakes import Fakes, start_fakes  # noqa: E402

PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
FAST = "10000000"  # per-minute budgets so high that pacing never shows in the speed benchmarks
WEBHOOK_SECRET = "whsec-bench-1"

# Runs one child, then prints its own RUSAGE_CHILDREN: the child's peak RSS, not the bench's.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
log_path, argv = sys.argv[1], sys.argv[2:]
started = time.monotonic()
with open(log_path, "ab") as log:
    rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
wall = time.monotonic() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "maxrss_kib": usage.ru_maxrss, "cpu_user": usage.ru_utime,
                  "cpu_sys": usage.ru_stime}))
"""


# ---- the fakes and the bridge ---------------------------------------------------------------------

class Bench:
    """Both fakes (with the two inboxes), a scratch directory, and the poller's environment."""

    def __init__(self, keep: bool = False, **env_overrides: str):
        self.fakes: Fakes = start_fakes()
        self.meli = self.fakes.meli.state
        self.chatwoot = self.fakes.chatwoot.state
        self.questions_inbox = self.chatwoot.add_inbox("Mercado Livre - Perguntas")
        self.messages_inbox = self.chatwoot.add_inbox("Mercado Livre - Vendas")
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="meli-bench-"))
        self.log_path = self.tmp / "poller.log"
        access, refresh = self.meli.seed_tokens()
        # Like tests/e2e.py's Bridge, but no Chatwoot webhook is registered: no listener runs,
        # and a delivery attempt per created message would only load the fake's process.
        self.env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "HOME": str(self.tmp),
            "MELI_APP_ID": str(self.meli.app_id),
            "MELI_SECRET_KEY": self.meli.secret,
            "MELI_REDIRECT_URI": "http://127.0.0.1:9/oauth/callback",
            "MELI_REFRESH_TOKEN": refresh,
            "MELI_ACCESS_TOKEN": access,
            "MELI_API_URL": self.fakes.meli.url,
            "MELI_AUTH_URL": self.fakes.meli.url,
            "CHATWOOT_URL": self.fakes.chatwoot.url,
            "CHATWOOT_API_TOKEN": self.chatwoot.api_token,
            "CHATWOOT_ACCOUNT_ID": str(self.chatwoot.account_id),
            "CHATWOOT_QUESTIONS_INBOX_ID": str(self.questions_inbox),
            "CHATWOOT_MESSAGES_INBOX_ID": str(self.messages_inbox),
            "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DATABASE_PATH": str(self.tmp / "data" / "bridge.db"),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "MELI_GET_PER_MINUTE": FAST,
            "MELI_POST_PER_MINUTE": FAST,
            "CHATWOOT_PER_MINUTE": FAST,
        }
        self.env.update(env_overrides)

    def once(self, timeout: float = 3600) -> dict:
        """`python main.py --once`; returns rc, wall (s), maxrss_kib and the calls it made to each fake."""
        meli_mark, chatwoot_mark = len(self.meli.calls), len(self.chatwoot.calls)
        with open(self.log_path, "ab") as log:
            log.write(b"\n===== main.py --once =====\n")
        out = subprocess.run([PYTHON, "-c", _WRAPPER, str(self.log_path), PYTHON, "main.py", "--once"],
                             cwd=str(APP_DIR), env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(f"wrapper failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        with self.meli.lock:
            result["meli_calls"] = list(self.meli.calls[meli_mark:])
        with self.chatwoot.lock:
            result["chatwoot_calls"] = list(self.chatwoot.calls[chatwoot_mark:])
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.fakes.stop()
        if self.keep:
            print(f"(scratch directory kept: {self.tmp})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---- call accounting ------------------------------------------------------------------------------

_ACCOUNT_PREFIX = re.compile(r"^/api/v1/accounts/[^/]+")


def endpoint(call: dict) -> str:
    """'GET /users/{id}': the method and the path with ids folded (the thread read says how it reads)."""
    path = _ACCOUNT_PREFIX.sub("", call["path"])
    parts = ["{id}" if any(ch.isdigit() for ch in part) else part for part in path.split("/")]
    name = f"{call['method']} {'/'.join(parts)}"
    if name == "GET /messages/packs/{id}/sellers/{id}":
        marks = str((call.get("query") or {}).get("mark_as_read", "true")).lower() != "false"
        name += " (marks read)" if marks else " (mark_as_read=false)"
    return name


def by_endpoint(calls: Iterable[dict]) -> Counter:
    return Counter(endpoint(c) for c in calls)


def statuses(calls: Iterable[dict]) -> Counter:
    return Counter(c["status"] for c in calls)


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b) if a else 0


def ratio(actual: int, minimum: int) -> str:
    return f"{actual / minimum:.3f}" if minimum else ("1.000" if not actual else "inf")


# ---- printing ------------------------------------------------------------------------------------

def table(rows: list[tuple], headers: tuple, indent: str = "  ") -> str:
    """A plain aligned table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:] if row[i]) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        return indent + "  ".join(cell.rjust(w) if num else cell.ljust(w)
                                  for cell, w, num in zip(row, widths, numeric, strict=False)).rstrip()

    lines = [fmt(cells[0]), indent + "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in cells[1:]]
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%x"))
        return True
    except ValueError:
        return False


def calls_table(title: str, counts: Counter, minimum: dict[str, int] | None = None) -> str:
    """Calls per endpoint, with the minimum per endpoint when given (endpoints in either)."""
    minimum = minimum or {}
    names = sorted(set(counts) | set(minimum))
    rows = [(n, counts.get(n, 0), minimum.get(n, 0), counts.get(n, 0) - minimum.get(n, 0)) for n in names]
    rows.append(("total", sum(counts.values()), sum(minimum.values()),
                 sum(counts.values()) - sum(minimum.values())))
    return f"{title}\n" + table(rows, ("endpoint", "actual", "minimum", "extra"))


def mb(kib: int) -> float:
    return kib / 1024.0


def verdict(ok: bool) -> str:
    return "OK" if ok else "FAIL"


# ---- seed data ------------------------------------------------------------------------------------

def png_bytes(side: int = 32, seed: int = 0) -> bytes:
    """A valid RGB PNG of side×side noisy pixels (about 3 KB at 32×32)."""
    import random
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(side * 3)) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def seed_questions(meli, questions: int, buyers: int, items: int, first_buyer: int = 8_000_001) -> None:
    """`questions` unanswered questions spread round-robin over `buyers` buyers and `items` items."""
    item_ids = [f"MLB{4_000_000_000 + i}" for i in range(items)]
    for n, item_id in enumerate(item_ids):
        meli.add_item(item_id, f"Produto de teste {n}", price=10.0 + n % 90)
    for b in range(buyers):
        meli.add_user(first_buyer + b, f"COMPRADOR{first_buyer + b}")
    for q in range(questions):
        meli.add_question(item_id=item_ids[q % items], buyer_id=first_buyer + q % buyers,
                          text=f"Pergunta {q}: tem em estoque? Qual o prazo de entrega?")


def first_once_rows(first: dict, meli_min: dict[str, int], cw_min: dict[str, int], job_label: str,
                    job_calls: Callable[[Counter], int], goal: float, rss_goal_mb: float | None = None) -> list[tuple]:
    """Print the FIRST --once call tables; return its figures (actual/minimum per API and for the
    job alone — `job_calls(Mercado Livre calls by endpoint)` — wall time, CPU, RSS, errors, exit code)."""
    meli_calls, cw_calls = by_endpoint(first["meli_calls"]), by_endpoint(first["chatwoot_calls"])
    meli_total, cw_total = sum(meli_calls.values()), sum(cw_calls.values())
    meli_need, cw_need = sum(meli_min.values()), sum(cw_min.values())
    print("\nFIRST --once")
    print(calls_table("Mercado Livre calls", meli_calls, meli_min))
    print(calls_table("Chatwoot calls", cw_calls, cw_min))

    def row(label, actual, need):
        return (label, ratio(actual, need), f"<= {goal}", verdict(actual <= goal * need))
    rss = mb(first["maxrss_kib"])
    errors = [c for c in first["meli_calls"] + first["chatwoot_calls"] if c["status"] >= 400]
    return [row("Mercado Livre actual/minimum", meli_total, meli_need),
            row(f"  {job_label}", job_calls(meli_calls), meli_need),
            row("Chatwoot actual/minimum", cw_total, cw_need),
            row("overall actual/minimum", meli_total + cw_total, meli_need + cw_need),
            ("wall time (s)", f"{first['wall']:.1f}", "", ""),
            ("calls per second (both APIs)", f"{(meli_total + cw_total) / first['wall']:.0f}", "", ""),
            ("poller CPU user+sys (s)", f"{first['cpu_user'] + first['cpu_sys']:.1f}", "", ""),
            ("poller peak RSS (MB)", f"{rss:.1f}", "" if rss_goal_mb is None else f"<= {rss_goal_mb:.0f}",
             "" if rss_goal_mb is None else verdict(rss <= rss_goal_mb)),
            ("HTTP errors (>= 400)", len(errors), "0", verdict(not errors)),
            ("exit code", first["rc"], "0", verdict(first["rc"] == 0))]
