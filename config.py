"""Settings of the bridge, read once from the environment (and `.env`).

`load_settings()` collects every problem instead of stopping at the first, so an
operator fixes a broken deployment in one go; `settings_or_exit()` prints them one
per line and exits 2, without a traceback and without echoing any secret value.

In the container (`BRIDGE_WAIT_FOR_CONFIG=1`, set by the Dockerfile) the two long-running
processes use `settings_or_wait()` instead: the first deploy happens before `setup` has
printed the inbox ids, and a process that exits makes the platform restart the container
under the seller's console. They start with what is usable and report the problems.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from cryptography.fernet import Fernet
from dotenv import load_dotenv

DEFAULT_DATABASE_PATH = "data/meli_chatwoot.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRUE_WORDS = ("1", "true", "yes", "on")
WAIT_FOR_CONFIG = "BRIDGE_WAIT_FOR_CONFIG"
# Example values people leave in place; accepted as secrets they would sign or
# authenticate with something anyone can guess.
PLACEHOLDER_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "secret", "your-secret", "your_secret", "yoursecret",
    "my-secret", "mysecret", "your-app-secret", "your-access-token", "a-long-random-secret",
    "secret-one", "secret-two", "password", "token", "example", "placeholder", "xxx", "todo", "...",
})
FALSE_WORDS = ("0", "false", "no", "off", "")


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


MIN_RETENTION_DAYS = 7
DEFAULT_DISPLAY_TIMEZONE = "America/Sao_Paulo"


def known_zone(name: str) -> bool:
    """An IANA time zone this machine can convert to (the image carries the tzdata package)."""
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # not found, a malformed key, a path that is no zone file
        return False
    return True


@dataclass(frozen=True)
class Settings:
    meli_app_id: int | None
    meli_secret_key: str | None = field(repr=False)
    chatwoot_url: str
    chatwoot_api_token: str = field(repr=False)
    chatwoot_account_id: int
    chatwoot_questions_inbox_id: int | None
    chatwoot_messages_inbox_id: int | None
    chatwoot_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    meli_redirect_uri: str | None = None
    meli_refresh_token: str | None = field(default=None, repr=False)
    meli_access_token: str | None = field(default=None, repr=False)
    meli_user_id: int | None = None
    meli_site_id: str = "MLB"
    meli_api_url: str = "https://api.mercadolibre.com"
    meli_auth_url: str = "https://auth.mercadolivre.com.br"
    meli_use_pkce: bool = False
    # Optional: unset, claims stay off and deployments made before claims keep working unchanged.
    chatwoot_claims_inbox_id: int | None = None
    database_path: str = DEFAULT_DATABASE_PATH
    port: int = 5000
    questions_poll_seconds: float = 120.0
    messages_poll_seconds: float = 180.0
    log_level: str = "INFO"
    meli_get_per_minute: float = 500.0
    meli_post_per_minute: float = 500.0
    chatwoot_per_minute: float = 3000.0
    retention_days: int = 90
    display_timezone: str = DEFAULT_DISPLAY_TIMEZONE
    # Fernet keys: the first encrypts the stored tokens, every one decrypts (rotation). Empty: plain text.
    token_encryption_keys: tuple[str, ...] = field(default=(), repr=False)

    def secrets(self) -> list[str]:
        """Every configured value that must never reach a log line."""
        values = [
            self.meli_secret_key,
            self.chatwoot_api_token,
            self.meli_refresh_token,
            self.meli_access_token,
            *self.chatwoot_webhook_secrets,
            *self.token_encryption_keys,
        ]
        return [v for v in values if v]


class _Reader:
    """Reads and validates variables, collecting problems instead of raising."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def _problem(self, name: str, what: str, example: str) -> None:
        self.problems.append(f"{name}: {what} (example: {name}={example})")

    def _value(self, name: str, required: bool, example: str) -> str | None:
        value = self._raw(name)
        if value is None and required:
            self._problem(name, "is required but not set", example)
        return value

    def text(self, name: str, *, required: bool, example: str, default: str | None = None):
        value = self._value(name, required, example)
        return default if value is None else value

    def positive_int(self, name: str, *, required: bool, example: str, default: int | None = None):
        value = self._value(name, required, example)
        if value is None:
            return default
        if not value.isdigit() or int(value) <= 0:
            self._problem(name, "must be a positive whole number", example)
            return default
        return int(value)

    def positive_float(self, name: str, *, example: str, default: float):
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number > 0 or number == float("inf"):
            self._problem(name, "must be a positive number", example)
            return default
        return number

    def url(self, name: str, *, required: bool, example: str, default: str | None = None):
        value = self._value(name, required, example)
        if value is None:
            return default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self._problem(name, "must be an http(s) URL", example)
            return default
        return value.rstrip("/")

    def boolean(self, name: str, *, example: str, default: bool):
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        self._problem(name, "must be true or false", example)
        return default

    def secret(self, name: str, *, required: bool, example: str):
        # Never include the value in a problem: it may be a real secret pasted wrongly.
        value = self._value(name, required, example)
        if value is not None and is_placeholder(value):
            # Where the value is optional (`setup` before the Mercado Livre app exists), the
            # untouched .env.example line means "not set yet".
            if required:
                self._problem(name, "still holds an example value, not a real secret", example)
            return None
        return value


def is_placeholder(value: str) -> bool:
    value = value.strip()
    return value.lower() in PLACEHOLDER_SECRETS or (value.startswith("<") and value.endswith(">"))


def load_settings(env: Mapping[str, str] | None = None, *, require_webhook_secret: bool = False,
                  require_redirect_uri: bool = False, require_inboxes: bool = True) -> Settings:
    """Build settings from `env` (default: os.environ after loading `.env`).

    Raises ConfigError listing every problem found.
    """
    values, problems = _read(env, require_webhook_secret=require_webhook_secret,
                             require_redirect_uri=require_redirect_uri, require_inboxes=require_inboxes)
    if problems:
        raise ConfigError(problems)
    return Settings(**values)


def load_settings_leniently(env: Mapping[str, str] | None = None, **requirements) -> tuple[Settings, list[str]]:
    """Settings holding every usable value (None or the default where a value is missing
    or malformed), and the problems `load_settings` would have raised."""
    values, problems = _read(env, **requirements)
    return Settings(**values), problems


def problem_names(problems: list[str]) -> list[str]:
    """The variable each problem line is about, in order, once each."""
    names: list[str] = []
    for problem in problems:
        name = problem.split(":", 1)[0]
        if name not in names:
            names.append(name)
    return names


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    if env is None:
        load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
        env = os.environ
    return env


def _read(env: Mapping[str, str] | None, *, require_webhook_secret: bool = False,
          require_redirect_uri: bool = False, require_inboxes: bool = True) -> tuple[dict, list[str]]:
    r = _Reader(_environment(env))

    secrets_raw = r._value("CHATWOOT_WEBHOOK_SECRET", require_webhook_secret, "a-long-random-secret")
    webhook_secrets = tuple(s.strip() for s in (secrets_raw or "").split(",") if s.strip())
    if secrets_raw and not webhook_secrets:
        r._problem("CHATWOOT_WEBHOOK_SECRET", "holds no secret, only commas",
                   "secret-one,secret-two")
    if require_webhook_secret and any(is_placeholder(s) for s in webhook_secrets):
        # The listener would accept deliveries signed with a value printed in .env.example.
        r._problem("CHATWOOT_WEBHOOK_SECRET", "still holds an example value, not a real secret "
                   "(./bridge.sh setup prints the real one)", "a-long-random-secret")
    webhook_secrets = tuple(s for s in webhook_secrets if not is_placeholder(s))

    log_level = (r.text("LOG_LEVEL", required=False, example="INFO", default="INFO") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        r._problem("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}", "INFO")
        log_level = "INFO"

    site_id = r.text("MELI_SITE_ID", required=False, example="MLB", default="MLB")
    if not (site_id.isalpha() and len(site_id) == 3):
        r._problem("MELI_SITE_ID", "must be a three-letter site id", "MLB")

    port = r.positive_int("PORT", required=False, example="5000", default=5000)
    if port > 65535:
        r._problem("PORT", "must be a TCP port between 1 and 65535", "5000")

    display_timezone = r.text("DISPLAY_TIMEZONE", required=False, example=DEFAULT_DISPLAY_TIMEZONE,
                              default=DEFAULT_DISPLAY_TIMEZONE) or DEFAULT_DISPLAY_TIMEZONE
    if not known_zone(display_timezone):
        r._problem("DISPLAY_TIMEZONE", "is not a known time zone (an IANA name such as America/Manaus or "
                   "America/Argentina/Buenos_Aires)", DEFAULT_DISPLAY_TIMEZONE)
        display_timezone = DEFAULT_DISPLAY_TIMEZONE

    token_keys = _token_keys(r)

    values = dict(
        meli_app_id=r.positive_int("MELI_APP_ID", required=require_inboxes, example="1234567890123456"),
        meli_secret_key=r.secret("MELI_SECRET_KEY", required=require_inboxes, example="your-app-secret"),
        meli_redirect_uri=r.url("MELI_REDIRECT_URI", required=require_redirect_uri,
                                example="https://bridge.example.com/oauth/callback"),
        meli_refresh_token=r.secret("MELI_REFRESH_TOKEN", required=False, example="TG-..."),
        meli_access_token=r.secret("MELI_ACCESS_TOKEN", required=False, example="APP_USR-..."),
        meli_user_id=r.positive_int("MELI_USER_ID", required=False, example="123456789"),
        meli_site_id=site_id.upper(),
        meli_api_url=r.url("MELI_API_URL", required=False, example="https://api.mercadolibre.com",
                           default="https://api.mercadolibre.com"),
        meli_auth_url=r.url("MELI_AUTH_URL", required=False, example="https://auth.mercadolivre.com.br",
                            default="https://auth.mercadolivre.com.br"),
        meli_use_pkce=r.boolean("MELI_USE_PKCE", example="true", default=False),
        chatwoot_url=r.url("CHATWOOT_URL", required=True, example="https://chat.example.com"),
        chatwoot_api_token=r.secret("CHATWOOT_API_TOKEN", required=True, example="your-access-token"),
        chatwoot_account_id=r.positive_int("CHATWOOT_ACCOUNT_ID", required=True, example="1"),
        # `setup` (require_inboxes=False) runs before the inboxes exist, possibly before the
        # Mercado Livre app: it is what prepares Chatwoot.
        chatwoot_questions_inbox_id=r.positive_int("CHATWOOT_QUESTIONS_INBOX_ID", required=require_inboxes,
                                                   example="3"),
        chatwoot_messages_inbox_id=r.positive_int("CHATWOOT_MESSAGES_INBOX_ID", required=require_inboxes,
                                                  example="4"),
        chatwoot_claims_inbox_id=r.positive_int("CHATWOOT_CLAIMS_INBOX_ID", required=False, example="5"),
        chatwoot_webhook_secrets=webhook_secrets,
        database_path=r.text("DATABASE_PATH", required=False, example="data/meli_chatwoot.db",
                             default=DEFAULT_DATABASE_PATH),
        port=port,
        questions_poll_seconds=r.positive_float("QUESTIONS_POLL_SECONDS", example="120", default=120.0),
        messages_poll_seconds=r.positive_float("MESSAGES_POLL_SECONDS", example="180", default=180.0),
        log_level=log_level,
        meli_get_per_minute=r.positive_float("MELI_GET_PER_MINUTE", example="500", default=500.0),
        meli_post_per_minute=r.positive_float("MELI_POST_PER_MINUTE", example="500", default=500.0),
        chatwoot_per_minute=r.positive_float("CHATWOOT_PER_MINUTE", example="3000", default=3000.0),
        retention_days=r.positive_int("RETENTION_DAYS", required=False, example="90", default=90),
        display_timezone=display_timezone,
        token_encryption_keys=token_keys,
    )
    if values["retention_days"] < MIN_RETENTION_DAYS:
        # A shorter window could prune a sale the buyer is still writing about.
        r._problem("RETENTION_DAYS", f"must be at least {MIN_RETENTION_DAYS} days", "90")
        values["retention_days"] = 90
    q_inbox, m_inbox = values["chatwoot_questions_inbox_id"], values["chatwoot_messages_inbox_id"]
    if q_inbox and q_inbox == m_inbox:
        r._problem("CHATWOOT_MESSAGES_INBOX_ID", "must differ from CHATWOOT_QUESTIONS_INBOX_ID", "4")
    c_inbox = values["chatwoot_claims_inbox_id"]
    if c_inbox and c_inbox in (q_inbox, m_inbox):
        r._problem("CHATWOOT_CLAIMS_INBOX_ID", "must differ from the questions and messages inboxes", "5")
    return values, r.problems


def _token_keys(r: _Reader) -> tuple[str, ...]:
    """TOKEN_ENCRYPTION_KEY: Fernet keys, comma-separated, newest first. The problem line names
    which one is wrong by its position, never by its value."""
    example = "<output of: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'>"
    raw = r._value("TOKEN_ENCRYPTION_KEY", False, example)
    keys = tuple(k.strip() for k in (raw or "").split(",") if k.strip())
    if raw and not keys:
        r._problem("TOKEN_ENCRYPTION_KEY", "holds no key, only commas", example)
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            which = "the key" if len(keys) == 1 else f"key {position} of {len(keys)}"
            r._problem("TOKEN_ENCRYPTION_KEY", f"{which} is not a Fernet key (32 bytes in url-safe base64, "
                       "44 characters ending in =)", example)
            return ()
    return keys


def settings_or_exit(**kwargs) -> Settings:
    """`load_settings`, or one line per problem on stderr and exit code 2."""
    try:
        return load_settings(**kwargs)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def waits_for_config(env: Mapping[str, str] | None = None) -> bool:
    value = (_environment(env).get(WAIT_FOR_CONFIG) or "").strip().lower()
    return value in TRUE_WORDS


def settings_or_wait(**kwargs) -> tuple[Settings, list[str]]:
    """For the long-running processes (poller, listener).

    With BRIDGE_WAIT_FOR_CONFIG set: the usable settings and the list of problems, for
    the caller to report once and wait. Otherwise `settings_or_exit` (no problems).
    """
    if waits_for_config():
        return load_settings_leniently(**kwargs)
    return settings_or_exit(**kwargs), []
