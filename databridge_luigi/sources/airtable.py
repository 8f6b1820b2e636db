"""Extract an Airtable table into a staged table, with pyairtable.

Connection URL: ``airtable://:TOKEN@api.airtable.com`` (HTTPS; TOKEN is a personal access token), or
``airtable+http://:TOKEN@HOST:PORT`` for a local emulator. The base is the dataset's ``source.base``, the table
its ``source.table`` (a table name, spaces allowed, or a ``tbl…`` id).

* **Every page** (pyairtable follows ``offset``; no ``maxRecords`` cap). Records are spooled to a temporary
  JSON-lines file, so memory stays bounded whatever the table size, then written as CSV in a second pass.
* **Columns**: from the meta API (``schema.bases:read``) in the table's field order, with types; when the
  token may not read the schema (403/404), the union of field names over all records in first-seen order,
  with types inferred from the values. Fields seen in records but missing from the schema are appended.
  Names are lower-case snake_case (accents folded to ASCII, other characters → ``_``); a name that collides
  after that gets ``_2``, ``_3``…. The record id and ``createdTime`` are not columns (as in the old tool).
* **Cells** (reference external-apis.md §3.4): attachments, linked records, lookups, multi-selects,
  collaborators, barcode, button, AI text → JSON; a checkbox with no key is ``false``; ``date`` → date,
  ``dateTime``/``createdTime``/``lastModifiedTime`` → ISO-8601 timestamps (UTC); numbers at full precision;
  other empty cells → NULL. A formula/rollup error value (``{"error": …}``/``{"specialValue": …}``) → NULL.
* **Limits**: at most 5 requests/second per base client-side; a 429 waits the 30 s penalty
  (``PENALTY_SECONDS``, env ``DATABRIDGE_AIRTABLE_PENALTY_SECONDS``) and retries; 5xx, timeouts and resets
  are retried with back-off; other 4xx fail at once. An expired list iterator (422
  ``LIST_RECORDS_ITERATOR_NOT_AVAILABLE``) restarts the listing from the first page.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from pyairtable import Api
from tenacity import RetryCallState

from ..http_limits import RateLimiter, Retryable, endpoint, retrying
from ..config import Dataset
from ..connections import redact, register_secret
from ..schema import Column, TableSchema
from ..staging import StagedTableWriter
from .sql import ExtractError, Extraction

log = logging.getLogger(__name__)

PAGE_SIZE = 100
REQUESTS_PER_SECOND = 5
PENALTY_SECONDS = 30.0
TIMEOUT = (10.0, 120.0)
MAX_ATTEMPTS = 6
ITERATOR_RESTARTS = 2
Progress = Callable[..., None]

# Airtable field type → staged schema type.
_TYPES = {
    "number": "number", "currency": "number", "percent": "number", "rating": "number", "duration": "number",
    "autoNumber": "integer", "count": "integer",
    "checkbox": "boolean",
    "date": "date",
    "dateTime": "datetime", "createdTime": "datetime", "lastModifiedTime": "datetime",
    "multipleSelects": "array", "multipleRecordLinks": "array", "multipleLookupValues": "array",
    "multipleCollaborators": "array", "multipleAttachments": "array",
    "singleCollaborator": "object", "createdBy": "object", "lastModifiedBy": "object",
    "barcode": "object", "button": "object", "aiText": "object",
}
_COMPUTED = ("formula", "rollup")


class AirtableError(ExtractError):
    """An Airtable call failed in a way retrying will not fix (``status``: the HTTP status, if it was one)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _IteratorExpired(Exception):
    pass


@dataclass(frozen=True)
class AirtableConnection:
    endpoint_url: str
    token: str


def parse_url(url: str) -> AirtableConnection:
    parts = urlsplit(url)
    scheme = {"airtable": "https", "airtable+https": "https", "airtable+http": "http"}.get(parts.scheme.lower())
    token = unquote(parts.password or parts.username or "")
    if scheme is None or not parts.hostname or not token:
        raise ExtractError(f"not an Airtable connection URL (airtable://:TOKEN@api.airtable.com): {redact(url)}")
    register_secret(token)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return AirtableConnection(f"{scheme}://{host}", token)


def penalty_seconds() -> float:
    return float(os.environ.get("DATABRIDGE_AIRTABLE_PENALTY_SECONDS", PENALTY_SECONDS))




class LimitedApi(Api):
    """pyairtable's Api with a per-base request rate, the 429 penalty and retries of transient failures.
    pyairtable's own urllib3 retry is off: its ~3 s back-off cannot serve Airtable's 30 s penalty."""

    def __init__(self, token: str, *, endpoint_url: str, dataset_id: str):
        super().__init__(token, timeout=TIMEOUT, retry_strategy=None, endpoint_url=endpoint_url)
        self.dataset_id = dataset_id
        self.limiter = RateLimiter(REQUESTS_PER_SECOND, period=1.1)
        self.calls = 0
        self.rate_limited = 0
        self.retries = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return retrying(MAX_ATTEMPTS, self._before_sleep)(self._request_once, method, url, *args, **kwargs)
        except Retryable as exc:
            raise AirtableError(f"{self.dataset_id}: extract: Airtable {method} {endpoint(url)}: "
                                f"gave up after {MAX_ATTEMPTS} attempts: {exc}") from None

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: Airtable call failed (%s); retry %d in %.1fs", self.dataset_id, exc, state.attempt_number,
                    state.next_action.sleep if state.next_action else 0)

    def _request_once(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        self.limiter.wait()
        self.calls += 1
        try:
            return super().request(method, url, *args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            detail = " ".join(str(a) for a in exc.args[1:]) or (exc.response.text[:300] if exc.response is not None else "")
            if status == 429:
                self.rate_limited += 1
                raise Retryable("HTTP 429 rate limit (penalty)", wait=penalty_seconds() + 0.25) from None
            if status >= 500:
                raise Retryable(f"HTTP {status}") from None
            if status == 422 and "LIST_RECORDS_ITERATOR_NOT_AVAILABLE" in detail:
                raise _IteratorExpired(detail) from None
            raise AirtableError(f"{self.dataset_id}: extract: Airtable {method} {endpoint(url)}: HTTP {status}: {redact(detail)}",
                                status) from None
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise Retryable(f"{type(exc).__name__}: {redact(str(exc))[:200]}") from None
        except ValueError:  # a 200 whose JSON body was cut short
            raise Retryable("response body is not complete JSON") from None


# --- columns ------------------------------------------------------------------------------------------------

def snake_name(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", ascii_name)  # camelCase → camel_case
    text = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
    return (text or "field")[:55]


@dataclass
class AirtableColumn:
    source: str  # the Airtable field name
    name: str
    type: str
    airtable_type: str | None = None  # None: inferred from values
    seen: set[str] = field(default_factory=set)  # inferred: Python kinds seen

    @property
    def is_checkbox(self) -> bool:
        return self.airtable_type == "checkbox" or (self.airtable_type is None and self.seen == {"bool"})


def _meta_columns(meta: dict[str, Any], table_ref: str) -> list[AirtableColumn] | None:
    for table in meta.get("tables", []):
        if table.get("name") == table_ref or table.get("id") == table_ref:
            out = []
            for f in table.get("fields", []):
                kind = f.get("type", "")
                if kind in _COMPUTED:
                    result = ((f.get("options") or {}).get("result") or {}).get("type", "")
                    schema_type = _TYPES.get(result, "string")
                    schema_type = schema_type if schema_type in ("number", "integer", "boolean", "date", "datetime") else "string"
                else:
                    schema_type = _TYPES.get(kind, "string")
                out.append(AirtableColumn(f["name"], "", schema_type, kind))
            return out
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "str"


def _inferred_type(seen: set[str]) -> str:
    if seen == {"bool"}:
        return "boolean"
    if seen == {"number"}:
        return "number"
    if seen == {"list"}:
        return "array"
    if seen and seen <= {"dict", "list"}:
        return "object"
    return "string"


def _name_columns(columns: list[AirtableColumn], dataset_id: str) -> None:
    used: set[str] = set()
    for column in columns:
        base = snake_name(column.source)
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        if name != base:
            log.warning("%s: Airtable field %r becomes column %r (%r is taken)", dataset_id, column.source, name, base)
        used.add(name)
        column.name = name


# --- values -------------------------------------------------------------------------------------------------

def _convert(column: AirtableColumn, present: bool, value: Any) -> str | None:
    if not present or value is None or value == "" or value == []:
        return "false" if column.is_checkbox else None
    kind = column.type
    if isinstance(value, dict) and column.airtable_type in _COMPUTED + ("multipleLookupValues",) and ("error" in value or "specialValue" in value):
        return None
    if kind in ("array", "object"):
        return json.dumps(value, ensure_ascii=False)
    if kind == "boolean":
        return "true" if value else "false"
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if column.airtable_type in _COMPUTED:
                return None  # a formula error shown as text
            raise ValueError(f"{value!r} is not a number")
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("\x00", "")


# --- extract ------------------------------------------------------------------------------------------------

def extract_airtable(dataset: Dataset, url: str, writer: StagedTableWriter, progress: Progress = lambda *a: None) -> Extraction:
    """Stream every record of the dataset's Airtable table into ``writer``."""
    conn = parse_url(url)
    base_id, table_ref = dataset.airtable_base, dataset.source_table
    if not base_id:
        raise ExtractError(f"{dataset.id}: no Airtable base (source.base)")
    api = LimitedApi(conn.token, endpoint_url=conn.endpoint_url, dataset_id=dataset.id)
    started = time.monotonic()
    try:
        columns, schema_from = _schema(api, base_id, table_ref, dataset.id)
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8", prefix="airtable-", suffix=".jsonl") as spool:
            rows = _spool(api, base_id, table_ref, spool, dataset.id, progress)
            by_source = {c.source: c for c in columns}
            spool.seek(0)
            for line in spool:  # union of names in first-seen order, and the kinds of value each holds
                for name, value in json.loads(line).items():
                    column = by_source.get(name)
                    if column is None:
                        column = by_source[name] = AirtableColumn(name, "", "string")
                        columns.append(column)
                    if column.airtable_type is None:
                        column.seen.add(_kind(value))
            for column in columns:
                if column.airtable_type is None:
                    column.type = _inferred_type(column.seen)
            _name_columns(columns, dataset.id)
            writer.write_header([c.name for c in columns])
            spool.seek(0)
            batch: list[list[str | None]] = []
            written = 0
            for line in spool:
                fields = json.loads(line)
                try:
                    batch.append([_convert(c, c.source in fields, fields.get(c.source)) for c in columns])
                except (ValueError, TypeError) as exc:
                    bad = next((c.name for c in columns if _safe(c, fields) is None), "?")
                    raise ExtractError(f"{dataset.id}: Airtable row {written + len(batch) + 1}, column {bad}: {exc}") from None
                if len(batch) >= 5000:
                    writer.write_rows(batch)
                    written += len(batch)
                    batch = []
            writer.write_rows(batch)
            written += len(batch)
    finally:
        api.session.close()
    if written != rows:
        raise ExtractError(f"{dataset.id}: Airtable listing returned {rows} records but {written} rows were written")
    elapsed = time.monotonic() - started
    log.info("%s: extracted %d Airtable records in %.1fs (%d calls, %d 429s)", dataset.id, rows, elapsed, api.calls, api.rate_limited)
    schema = TableSchema(tuple(Column(c.name, c.type) for c in columns))
    facts = {
        "connection": dataset.source_conn,
        "kind": "airtable",
        "base": base_id,
        "table": table_ref,
        "schema_from": schema_from,
        "records": rows,
        "calls": api.calls,
        "rate_limited": api.rate_limited,
        "retries": api.retries,
        "seconds": round(elapsed, 3),
    }
    return Extraction(schema=schema, rows=rows, facts=facts)


def _safe(column: AirtableColumn, fields: dict[str, Any]) -> str | None:
    try:
        _convert(column, column.source in fields, fields.get(column.source))
        return "ok"
    except (ValueError, TypeError):
        return None


def _schema(api: LimitedApi, base_id: str, table_ref: str, dataset_id: str) -> tuple[list[AirtableColumn], str]:
    try:
        meta = api.request("GET", api.build_url("meta/bases", base_id, "tables"))
    except AirtableError as exc:
        if exc.status not in (403, 404):  # an outage of the meta API is a failure, not a reason to guess the types
            raise
        log.info("%s: Airtable meta API not available (%s); columns come from the records", dataset_id, exc)
        return [], "records"
    columns = _meta_columns(meta or {}, table_ref)
    if columns is None:
        raise AirtableError(f"{dataset_id}: Airtable base {base_id} has no table {table_ref!r}")
    return columns, "meta"


def _spool(api: LimitedApi, base_id: str, table_ref: str, spool: Any, dataset_id: str, progress: Progress) -> int:
    table = api.table(base_id, table_ref)
    for restart in range(ITERATOR_RESTARTS + 1):
        spool.seek(0)
        spool.truncate()
        rows, seen = 0, set()
        try:
            for page in table.iterate(page_size=PAGE_SIZE):
                for record in page:
                    if record["id"] in seen:
                        raise ExtractError(f"{dataset_id}: Airtable record {record['id']} listed twice; rerun")
                    seen.add(record["id"])
                    spool.write(json.dumps(record.get("fields") or {}, ensure_ascii=False) + "\n")
                rows += len(page)
                progress(rows, None)
            return rows
        except _IteratorExpired:
            log.warning("%s: Airtable list iterator expired after %d records; restarting (%d)", dataset_id, rows, restart + 1)
    raise AirtableError(f"{dataset_id}: Airtable list iterator kept expiring (LIST_RECORDS_ITERATOR_NOT_AVAILABLE)")
