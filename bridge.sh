#!/bin/sh
# The bridge's commands (`./bridge.sh setup URL`, `check`, `authorize`, `status`, `retry`,
# `backup`, `--help`…: main.py's) with the right Python, in one form for both places: the
# virtualenv ./run.sh made on a plain machine, the image's own Python in the container console.
here=$(dirname "$0")
if [ -x "$here/.venv/bin/python" ]; then
    exec "$here/.venv/bin/python" "$here/main.py" "$@"
fi
if command -v python3 >/dev/null 2>&1 && python3 -c "import apscheduler, flask" 2>/dev/null; then
    exec python3 "$here/main.py" "$@"
fi
echo "The bridge is not installed here: run ./run.sh once (it installs it into .venv), then $0 again." >&2
exit 2
