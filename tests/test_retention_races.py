"""Retention runs in the poller's housekeeping job, another thread than the syncs: a sale it prunes
while a sync of that sale is in hand must come out of that sync as it would have otherwise."""

from __future__ import annotations

from bridge.sync import sales
from tests.test_privacy import DAY, contents, conversations, services, two_buyers


def test_a_sale_pruned_while_its_sync_mirrors_a_new_buyer_message_shows_nothing_twice(bridge):
    """A buyer writes again after the sale's quiet retention window; the housekeeping thread prunes the
    sale (it looked quiet: nothing was recorded yet) while the sync that read the new message mirrors
    it. The rows that said which of the thread's messages Chatwoot already had went with the prune."""
    meli = bridge.fakes.meli.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    sale = conversations(bridge, bridge.fakes.messages_inbox)[0]
    before = contents(bridge, sale)
    s = services(bridge)
    now = s.clock()
    s.clock = lambda: now + 91 * DAY
    meli.add_buyer_message(pack, "depois-de-meses-qx")
    create = s.chatwoot.create_message
    pruned = []

    def create_while_pruning(*args, **kwargs):
        if not pruned:
            pruned.append(s.db.privacy.apply_retention(s.clock(), s.settings.retention_days))
        return create(*args, **kwargs)

    s.chatwoot.create_message = create_while_pruning
    sales.sync_messages(s)
    assert pruned and s.db.links.get("pack", pack) is None  # the prune did happen mid-sync
    assert contents(bridge, sale) == [*before, "depois-de-meses-qx"]

    # And the next buyer message continues there, with nothing of the history twice either.
    s.chatwoot.create_message = create
    meli.add_buyer_message(pack, "mais-uma-qx")
    sales.sync_messages(s)
    assert contents(bridge, sale) == [*before, "depois-de-meses-qx", "mais-uma-qx"]
