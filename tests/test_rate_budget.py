"""Rate budgets: a sliding window, pauses on 429, the most urgent job first."""

import threading
import time

import responses

from bridge import rate_budget
from bridge.rate_budget import Budget
from chatwoot_api import ChatwootClient


class FakeTime:
    """A clock that only moves when the budget waits."""

    def __init__(self):
        self.now = 1000.0
        self.waits = []

    def clock(self):
        return self.now


def budget_with_fake_time(per_minute):
    t = FakeTime()
    budget = Budget("test", per_minute, clock=t.clock)
    real_wait = budget.cond.wait

    def wait(timeout=None):
        t.waits.append(timeout)
        t.now += timeout
        return real_wait(0)
    budget.cond.wait = wait
    return budget, t


def test_calls_within_the_budget_do_not_wait():
    budget, t = budget_with_fake_time(100)  # 95 allowed per window
    for _ in range(95):
        budget.acquire()
    assert t.waits == []


def test_the_call_over_the_budget_waits_for_the_window_to_slide():
    budget, t = budget_with_fake_time(100)
    for _ in range(95):
        budget.acquire()
    budget.acquire()
    assert t.now >= 1060.0
    assert len(budget.sent) <= 95


def test_a_429_pauses_the_budget_for_retry_after():
    budget, t = budget_with_fake_time(100)
    budget.pause(30)
    budget.acquire()
    assert t.now >= 1030.0 and budget.pauses == 1


def test_the_most_urgent_waiter_goes_first():
    budget = Budget("test", 60 / 0.95, window=0.3)  # 60 per 0.3 s window... limit 60
    budget.limit = 1
    budget.acquire()  # the window is now full for 0.3 s
    order = []

    def worker(level, name):
        budget.acquire(level)
        order.append(name)

    low = threading.Thread(target=worker, args=(rate_budget.RECONCILIATION, "reconcile"))
    low.start()
    time.sleep(0.05)
    high = threading.Thread(target=worker, args=(rate_budget.REPLIES, "reply"))
    high.start()
    low.join(5)
    high.join(5)
    assert order == ["reply", "reconcile"]


def test_the_job_priority_is_carried_by_context():
    assert rate_budget.current_priority() == rate_budget.QUESTIONS
    with rate_budget.priority(rate_budget.REPLIES):
        assert rate_budget.current_priority() == rate_budget.REPLIES
    assert rate_budget.current_priority() == rate_budget.QUESTIONS


@responses.activate
def test_a_429_from_the_api_pauses_the_clients_budget(settings):
    budget = Budget("chatwoot", 3000)
    client = ChatwootClient(settings, budgets={"*": budget}, sleep=lambda s: None, attempts=1)
    responses.get("https://chat.example.test/api/v1/accounts/1/conversations/1/messages", status=429,
                  headers={"Retry-After": "2"}, json={})
    try:
        client.messages(1)
    except Exception as exc:  # noqa: BLE001
        assert getattr(exc, "status", None) == 429
    assert budget.pauses == 1 and budget.paused_until > budget.clock()
