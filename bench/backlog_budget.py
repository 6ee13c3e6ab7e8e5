"""Questions backlog against ENFORCED rate limits: does the bridge use its budget without 429s?

Seeds Q unanswered questions (B buyers, I items) and has the fake Mercado Livre enforce
GET and POST limits of 500 x scale per 60 s (sliding window, 429 + Retry-After past
it); the bridge gets the same figures as MELI_GET_PER_MINUTE / MELI_POST_PER_MINUTE, and
CHATWOOT_PER_MINUTE = 3000 x scale. The fake Chatwoot has no account-wide limit (only its
per-conversation flood guard), so Chatwoot's achieved rate is measured without enforcement.
One `main.py --once`; prints per API:

- 429s the bridge received (goal 0);
- the achieved rate over the busy period as a share of the configured limit, counted over
  the whole 60 s windows of the busy period (goal >= 90 %; the bridge's budgets spend
  rate_budget.SAFETY = 95 % of the configured limit, so ~95 % is the ceiling);
- the most calls seen in any 60 s window, how many windows the backlog needed, wall time.

Scale: limits and budgets are both multiplied by --scale, and the budget mechanism (calls
per sliding 60 s window) does not depend on the figure, so a scaled run shows the same
shares as the real limits with a backlog --scale times larger -- as long as the budget,
not the bridge's own speed, is what binds. The window stays 60 s, so the backlog must need
more than one window's worth of calls for the figure to mean anything: the script says when
it does not (e.g. 10000 questions at scale 20: ~2,200 GETs against 9,500 per window).

Usage: python bench/backlog_budget.py [--questions 3000 --scale 1]   (about 3-4 minutes)
"""

from __future__ import annotations

import argparse
import math
import sys
from bisect import bisect_left
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Bench, by_endpoint, mb, seed_questions, statuses, table, verdict  # noqa: E402,I001
from bridge.rate_budget import SAFETY  # noqa: E402

MELI_LIMIT, CHATWOOT_LIMIT = 500, 3000  # per minute, before scaling (the bridge's defaults)
SHARE_GOAL = 0.90
WINDOW = 60.0
# Polls of the other jobs of `--once` (post-sale unread list, missed feeds): they run after the
# questions backlog, so they are left out of the busy period.
OTHER_JOBS = ("GET /messages/unread", "GET /missed_feeds")


def max_in_window(times: list[float], window: float = WINDOW) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def rate_figures(name: str, calls: list[dict], limit: float) -> dict:
    """Figures for one API (or one method of it); `limit` is the configured per-minute limit."""
    accepted = sorted(c["t"] for c in calls if c["status"] != 429)
    n = len(accepted)
    out = {"api": name, "limit": limit, "calls": n, "429s": sum(1 for c in calls if c["status"] == 429),
           "busy": 0.0, "windows_needed": n / max(1.0, math.floor(limit * SAFETY)), "whole_windows": 0,
           "share": None, "max_window": max_in_window(accepted), "mean_rate": None}
    if n < 2:
        return out
    busy = accepted[-1] - accepted[0]
    whole = int(busy // WINDOW)
    out.update(busy=busy, whole_windows=whole, mean_rate=(n - 1) / busy * 60.0 if busy else None)
    if whole:
        inside = bisect_left(accepted, accepted[0] + whole * WINDOW)
        out["share"] = inside / whole / limit
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=3000)
    parser.add_argument("--buyers", type=int, default=0, help="default: questions / 5")
    parser.add_argument("--items", type=int, default=0, help="default: questions / 20")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every limit and budget")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (database, poller log)")
    args = parser.parse_args(argv)
    q = args.questions
    buyers = min(args.buyers or max(1, q // 5), q)
    items = min(args.items or max(1, q // 20), q)
    meli_limit, chatwoot_limit = MELI_LIMIT * args.scale, CHATWOOT_LIMIT * args.scale

    bench = Bench(keep=args.keep, MELI_GET_PER_MINUTE=f"{meli_limit:g}", MELI_POST_PER_MINUTE=f"{meli_limit:g}",
                  CHATWOOT_PER_MINUTE=f"{chatwoot_limit:g}")
    try:
        seed_questions(bench.meli, q, buyers, items)
        bench.meli.rate_limit("GET", int(meli_limit))
        bench.meli.rate_limit("POST", int(meli_limit))
        limited_before = bench.meli.rate_limited
        print(f"budget under enforced limits: {q} questions, {buyers} buyers, {items} items, scale x{args.scale:g}")
        print(f"  fake Mercado Livre enforces GET {meli_limit:g}/min and POST {meli_limit:g}/min (sliding 60 s); "
              f"fake Chatwoot enforces no account-wide limit")
        print(f"  bridge: MELI_GET_PER_MINUTE={meli_limit:g} MELI_POST_PER_MINUTE={meli_limit:g} "
              f"CHATWOOT_PER_MINUTE={chatwoot_limit:g}; its budgets spend SAFETY={SAFETY:.0%} of each "
              f"(GET {math.floor(meli_limit * SAFETY)}, Chatwoot {math.floor(chatwoot_limit * SAFETY)} per 60 s)")

        run = bench.once()
        if run["rc"] != 0:
            print(f"WARNING: --once exited {run['rc']}; log tail:\n{bench.log_tail()}")
        meli_calls = [c for c in run["meli_calls"] if f"{c['method']} {c['path']}" not in OTHER_JOBS]
        figures = [
            rate_figures("Mercado Livre GET", [c for c in meli_calls if c["method"] == "GET"], meli_limit),
            rate_figures("Mercado Livre POST", [c for c in meli_calls if c["method"] != "GET"], meli_limit),
            rate_figures("Chatwoot (not enforced)", run["chatwoot_calls"], chatwoot_limit),
        ]
        rows = []
        for f in figures:
            if f["share"] is not None:
                share, ok = f"{f['share']:.1%}", verdict(f["share"] >= SHARE_GOAL)
            else:
                share, ok = "n/a", ("not binding" if f["calls"] else "")
            rows.append((f["api"], f"{f['limit']:g}", f["calls"], f["429s"], f"{f['busy']:.1f}",
                         f"{f['windows_needed']:.2f}", f["whole_windows"], share, ok, f["max_window"],
                         f"{f['mean_rate']:.0f}" if f["mean_rate"] else ""))
        print()
        print(table(rows, ("api", "limit/min", "calls", "429s", "busy s", "windows needed", "whole windows",
                           "share of limit", "goal >=90%", "max in 60 s", "mean/min")))
        meli_429 = bench.meli.rate_limited - limited_before
        cw_429 = statuses(run["chatwoot_calls"]).get(429, 0)
        print()
        print(table([
            ("429s from Mercado Livre (fake counter rate_limited)", meli_429, 0, verdict(meli_429 == 0)),
            ("429s from Chatwoot (flood guard)", cw_429, 0, verdict(cw_429 == 0)),
            ("max GETs in a 60 s window vs fake limit", figures[0]["max_window"], f"<= {meli_limit:g}",
             verdict(figures[0]["max_window"] <= meli_limit)),
            ("wall time (s)", f"{run['wall']:.1f}", "", ""),
            ("poller peak RSS (MB)", f"{mb(run['maxrss_kib']):.1f}", "", ""),
            ("exit code", run["rc"], 0, verdict(run["rc"] == 0)),
        ], ("figure", "value", "goal", "")))
        print("\ncalls by endpoint: " + ", ".join(f"{k} {v}" for k, v in sorted(
            (by_endpoint(run["meli_calls"]) + by_endpoint(run["chatwoot_calls"])).items())))
        conversations = sum(1 for c in bench.chatwoot.conversations.values() if c["inbox_id"] == bench.questions_inbox)
        print(f"conversations created: {conversations}/{q} {verdict(conversations == q)}")
        print("\nnotes: share = accepted calls inside the whole 60 s windows of the busy period (first to last call of"
              "\n  that API in the questions job) / (windows x configured limit); the ceiling is SAFETY = "
              f"{SAFETY:.0%}."
              "\n  'windows needed' < 1 means the whole backlog fits in one window: the budget never waits and the"
              "\n  share is then the bridge's own speed, not its pacing. Limits and budgets are scaled together; the"
              "\n  mechanism (calls per sliding 60 s window) is scale-free, so the shares hold for the real limits"
              "\n  with a backlog scaled by the same factor, while the budget (not the bridge's speed) binds.")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
