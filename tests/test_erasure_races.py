"""An erasure (`forget-buyer`) run beside the poller while the sync is creating that buyer's things in
Chatwoot: what the sync holds in memory never writes the erased buyer back into the database."""

import json

import pytest
import responses

from bridge.http import TransientError
from bridge.sync import questions as sync_questions
from tests.helpers import CW, authorized_services

QUESTION = {"id": 12, "status": "UNANSWERED", "item_id": "MLB1", "text": "Tem azul?", "from": {"id": 9},
            "seller_id": 555}


@pytest.fixture
def s(settings, db, clock):
    return authorized_services(settings, db, clock)


def buyer_rows(db, buyer_id="9"):
    return db.all("SELECT kind, external_id, status FROM links WHERE kind = 'buyer' AND external_id = ?"
                  " OR CAST(json_extract(data, '$.buyer_id') AS TEXT) = ? OR contact_id = 5", (buyer_id, buyer_id))


@responses.activate
def test_a_question_erased_while_its_first_message_is_made_is_not_recorded_again(s, clock):
    inbox = s.settings.chatwoot_questions_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=5, data={"inboxes": [inbox]})
    responses.post(f"{CW}/conversations", json={"id": 77})

    def erased_in_flight(_request):
        s.db.privacy.forget_buyer("9", clock())  # `forget-buyer 9`, beside the poller
        return 200, {}, json.dumps({"id": 701})

    responses.add_callback(responses.POST, f"{CW}/conversations/77/messages", callback=erased_in_flight)
    with pytest.raises(TransientError):
        sync_questions.create_question(s, QUESTION, None, "ZEQ")
    assert buyer_rows(s.db) == []
    assert s.db.links.get("question", "12") is None
    assert s.db.watermarks.closed("question") == {"12"}


@responses.activate
def test_a_question_left_half_made_while_its_buyers_contact_was_being_found_again_is_erased(s, clock):
    """The buyer's contact was deleted in Chatwoot: the question's conversation could not be made
    (404), the buyer's row went back to pending without a contact, and making the contact again
    failed. The question's row, still pending, names only the deleted contact."""
    inbox = s.settings.chatwoot_questions_inbox_id
    s.db.links.mark_created("buyer", "9", clock(), contact_id=20, data={"inboxes": [inbox]})
    responses.post(f"{CW}/conversations", status=404, json={"error": "Resource could not be found"})
    responses.post(f"{CW}/contacts", status=400, json={"message": "invalid"})
    with pytest.raises(Exception):  # noqa: B017 — whatever stopped it, the row is left pending
        sync_questions.create_question(s, QUESTION, None, "ZEQ")
    assert s.db.links.get("question", "12")["status"] == "pending"

    s.db.privacy.forget_buyer("9", clock())
    assert buyer_rows(s.db) == []
    assert s.db.links.get("question", "12") is None
    assert s.db.watermarks.closed("question") == {"12"}
