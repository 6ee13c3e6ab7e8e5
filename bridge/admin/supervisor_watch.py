"""supervisord event listener: a program that goes FATAL takes supervisord, and the container, down.

supervisord gives up on a program that keeps exiting at start (FATAL) and goes on running the
other one: half a bridge, up and unnoticed. With this listener (supervisord.conf,
`[eventlistener:fatal]`) supervisord stops instead, so the platform (EasyPanel) restarts the
container, and a person sees the restarts and the log. Run as `python -m bridge.admin.supervisor_watch`.

The protocol, on stdin/stdout (so nothing else may be written to stdout; the log line goes to stderr):
1. write `READY\\n`;
2. read one header line of `key:value` tokens, then `len` bytes of payload (`key:value` tokens too);
3. on PROCESS_STATE_FATAL, say which program and send SIGTERM to supervisord (our parent): it
   stops the other programs and exits;
4. write `RESULT 2\\nOK` and go back to 1.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, TextIO


def _tokens(text: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in text.split() if ":" in token)


def fatal_program(header: str, payload: str) -> str | None:
    """The program that went FATAL, or None for any other event."""
    if _tokens(header).get("eventname") != "PROCESS_STATE_FATAL":
        return None
    return _tokens(payload).get("processname") or "?"


def listen(stdin: TextIO, stdout: TextIO, stderr: TextIO, stop: Callable[[], None]) -> int:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return 0  # supervisord went away
        payload = stdin.read(int(_tokens(header).get("len", "0")))
        program = fatal_program(header, payload)
        if program is not None:
            stderr.write(f"supervisor_watch: program {program} is FATAL (it kept exiting at start): stopping "
                         f"supervisord so the container is restarted\n")
            stderr.flush()
            stop()
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main() -> int:
    supervisord = os.getppid()
    return listen(sys.stdin, sys.stdout, sys.stderr, lambda: os.kill(supervisord, signal.SIGTERM))


if __name__ == "__main__":
    raise SystemExit(main())
