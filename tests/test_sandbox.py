"""The sandbox (tools/sandbox.py) in a real headless Chromium: a seeded question answered from the page.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them); skipped without them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from tests.e2e import _SECRETS, APP_DIR, LOG_DIR, free_port, wait_until
from tools import sandbox as launcher

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the networking flags Chromium tries Google's hosts, which this closed network refuses.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,850")
QUESTION = "Esse fone funciona com iPhone?"
ITEM = "Fone de Ouvido Bluetooth JBL Tune 520BT Preto"
REPLY = "Olá! Funciona sim com iPhone, e a bateria dura até 57 horas."


def missing_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install -y {package}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    return None


@pytest.fixture
def browser(tmp_path, monkeypatch):
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    # The driver is Debian's: Selenium must never try to download one.
    monkeypatch.setattr(SeleniumManager, "binary_paths",
                        lambda *_args, **_kw: pytest.fail("selenium-manager must not run"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


@pytest.fixture
def sandbox():
    """tools/sandbox.py on free ports, polling every second; yields (process, page URL, log path)."""
    chatwoot_port = free_port()
    args = ["--meli-port", str(free_port()), "--chatwoot-port", str(chatwoot_port),
            "--bridge-port", str(free_port()), "--poll-seconds", "1"]
    _SECRETS.update({launcher.WEBHOOK_SECRET, launcher.FAKE_OPTIONS["secret"], launcher.FAKE_OPTIONS["api_token"]})
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"sandbox-{chatwoot_port}.log"  # checked for secrets at the end of the run
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "tools/sandbox.py", *args], cwd=str(APP_DIR), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{chatwoot_port}/sandbox"
    try:
        wait_until(lambda: proc.poll() is not None or f"Abra {url}" in log_path.read_text(errors="replace"),
                   40, 0.1, what="the sandbox to start")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        yield proc, url, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_an_agent_answers_a_seeded_question_from_the_page(browser, sandbox):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proc, url, log_path = sandbox
    # The page re-renders a panel when its data changes: a found element may go stale.
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(url)

    def open_question(driver) -> bool:
        for item in driver.find_elements(By.CSS_SELECTOR, "li.conv"):
            if QUESTION in item.text:
                item.click()
                return True
        return False

    wait.until(open_question)  # the poller brought the seeded question into Chatwoot
    wait.until(lambda d: QUESTION in d.find_element(By.ID, "messages").text)
    browser.find_element(By.ID, "reply").send_keys(REPLY)
    browser.find_element(By.ID, "send").click()

    def delivered_reply(driver):
        for message in driver.find_elements(By.CSS_SELECTOR, "#messages .msg.outgoing"):
            if REPLY in message.text and message.get_attribute("data-status") == "delivered":
                return message.text
        return None

    # Webhook (signed) -> bridge -> fake Mercado Livre -> Chatwoot status, all shown on the page.
    assert "entregue" in wait.until(delivered_reply)
    panel = wait.until(lambda d: REPLY in (text := d.find_element(By.ID, "ml-answers").text) and text)
    assert ITEM in panel
    answers = requests.get(f"{url}/state", timeout=5).json()["meli"]["answers"]
    assert [(a["item"], a["text"]) for a in answers] == [(ITEM, REPLY)]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, log_path.read_text(errors="replace")[-3000:]
