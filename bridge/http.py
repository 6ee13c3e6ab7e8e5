"""The shared core of the two API clients: one session, timeouts, typed errors, retries."""

from __future__ import annotations

import email.utils
import logging
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from bridge import progress, stopping, testhooks
from bridge.backoff import backoff_wait
from bridge.rate_budget import Unlimited

USER_AGENT = "meli-chatwoot-bridge/1.0"


_DEPARTING: ContextVar[Callable[[], None] | None] = ContextVar("departing", default=None)


@contextmanager
def on_departure(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` each time a request made inside leaves: after any rate-budget pause or token
    wait, which may hold it seconds after the caller recorded the attempt. A create whose answer is
    lost (or a crash in flight) then settles from when it really left, not from the record."""
    token = _DEPARTING.set(callback)
    try:
        yield
    finally:
        _DEPARTING.reset(token)


# The chaos soak injects timeouts and cannot wait 30 s for each one (a test hook, inert in production).
TIMEOUT = (5, testhooks.number("BRIDGE_HTTP_READ_TIMEOUT", 30.0))  # (connect, read) seconds
# A request whose answer was lost may still be applied: a server processes what it holds whether
# or not the client still waits. One not applied by twice the read timeout after it left is
# taken as never applied.
SETTLE = 2 * TIMEOUT[1]
MAX_RETRY_AFTER = 60.0
UNLIMITED = Unlimited()  # longer waits go back to the outbox/scheduler instead of blocking a worker


class ApiError(Exception):
    """An API call that did not succeed. `transient` says whether trying again may help."""

    transient = False

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None, body: Any = None, service: str | None = None):
        super().__init__(message)
        self.message = message
        self.service = service  # who answered: a 404 from Mercado Livre is not a deleted Chatwoot object
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.body = body

    def short(self) -> str:
        parts = [str(self.status) if self.status else None, self.code]
        prefix = " ".join(p for p in parts if p)
        return f"{prefix}: {self.message}" if prefix else self.message


class TransientError(ApiError):
    """Timeouts, connection errors, 429 and 5xx."""

    transient = True


class PermanentError(ApiError):
    """Any other 4xx: the request itself is refused; retrying will not help."""


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from_response(service: str, resp: requests.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    code = message = None
    if isinstance(body, dict):
        code = body.get("error") if isinstance(body.get("error"), str) else None
        message = body.get("message") or body.get("error_description") or body.get("error")
        if isinstance(message, list):
            message = "; ".join(str(m) for m in message)
    message = str(message or resp.reason or "error")[:300]
    cls = TransientError if resp.status_code == 429 or resp.status_code >= 500 else PermanentError
    return cls(f"{service} answered {resp.status_code}: {message}", status=resp.status_code, code=code,
               retry_after=parse_retry_after(resp.headers.get("Retry-After")), body=body, service=service)


class HttpClient:
    service = "api"

    def __init__(self, base_url: str, *, attempts: int = 3, timeout: tuple[float, float] = TIMEOUT,
                 sleep: Callable[[float], None] = stopping.wait, budgets: dict | None = None):
        self.base_url = base_url.rstrip("/")
        # {"GET": Budget, "POST": Budget, ...} or {"*": Budget}; none means unpaced.
        self.budgets = budgets or {}
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.attempts = attempts
        self.timeout = timeout
        self.sleep = sleep
        self.log = logging.getLogger(f"bridge.{self.service}")
        self.calls = 0

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return exc.retry_after
        return backoff_wait(state.attempt_number)

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        # A Retry-After beyond our patience is handed back to the caller's own schedule.
        return isinstance(exc, TransientError) and (exc.retry_after or 0) <= MAX_RETRY_AFTER

    def _request(self, method: str, path: str, *, headers: dict | None = None, retry: bool = True,
                 creates: bool = False, **kwargs: Any) -> Any:
        """Call the API; returns parsed JSON (or the Response when `raw=True`).

        `creates`: the call makes something with no idempotency key (a Chatwoot message or
        conversation). Only a 429, refused before it was applied, is repeated here: after a
        timeout or a 5xx it may exist, and the caller's intent row looks for it before creating again.
        """
        retryable = self._retryable if not creates else (lambda exc: self._retryable(exc) and exc.status == 429)
        retrying = Retrying(stop=stop_after_attempt(self.attempts if retry else 1), wait=self._wait,
                            retry=retry_if_exception(retryable), reraise=True, sleep=self.sleep)
        return retrying(self._request_once, method, path, headers=headers, **kwargs)

    def _request_once(self, method: str, path: str, *, headers: dict | None = None, raw: bool = False,
                      ok_statuses: tuple[int, ...] = (), **kwargs: Any) -> Any:
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        shown = path.split("?", 1)[0] if not path.startswith("http") else "(file)"
        budget = self.budgets.get(method) or self.budgets.get("*") or UNLIMITED
        budget.acquire()
        departing = _DEPARTING.get()
        if departing is not None:
            departing()
        started = time.monotonic()
        self.calls += 1
        try:
            resp = self.session.request(method, url, headers=headers, timeout=kwargs.pop("timeout", self.timeout),
                                        **kwargs)
            progress.made()
        except requests.Timeout:
            progress.made()
            self.log.debug("%s %s timeout after %dms", method, shown, (time.monotonic() - started) * 1000)
            raise TransientError(f"{self.service} did not answer in time ({method} {shown})") from None
        except requests.RequestException as exc:
            progress.made()
            self.log.debug("%s %s connection error %s", method, shown, type(exc).__name__)
            raise TransientError(f"{self.service} unreachable ({method} {shown}): {type(exc).__name__}") from None
        elapsed = (time.monotonic() - started) * 1000
        self.log.debug("%s %s %d %dms", method, shown, resp.status_code, elapsed)
        if resp.status_code >= 400 and resp.status_code not in ok_statuses:
            error = _error_from_response(self.service, resp)
            if resp.status_code == 429:
                budget.pause(error.retry_after if error.retry_after is not None else 1.0)
                self.log.warning("%s %s rate limited; pausing this budget %.1fs", method, shown,
                                 error.retry_after if error.retry_after is not None else 1.0)
            raise error
        if raw:
            return resp
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise TransientError(f"{self.service} answered {resp.status_code} with a body that is not JSON",
                                 status=resp.status_code) from None


def settle(left_at: float, now: float, what: str, where: str) -> None:
    """Raise TransientError (retry_after: the rest of the wait) until a request that left at
    `left_at` has settled: looking for it before then may find nothing and send it twice."""
    wait = left_at + SETTLE - now
    if wait > 0:
        raise TransientError(f"{what} may still reach {where}; looked for in {wait:.0f}s", retry_after=wait)
