"""The bridge's readers of one post-sale thread take turns.

A sync reads the thread, mirrors what it read, then marks it read. Another reader of the same
thread in between (the outbox looking for a send whose answer was lost) would see a buyer
message that the sync only meets again in its mark-read answer.
"""

import time
from contextlib import contextmanager

import pytest
import responses

from bridge.replies import delivery
from bridge.replies.accept import accept_webhook
from bridge.services import KeyedLocks
from tests.helpers import CW, THREAD, sale_services
from tests.payloads import message_created


class RecordingLocks(KeyedLocks):
    def __init__(self):
        super().__init__()
        self.holding: set[str] = set()

    @contextmanager
    def hold(self, key):
        with super().hold(key):
            self.holding.add(key)
            try:
                yield
            finally:
                self.holding.discard(key)


@pytest.fixture
def s(settings, db):
    services = sale_services(settings, db)
    services.locks = RecordingLocks()
    return services


@responses.activate
def test_the_look_for_a_lost_send_holds_the_threads_lock(s):
    _status, _code, extra = accept_webhook(message_created(message_id=9200, conversation_id=88, inbox_id=2,
                                                           content="Chega amanhã"), s.settings, s.db, time.time())
    reply_id = extra["reply_id"]
    long_ago = time.time() - 2 * delivery.IN_DOUBT_SETTLE - 600
    s.db.replies.claim(reply_id, long_ago, 300)  # its worker died; the lease is long over
    s.db.replies.mark_part_sending(reply_id, 0, long_ago)
    held_while_reading = []

    def thread(_request):
        held_while_reading.append("pack:2000001" in s.locks.holding)
        return 200, {}, '{"paging": {"total": 0}, "messages": [], "conversation_status": {"status": "active"}}'

    responses.add_callback(responses.GET, THREAD, callback=thread)
    responses.post(THREAD, json={"id": "m1"})
    responses.patch(f"{CW}/conversations/88/messages/9200", json={"id": 9200})
    responses.get(f"{CW}/conversations/88/messages", json={"payload": []})
    responses.post(f"{CW}/conversations/88/messages", json={"id": 1})
    delivery.run_outbox(s)
    assert held_while_reading == [True]
    assert s.db.replies.get(reply_id)["status"] == "delivered"
