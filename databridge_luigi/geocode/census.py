"""The US Census batch geocoder client (reference external-apis.md §4.4).

``POST <base>/locations/addressbatch``, multipart: ``addressFile`` (headerless CSV ``id,street,city,state,zip``,
at most ``MAX_BATCH_ROWS`` rows per request) and ``benchmark=Public_AR_Current``. The reply is a headerless
CSV in no particular order: ``id, input, Match, Exact|Non_Exact, matched address, "lon,lat", tiger id, side``,
or ``id, input, No_Match`` / ``id, input, Tie``. Rows are matched back by id.

Base URL: the connection ``census`` if defined (``http://127.0.0.1:PORT/geocoder`` for the emulator), else
``https://geocoding.geo.census.gov/geocoder``. 429, 5xx, timeouts and resets are retried; a batch still
failing after ``MAX_ATTEMPTS`` fails the task (every row of it would be a miss).
"""
from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from typing import Any

import requests

from ..connections import redact
from ..http_limits import Retryable, endpoint, retrying
from .ais import GeocodeError, backoff_base

log = logging.getLogger(__name__)

DEFAULT_URL = "https://geocoding.geo.census.gov/geocoder"
MAX_BATCH_ROWS = 10_000
BENCHMARK = "Public_AR_Current"
TIMEOUT = (10.0, 900.0)  # large batches take minutes
MAX_ATTEMPTS = 4
OPTIONS = f"benchmark={BENCHMARK}"


def batch_size() -> int:
    return int(os.environ.get("DATABRIDGE_CENSUS_BATCH_ROWS", MAX_BATCH_ROWS))


class CensusClient:
    def __init__(self, url: str | None, *, dataset_id: str = "-"):
        self.base_url = (url or DEFAULT_URL).rstrip("/")
        self.dataset_id = dataset_id
        self.options = OPTIONS
        self.calls = self.retries = self.errors = 0
        self.session = requests.Session()

    def search_many(self, queries: dict[str, tuple[str, str, str, str]],
                    done: Callable[[str, list[dict[str, Any]] | None], None]) -> None:
        """``{key: (street, city, state, zip)}``; ``done(key, candidates)`` for each key."""
        items = list(queries.items())
        size = batch_size()
        try:
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                results = self._batch([address for _, address in chunk])
                for index, (key, _) in enumerate(chunk):
                    done(key, results.get(index, []))
        finally:
            self.session.close()

    def _batch(self, addresses: list[tuple[str, str, str, str]]) -> dict[int, list[dict[str, Any]]]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for index, address in enumerate(addresses):
            writer.writerow([index, *address])
        body = out.getvalue().encode("utf-8")
        try:
            text = retrying(MAX_ATTEMPTS, lambda state: self._count_retry(), backoff_base)(self._post, body)
        except Retryable as exc:
            raise GeocodeError(f"{self.dataset_id}: geocode: Census POST {endpoint(self.base_url)}/locations/addressbatch: "
                               f"batch of {len(addresses)} rows failed after {MAX_ATTEMPTS} attempts: {exc}") from None
        return parse_reply(text, len(addresses))

    def _count_retry(self) -> None:
        self.retries += 1

    def _post(self, body: bytes) -> str:
        self.calls += 1
        try:
            response = self.session.post(f"{self.base_url}/locations/addressbatch", data={"benchmark": BENCHMARK},
                                         files={"addressFile": ("addresses.csv", body, "text/csv")}, timeout=TIMEOUT)
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise Retryable(f"{type(exc).__name__}: {redact(str(exc))[:200]}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise GeocodeError(f"{self.dataset_id}: geocode: Census POST {endpoint(self.base_url)}/locations/addressbatch: "
                               f"HTTP {response.status_code}: {redact(response.text[:200])}")
        return response.content.decode("utf-8", "replace")


def parse_reply(text: str, expected: int) -> dict[int, list[dict[str, Any]]]:
    """Reply rows by input index: ``[candidate]`` for a Match, ``[]`` for No_Match and Tie."""
    results: dict[int, list[dict[str, Any]]] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0].strip().isdigit():
            continue
        index = int(row[0])
        status = row[2].strip() if len(row) > 2 else ""
        if status == "Match" and len(row) >= 6:
            try:
                lon, lat = (float(v) for v in row[5].split(","))
            except ValueError:
                results[index] = []
                continue
            results[index] = [{"mt": row[3].strip(), "ma": row[4].strip(), "x": lon, "y": lat, "tie": False}]
        else:
            results[index] = [{"tie": True}] if status == "Tie" else []
    missing = expected - len(results)
    if missing:
        log.warning("Census reply lacks %d of %d rows; they count as misses", missing, expected)
    return results
