"""Planted defects: proof that the chaos soak can fail.

    .venv/bin/python bench/planted.py [--seconds 90] [--seed 20261129] [--only NAME] [--list]

Each defect is a small textual patch of the bridge, one deliberate bug the soak must catch.
One at a time, the repository (without .git) is copied to a temporary directory, the patch is
applied there (the tree here is never touched) and a short soak (bench/soak.py of the copy, a
fixed seed) runs against it. The unpatched bridge is soaked first, with the same seed: a
defect counts as caught only when an invariant it breaks (`expect`) reports more violations
than in that baseline, so a defect the bridge already has does not pass for a planted one
being seen. It prints, per defect, caught (which invariants, how many violations) or
MISSED, and exits 1 when any was missed (2 when a patch no longer applies: the code it names
changed, and the defect must be planted again).

A patch is (file, old, new): `old` must occur exactly once in the file, so a refactor that
moves the code makes the patch fail loudly instead of planting nothing
(tests/test_planted.py checks that every patch still applies). Not part of ./test.sh: each
defect costs a soak of its own (about three minutes with the drain).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = {".git", ".pytest_cache", ".ruff_cache", "__pycache__", ".mypy_cache"}


@dataclass(frozen=True)
class Defect:
    name: str
    what: str
    patches: tuple[tuple[str, str, str], ...]  # (file, old, new)
    expect: tuple[str, ...] = ()  # the invariants it breaks: caught only when one of them reports it


MARKED = "a message marked read is in Chatwoot within seconds of the marking"
FAILED = "a reply is failed only for a reason that cannot be retried"


DEFECTS = [
    Defect("resend-without-look-up", "skip the in-doubt look-up before a resend (a lost answer sends the part again)",
           (("bridge/replies/delivery.py",
             '        _still_there(previous)\n'
             '        if previous == "sending":\n'
             '            _wait_until_settled(s, reply, part)\n'
             '            # Not beside a sync of this thread',
             '        _still_there(previous)\n'
             '        if False:  # planted\n'
             '            _wait_until_settled(s, reply, part)\n'
             '            # Not beside a sync of this thread'),),
           ("no reply part or file reached Mercado Livre twice",)),
    Defect("drop-revealed-by-mark-read", "drop the buyer messages a mark-read answer reveals",
           (("bridge/sync/sales.py",
             '            late.setdefault(str(message["id"]), message)\n',
             '            pass  # planted\n'),),
           (MARKED, "buyer messages in Chatwoot exactly once, live conversation")),
    Defect("give-up-after-contact-failure", "skip an item for good after one failed contact look-up",
           (("bridge/failures.py",
             "                                    failing_for=failing_for)\n",
             "                                    failing_for=failing_for)\n"
             "    import traceback  # planted\n"
             "    frames = traceback.extract_tb(exc.__traceback__)\n"
             "    if any(f.name in ('ensure_contact', 'open_conversation') for f in frames):\n"
             "        next_at, give_up = now + AFTER_GIVE_UP, True\n"),),
           ("buyer questions in Chatwoot exactly once, live conversation",
            "buyer messages in Chatwoot exactly once, live conversation", "claim messages in Chatwoot exactly once")),
    Defect("never-reopen", "never reopen a resolved conversation",
           (("chatwoot_api.py",
             '    def set_status(self, conversation_id: int, status: str) -> None:\n',
             '    def set_status(self, conversation_id: int, status: str) -> None:\n'
             '        if status == "open":  # planted\n'
             '            return\n'),),
           ("sale conversation reopened after a new buyer message",)),
    Defect("fail-on-one-5xx", "fail a reply for good on one 5xx",
           (("bridge/replies/delivery.py",
             '    now = s.clock()\n    if now - reply["created_at"] > GIVE_UP_AFTER:\n',
             '    now = s.clock()\n    if (exc.status or 0) >= 500:  # planted\n'),),
           (FAILED,)),
    Defect("drop-reply-of-deleted-conversation", "drop a reply whose conversation is deleted after it was sent",
           (("bridge/replies/delivery.py",
             '    try:\n        reply = _check_addressee(s, reply)\n        if reply["kind"] == "answer":\n'
             '            _deliver_answer(s, reply)\n',
             '    try:\n'
             '        reply = _check_addressee(s, reply)\n'
             '        try:  # planted\n'
             '            s.chatwoot.messages(reply["conversation_id"])\n'
             '        except PermanentError:\n'
             '            raise DeliveryFailed(Refusal("conversa apagada", "A conversa foi apagada.")) from None\n'
             '        if reply["kind"] == "answer":\n            _deliver_answer(s, reply)\n'),),
           (FAILED, "no reply left queued after the drain")),
    Defect("claim-reply-to-complainant", "send a claim reply to the complainant when the mediator was addressed",
           (("bridge/replies/accept.py",
             '    return claim_rules.parse_reply_to(attrs.get(REPLY_TO_ATTRIBUTE))\n',
             '    return "complainant"  # planted\n'),),
           # Every receiver is taken for the buyer: an unreadable one is guessed too.
           ("a claim reply reaches only the receiver the agent addressed", FAILED,
            "a claim reply with a receiver the bridge cannot read is refused, never guessed")),
    Defect("forget-buyer-erases-another", "forget-buyer erasing a second buyer",
           (("bridge/store/privacy.py",
             "\"DELETE FROM links WHERE kind IN ('buyer', ?) AND external_id = ?\"",
             # The buyers beside it, by id (`>=` alone spared everyone when it was the newest buyer).
             "\"DELETE FROM links WHERE kind IN ('buyer', ?) AND CAST(external_id AS INTEGER)\"\n"
             "                                      \" BETWEEN CAST(? AS INTEGER) - 1 AND CAST(? AS INTEGER) + 1\""),
            ("bridge/store/privacy.py", "(ERASING, buyer_id)).rowcount,", "(ERASING, buyer_id, buyer_id)).rowcount,")),
           ("forget-buyer erases that buyer, and only that buyer",)),
]


class PatchDrift(Exception):
    """A planted patch no longer matches the code exactly once."""


def apply(defect: Defect, root: Path) -> None:
    """Apply every patch of `defect` under `root`; each `old` must occur exactly once."""
    for file, old, new in defect.patches:
        path = root / file
        text = path.read_text(encoding="utf-8")
        found = text.count(old)
        if found != 1:
            raise PatchDrift(f"{defect.name}: {file} holds the patched text {found} times (want exactly 1)")
        path.write_text(text.replace(old, new), encoding="utf-8")


def copy_tree(dest: Path) -> Path:
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIPPED}

    target = dest / "repo"
    shutil.copytree(ROOT, target, symlinks=True, ignore=ignore)
    return target


INVARIANT_LINE = re.compile(r"^\s+(\d+)\s+(.+)$")


def violations_of(report: str) -> dict[str, int]:
    """The soak report's invariants with violations, by name."""
    found: dict[str, int] = {}
    lines = report.splitlines()
    try:
        start = lines.index("invariants (violations):") + 1
    except ValueError:
        return found
    for line in lines[start:]:
        match = INVARIANT_LINE.match(line)
        if not match:
            break
        if int(match.group(1)):
            found[match.group(2)] = int(match.group(1))
    return found


BASELINE = Defect("baseline", "the bridge as it is", ())


def plant_and_soak(defect: Defect, seconds: float, seed: int, keep_output: Path | None) -> tuple[int, dict, str]:
    """(soak exit code, violations by invariant, report) of a soak against the patched copy."""
    with tempfile.TemporaryDirectory(prefix=f"planted-{defect.name}-") as tmp:
        copy = copy_tree(Path(tmp))
        apply(defect, copy)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(copy / "bench" / "soak.py"), "--minutes", str(seconds / 60.0),
                                 "--seed", str(seed)], cwd=str(copy), capture_output=True, text=True,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        report = result.stdout + result.stderr
        if keep_output:
            (keep_output / f"{defect.name}.txt").write_text(report, encoding="utf-8")
        print(f"  {defect.name}: soak exit {result.returncode} in {time.monotonic() - started:.0f} s", flush=True)
        return result.returncode, violations_of(report), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="seconds of chaos per defect (default 90)")
    parser.add_argument("--seed", type=int, default=20261129, help="the soak's seed (default 20261129)")
    parser.add_argument("--only", action="append", metavar="NAME", help="only this defect (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the defects and exit")
    parser.add_argument("--reports", type=Path, default=None, help="write each soak's report to this directory")
    args = parser.parse_args(argv)
    if args.list:
        for defect in DEFECTS:
            print(f"{defect.name:40s} {defect.what}")
        return 0
    chosen = [d for d in DEFECTS if not args.only or d.name in args.only]
    unknown = set(args.only or ()) - {d.name for d in DEFECTS}
    if unknown:
        print(f"unknown defect(s): {', '.join(sorted(unknown))} (see --list)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for defect in chosen:  # every patch first: a drifted one fails before any soak
            try:
                apply(defect, copy_tree(Path(tmp) / defect.name))
            except PatchDrift as exc:
                print(f"patch drift: {exc}")
                return 2
    if args.reports:
        args.reports.mkdir(parents=True, exist_ok=True)
    rows, missed = [], 0
    print(f"planted defects: {len(chosen)}, soak of {args.seconds:.0f} s each, seed {args.seed}", flush=True)
    # The unpatched bridge first: what it already breaks (a defect found, not planted) is no proof
    # that a planted one was seen; a defect counts as caught only by the invariants it breaks.
    code, baseline, _report = plant_and_soak(BASELINE, args.seconds, args.seed, args.reports)
    rows.append(("(baseline, nothing planted)", "soak exit %s, violations: %s" % (code, "; ".join(
        f"{name} x{n}" for name, n in sorted(baseline.items())) or "none")))
    for defect in chosen:
        code, found, report = plant_and_soak(defect, args.seconds, args.seed, args.reports)
        seen = {name: n for name, n in found.items() if name in defect.expect and n > baseline.get(name, 0)}
        if code not in (0, 1):
            missed += 1
            tail = " ".join(report.strip().splitlines()[-1:])
            rows.append((defect.name, f"MISSED (the soak could not run: exit {code}: {tail[:100]})"))
        elif seen:
            rows.append((defect.name, "caught: " + "; ".join(
                f"{name} x{n} (baseline {baseline.get(name, 0)})" for name, n in sorted(seen.items()))))
        else:
            missed += 1
            rows.append((defect.name, f"MISSED (expected {' / '.join(defect.expect)}; the soak reported "
                                      f"{dict(sorted(found.items())) or 'nothing'})"))
    print("\ndefect → outcome")
    for name, outcome in rows:
        print(f"  {name:40s} {outcome}")
    print(f"\n{len(chosen) - missed} of {len(chosen)} caught, seed {args.seed}, {args.seconds:.0f} s each")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
