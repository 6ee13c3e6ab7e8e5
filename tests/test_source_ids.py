"""Source ids are stored in Chatwoot for good: their shape never changes, and the echo guard knows them all."""

import hashlib

from bridge import source_ids
from bridge.replies import accept

ALL = [source_ids.buyer(9), source_ids.buyer_for_contact(9, 4), source_ids.question(5), source_ids.answer(5),
       source_ids.message("m1"), source_ids.claim_event(3, "opened"), source_ids.claim_message("3:complainant:x"),
       source_ids.note("reply", 7), source_ids.claim_moderation_note("3:respondent:y")]


def test_the_ids_keep_the_shape_chatwoot_already_holds():
    digest = hashlib.sha256(b"3:complainant:x").hexdigest()[:24]
    assert ALL[:7] == ["meli:buyer:9", "meli:buyer:9:4", "meli:question:5", "meli:answer:5", "meli:message:m1",
                       "meli:claim:3:opened", f"meli:claim_message:{digest}"]
    assert source_ids.note("question", 5, "reopened", 170) == "meli:note:question:5:reopened:170"
    assert source_ids.note("failing", "pack", "9", 12) == "meli:note:failing:pack:9:12"


def test_every_id_the_bridge_builds_is_parsed_back_and_caught_by_the_echo_guard():
    assert source_ids.parse("meli:note:reply:7") == ["note", "reply", "7"]
    assert all(source_ids.is_ours(i) and source_ids.parse(i) for i in ALL)
    assert not any(source_ids.is_ours(v) for v in (None, 7, ["meli:x"], "whatsapp:1", "", "MELI:buyer:1"))
    assert source_ids.parse("conversa:1") is None


def test_the_listener_refuses_a_message_carrying_any_of_them(settings):
    for source_id in ALL:
        payload = {"message_type": "outgoing", "private": False, "source_id": source_id, "sender": {"type": "user"}}
        assert accept._not_for_us(payload, settings.chatwoot_questions_inbox_id, settings) == "created by the bridge"
