"""Claims backlog: what one `main.py --once` costs to bring C open claims with M messages each into Chatwoot.

Seeds C paid orders, each with an open claim holding M buyer messages. Runs the real
poller once (rate budgets set very high) and prints:

- calls to each API by endpoint, against the minimum needed:
  Mercado Livre ceil(C/50) search pages + per claim 1 claim + 1 messages list + 1 order
  + 1 affects-reputation; Chatwoot one contact per buyer + per claim 1 conversation +
  1 label call + 1 summary message + M messages;
- actual/minimum (goal <= 1.05), wall time, the poller's peak RSS;
- an idle `--once` afterwards: the claims job reads only the open-claims search
  (ceil(C/50) pages; one with a few dozen claims) and makes no Chatwoot call;
- correctness: one conversation per claim, M messages each, in order.

Usage: python bench/claims_backlog.py [--claims 500 --messages 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402,I001
    Bench, by_endpoint, calls_table, ceil_div, first_once_rows, table, verdict)
from bridge.sync.claims import SEARCH_PAGE  # noqa: E402

RATIO_GOAL = 1.05
FIRST_ORDER = 3_000_000_001
FIRST_CLAIM = 5_000_000_001
FIRST_BUYER = 9_500_001


def claims_part(counts: Counter) -> Counter:
    return Counter({k: v for k, v in counts.items() if "/post-purchase/" in k or k == "GET /orders/{id}"})


def seed(meli, claims: int, messages: int) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for i in range(claims):
        order_id, buyer_id, claim_id = FIRST_ORDER + i, FIRST_BUYER + i, FIRST_CLAIM + i
        meli.add_order(order_id, buyer_id, f"COMPRADOR{buyer_id}", items=[(f"MLB{i % 300}", f"Produto {i % 300}",
                                                                           1, 49.9)])
        meli.add_claim(claim_id, order_id)
        texts[str(claim_id)] = []
        for k in range(messages):
            text = f"Mensagem {k + 1} da reclamação {claim_id}"
            meli.add_claim_message(claim_id, "complainant", text)
            texts[str(claim_id)].append(text)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--messages", type=int, default=10, help="buyer messages per claim")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (database, poller log)")
    args = parser.parse_args(argv)
    claims, per_claim = args.claims, args.messages

    bench = Bench(keep=args.keep)
    try:
        claims_inbox = bench.chatwoot.add_inbox("Mercado Livre - Reclamações")
        bench.env["CHATWOOT_CLAIMS_INBOX_ID"] = str(claims_inbox)
        started = time.monotonic()
        texts = seed(bench.meli, claims, per_claim)
        print(f"claims backlog: {claims} open claims x {per_claim} buyer messages "
              f"(seeded in {time.monotonic() - started:.1f}s); budgets unpaced")

        first = bench.once()
        if first["rc"] != 0:
            print(f"WARNING: first --once exited {first['rc']}; log tail:\n{bench.log_tail()}")
        pages = ceil_div(claims, SEARCH_PAGE)
        meli_min = {"GET /post-purchase/{id}/claims/search": pages,
                    "GET /post-purchase/{id}/claims/{id}": claims,
                    "GET /post-purchase/{id}/claims/{id}/messages": claims,
                    "GET /post-purchase/{id}/claims/{id}/affects-reputation": claims,
                    "GET /orders/{id}": claims}
        cw_min = {"POST /contacts": claims, "POST /conversations": claims,
                  "POST /conversations/{id}/labels": claims,
                  "POST /conversations/{id}/messages": claims * (per_claim + 1)}
        print(table(first_once_rows(first, meli_min, cw_min, "claims calls only",
                                    lambda calls: sum(claims_part(calls).values()), RATIO_GOAL),
                    ("figure", "value", "goal", "")))

        idle = bench.once()
        meli2, cw2 = by_endpoint(idle["meli_calls"]), by_endpoint(idle["chatwoot_calls"])
        claims2 = claims_part(meli2)
        print("\nIDLE --once (nothing changed)")
        print(calls_table("Mercado Livre calls, claims job", claims2, {"GET /post-purchase/{id}/claims/search": pages}))
        print(calls_table("Chatwoot calls", cw2, {}))
        print(table([
            ("claims Mercado Livre calls", sum(claims2.values()), pages, verdict(sum(claims2.values()) <= pages)),
            ("Chatwoot calls", sum(cw2.values()), 0, verdict(not cw2)),
            ("wall time (s)", f"{idle['wall']:.1f}", "", ""),
            ("exit code", idle["rc"], 0, verdict(idle["rc"] == 0)),
        ], ("figure", "value", "goal", "")))

        print("\nCORRECTNESS")
        print(table(check(bench, claims_inbox, texts), ("check", "actual", "expected", "")))
    finally:
        bench.close()
    return 0


def check(bench: Bench, inbox: int, texts: dict) -> list[tuple]:
    cw = bench.chatwoot
    convs = {str(c["custom_attributes"].get("meli_claim_id")): c for c in cw.conversations.values()
             if c["inbox_id"] == inbox}
    in_order = count = 0
    for claim_id, expected in texts.items():
        conv = convs.get(claim_id)
        if conv is None:
            continue
        msgs = [m["content"] for m in cw.messages_in(conv["id"])
                if (m["source_id"] or "").startswith("meli:claim_message:")]
        count += len(msgs)
        in_order += msgs == expected
    rows = [("conversations == claims", len(convs), len(texts)),
            ("messages == claims x messages", count, sum(len(v) for v in texts.values())),
            ("claims in Mercado Livre order", in_order, len(texts))]
    out = [(name, actual, expected, verdict(actual == expected)) for name, actual, expected in rows]
    out.append(("correctness", "", "", verdict(all(r[3] == "OK" for r in out))))
    return out


if __name__ == "__main__":
    sys.exit(main())
