"""What the HTTP source and geocoder clients share: a retryable-failure type that may carry the server's
requested wait, the tenacity wait rule that honours it, the retry policy built on both, and a client-side
request rate limit."""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt


class Retryable(Exception):
    """A transient failure (429, 5xx, timeout, reset); ``wait`` is the server's Retry-After/penalty, if any."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


BACKOFF_BASE = 0.5  # seconds of the first retry wait of the source clients (env DATABRIDGE_HTTP_BACKOFF)


def backoff_base() -> float:
    """The first retry wait of the Knack and Airtable clients: env ``DATABRIDGE_HTTP_BACKOFF`` or ``BACKOFF_BASE``."""
    return float(os.environ.get("DATABRIDGE_HTTP_BACKOFF", BACKOFF_BASE))


def endpoint(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: what an error message may name (no credentials, no query)."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def retry_wait(base: float | Callable[[], float] = backoff_base, cap: float = 10.0) -> Callable[[RetryCallState], float]:
    """The server's wait when it named one, else exponential backoff from ``base`` (a number or a getter)."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable) and exc.wait is not None:
            return exc.wait
        start = base() if callable(base) else base
        return min(start * 2 ** (state.attempt_number - 1), cap)

    return wait


def retrying(attempts: int, before_sleep: Callable[[RetryCallState], None],
             base: float | Callable[[], float] = backoff_base) -> Retrying:
    """Retry ``Retryable`` failures up to ``attempts`` times with ``retry_wait``; the last one is re-raised."""
    return Retrying(retry=retry_if_exception_type(Retryable), wait=retry_wait(base), stop=stop_after_attempt(attempts),
                    reraise=True, before_sleep=before_sleep)


class RateLimiter:
    """At most ``per_second`` calls in any sliding window of ``period`` seconds (a small margin over one
    second absorbs latency between our clock and the server's), across threads."""

    def __init__(self, per_second: int, period: float = 1.05):
        self.per_second, self.period = per_second, period
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            while self._sent and self._sent[0] <= now - self.period:
                self._sent.popleft()
            if len(self._sent) >= self.per_second:
                time.sleep(max(0.0, self._sent[0] + self.period - now))
                self._sent.popleft()
            self._sent.append(time.monotonic())
