"""Two containers on one volume, as a zero-downtime redeploy runs them for a while.

Two supervisord stacks share one data directory: both listeners answer, one poller works
while the other waits, the waiting one takes over when the working one dies, and nothing is
done twice (Chatwoot delivers every agent message to both listeners here).
"""

import os
import signal

from db_manager import Database
from tests.e2e import LOG_DIR, Bridge, wait_until


def _question(meli, n: int) -> int:
    meli.add_user(9500 + n, f"COMPRADOR{n}")
    meli.add_item(f"MLB{700 + n}", f"Produto {n}")
    return meli.add_question(item_id=f"MLB{700 + n}", buyer_id=9500 + n, text=f"Tem o produto {n}?")["id"]


def _answered_once(meli, chatwoot, question_id: int, text: str) -> None:
    wait_until(lambda: chatwoot.find_conversation(meli_question_id=question_id), 30, what="the conversation")
    conv = chatwoot.find_conversation(meli_question_id=question_id)
    wait_until(lambda: chatwoot.messages_in(conv["id"]), 30, what="the question in it")
    reply = chatwoot.agent_reply(conv["id"], text)
    wait_until(lambda: chatwoot.message(reply["id"])["status"] == "delivered", 30, what="the delivered mark")
    chatwoot.wait_webhooks_idle(10)
    assert [answer for answer in meli.answers_posted if answer[0] == question_id] == [(question_id, text)]


def test_two_stacks_on_one_volume_run_one_poller_answer_on_both_listeners_and_do_nothing_twice(bridge, fakes,
                                                                                               tmp_path):
    meli, chatwoot = fakes.meli.state, fakes.chatwoot.state
    (tmp_path / "new").mkdir()
    old = bridge
    new = Bridge(tmp_path / "new", fakes, DATABASE_PATH=old.env["DATABASE_PATH"])
    for stack in (old, new):
        stack.env["BRIDGE_HEARTBEAT_SECONDS"] = "0.3"
    logs = {stack: LOG_DIR / f"{stack.tmp.name}-supervisord-0.log" for stack in (old, new)}
    db = Database(old.env["DATABASE_PATH"])
    try:
        old.supervisord()
        wait_until(lambda: old.health().status_code == 200 and db.jobs.heartbeat(), 30, what="the old stack working")
        working = db.jobs.heartbeat()["pid"]
        new.supervisord()
        wait_until(lambda: f"another poller is working on this database (pid {working} on" in logs[new].read_text(),
                   30, what="the new stack's poller waiting")
        assert new.health().status_code == 200 and old.health().status_code == 200

        _answered_once(meli, chatwoot, _question(meli, 1), "Temos sim.")
        assert db.jobs.heartbeat()["pid"] == working

        os.kill(working, signal.SIGKILL)
        wait_until(lambda: db.jobs.heartbeat()["pid"] != working, 20, 0.1, what="another poller working")
        taker = db.jobs.heartbeat()["pid"]
        assert f" {taker} bridge.poller: poller taking over" in logs[new].read_text()
        # The old stack's supervisord restarted its poller: it now waits in turn.
        wait_until(lambda: f"another poller is working on this database (pid {taker} on" in logs[old].read_text(),
                   30, what="the restarted poller waiting")

        _answered_once(meli, chatwoot, _question(meli, 2), "Chega amanhã.")
        assert len(chatwoot.conversations) == 2
        assert all(len(chatwoot.messages_in(c)) >= 2 for c in chatwoot.conversations)
        assert new.health().status_code == 200 and old.health().status_code == 200
    finally:
        new.close()
