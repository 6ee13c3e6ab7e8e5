"""Test controls shared by both fakes: call log, injected failures, artificial slowness."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, g, jsonify, request


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


class Controls:
    """Base of MeliState / ChatwootState.

    One re-entrant lock guards all mutable state (helpers call each other while holding it);
    the Flask handlers and the tests' helper calls run on different threads.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[dict] = []
        self._failures: list[dict] = []
        self._delays: dict[str, float] = {}
        self._chaos: list[dict] = []
        self._chaos_rng = random.Random(0)
        self.chaos_counts: Counter = Counter()  # (kind, path prefix) -> faults injected

    # ---- inspection ---------------------------------------------------------------------------

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """How many requests matched (method: any case; path_prefix: plain string prefix of the path)."""
        with self.lock:
            return sum(1 for c in self.calls if _matches(c["method"], c["path"], method, path_prefix))

    # ---- fault injection ------------------------------------------------------------------------

    def fail_next(self, method: str | None, path_prefix: str, status: int, times: int = 1,
                  body: Any = None, headers: dict | None = None, after: int = 0) -> None:
        """The next `times` matching requests answer `status` instead of reaching the route
        (once `after` matching requests have gone through normally)."""
        headers = dict(headers or {})
        if status == 429:
            headers.setdefault("Retry-After", "1")
        with self.lock:
            self._failures.append({"method": method, "prefix": path_prefix, "status": status,
                                   "remaining": times, "body": body, "headers": headers, "after": after})

    def delay(self, path_prefix: str, seconds: float) -> None:
        """Sleep `seconds` before answering requests under `path_prefix`; 0 removes the delay."""
        with self.lock:
            if seconds:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def chaos(self, rules: list[dict], seed: int = 0) -> None:
        """Random faults, drawn from a generator seeded with `seed`; an empty list turns them off.

        Each rule: {"prefix": "/answers", "method": "POST" or None, "p": 0.05} plus one of
        "status" (answered instead of the route; 429 gets "retry_after", default 1 s),
        "delay" (seconds slept before the route runs: a timeout when longer than the
        client's read timeout, the request not applied), "late" (seconds slept after
        the route ran: applied, but the answer arrives too late) or "applied_status" (the
        route ran, then that status is answered instead: a 5xx after the request was applied).
        Requests arrive on several threads, so which request draws a fault is not
        reproducible; how many faults of each kind roughly is.
        """
        with self.lock:
            self._chaos = [dict(rule) for rule in rules]
            self._chaos_rng = random.Random(seed)

    # ---- hooks for subclasses -------------------------------------------------------------------

    def error_body(self, status: int, message: str | None = None, error: str | None = None) -> dict:
        raise NotImplementedError

    def gate(self) -> Response | None:
        """Runs before every route (after injected failures); a response here short-circuits it."""
        return None

    # ---- internals ----------------------------------------------------------------------------

    def _take_failure(self, method: str, path: str) -> dict | None:
        with self.lock:
            for failure in self._failures:
                if failure["remaining"] > 0 and _matches(method, path, failure["method"], failure["prefix"]):
                    if failure.get("after", 0) > 0:
                        failure["after"] -= 1
                        continue
                    failure["remaining"] -= 1
                    return failure
            self._failures = [f for f in self._failures if f["remaining"] > 0]
        return None

    def _draw_chaos(self, method: str, path: str) -> dict | None:
        with self.lock:
            for rule in self._chaos:
                if _matches(method, path, rule.get("method"), rule.get("prefix")) \
                        and self._chaos_rng.random() < rule["p"]:
                    kind = f"status {rule['status']}" if "status" in rule else \
                        f"applied, then {rule['applied_status']}" if "applied_status" in rule else \
                        ("late" if "late" in rule else "delay")
                    self.chaos_counts[(kind, rule.get("prefix") or "/")] += 1
                    return rule
        return None

    def _delay_for(self, path: str) -> float:
        with self.lock:
            return max((s for p, s in self._delays.items() if path.startswith(p)), default=0.0)


def _matches(method: str, path: str, want_method: str | None, want_prefix: str | None) -> bool:
    if want_method and method.upper() != want_method.upper():
        return False
    return not want_prefix or path.startswith(want_prefix)


def json_error(state: Controls, status: int, message: str | None = None, error: str | None = None,
               headers: dict | None = None) -> Response:
    resp = jsonify(state.error_body(status, message, error))
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def install_controls(app: Flask, state: Controls) -> None:
    """Wire the call log, delays, injected failures and JSON 404/405 pages into `app`."""

    @app.before_request
    def _before() -> Response | None:
        g.t0 = time.monotonic()
        seconds = state._delay_for(request.path)
        if seconds:
            time.sleep(seconds)
        failure = state._take_failure(request.method, request.path)
        rule = None if failure else state._draw_chaos(request.method, request.path)
        if rule and "delay" in rule:
            time.sleep(rule["delay"])
            g.answer_lost = bool(rule.get("lost"))  # held past the client's timeout: applied, never seen
        elif rule and "late" in rule:
            g.late = rule["late"]
            g.answer_lost = True
        elif rule and "applied_status" in rule:
            g.applied_status = rule["applied_status"]
            g.answer_lost = True
        elif rule:
            headers = {"Retry-After": str(rule.get("retry_after", 1))} if rule["status"] == 429 else {}
            return json_error(state, rule["status"], headers=headers)
        if failure:
            if failure["body"] is None:
                return json_error(state, failure["status"], headers=failure["headers"])
            resp = jsonify(failure["body"])
            resp.status_code = failure["status"]
            resp.headers.update(failure["headers"])
            return resp
        return state.gate()

    @app.after_request
    def _record(resp: Response) -> Response:
        if g.get("late"):
            time.sleep(g.late)  # the route's effect is done; only the answer is late
        if g.get("applied_status"):
            resp = json_error(state, g.applied_status)  # the route's effect is done; its answer is an error
        t0 = g.get("t0", time.monotonic())
        entry = {"method": request.method, "path": request.path, "query": request.args.to_dict(),
                 "status": resp.status_code, "t": t0, "ms": (time.monotonic() - t0) * 1000.0}
        with state.lock:
            state.calls.append(entry)
        return resp

    @app.errorhandler(404)
    def _not_found(_exc: Exception) -> Response:
        return json_error(state, 404)

    @app.errorhandler(405)
    def _bad_method(_exc: Exception) -> Response:
        return json_error(state, 405)
