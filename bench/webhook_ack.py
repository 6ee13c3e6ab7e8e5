"""Agent replies: how fast the listener acknowledges Chatwoot, and how long until Mercado Livre has the answer.

    .venv/bin/python bench/webhook_ack.py [--replies 200] [--concurrency 20] [--meli-delay 3 [0 ...]]

Per round (one fresh installation per --meli-delay value): the fakes, the real gunicorn
listener and `python main.py` poller; N questions seeded and synced into Chatwoot by the
poller; the fake Mercado Livre answers POST /answers after --meli-delay seconds. Then one
agent reply per question conversation is created in the fake Chatwoot (account webhook
detached meanwhile, so the fake sends nothing itself) and its exact signed message_created
delivery is POSTed to the listener's /webhook from a pool of --concurrency threads, each on
a new connection. Measured: ack latency (client side, and the handler time the listener
logs), ack → answer recorded by the fake Mercado Livre, ack → the message marked
`delivered` in the fake Chatwoot. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import (  # noqa: E402
    LOG_DIR,
    fmt,
    installation,
    listener_log_ms,
    post_raw,
    print_table,
    question_conversations,
    seed_questions,
    signed_webhook,
    summary,
    wait_for,
)


class AnswerClock:
    """Wraps the fake Mercado Livre's post_answer to note when each answer was recorded (monotonic)."""

    def __init__(self, meli):
        self.times: dict[int, float] = {}
        self.posts = 0
        self._lock = threading.Lock()
        original = meli.post_answer

        def timed(body: dict):
            resp = original(body)
            with self._lock:
                self.posts += 1
                if resp.status_code == 200:
                    self.times.setdefault(int(body["question_id"]), time.monotonic())
            return resp

        meli.post_answer = timed  # the route calls state.post_answer(...): the instance attribute wins


class StatusWatcher(threading.Thread):
    """Polls the fake Chatwoot every 10 ms and notes when each watched message turns `delivered`."""

    def __init__(self, chatwoot, message_ids):
        super().__init__(daemon=True, name="bench-status-watcher")
        self.chatwoot = chatwoot
        self.pending = set(message_ids)
        self.times: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while self.pending and not self.stop.is_set():
            now = time.monotonic()
            with self.chatwoot.lock:
                done = {m for m in self.pending if self.chatwoot.messages[m]["status"] == "delivered"}
            for m in done:
                self.times[m] = now
            self.pending -= done
            time.sleep(0.01)


def prepare(inst, replies: int, buyers: int, items: int, sync_timeout: float) -> dict[int, int]:
    """Seed `replies` questions, start listener + poller, wait until each has its conversation.

    Returns {question id: conversation id}.
    """
    meli, chatwoot = inst.meli, inst.chatwoot
    questions = seed_questions(meli, replies, buyers=buyers, items=items)
    inst.bridge.listener()
    inst.bridge.poller()
    started = time.monotonic()
    ok = wait_for(lambda: len(question_conversations(chatwoot, inst.questions_inbox)) >= replies, sync_timeout,
                  interval=0.1)
    synced = question_conversations(chatwoot, inst.questions_inbox)
    if not ok:
        raise SystemExit(f"only {len(synced)}/{replies} questions reached Chatwoot in {sync_timeout:.0f}s "
                         f"(logs in {LOG_DIR})")
    print(f"  {replies} questions synced into Chatwoot in {time.monotonic() - started:.1f}s", flush=True)
    chatwoot.wait_webhooks_idle(30)  # the echoes of the bridge's own messages have reached the listener
    wanted = {str(q["id"]) for q in questions}
    return {int(qid): convs[0] for qid, convs in synced.items() if qid in wanted}


def create_replies(chatwoot, conversations: dict[int, int]) -> dict[int, dict]:
    """One agent message per conversation, with the account webhook detached: {question id: message}."""
    with chatwoot.lock:
        saved = list(chatwoot.webhooks)
        chatwoot.webhooks.clear()
    try:
        return {qid: chatwoot.agent_reply(conv, f"Olá! Temos sim, pode comprar. (resposta {i})")
                for i, (qid, conv) in enumerate(sorted(conversations.items()))}
    finally:
        with chatwoot.lock:
            chatwoot.webhooks[:0] = saved


def run_round(replies: int = 200, concurrency: int = 20, meli_delay: float = 3.0, buyers: int | None = None,
              items: int | None = None, sync_timeout: float = 300.0, delivery_timeout: float | None = None,
              isolated: bool = False, env: dict | None = None) -> dict:
    """One installation, one burst (or, with isolated=True, one reply at a time). Returns the figures."""
    buyers = buyers or max(1, replies // 4)
    items = items or max(1, replies // 10)
    if delivery_timeout is None:
        delivery_timeout = 60.0 + replies * (meli_delay + 0.25) * 1.5
    with installation(**(env or {})) as inst:
        meli, chatwoot = inst.meli, inst.chatwoot
        print(f"round: {replies} replies, concurrency {1 if isolated else concurrency}, "
              f"fake ML /answers delay {meli_delay:g}s{' (isolated replies)' if isolated else ''}", flush=True)
        conversations = prepare(inst, replies, buyers, items, sync_timeout)
        clock = AnswerClock(meli)
        meli.delay("/answers", meli_delay)
        messages = create_replies(chatwoot, conversations)
        deliveries = {qid: signed_webhook(chatwoot, msg) for qid, msg in messages.items()}
        watcher = StatusWatcher(chatwoot, [m["id"] for m in messages.values()])
        watcher.start()
        url = f"{inst.url}/webhook"
        results: dict[int, tuple] = {}

        def send(qid: int):
            raw, headers = deliveries[qid]
            results[qid] = post_raw(url, raw, headers)

        burst_started = time.monotonic()
        if isolated:
            for qid in deliveries:
                time.sleep(random.uniform(0.0, 0.5))  # sample every phase of the 0.5 s outbox loop
                send(qid)
                wait_for(lambda q=qid: q in clock.times, delivery_timeout, interval=0.005)
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(send, list(deliveries)))
        burst_seconds = time.monotonic() - burst_started
        print(f"  {replies} webhooks {'sent one at a time over' if isolated else 'acknowledged in'} "
              f"{burst_seconds:.2f}s; waiting for delivery "
              f"(up to {delivery_timeout:.0f}s)...", flush=True)
        wait_for(lambda: len(clock.times) >= replies, delivery_timeout, interval=0.05)
        wait_for(lambda: not watcher.pending, 60 if len(clock.times) >= replies else 1, interval=0.05)
        watcher.stop.set()
        watcher.join(timeout=2)

        statuses: dict[str, int] = {}
        for status, _sent, _acked, body in results.values():
            key = f"{status} {body.get('status', '')}".strip()
            statuses[key] = statuses.get(key, 0) + 1
        ack_ms = [(acked - sent) * 1000 for _s, sent, acked, _b in results.values()]
        server_ms = listener_log_ms(inst.bridge, {m["id"] for m in messages.values()})
        to_meli = [clock.times[q] - results[q][2] for q in results if q in clock.times]
        to_mark = [watcher.times[messages[q]["id"]] - results[q][2] for q in results
                   if messages[q]["id"] in watcher.times]
        first_ack = min(r[2] for r in results.values())
        last_answer = max(clock.times.values()) if clock.times else None
        return {
            "replies": replies, "concurrency": 1 if isolated else concurrency, "meli_delay": meli_delay,
            "isolated": isolated, "statuses": statuses, "ack_ms": ack_ms, "server_ms": server_ms,
            "to_meli_s": to_meli, "to_mark_s": to_mark, "burst_seconds": burst_seconds,
            "answers": len(clock.times), "answer_posts": clock.posts, "answers_posted": len(meli.answers_posted),
            "drain_seconds": (last_answer - first_ack) if last_answer else None,
        }


def report(rounds: list[dict]) -> None:
    rows = []
    for r in rounds:
        label = f"{r['replies']} x c{r['concurrency']}, ML {r['meli_delay']:g}s"
        ack, srv = summary(r["ack_ms"]), summary(r["server_ms"])
        rows.append([label, "webhook ack (client)", ack["n"], fmt(ack["p50"], "ms"), fmt(ack["p95"], "ms"),
                     fmt(ack["p99"], "ms"), fmt(ack["max"], "ms"), "p99 <= 50 ms"])
        rows.append([label, "handler time (listener log)", srv["n"], fmt(srv["p50"], "ms"), fmt(srv["p95"], "ms"),
                     fmt(srv["p99"], "ms"), fmt(srv["max"], "ms"), ""])
        meli, mark = summary(r["to_meli_s"]), summary(r["to_mark_s"])
        goal = "p95 <= 1 s" if r["meli_delay"] == 0 else f">= {r['meli_delay']:g} s expected"
        rows.append([label, "ack -> answer on fake ML", f"{meli['n']}/{r['replies']}", fmt(meli["p50"], "s"),
                     fmt(meli["p95"], "s"), fmt(meli["p99"], "s"), fmt(meli["max"], "s"), goal])
        rows.append([label, "ack -> 'delivered' in Chatwoot", f"{mark['n']}/{r['replies']}", fmt(mark["p50"], "s"),
                     fmt(mark["p95"], "s"), fmt(mark["p99"], "s"), fmt(mark["max"], "s"), ""])
    print_table("Agent reply webhooks", ["round", "measure", "n", "p50", "p95", "p99", "max", "goal"], rows,
                left=2)
    for r in rounds:
        drain = f"{r['drain_seconds']:.1f}s" if r["drain_seconds"] is not None else "-"
        print(f"  ML {r['meli_delay']:g}s: responses {r['statuses']}; "
              f"{'sent over' if r['isolated'] else 'burst sent in'} {r['burst_seconds']:.2f}s; "
              f"first ack -> last answer {drain}; POST /answers reaching the route {r['answer_posts']}, "
              f"answers stored {r['answers_posted']} (unique questions answered {r['answers']})")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=200, help="questions seeded = webhooks sent (default 200)")
    parser.add_argument("--concurrency", type=int, default=20, help="sender threads (default 20)")
    parser.add_argument("--meli-delay", type=float, nargs="+", default=[3.0],
                        help="seconds the fake ML takes for POST /answers; several values = several rounds")
    parser.add_argument("--delivery-timeout", type=float, default=None,
                        help="give up waiting for answers after this many seconds (default: scaled to the round)")
    args = parser.parse_args(argv)
    rounds = []
    for delay in args.meli_delay:
        rounds.append(run_round(args.replies, args.concurrency, delay, delivery_timeout=args.delivery_timeout))
        report(rounds[-1:])
    if len(rounds) > 1:
        report(rounds)
    print(f"\nprocess logs: {LOG_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
