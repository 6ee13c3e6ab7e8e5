"""gunicorn settings for the listener (`gunicorn webhook_server:app` reads this file)."""

import os
import sys

# gunicorn reads this file before it puts the working directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from config import settings_or_wait  # noqa: E402

# Validate the whole environment before binding: a bad variable stops here with one line.
# In the container (BRIDGE_WAIT_FOR_CONFIG) the listener starts anyway and the app reports
# the problems once, on /health and in the log.
_settings, _problems = settings_or_wait(require_webhook_secret=True)

bind = f"0.0.0.0:{_settings.port}"
workers = 4
worker_class = "gthread"
threads = 2
timeout = 30
graceful_timeout = 8
# The app (and its migrations) is built once in the master; a bad database path then
# stops gunicorn with one line instead of a loop of failing workers.
preload_app = True
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
# %(U)s is the path WITHOUT the query string: `?token=` and `?code=` never reach a log.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)sB %(M)sms'
