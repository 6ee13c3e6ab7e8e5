FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_PATH=/app/data/meli_chatwoot.db \
    PORT=5000 \
    BRIDGE_WAIT_FOR_CONFIG=1

RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --home-dir /app --shell /usr/sbin/nologin bridge

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# Code belongs to root and is read-only for the service user; only /app/data is writable.
COPY . .
RUN mkdir -p /app/data && chown bridge:bridge /app/data

USER bridge
VOLUME ["/app/data"]
EXPOSE 5000

# BRIDGE_WAIT_FOR_CONFIG: the first deploy happens before `main.py setup` has printed the
# inbox ids. The listener and the poller then stay up, say once what is missing (log and
# /health 503) and wait for a restart, instead of exiting into a restart loop that takes the
# seller's console away. Command-line use (setup, check, authorize, --once) still exits 2.
# Liveness (/health's `live`): the listener answers, the database works and the poller's
# heartbeat is fresh with no job stuck, so a dead, stopped or stuck poller gets the container
# restarted. A 503 for lost authorization or an old pending reply stays visible in /health, but
# must not make EasyPanel (Swarm) restart the container: a restart fixes neither and takes
# /oauth/callback down. A program gone FATAL stops supervisord itself (supervisord.conf).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import json, os, urllib.error, urllib.request\nurl = 'http://127.0.0.1:' + os.environ.get('PORT', '5000') + '/health'\ntry:\n    body = urllib.request.urlopen(url, timeout=4).read()\nexcept urllib.error.HTTPError as exc:\n    body = exc.read()\nraise SystemExit(0 if json.loads(body).get('live') else 1)"]

CMD ["supervisord", "-c", "/app/supervisord.conf"]
