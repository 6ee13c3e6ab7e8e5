"""Sandbox: the real bridge against local fake Mercado Livre and Chatwoot, with a page to answer buyers.

    .venv/bin/python tools/sandbox.py [--meli-port 8081] [--chatwoot-port 8082] [--bridge-port 5000] [--poll-seconds 5]

Starts both fakes in this process and seeds them (questions and a sale with a buyer message),
registers the bridge's signed webhook on the fake Chatwoot, runs the listener (gunicorn) and
the poller (main.py) as children with an environment built here (a developer's .env is never
used), and serves the page at http://127.0.0.1:<chatwoot-port>/sandbox. Ctrl-C or SIGTERM stops
everything and removes the sandbox's database. Every value is fake; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

# The sandbox lives in tools/ and runs the bridge from the repository root beside it.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes import MeliState, start_fakes  # noqa: E402

VENV_BIN = Path(sys.executable).parent
WEBHOOK_SECRET = "whsec-sandbox-falso"
FAKE_OPTIONS = {"secret": "meli-secret-sandbox", "seller_nickname": "LOJA_SANDBOX",
                "api_token": "cw-token-sandbox", "account_name": "Loja Sandbox"}


def seed(meli: MeliState) -> None:
    """Three buyers' questions, one sale whose buyer already wrote, and a claim (reclamação) on another sale."""
    meli.add_user(4101, "MARIANA.SOUZA82")
    meli.add_user(4102, "JOAOPEDRO_RJ")
    meli.add_user(4103, "CLAUDIAFM")
    meli.add_item("MLB3412345678", "Fone de Ouvido Bluetooth JBL Tune 520BT Preto", 249.9)
    meli.add_item("MLB3498765432", "Panela de Pressão Elétrica Mondial 5L Inox", 389.0)
    meli.add_item("MLB3455554444", "Kit 3 Camisetas Básicas Algodão Masculinas", 89.9)
    meli.add_question(item_id="MLB3412345678", buyer_id=4101,
                      text="Boa tarde! Esse fone funciona com iPhone? A bateria dura quanto tempo mais ou menos?")
    meli.add_question(item_id="MLB3498765432", buyer_id=4102,
                      text="Olá, a panela é 110V ou 220V? Moro em Recife e aqui é 220.")
    meli.add_question(item_id="MLB3455554444", buyer_id=4103,
                      text="Vocês têm o kit no tamanho GG? Preciso que chegue até sexta em Campinas.")
    meli.add_order(2000009876543210, 4102, "JOAOPEDRO_RJ",
                   items=[("MLB3412345678", "Fone de Ouvido Bluetooth JBL Tune 520BT Preto", 1, 249.9)])
    meli.add_buyer_message("2000009876543210", "Oi, boa noite! Comprei o fone ontem mas ainda não apareceu o código "
                                               "de rastreio. Consegue me passar a previsão de entrega?")
    meli.add_order(2000009876543211, 4103, "CLAUDIAFM",
                   items=[("MLB3455554444", "Kit 3 Camisetas Básicas Algodão Masculinas", 1, 89.9)])
    meli.add_claim(5000000123, 2000009876543211, reason_id="PDD9939", due_in_hours=20)
    meli.add_claim_message(5000000123, "complainant", "Recebi o kit com uma camiseta tamanho M, mas pedi tudo GG. "
                                                      "Quero trocar ou o dinheiro de volta.")


def meli_panel(meli: MeliState) -> Callable[[], dict]:
    """What the fake Mercado Livre received from the bridge, newest first, for the page."""
    def panel() -> dict:
        with meli.lock:
            answers = [{"question_id": qid, "text": text,
                        "item": meli.items.get(meli.questions[qid]["item_id"], {}).get("title", "")}
                       for qid, text in reversed(meli.answers_posted)]
            messages = [{"pack_id": m["pack_id"], "text": m.get("text") or "",
                         "attachments": len(m.get("attachments") or [])} for m in reversed(meli.sent_messages)]
            to = {"complainant": "comprador", "mediator": "mediação"}
            messages += [{"label": f"Reclamação {m['claim_id']} → {to.get(m.get('receiver_role'), '?')}",
                          "text": m.get("message") or "", "attachments": len(m.get("attachments") or [])}
                         for m in reversed(meli.claim_sent)]
        return {"answers": answers, "messages": messages}
    return panel


def documented_variables() -> set[str]:
    """Every variable named in .env.example."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def bridge_env(fakes, inboxes: tuple[int, ...], bridge_port: int, data_dir: Path, poll_seconds: float) -> dict:
    meli, chatwoot = fakes.meli.state, fakes.chatwoot.state
    access, refresh = meli.seed_tokens()
    # python-dotenv never overrides a variable that is set, even empty: setting every documented
    # one (empty means "default") keeps a developer's .env out of the sandbox.
    env = {name: "" for name in documented_variables()}
    env.update({
        "MELI_APP_ID": str(meli.app_id),
        "MELI_SECRET_KEY": meli.secret,
        "MELI_REDIRECT_URI": f"http://127.0.0.1:{bridge_port}/oauth/callback",
        "MELI_ACCESS_TOKEN": access,
        "MELI_REFRESH_TOKEN": refresh,
        "MELI_USER_ID": str(meli.seller_id),
        "MELI_API_URL": fakes.meli.url,
        "MELI_AUTH_URL": fakes.meli.url,
        "CHATWOOT_URL": fakes.chatwoot.url,
        "CHATWOOT_API_TOKEN": chatwoot.api_token,
        "CHATWOOT_ACCOUNT_ID": str(chatwoot.account_id),
        "CHATWOOT_QUESTIONS_INBOX_ID": str(inboxes[0]),
        "CHATWOOT_MESSAGES_INBOX_ID": str(inboxes[1]),
        "CHATWOOT_CLAIMS_INBOX_ID": str(inboxes[2]) if len(inboxes) > 2 else "",
        "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DATABASE_PATH": str(data_dir / "meli_chatwoot.db"),
        "PORT": str(bridge_port),
        "QUESTIONS_POLL_SECONDS": str(poll_seconds),
        "MESSAGES_POLL_SECONDS": str(poll_seconds),
        "LOG_LEVEL": "INFO",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", str(data_dir)),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_child(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    # Own session: Ctrl-C reaches only this launcher, which then stops the children in order.
    # The sandbox's own folder as working directory: config.py loads `.env` from there, and a
    # developer's .env in the repository must not reach the sandbox.
    return subprocess.Popen(args, cwd=str(cwd), env=env, start_new_session=True)


def stop_children(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whatever is left in its session (gunicorn workers)
        except ProcessLookupError:
            pass
        child.wait()


def wait_for_bridge(url: str, children: list[subprocess.Popen], done: threading.Event, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done.is_set() or any(child.poll() is not None for child in children):
            return False
        try:
            if requests.get(f"{url}/health", timeout=1).status_code in (200, 503):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/sandbox.py", description=__doc__.splitlines()[0])
    parser.add_argument("--meli-port", type=int, default=8081, help="fake Mercado Livre (default 8081)")
    parser.add_argument("--chatwoot-port", type=int, default=8082, help="fake Chatwoot and the page (default 8082)")
    parser.add_argument("--bridge-port", type=int, default=5000, help="the bridge's listener (default 5000)")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="questions and sales poll interval")
    args = parser.parse_args(argv)

    flags = {"--meli-port": args.meli_port, "--chatwoot-port": args.chatwoot_port, "--bridge-port": args.bridge_port}
    busy = [f"a porta {port} está em uso (escolha outra com {flag})" for flag, port in flags.items()
            if port_in_use(port)]
    if busy:
        print("sandbox: " + "; ".join(busy), file=sys.stderr)
        return 2

    fakes = start_fakes(meli_port=args.meli_port, chatwoot_port=args.chatwoot_port, **FAKE_OPTIONS)
    meli, chatwoot = fakes.meli.state, fakes.chatwoot.state
    inboxes = (chatwoot.add_inbox("Mercado Livre - Perguntas"), chatwoot.add_inbox("Mercado Livre - Vendas"),
               chatwoot.add_inbox("Mercado Livre - Reclamações"))
    seed(meli)
    chatwoot.sandbox_meli = meli_panel(meli)
    bridge_url = f"http://127.0.0.1:{args.bridge_port}"
    chatwoot.add_webhook(f"{bridge_url}/webhook", WEBHOOK_SECRET)

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    data_dir = Path(tempfile.mkdtemp(prefix="meli-chatwoot-sandbox-"))
    env = bridge_env(fakes, inboxes, args.bridge_port, data_dir, args.poll_seconds)
    gunicorn = VENV_BIN / "gunicorn"
    children = [
        start_child([str(gunicorn) if gunicorn.exists() else "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                     "--bind", f"127.0.0.1:{args.bridge_port}", "webhook_server:app"], env, data_dir),
        start_child([sys.executable, str(ROOT / "main.py")], env, data_dir),
    ]

    code = 0
    if wait_for_bridge(bridge_url, children, done):
        print(f"sandbox: Mercado Livre falso em {fakes.meli.url}, Chatwoot falso em {fakes.chatwoot.url}, "
              f"ponte em {bridge_url}", flush=True)
        print(f"Abra {fakes.chatwoot.url}/sandbox", flush=True)
        print("(Ctrl-C para parar)", flush=True)
        while not done.wait(0.5):
            if any(child.poll() is not None for child in children):
                print("sandbox: um processo da ponte parou; veja o log acima", file=sys.stderr, flush=True)
                code = 1
                break
    elif not done.is_set():
        print("sandbox: a ponte não respondeu em /health; veja o log acima", file=sys.stderr, flush=True)
        code = 1
    print("sandbox: parando…", flush=True)
    stop_children(children)
    fakes.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
