"""Questions backlog: what one `main.py --once` costs to bring Q unanswered questions into Chatwoot.

Seeds Q unanswered questions spread over B buyers and I items on the fake Mercado Livre,
runs the real poller once (rate budgets set very high, so pacing does not dominate) and
prints:

- calls to each API by endpoint, against the minimum needed:
  Mercado Livre ceil(Q/50) search pages + ceil(I/20) item multigets + one user lookup per buyer;
  Chatwoot one contact per buyer + one conversation and one message per question;
- actual/minimum per API and overall (goal <= 1.05);
- wall time and the poller's peak RSS (goal <= 150 MB);
- a second `--once` with nothing new: every question is still unanswered, so it should
  cost the ceil(Q/50) search pages (plus the other jobs' fixed polls) and no Chatwoot call;
- correctness: conversations == questions, contacts == buyers (OK/FAIL).

Usage: python bench/questions_backlog.py [--questions 10000 --buyers 2000 --items 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402,I001
    Bench, by_endpoint, calls_table, ceil_div, first_once_rows, mb, seed_questions, table, verdict)

RATIO_GOAL = 1.05
RSS_GOAL_MB = 150.0
# Calls of the other jobs of `--once` (not part of the questions minimum): who the seller
# is (first run only), the post-sale unread list and the missed notifications.
OTHER_JOBS = ("GET /users/me", "GET /messages/unread", "GET /missed_feeds", "POST /oauth/token")


def minimum_first(q: int, buyers: int, items: int) -> tuple[dict, dict]:
    meli = {"GET /questions/search": ceil_div(q, 50), "GET /items": ceil_div(items, 20), "GET /users/{id}": buyers}
    chatwoot = {"POST /contacts": buyers, "POST /conversations": q, "POST /conversations/{id}/messages": q}
    return meli, chatwoot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=10000)
    parser.add_argument("--buyers", type=int, default=2000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (database, poller log)")
    args = parser.parse_args(argv)
    q, buyers, items = args.questions, min(args.buyers, args.questions), min(args.items, args.questions)

    bench = Bench(keep=args.keep)
    try:
        started = time.monotonic()
        seed_questions(bench.meli, q, buyers, items)
        print(f"questions backlog: {q} questions, {buyers} buyers, {items} items "
              f"(seeded in {time.monotonic() - started:.1f}s); "
              f"budgets unpaced ({bench.env['MELI_GET_PER_MINUTE']}/min)")

        first = bench.once()
        if first["rc"] != 0:
            print(f"WARNING: first --once exited {first['rc']}; log tail:\n{bench.log_tail()}")
        meli_min, cw_min = minimum_first(q, buyers, items)
        rows = first_once_rows(first, meli_min, cw_min, "questions job only",
                               lambda calls: sum(calls.values()) - sum(calls.get(name, 0) for name in OTHER_JOBS),
                               RATIO_GOAL, RSS_GOAL_MB)
        conversations = [c for c in bench.chatwoot.conversations.values() if c["inbox_id"] == bench.questions_inbox]
        rows.append(("conversations created", len(conversations), q, ""))
        print(table(rows, ("figure", "value", "goal", "")))

        second = bench.once()
        meli2, cw2 = by_endpoint(second["meli_calls"]), by_endpoint(second["chatwoot_calls"])
        meli2_min = {"GET /questions/search": ceil_div(q, 50)}
        print("\nSECOND --once (nothing new: all questions still unanswered)")
        print(calls_table("Mercado Livre calls", meli2, meli2_min))
        print(calls_table("Chatwoot calls", cw2, {}))
        search2 = meli2.get("GET /questions/search", 0)
        print(table([
            ("search pages", search2, ceil_div(q, 50), verdict(search2 == ceil_div(q, 50))),
            ("Chatwoot calls", sum(cw2.values()), 0, verdict(not cw2)),
            ("wall time (s)", f"{second['wall']:.1f}", "", ""),
            ("poller peak RSS (MB)", f"{mb(second['maxrss_kib']):.1f}", "", ""),
            ("exit code", second["rc"], 0, verdict(second["rc"] == 0)),
        ], ("figure", "value", "expected", "")))

        conversations = [c for c in bench.chatwoot.conversations.values() if c["inbox_id"] == bench.questions_inbox]
        question_ids = {str(c["custom_attributes"].get("meli_question_id")) for c in conversations}
        one_message = all(len(bench.chatwoot.messages_in(c["id"])) == 1 for c in conversations)
        checks = [
            ("conversations == questions", len(conversations), q, len(conversations) == q),
            ("distinct question ids", len(question_ids), q, len(question_ids) == q),
            ("contacts == buyers", len(bench.chatwoot.contacts), buyers, len(bench.chatwoot.contacts) == buyers),
            ("one message per conversation", one_message, True, one_message),
        ]
        print("\nCORRECTNESS")
        print(table([(n, a, e, verdict(ok)) for n, a, e, ok in checks], ("check", "actual", "expected", "")))
        print(f"correctness: {verdict(all(ok for *_rest, ok in checks))}")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
