"""One logging setup for both processes: one line per event, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys

from bridge import testhooks

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
# Shapes of credentials we may meet even when they are not configured values
# (tokens received from Mercado Livre, codes in a callback URL).
TOKEN_SHAPES = re.compile(r"(APP_USR-[\w-]+|TG-[\w-]+|(?<=[?&]token=)[^&\s\"]+|(?<=[?&]code=)[^&\s\"]+)")


class RedactSecrets(logging.Filter):
    """Replaces configured secrets and token-shaped strings in every record."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        # Longest first so a secret containing another is fully hidden.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return TOKEN_SHAPES.sub("[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True


def setup_logging(level: str = "INFO", secrets: list[str] | None = None) -> RedactSecrets:
    """Configure the root logger to stderr; returns the filter so more secrets can be added."""
    redactor = RedactSecrets(secrets or [])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter at INFO is noise for an operator; our own loggers carry the events.
    for noisy in ("urllib3", "apscheduler", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    ignored = testhooks.ignored()
    if ignored:
        logging.getLogger("bridge").warning("test hooks ignored (%s): they act only in the test suite, with %s=1; "
                                            "remove them from this environment", ", ".join(ignored), testhooks.ENABLE)
    return redactor
