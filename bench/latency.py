"""End-to-end latencies of the bridge against the fakes (real gunicorn listener and `python main.py` poller).

    .venv/bin/python bench/latency.py [--samples 30] [--parts abc] [--backlog 10000 --notifications 500]

a. Mercado Livre notification -> message in Chatwoot, with polling effectively off
   (QUESTIONS_POLL_SECONDS = MESSAGES_POLL_SECONDS = 3600): a new question (topic
   questions) and a new post-sale buyer message (topic messages), one at a time.
b. Notification ack latency while the poller syncs a backlog of questions (10 000 by
   default, 2 000 buyers, 500 items, rate budgets out of the way).
c. Agent reply webhook -> answer on Mercado Livre with a fake that answers at once, one
   reply at a time (the burst case is bench/webhook_ack.py --meli-delay 0).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.processes import (  # noqa: E402
    LOG_DIR,
    fmt,
    installation,
    print_table,
    question_conversations,
    read_db,
    seed_questions,
    summary,
    wait_for,
)

FAST_PACING = {"MELI_GET_PER_MINUTE": "10000000", "MELI_POST_PER_MINUTE": "10000000",
               "CHATWOOT_PER_MINUTE": "10000000"}


def notify(url: str, body: dict) -> tuple[int, float, float, str]:
    """POST one notification on a new connection. Returns (http status, sent, acked, bridge status)."""
    sent = time.monotonic()
    try:
        resp = requests.post(f"{url}/notifications", json=body, timeout=30)
    except requests.RequestException as exc:
        return -1, sent, time.monotonic(), type(exc).__name__
    acked = time.monotonic()
    try:
        status = resp.json().get("status", "")
    except ValueError:
        status = ""
    return resp.status_code, sent, acked, status


def first_call(meli, method: str, path: str, since: float) -> float | None:
    """Start time (monotonic) of the first request the fake ML logged for method+path after `since`."""
    with meli.lock:
        times = [c["t"] for c in meli.calls if c["method"] == method and c["path"] == path and c["t"] >= since]
    return min(times) if times else None


def message_with_source(chatwoot, source_id: str) -> dict | None:
    with chatwoot.lock:
        for message in reversed(list(chatwoot.messages.values())):
            if message.get("source_id") == source_id:
                return message
    return None


# ---- a. notification -> Chatwoot ----------------------------------------------------------------------

def part_a(samples: int, timeout: float) -> list[list]:
    with installation(QUESTIONS_POLL_SECONDS="3600", MESSAGES_POLL_SECONDS="3600") as inst:
        meli, chatwoot = inst.meli, inst.chatwoot
        meli.add_item("MLB900001", "Caneca azul")
        inst.bridge.listener()
        inst.bridge.poller()
        if not wait_for(lambda: meli.count("GET", "/questions/search") >= 1
                        and meli.count("GET", "/messages/unread") >= 1, 30):
            raise SystemExit(f"the poller did not make its first polls (logs in {LOG_DIR})")
        time.sleep(1.0)  # let the start-up runs of every job finish
        figures = {"question": [], "message": []}

        def measure(kind: str, i: int) -> None:
            time.sleep(random.uniform(0.0, 0.5))  # sample every phase of the 0.5 s notifications loop
            buyer = 700_000 + i if kind == "question" else 800_000 + i
            meli.add_user(buyer, f"COMPRADOR{buyer}")
            if kind == "question":
                question = meli.add_question(item_id="MLB900001", buyer_id=buyer, text=f"Tem pronta entrega? {i}")
                body = meli.notification("questions", f"/questions/{question['id']}")
                fetch_path, source = f"/questions/{question['id']}", f"meli:question:{question['id']}"
            else:
                order_id = 3_000_000 + i
                meli.add_order(order_id, buyer, f"COMPRADOR{buyer}", items=[("MLB900001", "Caneca azul", 1, 25.0)])
                message = meli.add_buyer_message(str(order_id), f"Quando chega meu pedido? {i}")
                body = meli.notification("messages", message["id"])
                fetch_path, source = f"/messages/{message['id']}", f"meli:message:{message['id']}"
            code, sent, acked, status = notify(inst.url, body)
            found = wait_for(lambda: message_with_source(chatwoot, source), timeout, interval=0.01)
            fetched = first_call(meli, "GET", fetch_path, sent)
            figures[kind].append({"code": code, "status": status, "ack": acked - sent,
                                  "total": (found["t_created"] - sent) if found else None,
                                  "pickup": (fetched - acked) if fetched else None,
                                  "work": (found["t_created"] - fetched) if found and fetched else None})

        for kind in ("question", "message"):
            for i in range(samples):
                measure(kind, i)
    rows = []
    for kind, label in (("question", "question notification -> first message"),
                        ("message", "messages notification -> buyer message")):
        done = [f for f in figures[kind] if f["total"] is not None]
        for measure_name, key, unit in (("end to end", "total", "s"), ("  ack", "ack", "ms"),
                                        ("  ack -> poller fetches from ML", "pickup", "s"),
                                        ("  fetch -> message in Chatwoot", "work", "ms")):
            values = [f[key] * (1000 if unit == "ms" else 1) for f in figures[kind] if f[key] is not None]
            s = summary(values)
            rows.append([label if key == "total" else "", measure_name, f"{len(done)}/{samples}" if key == "total"
                         else s["n"], fmt(s["p50"], unit), fmt(s["p95"], unit), fmt(s["max"], unit),
                         "p95 <= 2 s" if key == "total" else ""])
    return rows


# ---- b. notification acks during a backlog sync ---------------------------------------------------------

def part_b(backlog: int, buyers: int, items: int, count: int, wait_sync: float) -> list[str]:
    lines = []
    with installation(**FAST_PACING) as inst:
        meli, chatwoot = inst.meli, inst.chatwoot
        t = time.monotonic()
        questions = seed_questions(meli, backlog, buyers=buyers, items=items)
        qids = [q["id"] for q in questions]
        print(f"  seeded {backlog} questions ({buyers} buyers, {items} items) in {time.monotonic() - t:.1f}s",
              flush=True)
        inst.bridge.listener()
        started = time.monotonic()
        inst.bridge.poller()

        def conversations() -> int:
            return len(chatwoot.conversations)  # only the questions inbox gets conversations here

        if not wait_for(lambda: conversations() >= 1, 300, interval=0.05):
            raise SystemExit(f"the backlog sync did not start (logs in {LOG_DIR})")
        first_conv = time.monotonic() - started
        before = conversations()
        time.sleep(3.0)
        rate = max(1.0, (conversations() - before) / 3.0)
        remaining = backlog - conversations()
        interval = min(0.5, max(0.005, 0.8 * remaining / rate / count))
        print(f"  first conversation {first_conv:.1f}s after the poller started; sync ~{rate:.0f} conversations/s, "
              f"{remaining} to go: one notification every {interval * 1000:.0f} ms", flush=True)

        bodies: list[dict] = []
        for _ in range(count):
            if bodies and random.random() < 0.1:
                bodies.append(random.choice(bodies))  # Mercado Livre redelivers: same _id
            else:
                bodies.append(meli.notification("questions", f"/questions/{random.choice(qids)}"))
        results: list[tuple] = [None] * count
        convs_start = conversations()
        t0 = time.monotonic() + 0.05

        def fire(i: int) -> None:
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            results[i] = notify(inst.url, bodies[i]) + (time.monotonic() - (t0 + i * interval),)

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(fire, range(count)))
        measured = time.monotonic() - t0
        convs_end = conversations()
        wall_now = time.time()

        ack_ms = [(r[2] - r[1]) * 1000 for r in results]
        statuses: dict[str, int] = {}
        for r in results:
            statuses[f"{r[0]} {r[3]}"] = statuses.get(f"{r[0]} {r[3]}", 0) + 1
        s = summary(ack_ms)
        print_table(f"b. notification ack while a {backlog}-question backlog syncs",
                    ["measure", "n", "p50", "p95", "p99", "max", "goal"],
                    [["notification ack (client)", s["n"], fmt(s["p50"], "ms"), fmt(s["p95"], "ms"),
                      fmt(s["p99"], "ms"), fmt(s["max"], "ms"), "p99 <= 50 ms"]])
        lines.append(f"  {count} notifications over {measured:.1f}s: {statuses}")
        lines.append(f"  conversations: {convs_start} when the notifications started, {convs_end} when they ended "
                     f"({convs_end - convs_start} created during the measurement, of {backlog})")
        ids = {b["_id"] for b in bodies}
        rows = read_db(inst.database_path, "SELECT id, received_at, processed_at FROM notifications")
        ours = [r for r in rows if r["id"] in ids]
        done_then = [r for r in ours if r["processed_at"] is not None and r["processed_at"] <= wall_now]
        lines.append(f"  notifications processed by the poller when the last was acked: {len(done_then)}/{len(ids)}")
        for line in lines:
            print(line, flush=True)

        synced = wait_for(lambda: conversations() >= backlog, wait_sync, interval=0.5)
        sync_end = time.monotonic() - started
        settle = wait_for(lambda: all(r["processed_at"] is not None for r in read_db(
            inst.database_path, "SELECT processed_at FROM notifications")), 60 if synced else 1, interval=0.5)
        rows = read_db(inst.database_path, "SELECT id, received_at, processed_at FROM notifications")
        waits = [r["processed_at"] - r["received_at"] for r in rows if r["id"] in ids and r["processed_at"]]
        w = summary(waits)
        by_question = question_conversations(chatwoot, inst.questions_inbox, with_message=False)
        dupes = sum(len(v) - 1 for v in by_question.values() if len(v) > 1)
        more = [
            f"  backlog {'synced' if synced else 'NOT synced'}: {conversations()} conversations "
            f"{sync_end:.1f}s after the poller started; duplicate conversations for one question: {dupes}",
            f"  notification received -> processed by the poller: n={w['n']} p50 {fmt(w['p50'], 's')} "
            f"p95 {fmt(w['p95'], 's')} max {fmt(w['max'], 's')}{'' if settle else ' (not all processed)'}",
        ]
        for line in more:
            print(line, flush=True)
        lines += more
    return lines


# ---- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30, help="samples per measure in a and c (default 30)")
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    parser.add_argument("--backlog", type=int, default=10_000, help="questions to sync in b (default 10000)")
    parser.add_argument("--buyers", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--notifications", type=int, default=500, help="notifications sent in b (default 500)")
    parser.add_argument("--wait-sync", type=float, default=300.0,
                        help="b: after the measurement, wait this long for the backlog to finish (default 300)")
    parser.add_argument("--timeout", type=float, default=30.0, help="a: give up on one sample after this long")
    args = parser.parse_args(argv)
    random.seed(7)

    if "a" in args.parts:
        print(f"a. notification -> Chatwoot, {args.samples} samples each (polls every 3600 s)", flush=True)
        rows = part_a(args.samples, args.timeout)
        print_table("a. Mercado Livre notification -> Chatwoot (one at a time)",
                    ["path", "measure", "n", "p50", "p95", "max", "goal"], rows, left=2)
    if "b" in args.parts:
        print(f"\nb. {args.notifications} notifications during a {args.backlog}-question backlog sync", flush=True)
        part_b(args.backlog, args.buyers, args.items, args.notifications, args.wait_sync)
    if "c" in args.parts:
        from bench.webhook_ack import report, run_round
        print(f"\nc. reply webhook -> Mercado Livre, fast fake, {args.samples} isolated replies", flush=True)
        report([run_round(replies=args.samples, meli_delay=0.0, isolated=True)])
    print(f"\nprocess logs: {LOG_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
