"""LGPD: erasing one buyer, retention that deletes, and logs without personal data.

The checks read the bytes of the database and its -wal file: a row that is gone from the
tables but still readable in the file is not erased.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import main
from bridge.http import PermanentError
from config import load_settings
from db_manager import MIGRATIONS
from tests.e2e import APP_DIR, LOG_DIR, ROOT, wait_until

PDF = b"%PDF-1.4\n% documento\n"
NICK = "ZEQUINHA_ERASE_QX"
BUYER = 8642097
OTHER = 7531864
OTHER_NICK = "OUTRA_PESSOA_KW"
DAY = 86400.0


def file_bytes(db_path: str) -> bytes:
    data = b""
    for suffix in ("", "-wal"):
        path = Path(db_path + suffix)
        if path.exists():
            data += path.read_bytes()
    return data


CLAIM = 5100001
OTHER_CLAIM = 5100002
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def claims_bridge(tmp_path, fakes):
    from tests.e2e import Bridge
    fakes.claims_inbox = fakes.chatwoot.state.add_inbox("Mercado Livre - Reclamações")
    installation = Bridge(tmp_path, fakes, CHATWOOT_CLAIMS_INBOX_ID=str(fakes.claims_inbox))
    yield installation
    installation.close()


def buyer_claim(bridge, pack):
    """The buyer of `pack` opened a claim on it and wrote there, with a file named after them."""
    meli = bridge.fakes.meli.state
    meli.add_claim(CLAIM, int(pack))
    meli.add_claim_message(CLAIM, "complainant", "reclamacao-secreta-qx",
                           attachments=[("laudo-zequinha-qx.png", PNG, "image/png")])


def services(bridge, clock=None):
    s = main.open_services(load_settings(bridge.env))
    if clock is not None:
        s.clock = clock
    return s


def conversations(bridge, inbox):
    return [c for c in bridge.fakes.chatwoot.state.conversations.values() if c["inbox_id"] == inbox]


def contents(bridge, conv):
    return [m["content"] for m in bridge.fakes.chatwoot.state.messages_in(conv["id"])]


def two_buyers(bridge):
    """One buyer with a question, a sale with a file and a reply waiting; another with a question."""
    meli = bridge.fakes.meli.state
    meli.add_item("MLB900", "Caneca verde")
    for user, nick in ((BUYER, NICK), (OTHER, OTHER_NICK)):
        meli.add_user(user, nick)
    meli.add_question(item_id="MLB900", buyer_id=BUYER, text="pergunta-secreta-qx")
    meli.add_question(item_id="MLB900", buyer_id=OTHER, text="pergunta-da-outra-kw")
    meli.add_order(3100001, BUYER, NICK, items=[("MLB900", "Caneca verde", 1, 30.0)])
    meli.add_buyer_message("3100001", "mensagem-secreta-qx", attachments=[("RG-zequinha-qx.pdf", PDF,
                                                                          "application/pdf")])
    return "3100001"


def test_forget_buyer_erases_every_row_from_the_file_and_a_new_question_arrives_normally(bridge):
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    s = services(bridge)
    assert len(conversations(bridge, bridge.fakes.questions_inbox)) == 2
    sale = conversations(bridge, bridge.fakes.messages_inbox)[0]
    # A reply still in the outbox holds its text until delivered: erasure takes it too.
    s.db.replies.accept(chatwoot_message_id=999001, conversation_id=sale["id"], kind="message", target_id=pack,
                        parts=[{"text": "resposta-secreta-qx"}], now=s.clock())
    question_id = next(q["id"] for q in meli.questions.values() if q["from"]["id"] == BUYER)
    s.db.notifications.record("n-qx", "questions", f"/questions/{question_id}", s.clock())
    before = file_bytes(s.db.path)
    assert NICK.encode() in before and str(BUYER).encode() in before

    result = bridge.cli("forget-buyer", NICK, "--chatwoot", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Removed from the bridge's database" in result.stdout and "1 questions" in result.stdout
    assert "deleted" in result.stdout

    erased = file_bytes(s.db.path)
    for secret in (str(BUYER), NICK, "resposta-secreta-qx", "mensagem-secreta-qx", "RG-zequinha-qx"):
        assert secret.encode() not in erased, secret
    assert str(OTHER).encode() in erased  # the other buyer is intact
    assert s.db.links.get("buyer", str(OTHER))["status"] == "created"
    assert not [c for c in chatwoot.contacts.values() if c["identifier"] == f"meli:buyer:{BUYER}"]
    assert len(conversations(bridge, bridge.fakes.questions_inbox)) == 1
    assert not conversations(bridge, bridge.fakes.messages_inbox)

    # The erased question is still unanswered on Mercado Livre and the thread still there:
    # neither comes back. A new question and a new message start fresh.
    assert bridge.once().returncode == 0
    assert len(conversations(bridge, bridge.fakes.questions_inbox)) == 1
    assert not conversations(bridge, bridge.fakes.messages_inbox)
    meli.add_question(item_id="MLB900", buyer_id=BUYER, text="pergunta-nova-qx")
    meli.add_buyer_message(pack, "mensagem-nova-qx")
    assert bridge.once().returncode == 0
    questions = conversations(bridge, bridge.fakes.questions_inbox)
    assert len(questions) == 2 and any(contents(bridge, c)[0].startswith("pergunta-nova-qx") for c in questions)
    sales = conversations(bridge, bridge.fakes.messages_inbox)
    assert len(sales) == 1 and contents(bridge, sales[0]) == ["mensagem-nova-qx"]


def test_forget_buyer_erases_the_buyers_claims_and_a_new_claim_message_starts_fresh(claims_bridge):
    bridge = claims_bridge
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = two_buyers(bridge)
    buyer_claim(bridge, pack)
    assert bridge.once().returncode == 0
    s = services(bridge)
    [claim_conv] = conversations(bridge, bridge.fakes.claims_inbox)
    assert any(c.startswith("reclamacao-secreta-qx") for c in contents(bridge, claim_conv))
    assert str(s.db.links.get("claim", str(CLAIM))["data"]["buyer_id"]) == str(BUYER)
    # A claim reply still in the outbox, its moderation check and a claims notification go too.
    reply_id = s.db.replies.accept(chatwoot_message_id=999002, conversation_id=claim_conv["id"], kind="claim",
                                   target_id=str(CLAIM), parts=[{"text": "resposta-reclamacao-qx"}], now=s.clock())
    s.db.links.mark_created("moderation_check", f"claim:{reply_id}", s.clock())
    s.db.notifications.record("n-claim-qx", "claims", f"/post-purchase/v1/claims/{CLAIM}", s.clock())
    assert b"reclamacao-secreta-qx" not in file_bytes(s.db.path)  # texts never stored, only their hash
    assert s.db.links.with_prefix("claim_message", f"{CLAIM}:")

    result = bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes")
    assert result.returncode == 0, result.stderr
    assert "1 claims" in result.stdout and f"conversation {claim_conv['id']} deleted" in result.stdout

    erased = file_bytes(s.db.path)
    for secret in (str(BUYER), NICK, "resposta-reclamacao-qx", "reclamacao-secreta-qx", "laudo-zequinha-qx"):
        assert secret.encode() not in erased, secret
    for kind in ("claim_message", "claim_event", "claim_moderation"):
        assert not s.db.links.with_prefix(kind, f"{CLAIM}:"), kind
    assert (s.db.links.get("claim", str(CLAIM)) is None
            and s.db.links.get("moderation_check", f"claim:{reply_id}") is None)
    assert s.db.one("SELECT COUNT(*) AS n FROM replies WHERE kind = 'claim'")["n"] == 0
    assert s.db.one("SELECT COUNT(*) AS n FROM notifications WHERE topic = 'claims'")["n"] == 0
    mark = s.db.watermarks.get("claim", str(CLAIM))
    assert mark["closed_at"] is not None and mark["last_message_at"] is not None
    assert not conversations(bridge, bridge.fakes.claims_inbox)

    # The claim is still open on Mercado Livre: its erased history does not come back, and
    # the next poll does not even read it again.
    assert bridge.once().returncode == 0
    assert not conversations(bridge, bridge.fakes.claims_inbox)
    reads = meli.count("GET", f"/post-purchase/v1/claims/{CLAIM}")
    assert bridge.once().returncode == 0
    assert meli.count("GET", f"/post-purchase/v1/claims/{CLAIM}") == reads
    meli.add_claim_message(CLAIM, "complainant", "nova-reclamacao-qx")
    assert bridge.once().returncode == 0
    [fresh] = conversations(bridge, bridge.fakes.claims_inbox)
    texts = contents(bridge, fresh)
    assert "nova-reclamacao-qx" in texts and not any("reclamacao-secreta-qx" in t for t in texts)
    assert chatwoot.conversations[fresh["id"]]["custom_attributes"]["meli_claim_id"] == str(CLAIM)


def test_forget_buyer_by_an_unknown_nickname_says_to_use_the_id(bridge):
    result = bridge.cli("forget-buyer", "NINGUEM_CONHECIDO")
    assert result.returncode == 1 and "give the buyer id" in result.stderr and "Traceback" not in result.stderr


def test_retention_deletes_finished_rows_from_the_file_keeps_work_in_progress_and_never_reimports(bridge):
    meli = bridge.fakes.meli.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    finished = next(q for q in meli.questions.values() if q["from"]["id"] == BUYER)
    meli.answer_elsewhere(finished["id"], "respondida-no-site-qx")
    assert bridge.once().returncode == 0
    s = services(bridge)
    assert s.db.links.get("question", finished["id"])["data"]["state"] == "closed"

    day = 86400.0
    now = s.clock()
    s.clock = lambda: now + 89 * day
    main.housekeeping(s)
    assert s.db.links.get("pack", pack) is not None  # inside the window: kept

    s.clock = lambda: now + 91 * day
    counts = main.housekeeping(s)
    assert counts["retention_links"] >= 4 and counts["wal_busy"] == 0
    assert s.db.links.get("question", finished["id"]) is None and s.db.links.get("pack", pack) is None
    assert s.db.links.get("buyer", str(BUYER)) is None
    erased = file_bytes(s.db.path)
    for secret in (str(BUYER), NICK):
        assert secret.encode() not in erased, secret
    # The other buyer's question is still unanswered: in progress, untouched.
    assert s.db.links.get("buyer", str(OTHER))["status"] == "created"
    assert s.db.watermarks.get("pack", pack)["closed_at"] is not None
    assert s.db.watermarks.get("question", finished["id"])["closed_at"] is not None

    # The old thread gets a new buyer message: only that message is mirrored, into the sale's
    # conversation still in Chatwoot (found by its attribute), not a second one beside it.
    sale = next(c for c in conversations(bridge, bridge.fakes.messages_inbox)
                if c["custom_attributes"].get("meli_pack_id") == pack)
    shown = contents(bridge, sale)
    bridge.fakes.chatwoot.state.resolve_conversation(sale["id"])
    meli.add_buyer_message(pack, "depois-da-retencao-qx")
    assert bridge.once().returncode == 0
    sales = [c for c in conversations(bridge, bridge.fakes.messages_inbox)
             if c["custom_attributes"].get("meli_pack_id") == pack]
    assert [c["id"] for c in sales] == [sale["id"]]
    assert contents(bridge, sale) == [*shown, "depois-da-retencao-qx"]
    assert sales[0]["status"] == "open"  # a buyer message reopens it as usual


def test_a_sale_is_pruned_only_once_its_thread_was_read_after_its_last_reply_and_the_reply_never_comes_back(bridge):
    """Retention deletes the reply's row, which is how a sync knows the bridge's own messages in the
    thread. Pruned before a sync read the reply's part back (its mark does not cover it), the next
    buyer message brought the agent's reply back as if the seller had written it on the site."""
    meli, chatwoot = bridge.fakes.meli.state, bridge.fakes.chatwoot.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    sale = conversations(bridge, bridge.fakes.messages_inbox)[0]
    bridge.listener()
    s = services(bridge)
    chatwoot.agent_reply(sale["id"], "resposta-do-agente-qx")
    wait_until(lambda: s.db.one("SELECT 1 AS x FROM replies"), 10, what="the reply accepted")
    # Delivered and reported; the thread is not read again yet (the moderation re-check comes minutes later).
    assert bridge.once().returncode == 0
    assert s.db.one("SELECT status, reported_at FROM replies")["status"] == "delivered"
    assert any(m.get("text") == "resposta-do-agente-qx" for m in meli.sent_messages)
    now = s.clock()
    s.clock = lambda: now + 91 * DAY
    main.housekeeping(s)
    assert s.db.links.get("pack", pack) is not None  # its own part is not under the mark yet

    meli.add_buyer_message(pack, "lida-depois-da-resposta-qx")
    assert bridge.once().returncode == 0  # reads the thread, the reply's part with it
    main.housekeeping(s)
    assert s.db.links.get("pack", pack) is None

    meli.add_buyer_message(pack, "depois-da-retencao-qx")
    assert bridge.once().returncode == 0
    shown = contents(bridge, sale)
    assert [c for c in shown if c.startswith("resposta-do-agente-qx")] == ["resposta-do-agente-qx"], shown
    assert shown[-2:] == ["lida-depois-da-resposta-qx", "depois-da-retencao-qx"]


def test_retention_prunes_a_closed_claim_keeps_an_open_one_and_never_reimports_it(claims_bridge):
    bridge = claims_bridge
    meli = bridge.fakes.meli.state
    pack = two_buyers(bridge)
    buyer_claim(bridge, pack)
    meli.add_order(3100002, OTHER, OTHER_NICK, items=[("MLB900", "Caneca verde", 1, 30.0)])
    meli.add_claim(OTHER_CLAIM, 3100002)
    meli.add_claim_message(OTHER_CLAIM, "complainant", "reclamacao-da-outra-kw")
    assert bridge.once().returncode == 0
    meli.close_claim(CLAIM)
    assert bridge.once().returncode == 0
    s = services(bridge)
    assert s.db.links.get("claim", str(CLAIM))["data"]["status"] == "closed"
    assert len(conversations(bridge, bridge.fakes.claims_inbox)) == 2

    now = s.clock()
    s.clock = lambda: now + 89 * DAY
    main.housekeeping(s)
    assert s.db.links.get("claim", str(CLAIM)) is not None  # inside the window: kept

    s.clock = lambda: now + 91 * DAY
    main.housekeeping(s)
    assert s.db.links.get("claim", str(CLAIM)) is None
    for kind in ("claim_message", "claim_event"):
        assert not s.db.links.with_prefix(kind, f"{CLAIM}:"), kind
    assert s.db.watermarks.get("claim", str(CLAIM))["closed_at"] is not None
    # Open, however old: in progress, untouched.
    assert s.db.links.get("claim", str(OTHER_CLAIM))["status"] == "created"
    assert s.db.links.with_prefix("claim_message", f"{OTHER_CLAIM}:")

    # A notification about the pruned claim reads it again: nothing of its history comes back.
    s.db.notifications.record("n-claim-late", "claims", f"/post-purchase/v1/claims/{CLAIM}", now)
    assert bridge.once().returncode == 0
    assert len(conversations(bridge, bridge.fakes.claims_inbox)) == 2
    assert s.db.links.get("claim", str(CLAIM)) is None


def test_the_logs_and_health_of_a_full_run_name_no_buyer_text_nickname_or_file(claims_bridge):
    bridge = claims_bridge
    chatwoot = bridge.fakes.chatwoot.state
    pack = two_buyers(bridge)
    buyer_claim(bridge, pack)
    bridge.listener()
    bridge.poller()
    wait_until(lambda: conversations(bridge, bridge.fakes.messages_inbox) and conversations(
        bridge, bridge.fakes.claims_inbox) and len(conversations(bridge, bridge.fakes.questions_inbox)) == 2, 30,
        what="every flow")
    claim_conv = conversations(bridge, bridge.fakes.claims_inbox)[0]
    wait_until(lambda: any(c.startswith("reclamacao-secreta-qx") for c in contents(bridge, claim_conv)), 30,
               what="the claim message")
    chatwoot.agent_reply(claim_conv["id"], "resposta-da-reclamacao-qx",
                         attachments=[("NF-reclamacao-zequinha-qx.pdf", PDF, "application/pdf")])
    sale = conversations(bridge, bridge.fakes.messages_inbox)[0]
    chatwoot.agent_reply(sale["id"], "resposta-do-agente-qx",
                         attachments=[("NF-zequinha-qx.pdf", PDF, "application/pdf")])
    question = next(c for c in conversations(bridge, bridge.fakes.questions_inbox)
                    if contents(bridge, c)[0].startswith("pergunta-secreta-qx"))
    chatwoot.agent_reply(question["id"], "resposta-da-pergunta-qx")
    db = services(bridge).db
    wait_until(lambda: db.one("SELECT COUNT(*) AS n FROM replies WHERE status = 'delivered'"
                              " AND reported_at IS NOT NULL")["n"] == 3, 30, what="the three replies delivered")
    health = bridge.health().text
    assert NICK not in health and str(BUYER) not in health and "qx" not in health  # counts and states only
    assert bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes").returncode == 0
    bridge.close()
    text = "\n".join(p.read_text(errors="replace") for p in LOG_DIR.glob(f"{bridge.tmp.name}-*.log"))
    # The flows did run and log, files included.
    assert "message in chatwoot" in text and "attachment uploaded" in text and "reply delivered" in text
    assert "claim message in chatwoot" in text and "ext=png" in text and "reply part sent" in text
    for personal in (NICK, OTHER_NICK, "pergunta-secreta-qx", "pergunta-da-outra-kw", "mensagem-secreta-qx",
                     "RG-zequinha-qx", "resposta-do-agente-qx", "NF-zequinha-qx", "resposta-da-pergunta-qx",
                     "reclamacao-secreta-qx", "laudo-zequinha-qx", "resposta-da-reclamacao-qx",
                     "NF-reclamacao-zequinha-qx"):
        assert personal not in text, personal


def test_retention_days_below_the_minimum_stops_with_one_line(tmp_path, make_settings):
    import subprocess
    import sys

    from tests.conftest import base_env
    env = dict(base_env(tmp_path), RETENTION_DAYS="3", PATH="/usr/bin:/bin", HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "main.py", "check-config"], cwd=APP_DIR, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "RETENTION_DAYS: must be at least 7 days" in result.stderr
    assert "Traceback" not in result.stderr
    assert make_settings().retention_days == 90
    assert make_settings(RETENTION_DAYS="30").retention_days == 30
    with pytest.raises(Exception, match="RETENTION_DAYS"):
        make_settings(RETENTION_DAYS="noventa")


def test_the_data_inventory_names_every_table_and_column_of_the_schema(tmp_path):
    inventory = (ROOT / "docs" / "privacidade.md").read_text()
    conn = sqlite3.connect(":memory:")
    for step in MIGRATIONS:
        step.apply(conn)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    missing = []
    for table in tables:
        if f"`{table}`" not in inventory:
            missing.append(table)
        for column in (r[1] for r in conn.execute(f"PRAGMA table_info({table})")):
            if not re.search(rf"`{table}\.{column}`|`{column}`", inventory):
                missing.append(f"{table}.{column}")
    assert not missing, f"docs/privacidade.md does not name: {missing}"
    for path in ("README.md", "docs/guia.md"):
        assert "privacidade.md" in (ROOT / path).read_text(), path


# ---- the database alone -------------------------------------------------------------------------------



def sale_rows(db, pack, buyer, contact, at, messages=("m1",)):
    db.links.mark_created("buyer", buyer, at, contact_id=contact, data={"inboxes": [2]})
    db.links.mark_created("pack", pack, at, contact_id=contact, conversation_id=int(pack) % 1000,
                          data={"buyer_id": int(buyer), "order_ids": [pack]})
    for mid in messages:
        db.links.mark_created("message", mid, at, conversation_id=1, message_id=1, data={"pack_id": pack})


def test_forgetting_a_buyer_leaves_another_buyer_sharing_a_merged_contact_alone(db):
    sale_rows(db, "501", "11", 40, 1.0, messages=("a1",))
    sale_rows(db, "502", "22", 40, 1.0, messages=("b1",))  # contacts merged in Chatwoot: same id
    removed = db.privacy.forget_buyer("11", 2.0)
    assert removed["packs"] == 1
    assert db.links.get("pack", "501") is None and db.links.get("message", "a1") is None
    assert db.links.get("pack", "502")["status"] == "created" and db.links.get("message", "b1") is not None
    assert db.watermarks.get("pack", "501")["closed_at"] == 2.0


def test_retention_leaves_a_sale_with_a_reply_in_the_outbox_or_a_mark_read_in_flight(db):
    sale_rows(db, "601", "31", 41, 1.0, messages=("c1",))
    sale_rows(db, "602", "32", 42, 1.0, messages=("d1",))
    sale_rows(db, "603", "33", 43, 1.0, messages=("e1",))
    db.replies.accept(chatwoot_message_id=7, conversation_id=601, kind="message", target_id="601",
                      parts=[{"text": "ainda na fila"}], now=1.0)
    db.threads.begin_marking("602", 1.0)
    counts = db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("pack", "601") and db.links.get("pack", "602") and db.links.get("buyer", "31")
    assert (db.links.get("pack", "603") is None and db.links.get("buyer", "33") is None
            and db.links.get("message", "e1") is None)
    assert counts["links"] == 3
    # A question still open is in progress whatever its age; a closed one goes.
    db.links.mark_created("question", "701", 1.0, contact_id=44, conversation_id=9,
                          data={"state": "open", "buyer_id": 34})
    db.links.mark_created("question", "702", 1.0, contact_id=44, conversation_id=9,
                          data={"state": "closed", "buyer_id": 34})
    db.links.mark_created("answer", "702", 1.0, conversation_id=9, message_id=3)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert (db.links.get("question", "701") and db.links.get("question", "702") is None
            and db.links.get("answer", "702") is None)
    assert db.watermarks.closed("question") == {"702"}


def test_a_thread_watermark_freezes_once_its_rows_are_gone(db):
    db.watermarks.record_thread("801", "x1", 1000.0, read_at=1.0)
    db.watermarks.record_thread("801", "x2", 2000.0, read_at=2.0)
    sale_rows(db, "801", "41", 45, 1.0)
    db.privacy.forget_buyer("41", 3.0)
    db.watermarks.record_thread("801", "x3", 3000.0, read_at=4.0)
    mark = db.watermarks.get("pack", "801")
    assert (mark["last_message_id"], mark["last_message_at"], mark["closed_at"]) == ("x2", 2000.0, 3.0)


def test_a_closed_watermark_covers_messages_up_to_its_date_and_never_one_without_a_date():
    from bridge.sync import sales as sync_messages

    def msg(mid, created):
        return {"id": mid, "message_date": {"created": created}}
    messages = [msg("old", "2026-01-01T10:00:00.000-03:00"), msg("edge", "2026-01-01T13:00:00.000Z"),
                msg("new", "2026-01-01T13:00:01.000Z"), msg("undated", None)]
    mark = {"last_message_id": "edge", "last_message_at": sync_messages.parse_date("2026-01-01T13:00:00.000Z"),
            "closed_at": 5.0}
    assert sync_messages.covered_by_watermark(messages, mark) == {"old", "edge"}
    assert sync_messages.covered_by_watermark(messages, dict(mark, closed_at=None)) == set()
    assert sync_messages.last_handled(messages[:3]) == ("new", sync_messages.parse_date("2026-01-01T13:00:01Z"))


def test_forget_buyer_in_chatwoot_without_a_yes_deletes_nothing_anywhere(bridge):
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    import subprocess
    import sys
    # No terminal to answer: no confirmation.
    result = subprocess.run([sys.executable, "main.py", "forget-buyer", str(BUYER), "--chatwoot"], cwd=APP_DIR,
                            env=bridge.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "nothing was deleted" in result.stdout and "Traceback" not in result.stderr
    assert conversations(bridge, bridge.fakes.messages_inbox)
    assert services(bridge).db.links.get("pack", pack)["status"] == "created"


def claim_rows(db, claim, buyer, contact, at, status="closed", with_buyer_id=True):
    data = {"status": status, "last_message_at": 5000.0, **({"buyer_id": int(buyer)} if with_buyer_id else {})}
    db.links.mark_created("claim", claim, at, contact_id=contact, conversation_id=int(claim) % 1000, data=data)
    db.links.mark_created("claim_message", f"{claim}:complainant:2026-01-01T00:00:00.000Z:abc", at, conversation_id=1,
                          message_id=1, data={"role": "complainant", "direction": "incoming"})
    db.links.mark_created("claim_event", f"{claim}:opened", at, conversation_id=1)
    db.links.mark_created("claim_moderation", f"{claim}:respondent:2026-01-01T00:00:01.000Z:def", at)


def test_a_claim_written_before_its_buyer_id_was_kept_is_erased_through_the_buyers_contact(db):
    db.links.mark_created("buyer", "51", 1.0, contact_id=46, data={})
    claim_rows(db, "9001", "51", 46, 1.0, status="opened", with_buyer_id=False)
    claim_rows(db, "90011", "52", 47, 1.0, status="opened")  # a longer id sharing the prefix: not the same claim
    removed = db.privacy.forget_buyer("51", 2.0)
    assert removed["claims"] == 1 and removed["links"] == 5
    assert db.links.get("claim", "9001") is None and not db.links.with_prefix("claim_event", "9001:")
    assert db.links.get("claim", "90011") and db.links.with_prefix("claim_event", "90011:")
    assert db.watermarks.get("claim", "9001")["last_message_at"] == 5000.0


def test_retention_prunes_a_closed_claim_but_never_one_open_or_with_a_reply_in_progress(db):
    claim_rows(db, "9101", "61", 48, 1.0)
    claim_rows(db, "9102", "62", 49, 1.0, status="opened")
    claim_rows(db, "9103", "63", 50, 1.0)
    claim_rows(db, "9104", "64", 51, 1.0)
    db.replies.accept(chatwoot_message_id=8, conversation_id=103, kind="claim", target_id="9103",
                      parts=[{"text": "ainda na fila"}], now=1.0)
    finished = db.replies.accept(chatwoot_message_id=9, conversation_id=104, kind="claim", target_id="9104",
                                 parts=[{"text": "entregue"}], now=1.0)
    db.replies.mark_delivered(finished, 1.0)
    db.links.mark_created("moderation_check", f"claim:{finished}", 1.0)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("claim", "9101") is None and not db.links.with_prefix("claim_message", "9101:")
    assert db.links.get("claim", "9102") and db.links.get("claim", "9103")
    assert db.links.get("claim", "9104")  # its outcome not shown to the agent yet
    db.replies.mark_reported(finished, 2.0)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("claim", "9104") is None and db.replies.by_message(9) is None
    assert db.watermarks.closed("claim") == {"9101", "9104"}


def test_a_closed_claim_watermark_covers_messages_up_to_its_date_and_never_one_without_a_date():
    from bridge.sync import claims as sync_claims
    messages = [{"date_created": "2026-01-01T13:00:00.000Z"}, {"date_created": "2026-01-01T13:00:00.001Z"},
                {"date_created": None}]
    mark = {"last_message_at": sync_claims.parse_date("2026-01-01T13:00:00.000Z"), "closed_at": 5.0}
    assert sync_claims.after_watermark(messages, mark) == messages[1:]
    assert sync_claims.after_watermark(messages, dict(mark, closed_at=None)) == messages
    assert sync_claims.seen_since_pruned(dict(mark, last_message_id="T1"), {"last_updated": "T1"})
    assert not sync_claims.seen_since_pruned(dict(mark, last_message_id="T1"), {"last_updated": "T2"})


class RecordingChatwoot:
    """Chatwoot for `forget-buyer --chatwoot` unit tests: finds one contact, shows the conversations
    given (id → custom attributes) in the contacts given (id → conversation ids), records deletions."""

    def __init__(self, found=None, conversations=None, contacts=None):
        self.found, self.deleted = found, []
        self.conversations, self.contacts = conversations or {}, contacts or {}

    def find_contact(self, identifier):
        return self.found

    def conversation(self, conversation_id):
        if conversation_id not in self.conversations or ("conversation", conversation_id) in self.deleted:
            raise PermanentError("chatwoot answered 404: not found", status=404, service="chatwoot")
        return {"id": conversation_id, "custom_attributes": self.conversations[conversation_id]}

    def contact_conversations(self, contact_id):
        if contact_id not in self.contacts or ("contact", contact_id) in self.deleted:
            raise PermanentError("chatwoot answered 404: not found", status=404, service="chatwoot")
        return [self.conversation(i) for i in self.contacts[contact_id] if ("conversation", i) not in self.deleted]

    def delete_conversation(self, conversation_id):
        self.deleted.append(("conversation", conversation_id))

    def delete_contact(self, contact_id):
        self.deleted.append(("contact", contact_id))


def forget_cli(monkeypatch, settings, db, chatwoot, *args):
    from types import SimpleNamespace
    monkeypatch.setattr(main, "open_services", lambda _s: SimpleNamespace(db=db, chatwoot=chatwoot,
                                                                          clock=lambda: 10.0))
    return main.cmd_forget_buyer(settings, *args)


def test_forget_buyer_in_chatwoot_keeps_a_contact_merged_with_another_buyer(monkeypatch, settings, db, capsys):
    sale_rows(db, "501", "11", 40, 1.0, messages=("a1",))
    sale_rows(db, "502", "22", 40, 1.0, messages=("b1",))  # contacts merged in Chatwoot: same id
    chatwoot = RecordingChatwoot(found={"id": 40}, conversations={501: {"meli_pack_id": "501"},
                                                                  502: {"meli_pack_id": "502"}},
                                 contacts={40: [501, 502]})
    assert forget_cli(monkeypatch, settings, db, chatwoot, "11", True, True) == 0
    # Deleting contact 40 in Chatwoot would delete buyer 22's conversations with it.
    assert ("contact", 40) not in chatwoot.deleted
    assert chatwoot.deleted == [("conversation", 501)]
    assert "contact 40 is kept: its conversation 502 is sale 502's" in capsys.readouterr().out
    assert db.links.get("pack", "502")["status"] == "created"


def test_forget_buyer_in_chatwoot_never_deletes_a_remembered_conversation_naming_another_buyers_sale(
        monkeypatch, settings, db, capsys):
    sale_rows(db, "506", "12", 48, 1.0)  # the bridge remembers conversation 506 for buyer 12's sale
    sale_rows(db, "507", "23", 49, 1.0)
    # ...but Chatwoot's conversation 506 now names buyer 23's sale (adopted or edited by mistake).
    chatwoot = RecordingChatwoot(conversations={506: {"meli_pack_id": "507"}}, contacts={48: []})
    assert forget_cli(monkeypatch, settings, db, chatwoot, "12", True, True) == 0
    assert chatwoot.deleted == [("contact", 48)]
    assert "conversation 506 is kept: it is sale 507's, which the bridge does not keep for this buyer" \
        in capsys.readouterr().out


def test_forget_buyer_in_chatwoot_keeps_a_contact_whose_conversations_chatwoot_shows_only_in_part(
        monkeypatch, settings, db, capsys):
    sale_rows(db, "508", "13", 50, 1.0)
    # Chatwoot lists a contact's latest 20 conversations, without paging: older ones may be anyone's.
    shown = {508: {"meli_pack_id": "508"}, **{900 + i: {"meli_pack_id": "508"} for i in range(19)}}
    chatwoot = RecordingChatwoot(conversations=shown, contacts={50: sorted(shown)})
    assert forget_cli(monkeypatch, settings, db, chatwoot, "13", True, True) == 0
    assert ("contact", 50) not in chatwoot.deleted and len(chatwoot.deleted) == 20
    assert "contact 50 is kept: Chatwoot shows only its latest 20 conversations" in capsys.readouterr().out


def test_forget_buyer_refuses_a_number_that_is_also_another_buyers_nickname(monkeypatch, settings, db, capsys):
    sale_rows(db, "503", "33", 41, 1.0)
    db.cache.put_many("user", {"33": "123456"}, 1.0)
    # "123456" is buyer 33's nickname, not an id the bridge knows: erasing nothing and saying
    # "held nothing" would leave buyer 33 behind while the operator believes it is done.
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "123456", False, True) == 1
    assert "meli:buyer:" in capsys.readouterr().err
    assert db.links.get("pack", "503")["status"] == "created"
    # The contact identifier form is always an id.
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "meli:buyer:33", False, True) == 0
    assert db.links.get("pack", "503") is None


def test_forget_buyer_says_when_a_reply_still_in_the_outbox_is_dropped(monkeypatch, settings, db, capsys):
    sale_rows(db, "504", "44", 42, 1.0)
    db.replies.accept(chatwoot_message_id=71, conversation_id=504, kind="message", target_id="504",
                      parts=[{"text": "ainda na fila"}], now=1.0)
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "44", False, True) == 0
    out = capsys.readouterr().out
    # The agent's message stays in Chatwoot without a delivery status: the operator must know.
    assert "not delivered" in out and "71" in out


def test_a_sale_erased_twice_never_brings_back_what_came_between_the_two_erasures(bridge):
    meli = bridge.fakes.meli.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    assert bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes").returncode == 0
    meli.add_buyer_message(pack, "entre-as-exclusoes-qx")
    assert bridge.once().returncode == 0
    sales = conversations(bridge, bridge.fakes.messages_inbox)
    assert len(sales) == 1 and contents(bridge, sales[0]) == ["entre-as-exclusoes-qx"]

    # The buyer asks again: the second erasure must cover the message mirrored in between.
    assert bridge.cli("forget-buyer", str(BUYER), "--chatwoot", "--yes").returncode == 0
    assert not conversations(bridge, bridge.fakes.messages_inbox)
    meli.add_buyer_message(pack, "depois-da-segunda-qx")
    assert bridge.once().returncode == 0
    sales = conversations(bridge, bridge.fakes.messages_inbox)
    assert len(sales) == 1 and contents(bridge, sales[0]) == ["depois-da-segunda-qx"]


def test_forget_buyer_tells_a_reply_being_sent_apart_from_one_that_never_left(monkeypatch, settings, db, capsys):
    sale_rows(db, "505", "45", 43, 1.0)
    reply_id = db.replies.accept(chatwoot_message_id=72, conversation_id=505, kind="message", target_id="505",
                                 parts=[{"text": "saindo agora"}], now=1.0)
    assert db.replies.claim(reply_id, 2.0, lease=60.0)  # the outbox is sending it
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "45", False, True) == 0
    out = capsys.readouterr().out
    assert "72" in out and "may or may not have reached the buyer" in out and "never reach" not in out


def test_a_sale_pruned_started_afresh_and_pruned_again_keeps_its_mark_on_the_newest_message(db):
    db.watermarks.record_thread("802", "y1", 1000.0, read_at=1.0)
    sale_rows(db, "802", "46", 47, 1.0)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.watermarks.get("pack", "802")["last_message_at"] == 1000.0
    # The buyer wrote again: a fresh conversation, handled up to the new message.
    sale_rows(db, "802", "46", 47, 101 * DAY, messages=("y2",))
    db.watermarks.record_thread("802", "y2", 101 * DAY, read_at=101 * DAY)
    db.privacy.apply_retention(now=200 * DAY, days=90)
    assert db.links.get("pack", "802") is None
    mark = db.watermarks.get("pack", "802")
    assert (mark["last_message_id"], mark["last_message_at"]) == ("y2", 101 * DAY)


def test_forget_buyer_names_a_failed_reply_whose_agent_was_not_told_yet(monkeypatch, settings, db, capsys):
    sale_rows(db, "509", "47", 51, 1.0)
    # Refused at acceptance: stored failed, its mark and note shown by the next outbox run.
    db.replies.accept(chatwoot_message_id=73, conversation_id=509, kind="message", target_id="509", parts=[],
                      now=1.0, error="caracteres não aceitos", note="reescreva")
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "47", False, True) == 0
    out = capsys.readouterr().out
    # Erased with the rest, it is never shown failed: the agent would believe it went.
    assert "73" in out and "did not reach the buyer" in out


def test_forget_buyer_names_a_reply_the_listener_accepted_while_the_erasure_began(monkeypatch, settings, db, capsys):
    sale_rows(db, "510", "48", 52, 1.0)
    erase = db.privacy.forget_buyer

    def accepted_meanwhile(*args, **kwargs):
        db.replies.accept(chatwoot_message_id=74, conversation_id=510, kind="message", target_id="510",
                          parts=[{"text": "chegou agora"}], now=2.0)
        return erase(*args, **kwargs)

    monkeypatch.setattr(db.privacy, "forget_buyer", accepted_meanwhile)
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "48", False, True) == 0
    out = capsys.readouterr().out
    assert "74" in out and "never reach" in out
    assert db.replies.by_message(74) is None


def test_forgetting_a_buyer_leaves_another_buyers_waiting_notifications_whose_ids_look_alike(db):
    sale_rows(db, "5100002", "5100003", 53, 1.0, messages=("e1",))
    # Another buyer's claim and question whose ids are the erased buyer's id and sale id: different things.
    db.notifications.record("n-claim", "claims", "/post-purchase/v1/claims/5100003", 1.0)
    db.notifications.record("n-question", "questions", "/questions/5100002", 1.0)
    db.notifications.record("n-message", "messages", "e1", 1.0)  # the erased sale's own message
    db.privacy.forget_buyer("5100003", 2.0)
    assert db.notifications.get("n-message") is None
    assert db.notifications.get("n-claim") is not None and db.notifications.get("n-question") is not None


def test_the_erasure_knows_each_notified_resource_as_the_listener_records_it():
    from bridge.store import privacy
    from bridge.sync import notifications
    assert privacy.NOTIFIED["question"] == (notifications.CANONICAL["questions"],)
    assert privacy.NOTIFIED["claim"] == (notifications.CANONICAL["claims"],)
    assert notifications.CANONICAL["messages"] in privacy.NOTIFIED_MESSAGE


def test_forget_buyer_names_a_delivered_reply_whose_agent_was_not_shown_it_yet(monkeypatch, settings, db, capsys):
    sale_rows(db, "511", "49", 54, 1.0)
    reply_id = db.replies.accept(chatwoot_message_id=75, conversation_id=511, kind="message", target_id="511",
                                 parts=[{"text": "foi"}], now=1.0)
    assert db.replies.claim(reply_id, 2.0, lease=60.0) and db.replies.mark_delivered(reply_id, 3.0)
    assert forget_cli(monkeypatch, settings, db, RecordingChatwoot(), "49", False, True) == 0
    out = capsys.readouterr().out
    assert "75" in out and "they reached the buyer" in out


def test_a_poll_between_the_chatwoot_deletions_and_the_erasure_does_not_make_the_buyer_again(bridge, monkeypatch):
    """`forget-buyer --chatwoot` deletes in Chatwoot first; a poll running before the bridge's rows
    go (a buyer message on the sale arrived) must not make a new contact and conversation there,
    which the erasure would then leave behind, unremembered."""
    chatwoot = bridge.fakes.chatwoot.state
    pack = two_buyers(bridge)
    assert bridge.once().returncode == 0
    bridge.fakes.meli.state.add_buyer_message(pack, "durante-a-exclusao-qx")
    opened = main.open_services
    polled = []

    def with_a_poll_after_the_contact_goes(settings):
        s = opened(settings)
        delete = s.chatwoot.delete_contact

        def delete_then_poll(contact_id):
            delete(contact_id)
            polled.append(bridge.once())  # the poller, beside the command
        s.chatwoot.delete_contact = delete_then_poll
        return s

    monkeypatch.setattr(main, "open_services", with_a_poll_after_the_contact_goes)
    assert main.cmd_forget_buyer(load_settings(bridge.env), str(BUYER), True, True) == 0
    assert b"being erased" in polled[0].stderr  # the sale waits for the erasure to end
    assert not [c for c in chatwoot.contacts.values() if c["identifier"] == f"meli:buyer:{BUYER}"]
    assert not conversations(bridge, bridge.fakes.messages_inbox)
    # Afterwards, the message that came meanwhile starts fresh, as any later one would.
    assert bridge.once().returncode == 0
    sales = conversations(bridge, bridge.fakes.messages_inbox)
    assert len(sales) == 1 and contents(bridge, sales[0]) == ["durante-a-exclusao-qx"]


def test_the_hold_of_an_erasure_that_stopped_midway_lapses_and_is_removed_by_retention(db):
    db.privacy.begin_erasure("77", 1.0)
    assert db.privacy.being_erased("77", 2.0)
    assert not db.privacy.being_erased("77", 1.0 + 3601)
    db.privacy.apply_retention(now=1.0 + 3601, days=90)
    assert db.links.get("erasing", "77") is None


def test_retention_keeps_a_message_create_in_doubt_of_a_sale_it_keeps(db):
    """A message create whose answer was lost leaves an intent row, found by its conversation, not its
    sale (the sale's id is written once the create is confirmed). While the sale stays, the next attempt
    must find that row and look in Chatwoot before creating again, or the buyer's message is shown twice."""
    sale_rows(db, "604", "34", 44, 1.0, messages=("f1",))
    db.replies.accept(chatwoot_message_id=8, conversation_id=604, kind="message", target_id="604",
                      parts=[{"text": "ainda na fila"}], now=1.0)
    db.links.record_intent("message", "f2", 1.0, conversation_id=604)
    db.privacy.apply_retention(now=100 * DAY, days=90)
    assert db.links.get("pack", "604") is not None
    assert db.links.get("message", "f2") is not None
