"""Cold starts of the real poller seeded with a refresh token only: how many keep the authorization?

    .venv/bin/python bench/cold_starts.py [-n 50] [--also-once]

Each start: a fresh database, MELI_REFRESH_TOKEN only (no access token), `python
main.py` against the fakes until its questions, messages and missed_feeds jobs — which
all want a token at once — have run, then SIGTERM. `--also-once` starts a `main.py
--once` beside it, so two processes race as well. The fake's refresh tokens are single
use. Prints the figures; exits 1 unless every start kept the authorization with no
`invalid_grant` answer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes import start_fakes  # noqa: E402
from tests.token_race import cold_start  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--starts", type=int, default=50)
    parser.add_argument("--also-once", action="store_true", help="a `main.py --once` starts beside each poller")
    args = parser.parse_args(argv)

    fakes = start_fakes()
    fakes.questions_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Perguntas")
    fakes.messages_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Vendas")
    tmp = Path(tempfile.mkdtemp(prefix="meli-cold-starts-"))
    what = "poller + main.py --once" if args.also_once else "poller"
    print(f"cold starts: {args.starts} x {what}, fresh database seeded with MELI_REFRESH_TOKEN only", flush=True)
    results = []
    started = time.monotonic()
    try:
        for n in range(args.starts):
            result = cold_start(fakes, tmp / f"start-{n}", also_once=args.also_once)
            results.append(result)
            if not result["kept"] or result["invalid_grant"]:
                print(f"  start {n + 1}: {result['status']} ({result['status_reason']}), "
                      f"invalid_grant {result['invalid_grant']}", flush=True)
    finally:
        fakes.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    kept = sum(r["kept"] for r in results)
    refused = sum(r["invalid_grant"] for r in results)
    refreshes = Counter(r["refreshes"] for r in results)
    print(f"  kept the authorization      {kept} / {len(results)}")
    print(f"  invalid_grant answers       {refused}")
    print("  refreshes per start         " + ", ".join(f"{k}: {v} starts" for k, v in sorted(refreshes.items())))
    print(f"  poller exit codes           {dict(Counter(r['poller_rc'] for r in results))}")
    if args.also_once:
        print(f"  --once exit codes           {dict(Counter(r['once_rc'] for r in results))}")
    print(f"  wall                        {time.monotonic() - started:.0f}s")
    ok = kept == len(results) and refused == 0
    print("OK: every cold start kept the authorization" if ok else "FAIL: the seller was locked out")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
