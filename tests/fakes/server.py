"""Run a WSGI app on a free localhost port in a background thread (for tests and manual runs)."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    """No per-request log lines: test output (and caplog) stays about the code under test."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def make_environ(self) -> dict:
        # Werkzeug drops headers with underscores (anti-spoofing), but Chatwoot's puma
        # accepts them and its API header is literally `api_access_token`: keep them.
        environ = super().make_environ()
        for key, value in self.headers.items():
            if "_" in key:
                environ.setdefault("HTTP_" + key.upper().replace("-", "_"), value)
        return environ


class ServerHandle:
    """A running server. `state` is attached by start_fakes() so tests reach the fake's state."""

    def __init__(self, server: Any, thread: threading.Thread, state: Any = None):
        self._server = server
        self._thread = thread
        self.port: int = server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(app: Any, port: int = 0, state: Any = None) -> ServerHandle:
    """Start `app` on 127.0.0.1 (port 0 = any free port); returns once it accepts connections."""
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_QuietHandler)
    # A short poll interval keeps shutdown() (and so each test's teardown) fast.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"fake-server-{server.server_port}", daemon=True)
    thread.start()
    return ServerHandle(server, thread, state)
