"""One bad item end to end: the real poller against the fakes."""

import json


def test_a_question_whose_item_lookup_is_malformed_blocks_nothing(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    meli.add_user(9001, "COMPRADOR")
    meli.add_item("MLB1", "Caneca")
    with meli.lock:
        meli.items["MLBBAD"] = "garbage"  # Mercado Livre answers this item's lookup with a body of the wrong shape
    bad = meli.add_question(item_id="MLBBAD", buyer_id=9001, text="Pergunta com anúncio estranho?")
    good = [meli.add_question(item_id="MLB1", buyer_id=9001, text=f"Pergunta {n}?") for n in range(3)]

    once = bridge.once()
    assert once.returncode == 1  # the run went through, and says that an item failed
    created = {c["custom_attributes"]["meli_question_id"] for c in chatwoot.conversations.values()}
    assert created == {str(q["id"]) for q in good}
    status = json.loads(bridge.cli("status").stdout)
    assert status["checks"]["items"]["retrying"] == {"question": 1}
    assert status["ok"] is True

    # The next run leaves the bad question to its backoff: nothing new fails.
    assert bridge.once().returncode == 0
    # Fixed on Mercado Livre's side and retried by hand: it arrives, and the status is clean.
    meli.add_item("MLBBAD", "Caneca azul")
    assert "1 failing item" in bridge.cli("retry", "question").stdout
    assert bridge.once().returncode == 0
    created = {c["custom_attributes"]["meli_question_id"] for c in chatwoot.conversations.values()}
    assert created == {str(q["id"]) for q in [bad, *good]}
    assert json.loads(bridge.cli("status").stdout)["checks"]["items"]["retrying"] == {}
