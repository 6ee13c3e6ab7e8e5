#!/usr/bin/env bash
# Install (once) and run. With a .env beside this file (or the bridge's variables in the
# environment): the bridge, listener + poller under supervisord. Without: the sandbox, the real
# bridge against local fakes of Mercado Livre and Chatwoot (its options, e.g. --bridge-port, go
# after ./run.sh).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Install when requirements.txt changed since the last install (not at every start).
if ! cmp -s requirements.txt .venv/requirements.installed; then
    .venv/bin/pip install --quiet -r requirements.txt
    cp requirements.txt .venv/requirements.installed
fi
if [ ! -e .env ] && [ -z "${MELI_APP_ID:-}${CHATWOOT_URL:-}" ]; then
    echo "No .env here: starting the sandbox (fake Mercado Livre and Chatwoot, nothing leaves this machine); to connect real accounts, cp .env.example .env, fill it in and run ./run.sh again."
    exec .venv/bin/python tools/sandbox.py "$@"
fi
# Every problem of both processes once, before supervisord would restart them in a loop.
status=0
.venv/bin/python main.py check-config >/dev/null || status=$?
if [ "$status" -ne 0 ]; then
    echo "Fix these variables in .env (every one is explained in .env.example) and run ./run.sh again." >&2
    echo "To try the bridge without Mercado Livre or Chatwoot accounts: .venv/bin/python tools/sandbox.py" >&2
    exit "$status"
fi
export PATH="$PWD/.venv/bin:$PATH"
exec supervisord -c supervisord.conf
