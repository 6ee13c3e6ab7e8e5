"""One buyer's contact made by two poller jobs at once (APScheduler runs them in parallel threads):
the questions job and the messages or claims job each open a conversation for the same buyer, in
their own inbox, against the fake Chatwoot."""

from __future__ import annotations

import threading

import pytest

from bridge import source_ids
from bridge.sync import contacts
from tests.helpers import services_on_fakes

BUYER, OTHER = 9, 10


@pytest.fixture
def s(make_settings, db, fakes):
    return services_on_fakes(make_settings, db, fakes)


def both_at_once(*jobs):
    """Run each job in its own thread, as the scheduler does; returns what each raised (or None)."""
    raised = [None] * len(jobs)

    def run(i, job):
        try:
            job()
        except Exception as exc:  # noqa: BLE001 — reported to the test
            raised[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return raised


def meet_in_find_contact(s, parties=2, timeout=1.5):
    """Each exact look-up by identifier waits (a while at most) for the other job's: the two
    look-ups then see Chatwoot in the same state, as two jobs in flight together may."""
    barrier = threading.Barrier(parties, timeout=timeout)
    find = s.chatwoot.find_contact

    def meeting(identifier):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # the other job is not looking now (it waits for its turn)
        return find(identifier)

    s.chatwoot.find_contact = meeting


def question_and_sale(s, buyer):
    def question():
        contacts.open_conversation(s, kind="question", external_id="12",
                                   inbox_id=s.settings.chatwoot_questions_inbox_id, buyer_id=buyer, nickname="ZEQ",
                                   custom_attributes={"meli_question_id": "12"})

    def sale():
        contacts.open_conversation(s, kind="pack", external_id="2000001",
                                   inbox_id=s.settings.chatwoot_messages_inbox_id, buyer_id=buyer, nickname="ZEQ",
                                   custom_attributes={"meli_pack_id": "2000001"})
    return question, sale


def test_a_buyer_merged_into_another_buyers_contact_gets_one_contact_of_its_own_when_two_jobs_need_it(s, fakes):
    chatwoot = fakes.chatwoot.state
    for buyer in (BUYER, OTHER):
        for inbox in (s.settings.chatwoot_questions_inbox_id, s.settings.chatwoot_messages_inbox_id):
            contacts.ensure_contact(s, buyer, f"buyer {buyer}", inbox)
    mine = s.db.links.get("buyer", str(BUYER))["contact_id"]
    theirs = s.db.links.get("buyer", str(OTHER))["contact_id"]
    # An agent merged this buyer into the other's contact: its inbox source ids went along, its
    # identifier did not. Both jobs find the identifier free and the source id taken.
    chatwoot.merge_contacts(theirs, mine)
    meet_in_find_contact(s)

    raised = both_at_once(*question_and_sale(s, BUYER))

    assert raised == [None, None]
    identifier = source_ids.buyer(BUYER)
    own = [c["id"] for c in chatwoot.contacts.values() if c["identifier"] == identifier]
    assert len(own) == 1
    assert s.db.links.get("buyer", str(BUYER))["contact_id"] == own[0]
    made = {conv["custom_attributes"].get("meli_question_id") or conv["custom_attributes"].get("meli_pack_id"):
            conv["contact_id"] for conv in chatwoot.conversations.values()}
    assert made == {"12": own[0], "2000001": own[0]}
