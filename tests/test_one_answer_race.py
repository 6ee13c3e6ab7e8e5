"""One answer per question, even when two listener workers accept two agent messages at once."""

import threading
import time

from bridge.replies import accept
from db_manager import Database
from tests.payloads import message_created

QUESTIONS = 15
WORKERS = 4


def test_concurrent_answers_to_one_question_leave_exactly_one_to_send(settings, db):
    for q in range(QUESTIONS):
        db.links.mark_created("question", str(1000 + q), 1.0, conversation_id=500 + q, contact_id=5, message_id=1)
    # Each worker has its own connection, like separate gunicorn processes on one file.
    workers = [Database(settings.database_path) for _ in range(WORKERS)]
    barrier = threading.Barrier(WORKERS)
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for q in range(QUESTIONS):
                barrier.wait(timeout=30)
                body = message_created(message_id=(q + 1) * 100 + index, conversation_id=500 + q,
                                       content=f"Resposta {index}")
                status, _code, _extra = accept.accept_webhook(body, settings, workers[index], time.time())
                results.append((q, status))
        except BaseException as exc:  # noqa: BLE001 — reported by the main thread
            errors.append(exc)
            barrier.abort()
        finally:
            workers[index].close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors

    for q in range(QUESTIONS):
        statuses = sorted(status for question, status in results if question == q)
        assert statuses == ["accepted"] + ["refused"] * (WORKERS - 1), (q, statuses)
        rows = db.all("SELECT status, error FROM replies WHERE target_id = ?", (str(1000 + q),))
        assert sorted(r["status"] for r in rows) == ["failed"] * (WORKERS - 1) + ["pending"]
        assert all(r["error"] == "pergunta já tem resposta" for r in rows if r["status"] == "failed")


def test_a_failed_answer_does_not_block_the_next_one(settings, db):
    db.links.mark_created("question", "7", 1.0, conversation_id=70, contact_id=5, message_id=1)
    empty = accept.accept_webhook(message_created(message_id=1, conversation_id=70, content=" "), settings, db, 1.0)
    assert empty[0] == "refused"
    good = accept.accept_webhook(message_created(message_id=2, conversation_id=70), settings, db, 2.0)
    assert good[0] == "accepted"
