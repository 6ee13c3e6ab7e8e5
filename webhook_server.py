"""The listener: Chatwoot webhooks in, Mercado Livre notifications in, /health, OAuth callback.

Nothing here waits for Mercado Livre while Chatwoot waits for an answer: an accepted
reply is committed to the outbox and acknowledged; the poller delivers it.
`gunicorn webhook_server:app` builds the app on first access (module __getattr__), so
tests can import this module and call `create_app(settings)` without an environment.
"""

from __future__ import annotations

import html
import json
import logging
import sqlite3
import time
from typing import Any, Callable, Sequence

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bridge.admin import health
from bridge.http import ApiError
from bridge.logging import setup_logging
from bridge.replies import accept
from bridge.signature import token_matches, verify_signature
from bridge.sync import notifications
from config import Settings, problem_names, settings_or_wait
from db_manager import Database, DatabaseError
from mercado_livre_api import AuthorizationRefused, MeliClient

log = logging.getLogger("bridge.listener")

MAX_BODY = 1024 * 1024
# What each route cannot work without. While the container waits for its configuration
# (BRIDGE_WAIT_FOR_CONFIG), a route whose variables are all usable is served as usual.
ROUTE_NEEDS = {
    "webhook": ("CHATWOOT_WEBHOOK_SECRET", "CHATWOOT_QUESTIONS_INBOX_ID", "CHATWOOT_MESSAGES_INBOX_ID",
                "CHATWOOT_URL"),
    "notifications": ("MELI_APP_ID", "MELI_USER_ID"),
    "oauth_callback": ("MELI_APP_ID", "MELI_SECRET_KEY", "MELI_REDIRECT_URI", "MELI_AUTH_URL", "MELI_API_URL",
                       "MELI_USER_ID"),
}


def parse_object(raw: bytes) -> tuple[dict, str | None]:
    """A request body as a JSON object, or why it is not one (bad input: a 400, never a 500)."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}, "body is not valid JSON"
    except RecursionError:
        return {}, "body is nested too deeply"
    if not isinstance(payload, dict):
        return {}, "body is not a JSON object"
    try:
        # A lone surrogate ("\ud800") parses but cannot be stored, logged or sent anywhere.
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return {}, "body has text that is not valid Unicode"
    except RecursionError:
        return {}, "body is nested too deeply"
    return payload, None


def read_body() -> bytes | None:
    """The request's body, or None when it is over MAX_BODY (a 413, not "not valid JSON").

    A chunked body has no Content-Length, and gunicorn says it ends the stream itself
    (`wsgi.input_terminated`): Werkzeug then reads it up to the app's limit and silently stops
    there. So the app's limit is one byte more than ours, and a body that reaches it is too long.
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        return None
    raw = request.get_data(cache=False)
    return None if len(raw) > MAX_BODY else raw


def _id_or_dash(value) -> Any:
    return value if type(value) is int else "-"


def create_app(settings: Settings | None = None, *, db: Database | None = None,
               clock: Callable[[], float] = time.time, problems: Sequence[str] = ()) -> Flask:
    """The listener. `problems`: what is wrong with `settings` (only while the container
    waits for its configuration); /health then answers 503 naming the variables."""
    if settings is None:
        settings, problems = settings_or_wait(require_webhook_secret=True)
        setup_logging(settings.log_level, settings.secrets())
        for problem in problems:
            log.error("configuration error: %s", problem)
        if problems:
            log.error("listener waiting for its configuration: /health answers 503 until the variables above "
                      "are set and the container restarted")
    missing = problem_names(list(problems))
    if db is None:
        try:
            db = Database(settings.database_path, settings.token_encryption_keys).open()
        except DatabaseError as exc:
            print(f"database error: {exc}", flush=True)
            raise SystemExit(2) from None
    meli = MeliClient(settings, db, clock=clock)
    meli.seed_tokens()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY + 1  # see read_body
    started = clock()  # a poller started with the listener has beaten well before it counts as missing
    app.extensions["bridge"] = {"settings": settings, "db": db, "meli": meli}

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        return jsonify(status="error", reason="body over 1 MB"), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(status="error", reason=exc.name), exc.code

    @app.errorhandler(sqlite3.Error)
    def database_busy(exc):
        # Not bad input: the state file is unusable right now. Chatwoot marks the
        # message failed, so the agent sees it instead of it vanishing.
        log.error("database error while handling %s: %s", request.path, exc)
        return jsonify(status="error", reason="database unavailable"), 503

    def unavailable(route: str):
        """503 naming the variables a route lacks, or None when it can run."""
        lacking = [name for name in missing if name in ROUTE_NEEDS[route]]
        if not lacking:
            return None
        return jsonify(status="error", reason="configuration incomplete", missing=lacking), 503

    @app.post("/webhook")
    def webhook():
        started = time.monotonic()
        if (answer := unavailable("webhook")) is not None:
            # Chatwoot marks the agent's message failed (inbox webhook): seen, not lost.
            log.warning("webhook refused: configuration incomplete (delivery %s)",
                        request.headers.get("X-Chatwoot-Delivery", "-"))
            return answer
        raw = read_body()
        if raw is None:
            return too_large(None)
        if "X-Chatwoot-Signature" in request.headers or "X-Chatwoot-Timestamp" in request.headers:
            ok, reason = verify_signature(raw, request.headers, settings.chatwoot_webhook_secrets, clock())
        else:
            ok = token_matches(request.args.get("token"), settings.chatwoot_webhook_secrets)
            reason = "ok" if ok else "missing signature"
        if not ok:
            log.warning("webhook refused: %s (delivery %s)", reason, request.headers.get("X-Chatwoot-Delivery", "-"))
            return Response("unauthorized\n", status=401, mimetype="text/plain")
        payload, problem = parse_object(raw)
        if problem:
            return jsonify(status="error", reason=problem), 400
        status, code, extra = accept.accept_webhook(payload, settings, db, clock())
        conversation = payload.get("conversation")
        # Ids only when they are ids: a bad body must not put its contents into the log.
        log.info("webhook %s message=%s conversation=%s %s in %dms", status, _id_or_dash(payload.get("id")),
                 _id_or_dash(conversation.get("id") if isinstance(conversation, dict) else None),
                 " ".join(f"{k}={v}" for k, v in extra.items()), (time.monotonic() - started) * 1000)
        return jsonify(status=status, **extra), code

    @app.post("/notifications")
    def notifications_route():
        if (answer := unavailable("notifications")) is not None:
            return answer
        raw = read_body()
        if raw is None:
            return too_large(None)
        payload, problem = parse_object(raw)
        if problem:
            return jsonify(status="error", reason=problem), 400
        status, code, extra = notifications.accept(payload, settings, db, clock())
        return jsonify(status=status, **extra), code

    @app.get("/oauth/callback")
    def oauth_callback():
        if unavailable("oauth_callback") is not None:
            lacking = ", ".join(n for n in missing if n in ROUTE_NEEDS["oauth_callback"])
            return _page("Configuração incompleta",
                         f"Faltam variáveis do Mercado Livre: <code>{html.escape(lacking)}</code>. "
                         "Preencha, reinicie a ponte e rode <code>./bridge.sh authorize</code> de novo."), 503
        if request.args.get("error"):
            return _page("Autorização cancelada",
                         "O Mercado Livre não autorizou o acesso. Rode <code>./bridge.sh authorize</code> "
                         "e tente novamente."), 400
        code, state = request.args.get("code"), request.args.get("state")
        if not code or not state:
            return _page("Link incompleto", "Faltam os parâmetros <code>code</code> e <code>state</code>."), 400
        try:
            who = meli.exchange_code(code, state)
        except AuthorizationRefused as exc:
            log.warning("oauth callback refused: %s", exc)
            return _page("Autorização recusada", html.escape(str(exc))), 400
        except ApiError as exc:
            log.warning("oauth callback failed: %s", exc.short())
            return _page("Mercado Livre indisponível",
                         "Não foi possível concluir a autorização agora. Tente novamente em alguns minutos."), 502
        return _page("Conta autorizada",
                     f"A ponte agora atende a conta <strong>{html.escape(str(who['nickname'] or ''))}</strong> "
                     f"(vendedor {who['user_id']}). Pode fechar esta página.")

    @app.get("/health")
    def health_route():
        report = health.build_status(db, settings, clock(), problems=problems, poller_expected_since=started)
        return jsonify(report), 200 if report["ok"] else 503

    return app


def _page(title: str, body_html: str) -> str:
    return (f"<!doctype html><html lang=\"pt-BR\"><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{html.escape(title)}</h1>"
            f"<p>{body_html}</p></body></html>")


def __getattr__(name: str) -> Any:
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
