"""The README and the seller's guide state facts the code owns; these keep them from drifting."""

import re

import main
from config import Settings
from tests.e2e import ROOT

README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "guia.md").read_text()


def _defaults() -> Settings:
    return Settings(meli_app_id=1, meli_secret_key="k", chatwoot_url="https://c", chatwoot_api_token="t",
                    chatwoot_account_id=1, chatwoot_questions_inbox_id=1, chatwoot_messages_inbox_id=2)


def test_the_readme_job_table_is_the_poller_job_table():
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", README, re.M)
    table = main.job_table(_defaults())
    assert [name for name, _ in rows] == [name for name, _func, _interval in table]
    for (_name, every), (_n, _f, interval) in zip(rows, table, strict=True):
        assert f"{interval:g} s" in every


def test_the_guide_names_every_job():
    for name, _func, _interval in main.job_table(_defaults()):
        assert f"`{name}`" in GUIDE


def test_the_guide_shows_the_poller_start_line_as_the_poller_writes_it():
    s = _defaults()
    line = (f"poller started: questions every {s.questions_poll_seconds}s, messages every "
            f"{s.messages_poll_seconds}s, outbox every {main.OUTBOX_INTERVAL}s")
    assert f"`{line}`" in GUIDE


def test_the_guide_names_exactly_the_loggers_the_code_uses():
    used = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("bridge/**/*.py")]:
        used.update(re.findall(r'getLogger\("(bridge\.[a-z_]+)"\)', path.read_text()))
    assert used
    assert set(re.findall(r"`(bridge\.[a-z_]+)`", GUIDE)) == used
    assert set(re.findall(r"`(bridge\.[a-z_]+)`", README)) <= used
