"""Post-sale backlog: what one `main.py --once` costs to bring P unread sale threads into Chatwoot.

Seeds P paid orders without pack (the pack id is then the order id), each with M buyer
messages; a share of the packs (--file-share) carries one PNG of a few KB on one message.
Runs the real poller once (rate budgets set very high) and prints:

- calls to each API by endpoint, against the minimum needed:
  Mercado Livre 1 unread list + per pack ceil(M/10) thread pages + 1 order lookup
  + 1 mark-read read + 1 download per file + 1 page of the orders search (the sweep);
  Chatwoot one contact per buyer + per pack 1 conversation + 1 message per buyer message;
- actual/minimum (goal <= 1.05), wall time, the poller's peak RSS;
- an idle `--once` afterwards: Mercado Livre goal 2 post-sale calls (the unread list and one
  page of the orders search; every thread was just read) plus the fixed polls of the
  questions and missed-feeds jobs; Chatwoot goal 0;
- a sweep `--once`: as if 15 minutes had passed, every thread is due again for the sweep
  that finds messages read on Mercado Livre's site; the cost per poll stays bounded:
  2 + SWEEP_THREADS Mercado Livre calls whatever the number of sales, Chatwoot 0;
- correctness: conversations == packs, messages == packs x M in order, files attached,
  and every mark-read happened after the pack's messages were created in Chatwoot
  (both fakes stamp with time.monotonic() of this process, so the times compare).

Usage: python bench/postsale_backlog.py [--packs 1000 --messages 5 --file-share 0.10]
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402,I001
    Bench, by_endpoint, calls_table, ceil_div, first_once_rows, png_bytes, table, verdict)
from bridge.sync.sales import SWEEP_RECHECK, SWEEP_THREADS  # noqa: E402

RATIO_GOAL = 1.05
FIRST_ORDER = 2_000_000_001
FIRST_BUYER = 9_000_001
POSTSALE_PREFIXES = ("GET /messages", "POST /messages", "GET /orders", "GET /packs")


def is_postsale(name: str) -> bool:
    return name.startswith(POSTSALE_PREFIXES)


def part(counts: Counter, postsale: bool) -> Counter:
    return Counter({k: v for k, v in counts.items() if is_postsale(k) == postsale})


def seed(meli, packs: int, messages: int, file_share: float, buyers: int, png: bytes) -> tuple[dict, set]:
    """Returns ({pack id: [texts in order]}, {pack ids with a file})."""
    texts: dict[str, list[str]] = {}
    with_file: set[str] = set()
    for i in range(packs):
        order_id, buyer_id = FIRST_ORDER + i, FIRST_BUYER + i % buyers
        meli.add_order(order_id, buyer_id, f"COMPRADOR{buyer_id}",
                       items=[(f"MLB{5_000_000_000 + i % 300}", f"Produto {i % 300}", 1, 49.9)])
        pack = str(order_id)
        has_file = math.floor((i + 1) * file_share) > math.floor(i * file_share)
        file_at = messages // 2 if has_file else -1
        texts[pack] = []
        for k in range(messages):
            text = f"Mensagem {k + 1} do pedido {order_id}"
            files = [(f"foto-{order_id}.png", png, "image/png")] if k == file_at else None
            meli.add_buyer_message(pack, text, attachments=files)
            texts[pack].append(text)
        if has_file:
            with_file.add(pack)
    return texts, with_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packs", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5, help="buyer messages per pack")
    parser.add_argument("--file-share", type=float, default=0.10, help="share of packs with one PNG")
    parser.add_argument("--buyers", type=int, default=0, help="distinct buyers (default: one per pack)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (database, poller log)")
    args = parser.parse_args(argv)
    packs, per_pack = args.packs, args.messages
    buyers = min(args.buyers or packs, packs)
    png = png_bytes()

    bench = Bench(keep=args.keep)
    try:
        started = time.monotonic()
        texts, with_file = seed(bench.meli, packs, per_pack, args.file_share, buyers, png)
        print(f"post-sale backlog: {packs} packs (orders without pack) x {per_pack} buyer messages, "
              f"{len(with_file)} packs with a {len(png)}-byte PNG, {buyers} buyers "
              f"(seeded in {time.monotonic() - started:.1f}s); budgets unpaced")

        first = bench.once()
        if first["rc"] != 0:
            print(f"WARNING: first --once exited {first['rc']}; log tail:\n{bench.log_tail()}")
        meli_min = {"GET /messages/unread": 1,
                    "GET /messages/packs/{id}/sellers/{id} (mark_as_read=false)": packs * ceil_div(per_pack, 10),
                    "GET /orders/{id}": packs,
                    "GET /messages/packs/{id}/sellers/{id} (marks read)": packs,
                    "GET /messages/attachments/{id}": len(with_file),
                    "GET /orders/search": 1}
        cw_min = {"POST /contacts": buyers, "POST /conversations": packs,
                  "POST /conversations/{id}/messages": packs * per_pack}
        print(table(first_once_rows(first, meli_min, cw_min, "post-sale calls only",
                                    lambda calls: sum(part(calls, True).values()), RATIO_GOAL),
                    ("figure", "value", "goal", "")))

        idle = bench.once()
        meli2, cw2 = by_endpoint(idle["meli_calls"]), by_endpoint(idle["chatwoot_calls"])
        post2, other2 = part(meli2, True), part(meli2, False)
        print("\nIDLE --once (nothing unread)")
        print(calls_table("Mercado Livre calls, post-sale job", post2,
                          {"GET /messages/unread": 1, "GET /orders/search": 1}))
        print(calls_table("Mercado Livre calls, questions and missed-feeds jobs", other2,
                          {"GET /questions/search": 1, "GET /missed_feeds": 1}))
        print(calls_table("Chatwoot calls", cw2, {}))
        print(table([
            ("post-sale Mercado Livre calls", sum(post2.values()), 2, verdict(sum(post2.values()) <= 2)),
            ("all Mercado Livre calls", sum(meli2.values()), 4, verdict(sum(meli2.values()) <= 4)),
            ("Chatwoot calls", sum(cw2.values()), 0, verdict(not cw2)),
            ("wall time (s)", f"{idle['wall']:.1f}", "", ""),
            ("exit code", idle["rc"], 0, verdict(idle["rc"] == 0)),
        ], ("figure", "value", "goal", "")))

        # Every thread due for the sweep again, as SWEEP_RECHECK seconds later.
        with sqlite3.connect(bench.env["DATABASE_PATH"]) as conn:
            conn.execute("UPDATE threads SET checked_at = checked_at - ?", (SWEEP_RECHECK + 60,))
        swept = bench.once()
        meli3, cw3 = by_endpoint(swept["meli_calls"]), by_endpoint(swept["chatwoot_calls"])
        post3 = part(meli3, True)
        bound = 2 + SWEEP_THREADS
        print(f"\nSWEEP --once (every thread due again; at most {SWEEP_THREADS} re-read per poll)")
        print(calls_table("Mercado Livre calls, post-sale job", post3, {
            "GET /messages/unread": 1, "GET /orders/search": 1,
            "GET /messages/packs/{id}/sellers/{id} (mark_as_read=false)": min(SWEEP_THREADS, packs)}))
        print(table([
            ("post-sale Mercado Livre calls", sum(post3.values()), f"<= {bound}",
             verdict(sum(post3.values()) <= bound)),
            ("Chatwoot calls", sum(cw3.values()), 0, verdict(not cw3)),
            ("polls to re-read every thread once", ceil_div(packs, SWEEP_THREADS), "", ""),
            ("exit code", swept["rc"], 0, verdict(swept["rc"] == 0)),
        ], ("figure", "value", "goal", "")))

        print("\nCORRECTNESS")
        print(table(check(bench, texts, with_file, png), ("check", "actual", "expected", "")))
    finally:
        bench.close()
    return 0


def check(bench: Bench, texts: dict, with_file: set, png: bytes) -> list[tuple]:
    cw, meli = bench.chatwoot, bench.meli
    convs = {str(c["custom_attributes"].get("meli_pack_id")): c for c in cw.conversations.values()
             if c["inbox_id"] == bench.messages_inbox}
    in_order = files_ok = 0
    message_count = 0
    last_created: dict[str, float] = {}
    for pack, expected in texts.items():
        conv = convs.get(pack)
        if conv is None:
            continue
        msgs = [m for m in cw.messages_in(conv["id"]) if (m["source_id"] or "").startswith("meli:message:")]
        message_count += len(msgs)
        in_order += [m["content"] for m in msgs] == expected
        attached = [a for m in msgs for a in m["attachments"]]
        want = 1 if pack in with_file else 0
        files_ok += len(attached) == want and all(a["file_size"] == len(png) for a in attached)
        if msgs:
            last_created[pack] = max(m["t_created"] for m in msgs)
    with meli.lock:
        events = list(meli.mark_read_events)
    marked = {pack for pack, _ids, _t in events}
    early = [(pack, t) for pack, _ids, t in events if pack not in last_created or t < last_created[pack]]
    margins = [t - last_created[pack] for pack, _ids, t in events if pack in last_created]
    still_unread = len(meli.unread_results())
    packs = len(texts)
    rows = [
        ("conversations == packs", len(convs), packs),
        ("messages == packs x messages", message_count, sum(len(v) for v in texts.values())),
        ("threads in Mercado Livre order", in_order, packs),
        ("packs with the right files", files_ok, packs),
        ("files attached", sum(len(a) for c in convs.values() for m in cw.messages_in(c["id"])
                               for a in [m["attachments"]]), len(with_file)),
        ("packs marked read", len(marked), packs),
        ("mark-read before its messages were in Chatwoot", len(early), 0),
        ("threads still unread in Mercado Livre", still_unread, 0),
    ]
    out = [(name, actual, expected, verdict(actual == expected)) for name, actual, expected in rows]
    if margins:
        out.append(("min gap last message -> mark-read (ms)", f"{min(margins) * 1000:.1f}", "> 0",
                    verdict(min(margins) > 0)))
    out.append(("correctness", "", "", verdict(all(r[3] == "OK" for r in out))))
    return out


if __name__ == "__main__":
    sys.exit(main())
