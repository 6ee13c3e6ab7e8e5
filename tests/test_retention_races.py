"""Retention runs in the poller's housekeeping job, another thread than the syncs: a sale it prunes
while a sync of that sale is in hand must come out of that sync as it would have otherwise."""

from __future__ import annotations

import pytest

from bridge.sync import claims as sync_claims
from bridge.sync import sales
from tests.test_privacy import (
    CLAIM,
    DAY,
    RecordingChatwoot,
    buyer_claim,
    claim_rows,
    contents,
    conversations,
    forget_cli,
    sale_rows,
    services,
    two_buyers,
)


def test_a_sale_pruned_while_its_sync_mirrors_a_new_buyer_message_shows_nothing_twice(bridge):
    """A buyer writes again after the sale's quiet retention window; the housekeeping thread prunes the
    sale (it looked quiet: nothing was recorded yet) just after the sync that read the new message took
    the sale's row and mark. The rows that said which of the thread's messages Chatwoot already had went
    with the prune: the whole thread was taken for new."""
    meli = bridge.fakes.meli.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    sale = conversations(bridge, bridge.fakes.messages_inbox)[0]
    before = contents(bridge, sale)
    s = services(bridge)
    now = s.clock()
    s.clock = lambda: now + 91 * DAY
    meli.add_buyer_message(pack, "depois-de-meses-qx")
    sent_ids = s.db.replies.sent_ids
    pruned = []

    def pruned_meanwhile(*args, **kwargs):
        if not pruned:
            pruned.append(s.db.privacy.apply_retention(s.clock(), s.settings.retention_days))
        return sent_ids(*args, **kwargs)

    s.db.replies.sent_ids = pruned_meanwhile
    sales.sync_messages(s)
    assert pruned and s.db.links.get("pack", pack) is None  # the prune did happen mid-sync
    assert contents(bridge, sale) == [*before, "depois-de-meses-qx"]

    # And the next buyer message continues there, with nothing of the history twice either.
    s.db.replies.sent_ids = sent_ids
    meli.add_buyer_message(pack, "mais-uma-qx")
    sales.sync_messages(s)
    assert contents(bridge, sale) == [*before, "depois-de-meses-qx", "mais-uma-qx"]


def test_a_sale_whose_sent_part_a_sync_read_before_it_was_recorded_sent_is_pruned_after_a_later_read(db):
    """The outbox sends beside the sync (no lock between them): a sync whose read began just before a
    part was recorded sent saw that part in the thread, and its mark's time is older than the send. The
    moderation re-check reads the thread again minutes later, nothing newer in it: that read covers the
    part too. Only a read that found a newer message counted, and the sale's rows stayed past
    RETENTION_DAYS until its buyer wrote again (maybe never)."""
    sale_rows(db, "901", "51", 48, 1.0)
    reply_id = db.replies.accept(chatwoot_message_id=7, conversation_id=901, kind="message", target_id="901",
                                 parts=[{"text": "resposta"}], now=1.0)
    db.watermarks.record_thread("901", "p1", 1000.0, read_at=9.0)  # read while the part was in flight
    db.replies.mark_part_sent(reply_id, 0, "p1", 10.0)
    db.replies.mark_delivered(reply_id, 10.0)
    db.replies.mark_reported(reply_id, 10.0)
    db.watermarks.record_thread("901", "p1", 1000.0, read_at=130.0)  # the moderation re-check's read

    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("pack", "901") is None and db.links.get("buyer", "51") is None


@pytest.fixture
def claims_bridge(tmp_path, fakes):
    from tests.e2e import Bridge
    fakes.claims_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Reclamações")
    installation = Bridge(tmp_path, fakes, CHATWOOT_CLAIMS_INBOX_ID=str(fakes.claims_inbox))
    yield installation
    installation.close()


def test_a_claim_pruned_while_a_sync_reads_it_again_shows_nothing_twice(claims_bridge):
    """A notification about a closed claim reads it again; the housekeeping thread prunes the claim
    (closed, and quiet as far as its rows say) just after the sync read the claim's mark. The sync held
    the claim's row and mark from before the prune, and the rows that said which messages Chatwoot had
    were gone: its whole history came in again."""
    bridge = claims_bridge
    meli = bridge.fakes.meli.state
    pack = two_buyers(bridge)
    buyer_claim(bridge, pack)
    assert bridge.once().returncode == 0
    meli.close_claim(CLAIM)
    assert bridge.once().returncode == 0
    conversation = conversations(bridge, bridge.fakes.claims_inbox)[0]
    before = contents(bridge, conversation)
    s = services(bridge)
    now = s.clock()
    s.clock = lambda: now + 91 * DAY
    read = s.db.watermarks.get

    def pruned_after_reading(kind, external_id):
        mark = read(kind, external_id)
        if kind == "claim":
            s.db.privacy.apply_retention(s.clock(), s.settings.retention_days)
        return mark

    s.db.watermarks.get = pruned_after_reading
    sync_claims.sync_claim(s, str(CLAIM))
    assert s.db.links.get("claim", str(CLAIM)) is None  # the prune did happen mid-sync
    assert contents(bridge, conversation) == before


def test_a_message_mirrored_into_a_sale_pruned_mid_sync_stays_covered_once_its_row_goes(db):
    """The prune landed while the sync mirrored m2 (dated 5000 on Mercado Livre): m2 is in Chatwoot, its
    row left without its sale's, after the prune's mark. A later pass deletes such rows; the mark must
    then cover m2, or the buyer's next message brings m2 into the conversation a second time."""
    sale_rows(db, "990", "61", 49, 1.0)
    db.watermarks.record_thread("990", "m1", 1000.0, read_at=1.0)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    db.links.mark_created("message", "m2", 100 * DAY, conversation_id=990, message_id=2,
                          data={"pack_id": "990", "direction": "incoming", "at": 5000.0})

    db.privacy.apply_retention(now=200 * DAY, days=90)
    assert db.links.get("message", "m2") is None
    m2 = {"id": "m2", "message_date": {"created": "1970-01-01T01:23:20.000Z"}}  # 5000
    assert sales.covered_by_watermark([m2], db.watermarks.get("pack", "990")) == {"m2"}


def test_a_sale_continued_after_a_prune_keeps_its_rows_until_a_sync_reads_back_its_sent_part(db):
    """Pruned once, the sale continued in its conversation (its rows made again), an agent's reply went out,
    and no sync has read the thread since (the one that continued it was deferred: a seller message it
    could not yet tell from a part in flight). Its mark was written by the prune alone: it covers nothing
    the reply sent, yet the part counted as read back and the sale was pruned again; the next read of
    its thread then brought the agent's reply back as a message typed on the site."""
    sale_rows(db, "991", "62", 50, 1.0)
    db.watermarks.record_thread("991", "m1", 1000.0, read_at=1.0)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("pack", "991") is None
    sale_rows(db, "991", "62", 50, 100 * DAY, messages=("m2",))
    reply_id = db.replies.accept(chatwoot_message_id=8, conversation_id=991, kind="message", target_id="991",
                                 parts=[{"text": "resposta"}], now=100 * DAY)
    db.replies.mark_part_sent(reply_id, 0, "p2", 100 * DAY + 10)
    db.replies.mark_delivered(reply_id, 100 * DAY + 10)
    db.replies.mark_reported(reply_id, 100 * DAY + 10)

    db.privacy.apply_retention(now=200 * DAY, days=90)
    assert db.links.get("pack", "991") is not None
    db.watermarks.record_thread("991", "p2", 2000.0, read_at=100 * DAY + 20)  # a sync reads the part back
    db.privacy.apply_retention(now=200 * DAY, days=90)
    assert db.links.get("pack", "991") is None


def test_retention_keeps_a_sale_with_a_message_create_in_doubt_and_the_intent_with_it(db):
    """The buyer's first message in months: its create lost its answer (Chatwoot may apply it later), and
    the sale looked quiet, nothing of the message recorded as its own yet. Pruned, the intent went with it
    (its conversation no sale's any more), and the next attempt created the message again without looking:
    shown twice once Chatwoot applied the first."""
    sale_rows(db, "605", "35", 45, 1.0, messages=("g1",))
    db.links.record_intent("message", "g2", 1.0, conversation_id=605)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("pack", "605") is not None
    assert db.links.get("message", "g2") is not None


class MadeForChatwoot(RecordingChatwoot):
    """RecordingChatwoot whose conversations also carry the additional attributes the bridge wrote."""

    def __init__(self, made_for, **kwargs):
        super().__init__(**kwargs)
        self.made_for = made_for

    def conversation(self, conversation_id):
        return dict(super().conversation(conversation_id),
                    additional_attributes=self.made_for.get(conversation_id, {}))


def test_forget_buyer_in_chatwoot_deletes_the_conversation_of_a_sale_retention_pruned(monkeypatch, settings, db,
                                                                                      capsys):
    """Sale 511 was pruned by retention: its conversation, with the buyer's messages, is still in Chatwoot, in
    the buyer's contact, and the bridge keeps no row naming it. The erasure kept it ('which the bridge does
    not keep for this buyer'), and the contact with it. The bridge made it for this buyer, and says so where
    agents cannot edit it."""
    sale_rows(db, "512", "46", 51, 1.0)  # the buyer's other sale, still kept
    chatwoot = MadeForChatwoot(
        found={"id": 51}, conversations={511: {"meli_pack_id": "511"}, 512: {"meli_pack_id": "512"},
                                         513: {"meli_pack_id": "513"}},
        contacts={51: [511, 512], 52: [513]},
        made_for={511: {"meli_buyer_id": "46", "meli_pack_id": "511"}, 513: {"meli_buyer_id": "77"}})
    assert forget_cli(monkeypatch, settings, db, chatwoot, "46", True, True) == 0
    assert sorted(chatwoot.deleted) == [("contact", 51), ("conversation", 511), ("conversation", 512)]


def test_retention_keeps_a_closed_claim_while_a_message_create_in_it_is_in_doubt(db):
    """A late message on a closed claim: its create lost its answer (Chatwoot may apply it later), and the
    claim looked quiet. Pruned, the intent went with the claim's rows, and the next read created the
    message again without looking: shown twice once Chatwoot applied the first."""
    claim_rows(db, "9105", "65", 52, 1.0)
    db.links.record_intent("claim_message", "9105:complainant:2026-01-02T00:00:00.000Z:ghi", 1.0,
                           conversation_id=105)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("claim", "9105") is not None
    assert db.links.get("claim_message", "9105:complainant:2026-01-02T00:00:00.000Z:ghi") is not None


def test_a_message_mirrored_into_a_claim_pruned_mid_sync_stays_covered_once_its_row_goes(db):
    """The prune landed while a sync of the closed claim mirrored a late message (dated 6000 on Mercado
    Livre): the message is in Chatwoot, its row left without its claim's, after the prune's mark. A later
    pass deletes such rows; the mark must then cover the message, or the claim's next read brings it into
    Chatwoot a second time."""
    claim_rows(db, "9107", "67", 54, 1.0)  # its messages up to 5000 mirrored
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("claim", "9107") is None
    late = "9107:complainant:1970-01-01T01:40:00.000Z:xyz"
    db.links.mark_created("claim_message", late, 100 * DAY, conversation_id=107, message_id=2,
                          data={"role": "complainant", "direction": "incoming", "at": 6000.0})

    db.privacy.apply_retention(now=200 * DAY, days=90)
    assert db.links.get("claim_message", late) is None
    message = {"sender_role": "complainant", "message": "de novo", "date_created": "1970-01-01T01:40:00.000Z"}
    assert sync_claims.after_watermark([message], db.watermarks.get("claim", "9107")) == []


def test_a_create_in_doubt_never_tried_again_holds_its_sale_or_claim_one_retention_window_at_most(db):
    """A create whose answer was lost holds its sale or claim while it may still be tried again (its item is
    retried at least daily while it fails). One left untried for a whole window past the retention cutoff
    (its conversation deleted, the bridge stopped retrying it) never will be, and held the buyer's rows
    forever, against RETENTION_DAYS."""
    sale_rows(db, "606", "36", 46, 1.0, messages=("h1",))
    db.links.record_intent("message", "h2", 1.0, conversation_id=606)
    claim_rows(db, "9108", "68", 55, 1.0)
    db.links.record_intent("claim_message", "9108:complainant:2026-01-02T00:00:00.000Z:jkl", 1.0,
                           conversation_id=108)

    db.privacy.apply_retention(now=200 * DAY, days=90)
    assert db.links.get("pack", "606") is None and db.links.get("message", "h2") is None
    assert db.links.get("claim", "9108") is None
    assert db.links.get("claim_message", "9108:complainant:2026-01-02T00:00:00.000Z:jkl") is None
