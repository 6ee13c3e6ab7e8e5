"""The issue's token race: 2 OS processes × 16 threads asking for a token for 60 s, access tokens expiring every 2 s.

    .venv/bin/python bench/token_race.py [--seconds 60] [--processes 2] [--threads 16] [--access-ttl 2]

Against the fake Mercado Livre, whose refresh tokens are single use; both processes
start cold (the store seeded with MELI_REFRESH_TOKEN only). Prints the figures and
exits 1 on any `invalid_grant`, any reauthorization required, or any failed call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.token_race import run_race  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--access-ttl", type=float, default=2.0, help="access token lifetime at the fake (s)")
    args = parser.parse_args(argv)

    print(f"token race: {args.processes} processes x {args.threads} threads for {args.seconds:.0f}s, "
          f"access tokens live {args.access_ttl:.0f}s, refresh tokens single use", flush=True)
    f = run_race(args.seconds, args.processes, args.threads, args.access_ttl)
    expected = args.seconds / max(0.1, args.access_ttl - 1.0)  # refreshed 1 s before each expiry
    print(f"  calls to /users/me          {f['calls']}")
    print(f"  refreshes granted           {f['refreshes']} (per process {f['client_refreshes']}; "
          f"about {expected:.0f} expected)")
    print(f"  invalid_grant answers       {f['invalid_grant']}")
    print(f"  401 answers                 {f['unauthorized']}")
    print(f"  reauthorization seen        {f['reauth_seen']} calls")
    print(f"  failed calls                {f['errors'] or 0}")
    print(f"  authorization at the end    {f['status']}" + (f" ({f['status_reason']})" if f["status_reason"] else ""))
    failures = []
    if f["invalid_grant"]:
        failures.append(f"{f['invalid_grant']} invalid_grant answers")
    if f["status"] != "active" or f["reauth_seen"]:
        failures.append("the authorization was lost")
    if f["errors"]:
        failures.append(f"failed calls {f['errors']}")
    if not f["refreshes"]:
        failures.append("no refresh happened: the race did not run")
    print("FAIL: " + "; ".join(failures) if failures else "OK: one refresh at a time, authorization kept")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
