"""Run both fakes until Ctrl-C / SIGTERM, for manual runs (e.g. the bridge under supervisord).

    python -m tests.fakes --meli-port 8081 --chatwoot-port 8082 \
        [--webhook-url http://127.0.0.1:5000/webhook --webhook-secret S] [--seed]
"""

from __future__ import annotations

import argparse
import signal
import threading

from . import start_fakes

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def seed_data(meli) -> None:
    """A couple of questions and one sale with a buyer message."""
    meli.add_user(9001, "COMPRADOR_TESTE")
    meli.add_item("MLB100", "Caneca azul", 25.0)
    meli.add_item("MLB101", "Camiseta preta", 59.9)
    meli.add_question(item_id="MLB100", buyer_id=9001, text="Tem na cor vermelha?")
    meli.add_question(item_id="MLB101", buyer_id=9001, text="Qual o tamanho da M?")
    meli.add_order(2000001, 9001, "COMPRADOR_TESTE", items=[("MLB100", "Caneca azul", 2, 25.0)])
    meli.add_buyer_message("2000001", "Olá, a caneca chegou com defeito",
                           attachments=[("defeito.png", PNG, "image/png")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__.splitlines()[0])
    parser.add_argument("--meli-port", type=int, default=8081)
    parser.add_argument("--chatwoot-port", type=int, default=8082)
    parser.add_argument("--webhook-url", help="account webhook (message_created) to deliver to")
    parser.add_argument("--webhook-secret", help="sign deliveries with this secret")
    parser.add_argument("--seed", action="store_true", help="add questions and a sale with a message")
    args = parser.parse_args(argv)

    fakes = start_fakes(meli_port=args.meli_port, chatwoot_port=args.chatwoot_port)
    meli, chatwoot = fakes.meli.state, fakes.chatwoot.state
    questions = chatwoot.add_inbox("Mercado Livre - Perguntas")
    messages = chatwoot.add_inbox("Mercado Livre - Vendas")
    if args.webhook_url:
        chatwoot.add_webhook(args.webhook_url, args.webhook_secret)
    if args.seed:
        seed_data(meli)
    access, refresh = meli.seed_tokens()
    print(f"MELI_API_URL={fakes.meli.url}")
    print(f"MELI_AUTH_URL={fakes.meli.url}")
    print(f"MELI_APP_ID={meli.app_id}")
    print(f"MELI_SECRET_KEY={meli.secret}")
    print(f"MELI_ACCESS_TOKEN={access}")
    print(f"MELI_REFRESH_TOKEN={refresh}")
    print(f"CHATWOOT_URL={fakes.chatwoot.url}")
    print(f"CHATWOOT_API_TOKEN={chatwoot.api_token}")
    print(f"CHATWOOT_ACCOUNT_ID={chatwoot.account_id}")
    print(f"CHATWOOT_QUESTIONS_INBOX_ID={questions}")
    print(f"CHATWOOT_MESSAGES_INBOX_ID={messages}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    fakes.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
