"""The Philadelphia AIS ``/search`` client (reference external-apis.md §4.1–4.3).

Connection URL: ``ais://USER:KEY@api.phila.gov/ais/v1`` (HTTPS), or ``ais+http://USER:KEY@127.0.0.1:PORT[/ais/v1]``
for a local emulator. The key goes in the ``Authorization: Gatekeeper-Key`` header (the documented
alternative to ``?gatekeeperKey=``): it stays out of URLs and logs, and its parameter name does not eat
into AIS's 80-character query budget. USER is sent as the User-Agent.

``GET <base>/search/<url-encoded query>?srid=<srid>[&estimate=false]``:

* 200 → the features of the first page (≤ 100), trimmed to what the output needs (a *candidate*);
* 404 → a miss at once (AIS answers every no-match with 404), never retried;
* 401/403 → the task fails (a bad key will not get better);
* 429, 5xx, timeouts, resets and cut-short bodies → retried with tenacity (exponential back-off, 429's
  ``Retry-After`` honoured); a query still failing after ``MAX_ATTEMPTS`` is an *error* (counted as a miss,
  not cached), so one bad query never fails the file; but ``MAX_CONSECUTIVE_ERRORS`` errors in a row, or
  every query an error, is an outage: the run stops with a GeocodeError naming the endpoint (rather than
  spending ``MAX_ATTEMPTS`` back-offs on each of thousands of queries and then failing on the miss ratio);
* other 4xx → a miss, as the city's clients treat them.

At most ``max_in_flight`` requests run at once (a thread pool) and request starts are spaced to
``rate_per_second``.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
from tenacity import RetryCallState

from ..http_limits import Retryable, retrying
from ..connections import redact, register_secret

log = logging.getLogger(__name__)

TIMEOUT = (5.0, 30.0)
MAX_ATTEMPTS = 5
MAX_CONSECUTIVE_ERRORS = 10  # queries in a row that failed after MAX_ATTEMPTS: AIS is down, stop
BUILTIN = ("lat", "lon", "shape", "geocode_type", "normalized", "match_type")


class GeocodeError(RuntimeError):
    """A geocode run that cannot go on (bad connection, bad key, too many misses)."""


def backoff_base() -> float:
    """Seconds of the first retry wait (env ``DATABRIDGE_GEOCODE_BACKOFF``, default 1 s as the city clients)."""
    return float(os.environ.get("DATABRIDGE_GEOCODE_BACKOFF", "1.0"))


@dataclass(frozen=True)
class AISConnection:
    base_url: str
    user: str
    key: str


def parse_url(url: str) -> AISConnection:
    parts = urlsplit(url)
    scheme = {"ais": "https", "ais+https": "https", "ais+http": "http"}.get(parts.scheme.lower())
    key = unquote(parts.password or "")
    if scheme is None or not parts.hostname or not key:
        raise GeocodeError(f"not an AIS connection URL (ais://USER:KEY@api.phila.gov/ais/v1): {redact(url)}")
    register_secret(key)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    path = parts.path.rstrip("/")
    if not path and parts.hostname == "api.phila.gov":
        path = "/ais/v1"
    return AISConnection(f"{scheme}://{host}{path}", unquote(parts.username or ""), key)


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart, across threads."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def ais_options(srid: int, allow_estimates: bool, properties: Iterable[str]) -> str:
    """The cache fingerprint of what a request asked for: entries made otherwise are not reused."""
    return f"srid={srid};estimate={str(allow_estimates).lower()};props={','.join(sorted(set(properties)))}"


def candidate(feature: dict[str, Any], normalized: str | None, properties: Iterable[str]) -> dict[str, Any]:
    """An AIS feature trimmed to what the output and the acceptance rule need."""
    props = feature.get("properties") or {}
    geometry = feature.get("geometry") or {}
    coordinates = list(geometry.get("coordinates") or [None, None]) + [None, None]
    return {
        "ft": feature.get("ais_feature_type"), "mt": feature.get("match_type"), "gt": geometry.get("geocode_type"),
        "x": coordinates[0], "y": coordinates[1], "n": normalized, "zip": props.get("zip_code"),
        "p": {name: props.get(name) for name in properties},
    }


class AISClient:
    def __init__(self, url: str, *, srid: int = 4326, allow_estimates: bool = False, properties: Iterable[str] = (),
                 max_in_flight: int = 4, rate_per_second: float = 5.0, dataset_id: str = "-"):
        self.conn = parse_url(url)
        self.srid, self.allow_estimates = srid, allow_estimates
        self.properties = tuple(properties)
        self.max_in_flight = max_in_flight
        self.limiter = RateLimiter(rate_per_second)
        self.dataset_id = dataset_id
        self.options = ais_options(srid, allow_estimates, self.properties)
        self.calls = self.retries = self.errors = 0
        self.last_error = ""
        self._count_lock = threading.Lock()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update({"Authorization": f"Gatekeeper-Key {self.conn.key}",
                                    "User-Agent": f"databridge-luigi ({self.conn.user or 'anonymous'})"})
        return session

    def search_many(self, queries: dict[str, str], done: Callable[[str, list[dict[str, Any]] | None], None]) -> None:
        """Look up ``{key: query text}``; ``done(key, candidates | None)`` is called from this thread as each
        finishes (None: an error after retries, not to be cached)."""
        if not queries:
            return
        in_a_row = 0
        with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="ais") as pool:
            futures = {pool.submit(self._search_logged, text): key for key, text in queries.items()}
            try:
                for future in as_completed(futures):
                    result = future.result()
                    done(futures[future], result)
                    in_a_row = in_a_row + 1 if result is None else 0
                    if in_a_row >= MAX_CONSECUTIVE_ERRORS:
                        raise self._outage(f"{in_a_row} queries in a row")
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        if self.errors >= len(queries):
            raise self._outage(f"all {len(queries)} queries")

    def _outage(self, which: str) -> GeocodeError:
        return GeocodeError(f"{self.dataset_id}: geocode: AIS GET {self.conn.base_url}/search failed for {which}, each after "
                            f"{MAX_ATTEMPTS} attempts (last: {self.last_error}); stopping, nothing staged")

    def _search_logged(self, query: str) -> list[dict[str, Any]] | None:
        try:
            return self.search(query)
        except Retryable as exc:
            with self._count_lock:
                self.errors += 1
                self.last_error = str(exc)
            log.warning("%s: AIS gave up on %r after %d attempts: %s", self.dataset_id, query, MAX_ATTEMPTS, exc)
            return None

    def search(self, query: str) -> list[dict[str, Any]]:
        return retrying(MAX_ATTEMPTS, self._before_sleep, backoff_base)(self._search_once, query)

    def _before_sleep(self, state: RetryCallState) -> None:
        with self._count_lock:
            self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info("%s: AIS call failed (%s); retry %d", self.dataset_id, exc, state.attempt_number)

    def _search_once(self, query: str) -> list[dict[str, Any]]:
        self.limiter.wait()
        with self._count_lock:
            self.calls += 1
        params = {"srid": str(self.srid)}
        if not self.allow_estimates:
            params["estimate"] = "false"
        url = f"{self.conn.base_url}/search/{quote(query, safe='')}"
        try:
            response = self._session().get(url, params=params, timeout=TIMEOUT)
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise Retryable(f"{type(exc).__name__}: {redact(str(exc))[:200]}") from None
        status = response.status_code
        if status == 404:
            return []
        if status == 429:
            retry_after = response.headers.get("Retry-After", "")
            raise Retryable("HTTP 429", wait=min(float(retry_after), 30.0) if retry_after.isdigit() else None)
        if status >= 500:
            raise Retryable(f"HTTP {status}")
        if status in (401, 403):
            raise GeocodeError(f"{self.dataset_id}: geocode: AIS GET {self.conn.base_url}/search refused the key "
                               f"(HTTP {status}): check the connection")
        if status != 200:
            log.warning("%s: AIS HTTP %d for %r; counted as a miss", self.dataset_id, status, query)
            return []
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError):
            raise Retryable("response body is not complete JSON") from None
        normalized = body.get("normalized")
        return [candidate(f, normalized, self.properties) for f in body.get("features") or []]


