"""Test hooks (BRIDGE_CRASH_AT, BRIDGE_HTTP_READ_TIMEOUT, …) act only in the test suite."""

import signal

from bridge import testhooks


def test_a_hook_acts_only_beside_the_test_marker():
    assert testhooks.value("BRIDGE_CRASH_AT", {"BRIDGE_CRASH_AT": "answer_posted"}) is None
    assert testhooks.number("BRIDGE_HTTP_READ_TIMEOUT", 30.0, {"BRIDGE_HTTP_READ_TIMEOUT": "2"}) == 30.0
    marked = {"BRIDGE_TEST_HOOKS": "1", "BRIDGE_CRASH_AT": "answer_posted", "BRIDGE_HTTP_READ_TIMEOUT": "2"}
    assert testhooks.value("BRIDGE_CRASH_AT", marked) == "answer_posted"
    assert testhooks.number("BRIDGE_HTTP_READ_TIMEOUT", 30.0, marked) == 2.0
    assert testhooks.ignored({"BRIDGE_CRASH_AT": "x", "LOG_LEVEL": "INFO"}) == ["BRIDGE_CRASH_AT"]
    assert testhooks.ignored(marked) == []


def _question(meli):
    meli.add_user(9100, "COMPRADOR9100")
    meli.add_item("MLB100", "Caneca")
    return meli.add_question(item_id="MLB100", buyer_id=9100, text="Tem em azul?")["id"]


def test_a_crash_window_left_in_a_production_environment_is_ignored_with_one_warning(bridge):
    _question(bridge.fakes.meli.state)
    bridge.env.pop("BRIDGE_TEST_HOOKS")
    bridge.env["BRIDGE_CRASH_AT"] = "conversation_created"
    result = bridge.once()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.decode().count("test hooks ignored (BRIDGE_CRASH_AT)") == 1
    assert len(bridge.fakes.chatwoot.state.conversations) == 1


def test_the_test_suite_still_crashes_in_the_window_it_names(bridge):
    _question(bridge.fakes.meli.state)
    bridge.env["BRIDGE_CRASH_AT"] = "conversation_created"
    assert bridge.once().returncode == -signal.SIGKILL
