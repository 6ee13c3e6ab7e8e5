#!/usr/bin/env bash
# Install (once) and run the bridge: listener + poller under supervisord.
# Needs a .env beside this file (copy .env.example and fill it in).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet -r requirements.txt
export PATH="$PWD/.venv/bin:$PATH"
exec supervisord -c supervisord.conf
