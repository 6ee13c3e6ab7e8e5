#!/usr/bin/env bash
# Install (once) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet -r requirements-dev.txt
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
