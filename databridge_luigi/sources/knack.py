"""Extract a Knack object (object-based API) into a staged table.

Connection URL: ``knack://APP_ID:API_KEY@api.knack.com`` (HTTPS), or ``knack+http://APP_ID:API_KEY@HOST:PORT``
for a local emulator.

* **Schema** from ``GET /v1/applications/{app}`` (the object's fields): ``id`` first, then every field under
  the old extract-knack name (the label snake-cased as ``stringcase.snakecase`` did, spaces and parentheses
  stripped, ``__`` collapsed once, ``_i_d`` → ``_id``). The app's time zone is ``settings.timezone``.
* **Records**: every page at ``rows_per_page=1000``; the number of rows written must equal the first page's
  ``total_records`` (and no record id may repeat), otherwise the extract fails — Knack has no snapshot.
* **Values** from ``field_N_raw`` per type (reference external-apis.md §2.3); empty → NULL:
  address → JSON object; name → "title first middle last"; email → address; link → url; phone → ``full``;
  connection → JSON list of ids; multiple choice → JSON array; boolean; number/currency/equation/… → number;
  date/time → ISO-8601 with the **app's** zone offset (Knack sends app-local wall time labelled as UTC);
  a date range (``format.calendar``) adds ``<name>_end``; file/image/signature/timer → JSON.
* **Geometry**: when the object has an address field, a ``shape`` column (Point, EPSG:4326, EWKT) holds its
  latitude/longitude (NULL when the record has none). The field is the one named by the dataset's
  ``geometry.column`` if that names an address field, else the first address field whose input is
  ``lat_long``, else the first address field.
* **Limits**: at most 10 requests/second client-side; a 429 waits for ``X-RateLimit-Reset`` and retries; a
  429 with ``X-PlanLimit-Remaining: 0`` is the daily plan limit and fails at once, naming it. 5xx, timeouts
  and connection resets are retried with back-off; any other 4xx fails at once. Every call has a timeout.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from tenacity import RetryCallState

from ..http_limits import RateLimiter, Retryable, endpoint, retrying
from ..config import Dataset
from ..connections import redact, register_secret
from ..schema import Column, TableSchema
from ..staging import StagedTableWriter
from .sql import ExtractError, Extraction

log = logging.getLogger(__name__)

ROWS_PER_PAGE = 1000
REQUESTS_PER_SECOND = 10
TIMEOUT = (10.0, 120.0)  # (connect, read) seconds
MAX_ATTEMPTS = 8
RATE_LIMIT_WAIT_MAX = 5.0  # seconds: the longest X-RateLimit-Reset wait honoured per 429
GEOMETRY_COLUMN = "shape"
Progress = Callable[..., None]

# Knack's (Rails) zone names → IANA (the common ones; an IANA name in the settings is accepted as is).
KNACK_TIMEZONES = {
    "Eastern Time (US & Canada)": "America/New_York",
    "Central Time (US & Canada)": "America/Chicago",
    "Mountain Time (US & Canada)": "America/Denver",
    "Pacific Time (US & Canada)": "America/Los_Angeles",
    "Arizona": "America/Phoenix",
    "Alaska": "America/Juneau",
    "Hawaii": "Pacific/Honolulu",
    "Indiana (East)": "America/Indiana/Indianapolis",
    "Atlantic Time (Canada)": "America/Halifax",
    "Newfoundland": "America/St_Johns",
    "Saskatchewan": "America/Regina",
    "Puerto Rico": "America/Puerto_Rico",
    "Mexico City": "America/Mexico_City",
    "UTC": "UTC",
    "London": "Europe/London",
    "Dublin": "Europe/Dublin",
    "Lisbon": "Europe/Lisbon",
    "Paris": "Europe/Paris",
    "Berlin": "Europe/Berlin",
    "Madrid": "Europe/Madrid",
    "Amsterdam": "Europe/Amsterdam",
    "Brussels": "Europe/Brussels",
    "Rome": "Europe/Rome",
    "Athens": "Europe/Athens",
    "Sydney": "Australia/Sydney",
    "Melbourne": "Australia/Melbourne",
    "Brisbane": "Australia/Brisbane",
    "Perth": "Australia/Perth",
    "Auckland": "Pacific/Auckland",
    "Tokyo": "Asia/Tokyo",
    "Singapore": "Asia/Singapore",
    "Hong Kong": "Asia/Hong_Kong",
    "Kolkata": "Asia/Kolkata",
    "New Delhi": "Asia/Kolkata",
}

# Knack field type → staged schema type (the old tool's map, widened to the numeric and JSON types).
NUMBER_TYPES = {"number", "currency", "equation", "rating", "sum", "average", "min", "max"}
INTEGER_TYPES = {"auto_increment", "count"}
JSON_TYPES = {"address", "file", "image", "signature", "timer"}
ARRAY_TYPES = {"multiple_choice", "connection"}


class KnackError(ExtractError):
    """A Knack call failed in a way retrying will not fix."""


class KnackPlanLimitError(KnackError):
    """The app's daily API plan limit is used up."""


# --- connection URL -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KnackConnection:
    base_url: str
    app_id: str
    api_key: str


def parse_url(url: str) -> KnackConnection:
    parts = urlsplit(url)
    scheme = {"knack": "https", "knack+https": "https", "knack+http": "http"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname or not parts.username or not parts.password:
        raise ExtractError(f"not a Knack connection URL (knack://APP_ID:API_KEY@api.knack.com): {redact(url)}")
    api_key = unquote(parts.password)
    register_secret(api_key)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return KnackConnection(f"{scheme}://{host}", unquote(parts.username), api_key)


# --- HTTP client --------------------------------------------------------------------------------------------



class KnackClient:
    def __init__(self, conn: KnackConnection, dataset_id: str, *, per_second: int = REQUESTS_PER_SECOND):
        self.conn, self.dataset_id = conn, dataset_id
        self.session = requests.Session()
        self.session.headers.update({"X-Knack-Application-Id": conn.app_id, "X-Knack-REST-API-KEY": conn.api_key})
        self.limiter = RateLimiter(per_second)
        self.calls = 0
        self.retries = 0

    def close(self) -> None:
        self.session.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return retrying(MAX_ATTEMPTS, self._before_sleep)(self._get_once, path, params)
        except Retryable as exc:
            raise KnackError(f"{self.dataset_id}: extract: Knack GET {endpoint(self.conn.base_url + path)}: "
                             f"gave up after {MAX_ATTEMPTS} attempts: {exc}") from None

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: Knack call failed (%s); retry %d", self.dataset_id, redact(str(exc)), state.attempt_number)

    def _get_once(self, path: str, params: dict[str, Any] | None) -> dict[str, Any]:
        self.limiter.wait()
        self.calls += 1
        try:
            response = self.session.get(self.conn.base_url + path, params=params, timeout=TIMEOUT)
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            # ChunkedEncodingError: the body was cut short on the way (an incomplete read)
            raise Retryable(f"{type(exc).__name__}: {redact(str(exc))[:200]}") from None
        status = response.status_code
        if status == 429:
            headers = response.headers
            if headers.get("X-PlanLimit-Remaining") == "0":
                reset = headers.get("X-PlanLimit-Reset")
                when = datetime.fromtimestamp(int(reset), timezone.utc).isoformat() if reset and reset.isdigit() else "unknown"
                raise KnackPlanLimitError(
                    f"{self.dataset_id}: Knack daily API plan limit reached for app {self.conn.app_id} "
                    f"(X-PlanLimit-Limit {headers.get('X-PlanLimit-Limit', '?')} calls/day; resets {when}); "
                    f"not retrying — rerun after the reset or raise the plan limit"
                )
            return self._rate_limited(headers)
        if status >= 500:
            raise Retryable(f"HTTP {status}")
        if status >= 400:
            raise KnackError(f"{self.dataset_id}: extract: Knack GET {endpoint(self.conn.base_url + path)}: HTTP {status}: "
                             f"{redact(response.text[:300])}")
        try:
            return response.json()
        except ValueError:  # a body cut short on the way: the same as a reset connection
            raise Retryable(f"HTTP {status} with a body that is not complete JSON") from None

    def _rate_limited(self, headers: Any) -> dict[str, Any]:
        wait = 1.0
        reset = headers.get("X-RateLimit-Reset")
        try:
            wait = float(reset) - time.time() if reset else 1.0
        except ValueError:
            pass
        raise Retryable("HTTP 429 rate limit exceeded", wait=min(max(wait, 0.2), RATE_LIMIT_WAIT_MAX))


# --- schema -------------------------------------------------------------------------------------------------

def snake_name(label: str) -> str:
    """The old extract-knack column name: ``stringcase.snakecase(label)`` then its fix-ups, lower-cased."""
    import re

    text = re.sub(r"[\-.\s]", "_", str(label))
    if text:
        text = text[0].lower() + re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), text[1:])
    text = text.replace(" ", "").replace("(", "").replace(")", "").replace("__", "_").replace("_i_d", "_id")
    return text.lower()


def knack_zone(name: str | None) -> ZoneInfo:
    iana = KNACK_TIMEZONES.get(name or "", name or "")
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        raise ExtractError(f"Knack app time zone {name!r} is not known (add it to KNACK_TIMEZONES)") from None


@dataclass(frozen=True)
class KnackColumn:
    name: str
    type: str
    key: str | None  # field_N, or None for id / derived columns
    knack_type: str
    part: str = "value"  # value | end (date range end) | point (geometry from an address)
    required: bool = False


def _schema_type(field: dict[str, Any]) -> str:
    knack_type = field.get("type", "")
    if knack_type in NUMBER_TYPES:
        return "number"
    if knack_type in INTEGER_TYPES:
        return "integer"
    if knack_type == "boolean":
        return "boolean"
    if knack_type == "date_time":
        return "datetime"
    if knack_type in ARRAY_TYPES:
        return "array"
    if knack_type == "image" and (field.get("format") or {}).get("source") == "url":
        return "string"
    if knack_type in JSON_TYPES:
        return "object"
    return "string"


def build_columns(dataset: Dataset, obj: dict[str, Any]) -> list[KnackColumn]:
    columns = [KnackColumn("id", "string", None, "id", required=True)]
    addresses: list[tuple[str, dict[str, Any]]] = []
    for field in obj.get("fields", []):
        name = snake_name(field.get("name") or field.get("label") or field["key"])
        columns.append(KnackColumn(name, _schema_type(field), field["key"], field.get("type", ""), required=bool(field.get("required"))))
        fmt = field.get("format") or {}
        if field.get("type") == "date_time" and fmt.get("calendar"):
            columns.append(KnackColumn(f"{name}_end", "datetime", field["key"], "date_time", "end"))
        if field.get("type") == "address":
            addresses.append((name, field))
    if addresses:
        chosen = next((f for n, f in addresses if n == dataset.geometry_column), None)
        chosen = chosen or next((f for _, f in addresses if (f.get("format") or {}).get("input") == "lat_long"), addresses[0][1])
        columns.append(KnackColumn(GEOMETRY_COLUMN, "geometry", chosen["key"], "address", "point"))
    seen: dict[str, str] = {}
    for column in columns:
        if column.name in seen:
            raise ExtractError(f"{dataset.id}: Knack fields {seen[column.name]} and {column.key or column.name} both become column {column.name!r}")
        seen[column.name] = column.key or column.name
    return columns


# --- values -------------------------------------------------------------------------------------------------

def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {} or value == [None]


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    try:
        number = Decimal(str(value).strip().replace(",", "").lstrip("$"))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    return format(number, "f")


def _timestamp(raw: Any, zone: ZoneInfo) -> str | None:
    """Knack's local-as-UTC timestamp → the true instant, written with the app zone's offset."""
    if not isinstance(raw, dict):
        raise ValueError(f"{raw!r} is not a Knack date/time object")
    if raw.get("unix_timestamp") not in (None, ""):
        wall = datetime.fromtimestamp(int(raw["unix_timestamp"]) / 1000, timezone.utc).replace(tzinfo=None)
    elif raw.get("timestamp"):
        wall = datetime.strptime(raw["timestamp"], "%m/%d/%Y %I:%M %p")
    elif raw.get("date"):
        wall = datetime.strptime(raw["date"], "%m/%d/%Y")
    else:
        return None
    return wall.replace(tzinfo=zone).isoformat()


def _name(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return str(raw)
    text = " ".join(str(raw[k]).strip() for k in ("title", "first", "middle", "last") if raw.get(k))
    return text or None


def _point(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return None
    lat, lon = raw.get("latitude"), raw.get("longitude")
    if lat in (None, "") or lon in (None, ""):
        return None
    return f"SRID=4326;POINT({float(lon)!r} {float(lat)!r})"


def convert(column: KnackColumn, raw: Any, zone: ZoneInfo) -> str | None:
    if _empty(raw):
        return None
    kind, part = column.knack_type, column.part
    if part == "point":
        return _point(raw)
    if kind == "date_time":
        if part == "end":
            return _timestamp(raw["to"], zone) if isinstance(raw, dict) and raw.get("to") else None
        return _timestamp(raw, zone)
    if kind == "connection":
        ids = [item["id"] if isinstance(item, dict) else str(item) for item in (raw if isinstance(raw, list) else [raw])]
        return json.dumps(ids) if ids else None
    if kind == "multiple_choice":
        values = [v for v in (raw if isinstance(raw, list) else [raw]) if v not in (None, "")]
        return json.dumps(values, ensure_ascii=False) if values else None
    if kind == "phone":
        return str(raw.get("full") or raw.get("formatted") or "") or None if isinstance(raw, dict) else str(raw)
    if kind == "email":
        return (raw.get("email") or None) if isinstance(raw, dict) else str(raw)
    if kind == "link":
        return (raw.get("url") or None) if isinstance(raw, dict) else str(raw)
    if kind == "name":
        return _name(raw)
    if column.type in ("number", "integer"):
        return _number(raw)
    if column.type == "boolean":
        if isinstance(raw, str):
            return "true" if raw.strip().lower() in ("yes", "true", "1") else "false"
        return "true" if raw else "false"
    if column.type in ("object", "array"):
        return json.dumps(raw, ensure_ascii=False)
    if isinstance(raw, (dict, list)):
        return json.dumps(raw, ensure_ascii=False)
    return str(raw).replace("\x00", "")


def _raw(record: dict[str, Any], column: KnackColumn) -> Any:
    if column.key is None:
        return record.get(column.name)
    if f"{column.key}_raw" in record:
        return record[f"{column.key}_raw"]
    return record.get(column.key)


# --- extract ------------------------------------------------------------------------------------------------

def extract_knack(dataset: Dataset, url: str, writer: StagedTableWriter, progress: Progress = lambda *a: None) -> Extraction:
    """Stream every record of the dataset's Knack object into ``writer``."""
    conn = parse_url(url)
    client = KnackClient(conn, dataset.id)
    started = time.monotonic()
    object_key = f"object_{dataset.knack_object_id}"
    try:
        app = client.get(f"/v1/applications/{conn.app_id}").get("application") or {}
        obj = next((o for o in app.get("objects", []) if o.get("key") == object_key), None)
        if obj is None:
            raise KnackError(f"{dataset.id}: Knack app {conn.app_id} has no {object_key}")
        zone_name = (app.get("settings") or {}).get("timezone")
        try:
            zone = knack_zone(zone_name)
        except ExtractError as exc:
            raise ExtractError(f"{dataset.id}: {exc}") from None
        columns = build_columns(dataset, obj)
        writer.write_header([c.name for c in columns])
        rows, total, page, seen = 0, None, 1, set()
        while True:
            data = client.get(f"/v1/objects/{object_key}/records", {"rows_per_page": ROWS_PER_PAGE, "page": page})
            page_total = int(data.get("total_records") or 0)
            if total is None:
                total = page_total
                log.info("%s: extracting %d Knack records from %s (%s)", dataset.id, total, object_key, zone.key)
            elif page_total != total:
                raise ExtractError(f"{dataset.id}: Knack {object_key} total_records changed during the extract ({total} → {page_total}); nothing was staged — rerun")
            records = data.get("records") or []
            batch = []
            for index, record in enumerate(records):
                record_id = record.get("id")
                if record_id in seen:
                    raise ExtractError(f"{dataset.id}: Knack record {record_id} returned twice (records moved between pages); rerun")
                seen.add(record_id)
                try:
                    batch.append([convert(c, _raw(record, c), zone) for c in columns])
                except (ValueError, TypeError, KeyError) as exc:
                    column = _failing_column(record, columns, zone)
                    raise ExtractError(f"{dataset.id}: Knack record {record_id} (row {rows + index + 1}), column {column}: {exc}") from None
            writer.write_rows(batch)
            rows += len(batch)
            progress(rows, total)
            total_pages = int(data.get("total_pages") or 0)
            if not records or rows >= total or page >= total_pages:
                break
            page += 1
    finally:
        client.close()
    total = total or 0
    if rows != total:
        raise ExtractError(f"{dataset.id}: Knack {object_key} reported {total} records but {rows} were returned; nothing was staged — rerun")
    elapsed = time.monotonic() - started
    log.info("%s: extracted %d Knack records in %.1fs (%d calls, %d retries)", dataset.id, rows, elapsed, client.calls, client.retries)
    schema = TableSchema(tuple(
        Column(c.name, c.type, c.required, "point", 4326) if c.type == "geometry" else Column(c.name, c.type, c.required)
        for c in columns
    ), primary_key=("id",))
    facts = {
        "connection": dataset.source_conn,
        "kind": "knack",
        "app_id": conn.app_id,
        "object": object_key,
        "timezone": zone.key,
        "total_records": total,
        "calls": client.calls,
        "retries": client.retries,
        "seconds": round(elapsed, 3),
    }
    return Extraction(schema=schema, rows=rows, facts=facts)


def _failing_column(record: dict[str, Any], columns: list[KnackColumn], zone: ZoneInfo) -> str:
    for column in columns:
        try:
            convert(column, _raw(record, column), zone)
        except (ValueError, TypeError, KeyError):
            return column.name
    return "?"
