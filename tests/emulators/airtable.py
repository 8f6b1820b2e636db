"""Airtable Web API emulator (list records + meta API), per reference/external-apis.md §3.

Wire behaviour reproduced:

* ``GET /v0/{baseId}/{tableIdOrName}`` and ``POST …/listRecords`` (same options in a JSON body):
  ``pageSize`` ≤ 100, ``maxRecords`` (total cap), ``offset`` tokens ``itr…/rec…`` tied to a server-side
  iterator, ``fields[]``, ``sort[i][field|direction]``, ``view``, ``cellFormat`` (``json``; ``string`` with
  ``timeZone`` + ``userLocale``), ``returnFieldsByFieldId``. ``GET …/{recordId}`` for one record.
* ``{"records": [{id, createdTime, fields}], "offset"?}``; empty values ("", [], false, null) are omitted
  from ``fields``, so an unchecked checkbox has no key.
* ``Authorization: Bearer <PAT>``; per-token scopes (``data.records:read``, ``schema.bases:read``) and base
  grants; errors are ``{"error": {"type", "message"}}`` (401 AUTHENTICATION_REQUIRED, 403
  INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND, 404 NOT_FOUND, 422 INVALID_OFFSET_VALUE /
  LIST_RECORDS_ITERATOR_NOT_AVAILABLE / UNKNOWN_FIELD_NAME / …).
* 5 requests/second per base; exceeding it gives 429 and then every request to that base gets 429 for a
  penalty period (30 s on Airtable; ``penalty_seconds`` here so tests need not wait).
* Meta API: ``GET /v0/meta/bases`` and ``GET /v0/meta/bases/{baseId}/tables`` (``include=visibleFieldIds``).

Not emulated: ``filterByFormula`` (any non-empty formula is refused with 422 INVALID_FILTER_BY_FORMULA so a
test never silently gets unfiltered data), writes, webhooks, the 50 req/s per-user limit.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from tests.emulators.base import Emulator, SlidingWindow, json_response, run_cli

READ_RECORDS = "data.records:read"
READ_SCHEMA = "schema.bases:read"
DEFAULT_SCOPES = frozenset({READ_RECORDS, READ_SCHEMA})
MAX_PAGE_SIZE = 100
RATE_LIMIT_MESSAGE = "Rate limit exceeded. Please try again later"
NO_PERMISSION_MESSAGE = ("Invalid permissions, or the requested model was not found. Check that both your user "
                         "and your token have the required permissions, and that the model names and/or ids "
                         "are correct.")

_BASE62 = string.digits + string.ascii_letters


def airtable_id(prefix: str, *parts: object) -> str:
    """A deterministic Airtable-style id: a 3-letter prefix and 14 base62 characters."""
    number = int.from_bytes(hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()[:12], "big")
    chars = []
    for _ in range(14):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return prefix + "".join(chars)


def _random_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(14))


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _is_empty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


# ------------------------------------------------------------------------------------------- data model
@dataclass
class AirtableField:
    id: str
    name: str
    type: str
    options: dict[str, Any] | None = None
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type}
        if self.options is not None:
            data["options"] = self.options
        if self.description:
            data["description"] = self.description
        return data


@dataclass
class AirtableTable:
    """A table: its schema and its records (``{"id", "createdTime", "fields"}``)."""

    name: str
    records: list[dict[str, Any]]
    fields: list[AirtableField]
    id: str
    description: str | None = None
    view_names: tuple[str, ...] = ("Grid view",)

    @classmethod
    def from_records(cls, name: str, records: Iterable[Mapping[str, Any]], fields: list[AirtableField] | None = None,
                     table_id: str | None = None) -> AirtableTable:
        """Accepts full records or bare ``fields`` dicts; infers a schema when ``fields`` is not given."""
        table_id = table_id or airtable_id("tbl", name)
        normalized = [_normalize_record(table_id, n, rec) for n, rec in enumerate(records)]
        return cls(name, normalized, fields if fields is not None else _infer_fields(table_id, normalized), table_id)

    def field_named(self, name_or_id: str) -> AirtableField | None:
        return next((f for f in self.fields if name_or_id in (f.name, f.id)), None)

    def views(self) -> list[dict[str, Any]]:
        return [{"id": airtable_id("viw", self.id, view), "name": view, "type": "grid"} for view in self.view_names]

    def schema_json(self, include_visible_fields: bool) -> dict[str, Any]:
        views = self.views()
        if include_visible_fields:
            for view in views:
                view["visibleFieldIds"] = [f.id for f in self.fields]
        data: dict[str, Any] = {"id": self.id, "name": self.name,
                                "primaryFieldId": self.fields[0].id if self.fields else airtable_id("fld", self.id),
                                "fields": [f.to_json() for f in self.fields], "views": views}
        if self.description:
            data["description"] = self.description
        return data


def _normalize_record(table_id: str, n: int, record: Mapping[str, Any]) -> dict[str, Any]:
    if "fields" in record and isinstance(record["fields"], Mapping):
        created = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=n)
        return {"id": record.get("id") or airtable_id("rec", table_id, n),
                "createdTime": record.get("createdTime") or _iso(created),
                "fields": dict(record["fields"])}
    return _normalize_record(table_id, n, {"fields": record})


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_ISO_FORMAT = {"name": "iso", "format": "YYYY-MM-DD"}
_24_HOUR = {"name": "24hour", "format": "HH:mm"}


def _infer_type(table_id: str, value: Any) -> tuple[str, dict[str, Any] | None]:
    """Best-effort field type for a seeded value, with the options the meta API would show."""
    if isinstance(value, bool):
        return "checkbox", {"icon": "check", "color": "greenBright"}
    if isinstance(value, (int, float)):
        return "number", {"precision": 0 if isinstance(value, int) else 2}
    if isinstance(value, str):
        if _DATETIME.fullmatch(value):
            return "dateTime", {"timeZone": "utc", "dateFormat": _ISO_FORMAT, "timeFormat": _24_HOUR}
        if _DATE.fullmatch(value):
            return "date", {"dateFormat": _ISO_FORMAT}
        return ("multilineText" if "\n" in value else "singleLineText"), None
    if isinstance(value, dict):
        return ("singleCollaborator", None) if "email" in value else ("barcode", None)
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, dict) and "filename" in first:
            return "multipleAttachments", {"isReversed": False}
        if isinstance(first, dict) and "email" in first:
            return "multipleCollaborators", None
        if all(isinstance(v, str) and re.fullmatch(r"rec\w{14}", v) for v in value):
            return "multipleRecordLinks", {"linkedTableId": table_id, "isReversed": False,
                                           "prefersSingleRecordLink": False}
        return "multipleSelects", {"choices": []}
    return "singleLineText", None


def _infer_fields(table_id: str, records: list[dict[str, Any]]) -> list[AirtableField]:
    fields: dict[str, AirtableField] = {}
    for record in records:
        for name, value in record["fields"].items():
            if name in fields or _is_empty(value):
                continue
            type_, options = _infer_type(table_id, value)
            fields[name] = AirtableField(airtable_id("fld", table_id, name), name, type_, options)
    for fld in fields.values():  # collect select choices so the schema parses like a real one
        if fld.type == "multipleSelects":
            names = sorted({v for r in records for v in r["fields"].get(fld.name) or [] if isinstance(v, str)})
            fld.options = {"choices": [{"id": airtable_id("sel", fld.id, n), "name": n} for n in names]}
    return list(fields.values())


@dataclass
class AirtableBase:
    id: str
    name: str
    tables: list[AirtableTable]
    window: SlidingWindow | None
    penalty_until: float = 0.0

    def table(self, id_or_name: str) -> AirtableTable | None:
        return next((t for t in self.tables if id_or_name in (t.id, t.name)), None)


@dataclass
class TokenGrant:
    scopes: set[str]
    bases: set[str] = field(default_factory=set)


@dataclass
class _ListIterator:
    """Server-side state behind an ``offset`` token: the ordered ids of the listing, frozen at page 1."""

    table_id: str
    record_ids: list[str]
    created: float


@dataclass
class _ListOptions:
    page_size: int = MAX_PAGE_SIZE
    max_records: int | None = None
    offset: str | None = None
    view: str | None = None
    fields: list[str] | None = None
    formula: str | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    cell_format: str = "json"
    time_zone: str | None = None
    user_locale: str | None = None
    by_field_id: bool = False


class AirtableError(Exception):
    """Raised inside the handlers; turned into the ``{"error": {type, message}}`` body."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message

    def response(self) -> Response:
        return json_response({"error": {"type": self.type, "message": self.message}}, status=self.status)


def _no_permission() -> AirtableError:
    return AirtableError(403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", NO_PERMISSION_MESSAGE)


def _invalid_request(message: str = "Invalid request: parameter validation failed. Check your request data."
                     ) -> AirtableError:
    return AirtableError(422, "INVALID_REQUEST_UNKNOWN", message)


# -------------------------------------------------------------------------------------------- options
def _options_from_query(args: MultiDict[str, str]) -> _ListOptions:
    sort: dict[int, dict[str, str]] = {}
    for key in args:
        match = re.fullmatch(r"sort\[(\d+)\]\[(field|direction)\]", key)
        if match:
            sort.setdefault(int(match.group(1)), {})[match.group(2)] = args[key]
    fields = args.getlist("fields[]") + args.getlist("fields")
    return _build_options({
        "pageSize": args.get("pageSize"), "maxRecords": args.get("maxRecords"), "offset": args.get("offset"),
        "view": args.get("view"), "fields": fields or None, "filterByFormula": args.get("filterByFormula"),
        "sort": [sort[i] for i in sorted(sort)], "cellFormat": args.get("cellFormat"),
        "timeZone": args.get("timeZone"), "userLocale": args.get("userLocale"),
        "returnFieldsByFieldId": args.get("returnFieldsByFieldId"),
    })


def _build_options(raw: Mapping[str, Any]) -> _ListOptions:
    try:
        page_size = int(raw.get("pageSize") or MAX_PAGE_SIZE)
        max_records = int(raw["maxRecords"]) if raw.get("maxRecords") not in (None, "") else None
    except (TypeError, ValueError):
        raise _invalid_request() from None
    if not 1 <= page_size <= MAX_PAGE_SIZE or (max_records is not None and max_records < 1):
        raise _invalid_request()
    sort = []
    for item in raw.get("sort") or []:
        if not isinstance(item, Mapping) or "field" not in item:
            raise _invalid_request()
        direction = str(item.get("direction", "asc")).lower()
        if direction not in ("asc", "desc"):
            raise _invalid_request()
        sort.append((str(item["field"]), direction))
    by_id = str(raw.get("returnFieldsByFieldId") or "").lower() in ("1", "true")
    return _ListOptions(page_size, max_records, raw.get("offset") or None, raw.get("view") or None,
                        list(raw["fields"]) if raw.get("fields") else None, raw.get("filterByFormula") or None,
                        sort, str(raw.get("cellFormat") or "json"), raw.get("timeZone"), raw.get("userLocale"), by_id)


def _string_cell(value: Any) -> str:
    """``cellFormat=string`` rendering (simplified: Airtable localises numbers and dates)."""
    if isinstance(value, list):
        return ", ".join(_string_cell(v) for v in value)
    if isinstance(value, dict):
        for key in ("name", "filename", "text", "label", "value"):
            if value.get(key):
                return str(value[key])
        return ""
    if value is True:
        return "checked"
    return str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    if _is_empty(value):
        return (2, "")
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, _string_cell(value).lower())


# ------------------------------------------------------------------------------------------- emulator
class AirtableEmulator(Emulator):
    """Airtable list-records and meta API. Seed with ``add_base``; see module docstring."""

    def __init__(self, *, rate_limit_per_second: int | None = 5, penalty_seconds: float = 30.0,
                 iterator_ttl_seconds: float = 600.0, meta_api_enabled: bool = True,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.rate_limit_per_second = rate_limit_per_second
        self.penalty_seconds = penalty_seconds
        self.iterator_ttl_seconds = iterator_ttl_seconds
        self.meta_api_enabled = meta_api_enabled  # False: the meta routes answer 404, as for a missing route
        self.bases: dict[str, AirtableBase] = {}
        self.tokens: dict[str, TokenGrant] = {}
        self._iterators: dict[str, _ListIterator] = {}

    # -------------------------------------------------------------------------------------- seeding
    def add_base(self, base_id: str, token: str,
                 tables: Mapping[str, Iterable[Mapping[str, Any]] | AirtableTable] | Iterable[AirtableTable],
                 *, name: str | None = None, scopes: Iterable[str] = DEFAULT_SCOPES) -> AirtableBase:
        """Register a base and grant ``token`` access to it. ``tables`` maps a table name to its records
        (full records or bare field dicts, schema inferred) or to an ``AirtableTable``."""
        items = tables.items() if isinstance(tables, Mapping) else ((t.name, t) for t in tables)
        built = [t if isinstance(t, AirtableTable) else AirtableTable.from_records(n, t, table_id=
                 airtable_id("tbl", base_id, n)) for n, t in items]
        window = SlidingWindow(self.rate_limit_per_second) if self.rate_limit_per_second else None
        base = AirtableBase(base_id, name or f"Base {base_id}", built, window)
        with self._lock:
            self.bases[base_id] = base
        self.grant(token, base_id, scopes)
        return base

    def grant(self, token: str, base_id: str, scopes: Iterable[str] | None = None) -> None:
        """Give ``token`` access to ``base_id``; ``scopes`` (when given) replaces the token's scopes."""
        with self._lock:
            grant = self.tokens.setdefault(token, TokenGrant(set(DEFAULT_SCOPES)))
            grant.bases.add(base_id)
            if scopes is not None:
                grant.scopes = set(scopes)

    def set_scopes(self, token: str, scopes: Iterable[str]) -> None:
        """E.g. ``set_scopes(tok, {READ_RECORDS})`` to make the meta API answer 403 for that token."""
        with self._lock:
            self.tokens[token].scopes = set(scopes)

    def expire_iterators(self) -> None:
        """Make every outstanding offset token answer 422 LIST_RECORDS_ITERATOR_NOT_AVAILABLE."""
        with self._lock:
            for iterator in self._iterators.values():
                iterator.created = float("-inf")

    def state(self) -> dict[str, Any]:
        return {"iterators": len(self._iterators)}

    # -------------------------------------------------------------------------------------- routing
    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except AirtableError as error:
            return error.response()

    def _route(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if not parts or parts[0] != "v0" or len(parts) < 2:
            raise AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")
        grant = self._authenticate(request)
        if parts[1] == "meta":
            return self._meta(request, grant, parts[2:])
        base = self._base_for(grant, parts[1], READ_RECORDS)
        method, rest = request.method, parts[2:]
        if method == "GET" and len(rest) == 1:
            return self._list_records(base, rest[0], _options_from_query(request.args))
        if method == "POST" and len(rest) == 2 and rest[1] == "listRecords":
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise AirtableError(400, "INVALID_REQUEST_BODY", "Could not parse request body")
            return self._list_records(base, rest[0], _build_options(body))
        if method == "GET" and len(rest) == 2:
            return self._get_record(base, rest[0], rest[1])
        raise AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")

    def _authenticate(self, request: Request) -> TokenGrant:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        grant = self.tokens.get(token) if token else None
        if grant is None:
            raise AirtableError(401, "AUTHENTICATION_REQUIRED", "Authentication required")
        return grant

    def _base_for(self, grant: TokenGrant, base_id: str, scope: str) -> AirtableBase:
        base = self.bases.get(base_id)
        if base is None or base_id not in grant.bases or scope not in grant.scopes:
            raise _no_permission()
        self._admit(base)
        return base

    def _admit(self, base: AirtableBase) -> None:
        """Per-base rate limit: the request that overflows the window starts a penalty period."""
        now = time.monotonic()
        with self._lock:
            if now < base.penalty_until:
                raise AirtableError(429, "RATE_LIMIT_REACHED", RATE_LIMIT_MESSAGE)
            if base.window is not None and not base.window.try_acquire(now):
                # The penalty replaces the window: once it is served the client starts afresh.
                base.penalty_until = now + self.penalty_seconds
                base.window.clear()
                raise AirtableError(429, "RATE_LIMIT_REACHED", RATE_LIMIT_MESSAGE)

    def rate_limit_response(self, request: Request, **options: Any) -> Response:
        return AirtableError(429, "RATE_LIMIT_REACHED", RATE_LIMIT_MESSAGE).response()

    def server_error_response(self, status: int, request: Request) -> Response:
        if status == 500:
            return AirtableError(500, "SERVER_ERROR", "Try again. If the problem persists, contact support.").response()
        return super().server_error_response(status, request)

    # ------------------------------------------------------------------------------------ meta API
    def _meta(self, request: Request, grant: TokenGrant, rest: list[str]) -> Response:
        if not self.meta_api_enabled:
            raise AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")
        if rest == ["bases"]:
            if READ_SCHEMA not in grant.scopes:
                raise _no_permission()
            bases = [{"id": b.id, "name": b.name, "permissionLevel": "create"}
                     for b in self.bases.values() if b.id in grant.bases]
            return json_response({"bases": bases})
        if len(rest) == 3 and rest[0] == "bases" and rest[2] == "tables":
            base = self._base_for(grant, rest[1], READ_SCHEMA)
            visible = "visibleFieldIds" in request.args.getlist("include")
            return json_response({"tables": [t.schema_json(visible) for t in base.tables]})
        raise AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")

    # --------------------------------------------------------------------------------- list records
    def _table(self, base: AirtableBase, id_or_name: str) -> AirtableTable:
        table = base.table(id_or_name)
        if table is None:
            raise _no_permission()
        return table

    def _list_records(self, base: AirtableBase, table_ref: str, options: _ListOptions) -> Response:
        table = self._table(base, table_ref)
        self._validate(table, options)
        by_id = {r["id"]: r for r in table.records}
        if options.offset:
            iterator_id, ids, start = self._resume(table, options.offset)
        else:
            iterator_id, ids, start = None, self._ordered_ids(table, options), 0
        page_ids = ids[start:start + options.page_size]
        payload: dict[str, Any] = {"records": [self._render(table, by_id[i], options) for i in page_ids if i in by_id]}
        following = start + options.page_size
        if following < len(ids):
            if iterator_id is None:
                iterator_id = _random_id("itr")
                with self._lock:
                    self._iterators[iterator_id] = _ListIterator(table.id, ids, time.monotonic())
            payload["offset"] = f"{iterator_id}/{ids[following]}"
        return json_response(payload)

    def _validate(self, table: AirtableTable, options: _ListOptions) -> None:
        for name in (options.fields or []) + [f for f, _ in options.sort]:
            if table.field_named(name) is None:
                raise AirtableError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
        known_views = set(table.view_names) | {v["id"] for v in table.views()}
        if options.view and options.view not in known_views:
            raise AirtableError(422, "VIEW_NAME_NOT_FOUND", f'Could not find view "{options.view}" in table')
        if options.formula:
            raise AirtableError(422, "INVALID_FILTER_BY_FORMULA",
                                "The formula for filtering records is invalid (formulas are not emulated)")
        if options.cell_format not in ("json", "string"):
            raise _invalid_request()
        if options.cell_format == "string" and not (options.time_zone and options.user_locale):
            raise _invalid_request("The cellFormat 'string' requires the timeZone and userLocale parameters")

    def _ordered_ids(self, table: AirtableTable, options: _ListOptions) -> list[str]:
        records = list(table.records)
        for name, direction in reversed(options.sort):  # stable sorts, last key first
            fld = table.field_named(name)
            assert fld is not None
            records.sort(key=lambda r: _sort_key(r["fields"].get(fld.name)), reverse=direction == "desc")
        ids = [r["id"] for r in records]
        return ids[:options.max_records] if options.max_records else ids

    def _resume(self, table: AirtableTable, offset: str) -> tuple[str, list[str], int]:
        match = re.fullmatch(r"(itr\w{14})/(rec\w{14})", offset)
        with self._lock:
            iterator = self._iterators.get(match.group(1)) if match else None
        if match is None or iterator is None or iterator.table_id != table.id \
                or match.group(2) not in iterator.record_ids:
            raise AirtableError(422, "INVALID_OFFSET_VALUE", f"The value of offset {offset} is invalid")
        if time.monotonic() - iterator.created > self.iterator_ttl_seconds:
            raise AirtableError(422, "LIST_RECORDS_ITERATOR_NOT_AVAILABLE", "The list records iterator is no "
                                "longer available. Restart the listing from the first page.")
        return match.group(1), iterator.record_ids, iterator.record_ids.index(match.group(2))

    def _render(self, table: AirtableTable, record: dict[str, Any], options: _ListOptions) -> dict[str, Any]:
        wanted = {fld.name for n in options.fields if (fld := table.field_named(n))} if options.fields else None
        fields: dict[str, Any] = {}
        for name, value in record["fields"].items():
            if _is_empty(value) or (wanted is not None and name not in wanted):
                continue  # Airtable omits empty cells entirely
            key = name
            if options.by_field_id:
                fld = table.field_named(name)
                key = fld.id if fld else name
            fields[key] = _string_cell(value) if options.cell_format == "string" else value
        return {"id": record["id"], "createdTime": record["createdTime"], "fields": fields}

    def _get_record(self, base: AirtableBase, table_ref: str, record_id: str) -> Response:
        table = self._table(base, table_ref)
        record = next((r for r in table.records if r["id"] == record_id), None)
        if record is None:
            raise AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")
        return json_response(self._render(table, record, _ListOptions()))


# ------------------------------------------------------------------------------------ seed generator
_SERVICE_KINDS = ["Legal aid", "English classes", "Health clinic", "Job training", "Food pantry", "Tax help"]
_LANGUAGES = ["English", "Español", "Tiếng Việt", "中文", "العربية", "Kreyòl ayisyen", "Русский", "Français"]
_NEIGHBORHOODS = ["Fishtown", "Kensington", "South Philadelphia", "Center City", "Germantown", "West Philadelphia",
                  "Olney", "Point Breeze", "Manayunk", "Frankford", "Logan", "Port Richmond", "Chinatown",
                  "Northern Liberties", "Mantua", "Tacony", "Mayfair", "Roxborough", "Grays Ferry", "Fairhill"]
_PEOPLE = [("Ana Núñez", "ana.nunez"), ("Thanh Nguyễn", "thanh.nguyen"), ("Zoë O'Connor", "zoe.oconnor"),
           ("Kwame Mensah", "kwame.mensah"), ("Łucja Kowalska", "lucja.kowalska")]
_STREETS = ["Market St", "Chestnut St", "Walnut St", "N Broad St", "Frankford Ave", "Germantown Ave",
            "E Passyunk Ave", "W Girard Ave", "Spruce St", "Lancaster Ave"]


def service_address(i: int) -> str:
    """The ``Address`` cell of the i-th generated service: mostly street addresses, sometimes not geocodable."""
    if i % 25 == 24:
        return "PO Box 1234"
    if i % 25 == 23:
        return "N 12th St & Market St"
    return f"{100 + (i * 17) % 4800} {_STREETS[i % len(_STREETS)]}"


def _collaborator(k: int) -> dict[str, str]:
    name, handle = _PEOPLE[k % len(_PEOPLE)]
    return {"id": airtable_id("usr", handle), "email": f"{handle}@phila.gov", "name": name}


def _attachment(i: int, k: int) -> dict[str, Any]:
    att_id = airtable_id("att", i, k)
    url = f"https://v5.airtableusercontent.com/v3/u/{att_id}/photo-{i}-{k}.jpg"
    thumb = {size: {"url": f"{url}?thumb={size}", "width": w, "height": w * 3 // 4}
             for size, w in (("small", 48), ("large", 512), ("full", 3000))}
    return {"id": att_id, "url": url, "filename": f"photo-{i}-{k}.jpg", "size": 150_000 + i, "type": "image/jpeg",
            "width": 1600, "height": 1200, "thumbnails": thumb}


def all_cell_types_tables(n_records: int, *, seed: int = 0) -> dict[str, AirtableTable]:
    """Two linked tables: "Services" (``n_records`` rows, a field of every cell type in reference §3.4) and
    "Neighborhoods" (20 rows) that its link, lookup, rollup and count fields refer to. Deterministic."""
    services_id, hoods_id = airtable_id("tbl", seed, "Services"), airtable_id("tbl", seed, "Neighborhoods")

    def fid(table: str, name: str) -> str:
        return airtable_id("fld", seed, table, name)

    def choices(names: list[str], colors: tuple[str, ...] = ("blueLight2", "greenLight2", "redLight2")) -> dict:
        return {"choices": [{"id": airtable_id("sel", seed, n), "name": n, "color": colors[k % len(colors)]}
                            for k, n in enumerate(names)]}

    link, hood_name, hood_pop = fid("S", "Neighborhood"), fid("N", "Name"), fid("N", "Population")
    date_time_options = {"timeZone": "America/New_York", "dateFormat": _ISO_FORMAT, "timeFormat": _24_HOUR}
    spec: list[tuple[str, str, dict[str, Any] | None]] = [
        ("Name", "singleLineText", None),
        ("Address", "singleLineText", None),
        ("Notes", "multilineText", None),
        ("Description", "richText", None),
        ("Email", "email", None),
        ("Website", "url", None),
        ("Phone", "phoneNumber", None),
        ("Capacity", "number", {"precision": 0}),
        ("Budget", "currency", {"precision": 2, "symbol": "$"}),
        ("Completion", "percent", {"precision": 0}),
        ("Rating", "rating", {"icon": "star", "max": 5, "color": "yellowBright"}),
        ("Duration", "duration", {"durationFormat": "h:mm"}),
        ("Record No", "autoNumber", None),
        ("Neighborhood Count", "count", {"isValid": True, "recordLinkFieldId": link}),
        ("Active", "checkbox", {"icon": "check", "color": "greenBright"}),
        ("Category", "singleSelect", choices(_SERVICE_KINDS)),
        ("Languages", "multipleSelects", choices(_LANGUAGES)),
        ("Start Date", "date", {"dateFormat": _ISO_FORMAT}),
        ("Updated At", "dateTime", date_time_options),
        ("Created", "createdTime", {"result": {"type": "dateTime", "options": date_time_options}}),
        ("Last Modified", "lastModifiedTime", {"isValid": True, "referencedFieldIds": [],
                                               "result": {"type": "dateTime", "options": date_time_options}}),
        ("Neighborhood", "multipleRecordLinks", {"linkedTableId": hoods_id, "inverseLinkFieldId": fid("N", "Services"),
                                                 "isReversed": False, "prefersSingleRecordLink": False}),
        ("Neighborhood Name", "multipleLookupValues", {"isValid": True, "recordLinkFieldId": link,
                                                       "fieldIdInLinkedTable": hood_name,
                                                       "result": {"type": "singleLineText"}}),
        ("Neighborhood Population", "rollup", {"isValid": True, "recordLinkFieldId": link,
                                               "fieldIdInLinkedTable": hood_pop, "referencedFieldIds": [],
                                               "result": {"type": "number", "options": {"precision": 0}}}),
        ("Label", "formula", {"formula": "CONCATENATE({Name}, ' – ', {Category})", "isValid": True,
                              "referencedFieldIds": [fid("S", "Name"), fid("S", "Category")],
                              "result": {"type": "singleLineText"}}),
        ("Owner", "singleCollaborator", None),
        ("Created By", "createdBy", None),
        ("Last Modified By", "lastModifiedBy", None),
        ("Reviewers", "multipleCollaborators", None),
        ("Photos", "multipleAttachments", {"isReversed": False}),
        ("Barcode", "barcode", None),
        ("Open Map", "button", None),
        ("Summary", "aiText", {"prompt": ["Summarise ", {"field": {"fieldId": fid("S", "Notes")}}],
                               "referencedFieldIds": [fid("S", "Notes")]}),
    ]
    service_fields = [AirtableField(fid("S", name), name, type_, options) for name, type_, options in spec]

    hood_ids = [airtable_id("rec", seed, "N", k) for k in range(len(_NEIGHBORHOODS))]
    service_ids = [airtable_id("rec", seed, "S", i) for i in range(n_records)]
    start = datetime(2023, 1, 2, 14, 0, tzinfo=timezone.utc)
    hood_links: dict[int, list[str]] = {k: [] for k in range(len(_NEIGHBORHOODS))}

    services = []
    for i, rec_id in enumerate(service_ids):
        created = start + timedelta(minutes=7 * i)
        hoods = [] if i % 15 == 14 else sorted({i % 20, (i * 7) % 20}) if i % 3 == 0 else [i % 20]
        for k in hoods:
            hood_links[k].append(rec_id)
        kind = _SERVICE_KINDS[i % len(_SERVICE_KINDS)]
        name = f"{kind} — {_NEIGHBORHOODS[i % 20]} #{i + 1}" + (" (café ☕)" if i % 9 == 0 else "")
        fields: dict[str, Any] = {
            "Name": name,
            "Address": service_address(i),
            "Notes": "" if i % 10 == 9 else f"Walk-ins welcome.\nSe habla español. Ngày {i % 28 + 1}.",
            "Description": f"**{kind}** for _{_NEIGHBORHOODS[i % 20]}_ residents\n",
            "Email": f"service{i + 1}@phila.gov",
            "Website": f"https://www.phila.gov/services/{i + 1}",
            "Phone": f"(215) 555-{i % 10000:04d}",
            "Capacity": 10 + (i * 13) % 190,
            "Budget": round(2500 + i * 19.99, 2),
            "Completion": (i % 101) / 100,
            "Rating": 1 + i % 5,
            "Duration": 1800 * (1 + i % 8),
            "Record No": i + 1,
            "Neighborhood Count": len(hoods),
            "Active": i % 3 != 0,  # False is omitted on the wire
            "Category": kind,
            "Languages": [] if i % 7 == 6 else [_LANGUAGES[i % 8], _LANGUAGES[(i + 3) % 8]],
            "Start Date": (created + timedelta(days=30)).date().isoformat(),
            "Updated At": _iso(created + timedelta(days=3, hours=i % 24)),
            "Created": _iso(created),
            "Last Modified": _iso(created + timedelta(days=3, hours=i % 24)),
            "Neighborhood": [hood_ids[k] for k in hoods],
            "Neighborhood Name": [_NEIGHBORHOODS[k] for k in hoods],
            "Neighborhood Population": sum(5000 + k * 1371 for k in hoods),
            "Label": f"{name} – {kind}",
            "Owner": _collaborator(i),
            "Created By": _collaborator(0),
            "Last Modified By": _collaborator(i + 1),
            "Reviewers": [] if i % 5 == 4 else [_collaborator(i + 2), _collaborator(i + 3)],
            "Photos": [] if i % 4 == 3 else [_attachment(i, k) for k in range(1 + i % 2)],
            "Barcode": {"text": f"0{712345000000 + i}", "type": "upce"},
            "Open Map": {"label": "Open map", "url": None if i % 6 == 5 else
                         f"https://maps.phila.gov/?q={service_address(i).replace(' ', '+')}"},
            "Summary": ({"state": "error", "errorType": "emptyDependency", "isStale": False, "value": None}
                        if i % 11 == 10 else
                        {"state": "generated", "isStale": i % 2 == 0, "value": f"{kind} in {_NEIGHBORHOODS[i % 20]}."}),
        }
        services.append({"id": rec_id, "createdTime": _iso(created), "fields": fields})

    hood_fields = [AirtableField(hood_name, "Name", "singleLineText"),
                   AirtableField(hood_pop, "Population", "number", {"precision": 0}),
                   AirtableField(fid("N", "Services"), "Services", "multipleRecordLinks",
                                 {"linkedTableId": services_id, "inverseLinkFieldId": link, "isReversed": False,
                                  "prefersSingleRecordLink": False})]
    hoods_records = [{"id": hood_ids[k], "createdTime": _iso(start - timedelta(days=30, minutes=-k)),
                      "fields": {"Name": hood, "Population": 5000 + k * 1371, "Services": hood_links[k]}}
                     for k, hood in enumerate(_NEIGHBORHOODS)]
    return {
        "Services": AirtableTable("Services", services, service_fields, services_id),
        "Neighborhoods": AirtableTable("Neighborhoods", hoods_records, hood_fields, hoods_id),
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="appEmulatorBase01:patEmulatorToken", help="BASE_ID:TOKEN")
    parser.add_argument("--records", type=int, default=100, help="rows in the generated Services table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-limit", type=int, default=5, help="requests/second per base; 0 disables")
    parser.add_argument("--penalty-seconds", type=float, default=30.0)


def _build(args: argparse.Namespace) -> AirtableEmulator:
    emulator = AirtableEmulator(rate_limit_per_second=args.rate_limit or None, penalty_seconds=args.penalty_seconds,
                                host=args.host, port=args.port)
    base_id, _, token = args.base.partition(":")
    emulator.add_base(base_id, token, all_cell_types_tables(args.records, seed=args.seed))
    return emulator


if __name__ == "__main__":
    run_cli("Airtable API emulator", _build, _add_arguments)
