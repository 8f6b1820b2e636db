"""CARTO v2 API emulator (SQL, COPY and Batch APIs) backed by a real PostGIS database.

Tests point the library (or the independent ``carto`` SDK) at ``emu.base_url(user)`` or
``emu.connection_url(user)`` and get the wire behaviour of CARTO's SQL API server as recorded in
``shared/reference/external-apis.md`` §1 and §8 (where they differ, §8 — the genuine server — wins):
routing by path or Host, API-key roles, the JSON result shape and value serialization, error bodies and
status codes, COPY FROM/TO streaming, Batch jobs, rate limiting, plus faults injected on demand.

SQL really runs on PostgreSQL, and the emulator's database is laid out like a genuine CARTO user database:
each account has a role ``carto_<user>``; keyed requests run as that role, unkeyed ones as ``publicuser``
(``SET ROLE`` on a superuser connection, then the role's own settings from ``ALTER ROLE … SET`` are applied,
as a login as that role would: its ``search_path`` and its ``statement_timeout``, which is where CARTO keeps
the SQL API's statement timeout). A **non-organization** account (``non_organization=[user]``; give it a
database of its own, as CARTO does, since it owns that database's ``public``) keeps its tables in ``public`` with
``search_path = public, cartodb``; an **organization member** (the default, so several accounts can share
one database) has a schema named after the user and ``search_path = "<user>", cartodb, public``.
``carto_functions.sql`` (beside this file) provides, in schema ``cartodb``, ``CDB_CartodbfyTable`` (bigint
``cartodb_id``, the four CARTO triggers) and the quota functions.

Run it as a process with ``python -m tests.emulators.carto --dsn DSN --account user:key --port N``; a
test in another process then drives it through ``/__emulator__/`` (state, faults, rate_limits, requests,
accounts, jobs/pause, jobs/resume), the same admin prefix as the other emulators in ``base.py``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import queue
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import generators, pq, sql
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

__all__ = [
    "Account",
    "CartoEmulator",
    "ENDPOINT_GROUPS",
    "FAULTS",
    "Fault",
    "RequestRecord",
    "main",
]

FUNCTIONS_SQL = Path(__file__).with_name("carto_functions.sql")

DEFAULT_QUOTA_BYTES = 100 * 1024**3
BATCH_PAYLOAD_LIMIT = 16 * 1024
MAX_QUEUED_JOBS = 64
COPY_TIMEOUT = "5h"
BATCH_QUERY_TIMEOUT = "12h"
COPY_READ_SIZE = 64 * 1024
ADMIN_PREFIX = "/__emulator__/"
PUBLIC_ROLE = "publicuser"
TILE_ROLE = "tileuser"

# --- Messages, word for word from the real server (external-apis.md §1, §8) ------------------------

UNAUTHORIZED = "Unauthorized"
PERMISSION_DENIED = "permission denied"
MISSING_SQL = "You must indicate a sql query"
COPY_SQL_MISSING = "SQL is missing"
COPY_SQL_NOT_COPY = "SQL must start with COPY"
NO_ROWS_COPIED = "No rows copied"
DB_QUOTA_EXCEEDED = "DB Quota exceeded"
INVALID_JOB_SQL = "You must indicate a valid SQL"
NO_JOB_CLASS = "there is no job class for the provided query"
RATE_LIMIT_MESSAGE = "You are over platform's limits. Please contact us to know more details"
TIMEOUT_MESSAGE = (
    "You are over platform's limits: SQL query timeout error. Refactor your query before running again "
    "or contact CARTO support for more details."
)
_TIMEOUT_MARKERS = (
    "statement timeout",
    "RuntimeError: Execution of function interrupted by signal",
    "canceling statement due to user request",
)


def user_not_found_message(user: str) -> str:
    return f"Sorry, we can't find CARTO user '{user}'. Please check that you have entered the correct domain."


def payload_too_large_message(size: int) -> str:
    return (
        f"Your payload is too large: {size} bytes. Max size allowed is {BATCH_PAYLOAD_LIMIT} bytes "
        f"({BATCH_PAYLOAD_LIMIT // 1024}kb). Are you trying to import data?. "
        "Please, check out import api http://docs.cartodb.com/cartodb-platform/import-api/"
    )


# --- Endpoint groups and faults ------------------------------------------------------------------------

ENDPOINT_GROUPS = ("query", "copy_from", "copy_to", "job_create", "job_get", "job_delete")
FAULTS = (
    "rate_limit",
    "statement_timeout",
    "http_500",
    "http_502",
    "http_503",
    "reset",
    "slow",
    "midstream_error",
    "copy_abort_after_bytes",
)
_FAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "midstream_error": ("query", "copy_to"),
    "copy_abort_after_bytes": ("copy_from",),
}


@dataclass
class Fault:
    """One injected fault: served to the next ``times`` matching requests of ``group`` (None = forever)."""

    group: str
    kind: str
    times: int | None = 1
    match: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, group: str, text: str) -> bool:
        if self.exhausted or group != self.group:
            return False
        return self.match is None or self.match.lower() in text.lower()


@dataclass
class RequestRecord:
    """What one request looked like on the wire, for tests that assert client behaviour."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_length: int = 0
    q: str | None = None
    user: str | None = None
    group: str | None = None
    status: int | None = None
    fault: str | None = None
    credentials: str | None = None  # where the key came from: "basic", "query" or "body" (None: no key)
    api_key: str | None = None  # the key the request authenticated with (the Authorization header is logged redacted)

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass
class Account:
    """An emulated CARTO user. Mutable at run time (e.g. ``emu.account("u").statement_timeout_ms = 50``)."""

    user: str
    master_key: str
    regular_keys: set[str] = field(default_factory=set)
    statement_timeout_ms: int | None = None  # overrides the role's statement_timeout while set (test control)
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    organization_member: bool = True

    @property
    def role(self) -> str:
        return f"carto_{self.user}"

    @property
    def schema(self) -> str:
        """Where the account's tables live: its own schema in an organization, else ``public``."""
        return self.user if self.organization_member else "public"

    @property
    def search_path(self) -> str:
        if self.organization_member:
            return f'"{self.user}", cartodb, public'
        return "public, cartodb"

    @property
    def user_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"carto-emulator:{self.user}"))


# --- Errors --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered with the SQL API's JSON error body ``{"error":[msg], "context", "detail", "hint"}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        context: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.context = context
        self.detail = detail
        self.hint = hint
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": [self.message]}
        for key in ("context", "detail", "hint"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


def is_timeout_message(message: str) -> bool:
    return any(marker in message for marker in _TIMEOUT_MARKERS)


def timeout_error() -> ApiError:
    return ApiError(429, TIMEOUT_MESSAGE, context="limit", detail="datasource")


def error_for(message: str, *, detail: str | None = None, hint: str | None = None,
              status: int = 400, map_permission: bool = True) -> ApiError:
    """The real server's error factory: timeouts → 429 body; "permission denied" → 403; else ``status``."""
    if is_timeout_message(message):
        return timeout_error()
    if map_permission and PERMISSION_DENIED in message:
        status = 403
    return ApiError(status, message, detail=detail, hint=hint)


class _ResetConnection(Exception):
    """Raised to drop the client's connection without any response."""


# --- Value and field serialization (PSQL / pg-types semantics, external-apis.md §1.3) ------------------

# Built-in type OIDs the real server knows by name; any other OID (enums, domains, extension types
# other than geometry/geography/raster) is reported as "unknown(<oid>)". 114 really is upper case.
_BUILTIN_TYPES: dict[int, str] = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 22: "int2vector",
    23: "int4", 24: "regproc", 25: "text", 26: "oid", 27: "tid", 28: "xid", 29: "cid", 30: "oidvector",
    32: "pg_ddl_command", 71: "pg_type", 75: "pg_attribute", 81: "pg_proc", 83: "pg_class", 114: "JSON",
    142: "xml", 143: "_xml", 194: "pg_node_tree", 199: "_json", 210: "smgr", 600: "point", 601: "lseg",
    602: "path", 603: "box", 604: "polygon", 628: "line", 629: "_line", 650: "cidr", 700: "float4",
    701: "float8", 705: "unknown", 718: "circle", 719: "_circle", 790: "money", 791: "_money",
    829: "macaddr", 869: "inet", 1000: "_bool", 1001: "_bytea", 1002: "_char", 1003: "_name",
    1005: "_int2", 1006: "_int2vector", 1007: "_int4", 1008: "_regproc", 1009: "_text", 1010: "_tid",
    1011: "_xid", 1012: "_cid", 1013: "_oidvector", 1014: "_bpchar", 1015: "_varchar", 1016: "_int8",
    1017: "_point", 1018: "_lseg", 1019: "_path", 1020: "_box", 1021: "_float4", 1022: "_float8",
    1027: "_polygon", 1028: "_oid", 1033: "aclitem", 1034: "_aclitem", 1040: "_macaddr", 1041: "_inet",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp", 1115: "_timestamp",
    1182: "_date", 1183: "_time", 1184: "timestamptz", 1185: "_timestamptz", 1186: "interval",
    1187: "_interval", 1231: "_numeric", 1263: "_cstring", 1266: "timetz", 1270: "_timetz", 1560: "bit",
    1561: "_bit", 1562: "varbit", 1563: "_varbit", 1700: "numeric", 1790: "refcursor", 2201: "_refcursor",
    2202: "regprocedure", 2203: "regoper", 2204: "regoperator", 2205: "regclass", 2206: "regtype",
    2207: "_regprocedure", 2208: "_regoper", 2209: "_regoperator", 2210: "_regclass", 2211: "_regtype",
    2249: "record", 2275: "cstring", 2276: "any", 2277: "anyarray", 2278: "void", 2279: "trigger",
    2280: "language_handler", 2281: "internal", 2283: "anyelement", 2287: "_record", 2776: "anynonarray",
    2949: "_txid_snapshot", 2950: "uuid", 2951: "_uuid", 2970: "txid_snapshot", 3115: "fdw_handler",
    3220: "pg_lsn", 3221: "_pg_lsn", 3310: "tsm_handler", 3500: "anyenum", 3614: "tsvector",
    3615: "tsquery", 3642: "gtsvector", 3643: "_tsvector", 3644: "_gtsvector", 3645: "_tsquery",
    3734: "regconfig", 3735: "_regconfig", 3769: "regdictionary", 3770: "_regdictionary", 3802: "jsonb",
    3807: "_jsonb", 3831: "anyrange", 3838: "event_trigger", 3904: "int4range", 3905: "_int4range",
    3906: "numrange", 3907: "_numrange", 3908: "tsrange", 3909: "_tsrange", 3910: "tstzrange",
    3911: "_tstzrange", 3912: "daterange", 3913: "_daterange", 3926: "int8range", 3927: "_int8range",
    4089: "regnamespace", 4090: "_regnamespace", 4096: "regrole", 4097: "_regrole",
}
_SPATIAL_TYPES = ("geometry", "geography", "raster")
# Labels indexed by the PostGIS typmod's type number, as the real server labels them.
_WKB_TYPES = (
    "Unknown", "Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon",
    "GeometryCollection", "CircularString", "CompoundCurve", "CurvePolygon", "MultiCurvePolygon",
    "PolyhedralSurface", "Triangle", "TIN",
)

_INT_OIDS = frozenset({21, 23, 26})
_FLOAT_OIDS = frozenset({20, 700, 701, 1700})  # CARTO parses int8 and numeric with parseFloat too
_INT_ARRAY_OIDS = frozenset({1005, 1007})
_FLOAT_ARRAY_OIDS = frozenset({1016, 1021, 1022, 1231})
_STRING_ARRAY_OIDS = frozenset({1008, 1009, 1014, 1015, 2951})
_DATE_OIDS = frozenset({1082, 1114, 1184})
_DATE_ARRAY_OIDS = frozenset({1115, 1182, 1185})
_JSON_OIDS = frozenset({114, 3802})
_JSON_ARRAY_OIDS = frozenset({199, 3807})
_BOOL_OID, _BOOL_ARRAY_OID, _BYTEA_OID, _INTERVAL_OID = 16, 1000, 17, 1186

_TIMESTAMP_RE = re.compile(r"(\d+)-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(\.\d+)?")
_DATE_RE = re.compile(r"^(\d+)-(\d{2})-(\d{2})$")
_TZ_RE = re.compile(r"([Z|+\-])(\d{2})?:?(\d{2})?")
_NUM = r"([+-]?\d+)"
_INTERVAL_RE = re.compile(
    rf"({_NUM}\s+years?)?\s*({_NUM}\s+mons?)?\s*({_NUM}\s+days?)?\s*(([+-])?(\d\d):(\d\d):(\d\d))?"
)


def js_number(text: str) -> Any:
    """JavaScript parseFloat + JSON.stringify: integral values print without ".0"; NaN/±Infinity as strings."""
    value = float(text)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return int(Decimal(repr(value)))  # JS prints the shortest digits: 2^63 → 9223372036854776000
    return value


def js_date(text: str) -> str | None:
    """A PG date/timestamp(tz) as CARTO prints it: UTC, second precision, ``YYYY-MM-DDTHH:MM:SSZ``.

    Dates become midnight; timestamps without zone are server-local (UTC); values that cannot be
    represented (infinity, BC, out of range) come out as null like pg-types' failed parse.
    """
    match = _TIMESTAMP_RE.search(text)
    try:
        if match is None:
            date_only = _DATE_RE.match(text)
            if date_only is None:
                return None
            moment = dt.datetime(*(int(part) for part in date_only.groups()))
        else:
            if text.endswith("BC"):
                return None
            moment = dt.datetime(*(int(part) for part in match.groups()[:6]))
            time_part = text.split(" ")[1] if " " in text else ""
            zone = _TZ_RE.search(time_part)
            if zone is not None and zone.group(1) in "+-":
                offset = dt.timedelta(hours=int(zone.group(2) or 0), minutes=int(zone.group(3) or 0))
                moment = moment - offset if zone.group(1) == "+" else moment + offset
    except (ValueError, OverflowError):
        return None
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z")


def js_interval(text: str) -> dict[str, int]:
    """pg-types' interval object: only non-zero parts, whole seconds."""
    match = _INTERVAL_RE.match(text)
    parts: dict[str, int] = {}
    if match is None:
        return parts
    for key, group in (("years", 2), ("months", 4), ("days", 6), ("hours", 9), ("minutes", 10), ("seconds", 11)):
        if match.group(group):
            parts[key] = int(match.group(group))
    if match.group(8) == "-":
        for key in ("hours", "minutes", "seconds"):
            if key in parts:
                parts[key] = -parts[key]
    return {key: value for key, value in parts.items() if value != 0}


def parse_pg_array(text: str) -> list[Any]:
    """Parse a PostgreSQL array literal into nested lists of strings (None for NULL)."""
    if text.startswith("["):  # explicit bounds, e.g. "[0:1]={a,b}"
        text = text[text.index("=") + 1:]
    pos = 0

    def level() -> list[Any]:
        nonlocal pos
        pos += 1  # "{"
        items: list[Any] = []
        if text[pos] == "}":
            pos += 1
            return items
        while True:
            char = text[pos]
            if char == "{":
                items.append(level())
            elif char == '"':
                pos += 1
                chunk: list[str] = []
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    chunk.append(text[pos])
                    pos += 1
                pos += 1
                items.append("".join(chunk))
            else:
                end = pos
                while text[end] not in ",}":
                    end += 1
                token = text[pos:end].strip()
                pos = end
                items.append(None if token.upper() == "NULL" else token)
            separator = text[pos]
            pos += 1
            if separator == "}":
                return items

    return level()


def _map_array(items: list[Any], convert: Callable[[str], Any]) -> list[Any]:
    return [_map_array(item, convert) if isinstance(item, list) else (None if item is None else convert(item))
            for item in items]


def generic_type(name: str) -> str:
    """The real server's coarse type for a PG type name (substring rules, arrays get "[]")."""
    if "bool" in name:
        generic = "boolean"
    elif re.search("int|float|numeric", name):
        generic = "number"
    elif re.search("text|char|unknown", name):
        generic = "string"
    elif re.search("date|time", name):
        generic = "date"
    else:
        generic = name
    return generic + "[]" if name.startswith("_") else generic


def spatial_typmod(typmod: int) -> dict[str, Any]:
    """wkbtype/dims/srid decoded from a PostGIS typmod the way the real server does (even for -1)."""
    srid = ((typmod & 0x0FFFFF00) - (typmod & 0x10000000)) >> 8
    lwtype = (typmod & 0x000000FC) >> 2
    dims = 2 + ((typmod & 0x02) >> 1) + (typmod & 0x01)
    info: dict[str, Any] = {}
    if lwtype < len(_WKB_TYPES):
        info["wkbtype"] = _WKB_TYPES[lwtype]
    info["dims"] = dims
    info["srid"] = srid
    return info


class TypeRegistry:
    """Maps result column OIDs to field specs and row values, like CARTO's Node stack does."""

    def __init__(self, spatial_oids: Mapping[int, str]) -> None:
        self._names = {**_BUILTIN_TYPES, **spatial_oids}

    def field_spec(self, oid: int, typmod: int) -> dict[str, Any]:
        name = self._names.get(oid)
        if name is None:
            return {"type": f"unknown({oid})"}
        if name in _SPATIAL_TYPES:
            return {"type": generic_type(name), **spatial_typmod(typmod)}
        return {"type": generic_type(name), "pgtype": name}

    def fields(self, columns: list[tuple[str, int, int]]) -> dict[str, Any]:
        return {name: self.field_spec(oid, typmod) for name, oid, typmod in columns}

    def value(self, oid: int, raw: bytes | None) -> Any:
        if raw is None:
            return None
        text = raw.decode("utf-8")
        if oid in _INT_OIDS:
            return int(text)
        if oid in _FLOAT_OIDS:
            return js_number(text)
        if oid == _BOOL_OID:
            return text == "t"
        if oid in _DATE_OIDS:
            return js_date(text)
        if oid in _JSON_OIDS:
            return json.loads(text)
        if oid == _INTERVAL_OID:
            return js_interval(text)
        if oid == _BYTEA_OID:
            return {"type": "Buffer", "data": list(bytes.fromhex(text[2:]))} if text.startswith("\\x") else text
        if oid in _INT_ARRAY_OIDS:
            return _map_array(parse_pg_array(text), int)
        if oid in _FLOAT_ARRAY_OIDS:
            return _map_array(parse_pg_array(text), js_number)
        if oid in _STRING_ARRAY_OIDS:
            return parse_pg_array(text)
        if oid in _DATE_ARRAY_OIDS:
            return _map_array(parse_pg_array(text), js_date)
        if oid in _JSON_ARRAY_OIDS:
            return _map_array(parse_pg_array(text), json.loads)
        if oid == _BOOL_ARRAY_OID:
            return _map_array(parse_pg_array(text), lambda item: item == "t")
        return text


# --- Running SQL the way node-postgres does (simple protocol, every result set) -----------------------


@dataclass
class PgError:
    message: str
    sqlstate: str | None = None
    detail: str | None = None
    hint: str | None = None

    @classmethod
    def from_result(cls, result: pq.abc.PGresult) -> PgError:
        def field_text(code: pq.DiagnosticField) -> str | None:
            value = result.error_field(code)
            return value.decode("utf-8", "replace") if value is not None else None

        message = field_text(pq.DiagnosticField.MESSAGE_PRIMARY)
        if message is None:
            message = (result.error_message or b"unknown error").decode("utf-8", "replace").strip()
        return cls(message, field_text(pq.DiagnosticField.SQLSTATE),
                   field_text(pq.DiagnosticField.MESSAGE_DETAIL), field_text(pq.DiagnosticField.MESSAGE_HINT))

    @classmethod
    def from_exception(cls, exc: BaseException) -> PgError:
        diag = getattr(exc, "diag", None)
        message = getattr(diag, "message_primary", None) or str(exc).strip() or type(exc).__name__
        return cls(message, getattr(diag, "sqlstate", None), getattr(diag, "message_detail", None),
                   getattr(diag, "message_hint", None))

    def api_error(self, *, map_permission: bool = True) -> ApiError:
        return error_for(self.message, detail=self.detail, hint=self.hint, map_permission=map_permission)


_TAG_RE = re.compile(r"([A-Za-z]+) ?(\d+ )?(\d+)?")


@dataclass
class Outcome:
    """What one ``q`` produced: rows of every statement, the last row description, the NPG row count."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[tuple[str, int, int]] = field(default_factory=list)
    row_count: int | None = None
    notices: list[tuple[str, str]] = field(default_factory=list)
    error: PgError | None = None

    def note_command(self, tag: bytes | None) -> None:
        """node-postgres keeps the count of the last tag that carries one ("CREATE TABLE" does not)."""
        match = _TAG_RE.match((tag or b"").decode("ascii", "replace"))
        if match and match.group(3):
            self.row_count = int(match.group(3))

    @property
    def total_rows(self) -> int:
        return self.row_count or len(self.rows)


def _columns(result: pq.abc.PGresult) -> list[tuple[str, int, int]]:
    return [((result.fname(i) or b"").decode("utf-8"), result.ftype(i), result.fmod(i))
            for i in range(result.nfields)]


def run_sql(conn: psycopg.Connection[Any], q: str, types: TypeRegistry, outcome: Outcome) -> Outcome:
    """Send ``q`` as one simple-protocol query in single-row mode and collect every result.

    Single-row mode lets rows that arrived before an error survive, which is how the real server ends up
    answering 200 with both ``rows`` and ``error``.
    """
    pgconn = conn.pgconn
    try:
        pgconn.send_query(q.encode("utf-8"))
        pgconn.set_single_row_mode()
        conn.wait(generators.send(pgconn))
        current: list[tuple[str, int, int]] | None = None
        while (result := conn.wait(generators.fetch(pgconn))) is not None:
            status = result.status
            if status == pq.ExecStatus.SINGLE_TUPLE:
                if current is None:
                    current = outcome.columns = _columns(result)
                outcome.rows.append({name: types.value(oid, result.get_value(0, i))
                                     for i, (name, oid, _) in enumerate(current)})
            elif status == pq.ExecStatus.TUPLES_OK:
                outcome.columns = _columns(result)
                current = None
                outcome.note_command(result.command_status)
            elif status == pq.ExecStatus.COMMAND_OK:
                outcome.note_command(result.command_status)
            elif status == pq.ExecStatus.COPY_OUT:
                outcome.note_command(_drain_copy_out(conn).command_status)
            elif status == pq.ExecStatus.COPY_IN:
                # node-postgres has no stream for a COPY FROM STDIN sent as a query, so it fails it.
                conn.wait(generators.copy_end(pgconn, b"No source stream defined"))
            elif status == pq.ExecStatus.FATAL_ERROR:
                outcome.error = PgError.from_result(result)
    except psycopg.Error as exc:
        outcome.error = PgError.from_exception(exc)
    return outcome


def _drain_copy_out(conn: psycopg.Connection[Any]) -> pq.abc.PGresult:
    while True:
        item = conn.wait(generators.copy_from(conn.pgconn))
        if not isinstance(item, memoryview | bytes):
            return item


# --- SQL API query wrapper (rows_per_page/page/order_by), from PSQL's QueryWrapper behaviour ---------

_SELECT_RE = re.compile(r"^\s*SELECT\s", re.IGNORECASE)
_INTO_RE = re.compile(r"\sINTO\s+([^\s]+|\"([^\"]|\"\")*\")\s*$", re.IGNORECASE)


def _int_param(value: Any) -> int | None:
    match = re.match(r"\s*([+-]?\d+)", str(value)) if value is not None else None
    return int(match.group(1)) if match else None


def wrap_query(q: str, params: Mapping[str, Any]) -> str:
    """Strip a trailing ``;`` and, when paging/sorting is asked for, wrap a plain SELECT."""
    query = re.sub(r";\s*$", "", q)
    order_by = params.get("order_by")
    limit = _int_param(params.get("rows_per_page"))
    page = _int_param(params.get("page"))
    clauses = ""
    if isinstance(order_by, str) and order_by:
        clauses += f' ORDER BY "{order_by}"'
        sort_order = str(params.get("sort_order", "")).upper()
        if sort_order in ("ASC", "DESC"):
            clauses += f" {sort_order}"
    if limit is not None and page is not None:
        clauses += f" LIMIT {limit} OFFSET {page * limit}"
    if not clauses:
        return query
    query = re.sub(r"--.*(\n|$)", " ", query)
    if _SELECT_RE.match(query) and not _INTO_RE.search(query):
        return f"SELECT * FROM ({query}) AS cdbq_1{clauses}"
    return query


# --- Rate limiting (GCRA with redis-cell's semantics, external-apis.md §1.4) --------------------------


@dataclass
class RateLimit:
    limit: int
    period: float
    burst: int


class RateLimiter:
    """Per user and endpoint group generic cell rate algorithm, answering like ``CL.THROTTLE``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, RateLimit] = {}
        self._tat: dict[tuple[str, str], float] = {}

    def configure(self, group: str, limit: int, period: float, burst: int | None) -> None:
        with self._lock:
            self._limits[group] = RateLimit(limit, period, burst if burst is not None else limit)
            self._tat = {key: tat for key, tat in self._tat.items() if key[1] != group}

    def clear(self) -> None:
        with self._lock:
            self._limits.clear()
            self._tat.clear()

    def check(self, user: str, group: str) -> tuple[bool, dict[str, str]] | None:
        """(blocked, headers) or None when the group is not rate limited."""
        with self._lock:
            config = self._limits.get(group)
            if config is None:
                return None
            now = time.monotonic()
            emission = config.period / config.limit
            tolerance = emission * config.burst
            tat = self._tat.get((user, group), now)
            new_tat = max(tat, now) + emission
            diff = now - (new_tat - tolerance)
            if diff < 0:
                blocked, retry, ttl = True, -diff, tat - now
            else:
                blocked, retry, ttl = False, -1.0, new_tat - now
                self._tat[(user, group)] = new_tat
            spare = tolerance - ttl
            remaining = int(spare / emission) if spare > -emission else 0
        headers = {
            "Carto-Rate-Limit-Limit": str(config.burst),
            "Carto-Rate-Limit-Remaining": str(remaining),
            "Carto-Rate-Limit-Reset": str(int(ttl)),
        }
        if blocked:
            headers["Retry-After"] = str(int(retry) + 1)
        elif remaining == 0:
            headers["Retry-After"] = str(int(retry) + 2)
        return blocked, headers


def rate_limit_error(headers: Mapping[str, str]) -> ApiError:
    return ApiError(429, RATE_LIMIT_MESSAGE, context="limit", detail="rate-limit", headers=headers)


# --- Batch SQL API jobs (external-apis.md §1.6) -----------------------------------------------------

_FINAL_STATUSES = frozenset({"done", "failed", "cancelled", "unknown"})
_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "cancelled", "unknown", "skipped"}),
    "running": frozenset({"done", "failed", "cancelled", "pending", "unknown"}),
}


def iso_now() -> str:
    """``Date.prototype.toISOString()``: UTC with milliseconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _valid_transition(current: str, new: str) -> bool:
    return new in _TRANSITIONS.get(current, frozenset())


@dataclass
class Job:
    """A Batch API job. ``query`` keeps the wire shape: a string, a list of {query,status}, or a fallback object."""

    job_id: str
    user: str
    kind: str  # "simple" | "multiple" | "fallback"
    query: Any
    status: str = "pending"
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""
    failed_reason: str | None = None
    connection: psycopg.Connection[Any] | None = None

    def __post_init__(self) -> None:
        self.updated_at = self.updated_at or self.created_at

    def serialize(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "user": self.user,
            "query": json.loads(json.dumps(self.query)),
            "job_id": self.job_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status": self.status,
        }
        if self.failed_reason is not None:
            body["failed_reason"] = self.failed_reason
        return body

    def set_status(self, new: str, reason: str | None = None) -> None:
        if not _valid_transition(self.status, new):
            raise ApiError(400, f"Cannot set status from {self.status} to {new}")
        self.status = new
        self.updated_at = iso_now()
        if new == "failed" and reason:
            self.failed_reason = reason

    def items(self) -> list[dict[str, Any]]:
        if self.kind == "multiple":
            return self.query
        if self.kind == "fallback":
            return self.query["query"]
        return []


def build_job(user: str, query: Any) -> Job:
    """The real server's JobFactory: string → simple, list → multiple, {"query":[…]} → fallback."""
    if not query:
        raise ApiError(400, INVALID_JOB_SQL)
    job_id = str(uuid.uuid4())
    if isinstance(query, str):
        return Job(job_id, user, "simple", query)
    if isinstance(query, list) and all(
        isinstance(item, str) or (isinstance(item, dict) and isinstance(item.get("query"), str)) for item in query
    ):
        items = [{"query": item, "status": "pending"} if isinstance(item, str)
                 else {"query": item["query"], "status": "pending"} for item in query]
        return Job(job_id, user, "multiple", items)
    if isinstance(query, dict) and isinstance(query.get("query"), list) and all(
        isinstance(item, dict) and isinstance(item.get("query"), str) for item in query["query"]
    ):
        fallback = {key: value for key, value in query.items() if key in ("onsuccess", "onerror")}
        items = []
        for item in query["query"]:
            entry = {"query": item["query"]}
            entry.update({key: item[key] for key in ("onsuccess", "onerror") if isinstance(item.get(key), str)})
            entry["status"] = "pending"
            items.append(entry)
        return Job(job_id, user, "fallback", {"query": items, **fallback})
    raise ApiError(400, NO_JOB_CLASS)


def _render_fallback(template: str, job: Job, error: str | None) -> str:
    return (template.replace("<%= job_id %>", job.job_id)
            .replace("<%= error_message %>", error or ""))


# --- The emulator --------------------------------------------------------------------------------------

_ROUTE_RE = re.compile(r"^(?:/user/(?P<user>[^/]+))?/api/(?:v1|v2)/sql(?P<rest>(?:\.[A-Za-z0-9]+)?/?|/.*)$")
_ENDPOINT_GROUP = {
    "query": "query", "copyfrom": "copy_from", "copyto": "copy_to",
    "job_create": "job_create", "job_get": "job_get", "job_delete": "job_delete",
}
_KNOWN_FORMATS = ("json", "geojson", "topojson", "csv", "svg", "shp", "kml", "spatialite", "geopackage",
                  "arraybuffer")
_LOGGED_HEADERS_REDACTED = ("authorization", "cookie")


class _EmulatorRequest(Request):
    max_form_memory_size = 2 * 1024 * 1024  # real limit is 1 MB of POST payload; be lenient


class _QuietHandler(WSGIRequestHandler):
    """No per-request access log; real errors still reach stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class _Call:
    """State of one request while it moves through the middleware-like steps."""

    request: Request
    record: RequestRecord
    endpoint: str
    user: str
    job_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    body_params: dict[str, Any] = field(default_factory=dict)
    account: Account | None = None
    fault: Fault | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return _ENDPOINT_GROUP[self.endpoint]


class CartoEmulator:
    """A local CARTO SQL/COPY/Batch API server over a PostGIS database (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        accounts: Mapping[str, str],
        *,
        regular_keys: Mapping[str, str] | None = None,
        statement_timeout_ms: int | None = None,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        non_organization: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._dsn = dsn
        self._host = host
        self._port = port
        individual = set(non_organization)
        if len(individual) > 1:
            raise ValueError(f"non-organization accounts {sorted(individual)} cannot share one database: each owns its public schema")
        if individual - set(accounts):
            raise ValueError(f"non_organization names unknown account(s) {sorted(individual - set(accounts))}")
        # The role's statement_timeout (ALTER ROLE … SET at install) is CARTO's per-user SQL API timeout.
        self._role_timeout_ms = statement_timeout_ms
        self._accounts: dict[str, Account] = {
            user: Account(user, key, quota_bytes=quota_bytes, organization_member=user not in individual)
            for user, key in accounts.items()
        }
        for user, key in (regular_keys or {}).items():
            self._accounts[user].regular_keys.add(key)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._records: list[RequestRecord] = []
        self._rate_limiter = RateLimiter()
        self._jobs: dict[str, Job] = {}
        self._job_queue: queue.Queue[str | None] = queue.Queue()
        self._jobs_running = threading.Event()
        self._jobs_running.set()
        self._stopping = threading.Event()
        self._types: TypeRegistry | None = None
        self._server: BaseWSGIServer | None = None
        self._threads: list[threading.Thread] = []
        db_host = psycopg.conninfo.conninfo_to_dict(dsn).get("host")
        self._db_host = str(db_host) if db_host else "localhost"

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> CartoEmulator:
        """Prepare the database (roles, schemas, functions) and serve on a background thread."""
        self._install()
        self._server = make_server(self._host, self._port, self, threaded=True, request_handler=_QuietHandler)
        self._port = self._server.server_port
        self._stopping.clear()
        self._job_queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name="carto-emulator-http", daemon=True),
            threading.Thread(target=self._job_loop, name="carto-emulator-batch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and the Batch worker; cancels a running job's query."""
        self._stopping.set()
        self._jobs_running.set()
        self._job_queue.put(None)
        with self._lock:
            connections = [job.connection for job in self._jobs.values() if job.connection is not None]
        for conn in connections:
            _cancel_quietly(conn)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def __enter__(self) -> CartoEmulator:
        return self.start() if self._server is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def schema(self, user: str) -> str:
        """The schema ``user``'s tables live in (``public`` for a non-organization account)."""
        return self._accounts[user].schema

    def base_url(self, user: str) -> str:
        """Path-form base URL, as carto-python and on-prem installs use it."""
        return f"{self.url}/user/{user}"

    def connection_url(self, user: str) -> str:
        """The project's connection-URL form, ``carto+http://user:key@host:port/user/<user>``."""
        key = self._accounts[user].master_key
        return f"carto+http://{quote(user, safe='')}:{quote(key, safe='')}@{self._host}:{self._port}/user/{user}"

    # -- test controls ----------------------------------------------------------------------------------

    def account(self, user: str) -> Account:
        return self._accounts[user]

    def inject(self, group: str, fault: str, times: int | None = 1, *, match: str | None = None,
               **options: Any) -> Fault:
        """Serve ``fault`` to the next ``times`` requests of ``group`` whose SQL contains ``match``.

        Options: rate_limit → retry_after (1), limit (1), remaining (0), reset (retry_after);
        slow → seconds (5); midstream_error → message (a statement timeout), keep_rows (half);
        copy_abort_after_bytes → after_bytes (1024), mode ("reset" or "error"), message, status (400).
        """
        if group not in ENDPOINT_GROUPS:
            raise ValueError(f"unknown endpoint group {group!r}; expected one of {ENDPOINT_GROUPS}")
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        allowed = _FAULT_GROUPS.get(fault)
        if allowed is not None and group not in allowed:
            raise ValueError(f"fault {fault!r} applies only to {allowed}")
        injected = Fault(group, fault, times, match, dict(options))
        with self._lock:
            self._faults.append(injected)
        return injected

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_rate_limit(self, group: str, limit: int, period: float, *, burst: int | None = None) -> None:
        """Enable rate limiting of ``group``: ``limit`` requests per ``period`` seconds (burst = limit)."""
        if group not in ENDPOINT_GROUPS:
            raise ValueError(f"unknown endpoint group {group!r}")
        self._rate_limiter.configure(group, limit, period, burst)

    def clear_rate_limits(self) -> None:
        self._rate_limiter.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def pause_jobs(self) -> None:
        """Keep new Batch jobs pending until ``resume_jobs()``."""
        self._jobs_running.clear()

    def resume_jobs(self) -> None:
        self._jobs_running.set()

    def job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._jobs[job_id].serialize()

    # -- database setup ---------------------------------------------------------------------------------

    def _install(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('carto_emulator_install'))")
            for role in (PUBLIC_ROLE, TILE_ROLE):
                _ensure_role(conn, role, login=False)
            conn.execute(FUNCTIONS_SQL.read_text())
            database = conn.info.dbname
            for account in self._accounts.values():
                self._install_account(conn, account, database)
            spatial = conn.execute(
                "SELECT oid, typname FROM pg_type WHERE typname = ANY(%s)", [list(_SPATIAL_TYPES)]
            ).fetchall()
            conn.execute("SELECT pg_advisory_unlock(hashtext('carto_emulator_install'))")
        self._types = TypeRegistry({int(oid): str(name) for oid, name in spatial})

    def _install_account(self, conn: psycopg.Connection[Any], account: Account, database: str) -> None:
        role, schema = sql.Identifier(account.role), sql.Identifier(account.schema)
        _ensure_role(conn, account.role, login=True)
        if account.organization_member:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, role))
            conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(schema, role))
        else:  # the account's database is its own: it may create in public (PostgreSQL 15 no longer lets PUBLIC)
            conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(
            schema, sql.Identifier(PUBLIC_ROLE), sql.Identifier(TILE_ROLE)))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = {}").format(
            role, sql.Identifier(database), sql.SQL(account.search_path)))
        if self._role_timeout_ms is not None:
            conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = {}").format(
                role, sql.Identifier(database), sql.Literal(self._role_timeout_ms)))
        else:  # an earlier emulator on this database may have set one
            conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET statement_timeout").format(role, sql.Identifier(database)))
        conn.execute("SELECT cartodb.CDB_SetUserQuotaInBytes(%s, %s)", [account.schema, account.quota_bytes])

    @contextmanager
    def _session(self, role: str, account: Account, timeout: int | str | None) -> Iterator[psycopg.Connection[Any]]:
        conn = self._open_session(role, account, timeout)
        try:
            yield conn
        finally:
            conn.close()

    def _open_session(self, role: str, account: Account, timeout: int | str | None) -> psycopg.Connection[Any]:
        """An autocommit connection acting as ``role`` as a login as that role would: the account's database
        search_path, then the role's own settings (``ALTER ROLE … SET``: search_path, statement_timeout, …).
        ``timeout`` overrides statement_timeout as the genuine server does for COPY (5 h) and Batch (12 h);
        None keeps the role's (the SQL API). Sessions run in UTC."""
        conn = psycopg.connect(self._dsn, autocommit=True)
        try:
            conn.execute(sql.SQL(
                "SET ROLE {}; SET search_path = {}; RESET statement_timeout; RESET lock_timeout; "
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; "
                "SET client_encoding = 'UTF8'"
            ).format(sql.Identifier(role), sql.SQL(account.search_path)))
            settings = conn.execute(
                "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = %s AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) "
                "ORDER BY s.setdatabase", [role]).fetchall()
            for (setting,) in settings:
                name, _, value = str(setting).partition("=")
                conn.execute("SELECT set_config(%s, %s, false)", [name, value])
            if timeout is None and account.statement_timeout_ms is not None:
                timeout = account.statement_timeout_ms
            if timeout is not None:
                conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(timeout)))
        except BaseException:
            conn.close()
            raise
        return conn

    # -- WSGI entry point --------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = _EmulatorRequest(environ)
        if request.path.startswith(ADMIN_PREFIX):
            return self._admin(request)(environ, start_response)
        record = RequestRecord(
            method=request.method,
            path=request.path,
            query=request.args.to_dict(),
            headers={key: (value.split(" ", 1)[0] + " ***" if key.lower() in _LOGGED_HEADERS_REDACTED else value)
                     for key, value in request.headers.items()},
        )
        with self._lock:
            self._records.append(record)
        call: _Call | None = None
        try:
            call = self._route(request, record)
            response = self._process(call) if call is not None else _not_found_route(request)
        except _ResetConnection:
            record.status = None
            _reset_socket(environ)
            raise ConnectionAbortedError("connection reset by the CARTO emulator (injected fault)") from None
        except ApiError as err:
            response = self._error_response(err)
        except psycopg.OperationalError:  # the real server's answer when it cannot reach the user database
            response = self._error_response(ApiError(500, "cannot connect to the database"))
        if call is not None:
            for key, value in call.headers.items():
                response.headers.setdefault(key, value)
        record.status = response.status_code
        if not response.is_streamed:
            _drain(request)
        return response(environ, start_response)

    def _admin(self, request: Request) -> Response:
        """Test controls over HTTP, for an emulator running in another process (same prefix as base.py)."""
        action = request.path[len(ADMIN_PREFIX):].strip("/")
        spec = dict(request.get_json(force=True, silent=True) or {}) if request.method == "POST" else {}
        try:
            if action == "state" and request.method == "GET":
                with self._lock:
                    body = {"requests": [asdict(r) for r in self._records],
                            "jobs": [job.serialize() for job in self._jobs.values()]}
                return _json_response(body, 200)
            if action == "faults" and request.method == "POST":
                self.inject(spec.pop("group"), spec.pop("fault"), spec.pop("times", 1), match=spec.pop("match", None),
                            **spec)
            elif action == "faults" and request.method == "DELETE":
                self.clear_faults()
            elif action == "rate_limits" and request.method == "POST":
                self.set_rate_limit(spec["group"], int(spec["limit"]), float(spec["period"]), burst=spec.get("burst"))
            elif action == "rate_limits" and request.method == "DELETE":
                self.clear_rate_limits()
            elif action == "requests" and request.method == "DELETE":
                self.clear_requests()
            elif action == "accounts" and request.method == "POST":
                account = self.account(spec["user"])
                if "statement_timeout_ms" in spec:
                    account.statement_timeout_ms = spec["statement_timeout_ms"]
            elif action in ("jobs/pause", "jobs/resume") and request.method == "POST":
                (self.pause_jobs if action.endswith("pause") else self.resume_jobs)()
            else:
                return _json_response({"error": f"unknown admin action {action!r}"}, 404)
        except (KeyError, TypeError, ValueError) as exc:
            return _json_response({"error": f"bad admin request: {exc}"}, 400)
        return _json_response({"ok": True}, 200)

    def _route(self, request: Request, record: RequestRecord) -> _Call | None:
        match = _ROUTE_RE.match(request.path)
        if match is None:
            return None
        user = match.group("user") or _user_from_host(request.host)
        rest = match.group("rest")
        method = request.method
        job_id: str | None = None
        if rest in ("", "/") or rest.startswith("."):
            endpoint = "query"
        elif rest in ("/copyfrom", "/copyfrom/") and method == "POST":
            endpoint = "copyfrom"
        elif rest in ("/copyto", "/copyto/") and method in ("GET", "POST"):
            endpoint = "copyto"
        elif rest in ("/job", "/job/") and method == "POST":
            endpoint = "job_create"
        elif rest.startswith("/job/") and rest.count("/") == 2 and method in ("GET", "DELETE"):
            endpoint = "job_get" if method == "GET" else "job_delete"
            job_id = rest[len("/job/"):]
        else:
            return None
        record.user = user
        record.group = _ENDPOINT_GROUP[endpoint]
        return _Call(request, record, endpoint, user, job_id)

    def _process(self, call: _Call) -> Response:
        """The real server's middleware order: params, user, rate limit, authorization, handler."""
        self._read_params(call)
        if call.endpoint == "job_create":
            payload = json.dumps(call.body_params, separators=(",", ":"), ensure_ascii=False)
            if len(payload) > BATCH_PAYLOAD_LIMIT:
                raise ApiError(400, payload_too_large_message(len(payload)))
        fault_response = self._apply_fault(call)
        if fault_response is not None:
            return fault_response
        call.headers["Carto-User"] = call.user
        account = self._accounts.get(call.user)
        if account is None:
            raise ApiError(404, user_not_found_message(call.user))
        call.account = account
        call.headers["Carto-User-Id"] = account.user_id
        limited = self._rate_limiter.check(call.user, call.group)
        if limited is not None:
            blocked, headers = limited
            call.headers.update(headers)
            if blocked:
                raise rate_limit_error(headers)
        level, role = self._authorize(call, account)
        call.headers["Vary"] = "Authorization"
        handler = {
            "query": self._handle_query,
            "copyfrom": self._handle_copy_from,
            "copyto": self._handle_copy_to,
            "job_create": self._handle_job_create,
            "job_get": self._handle_job_get,
            "job_delete": self._handle_job_delete,
        }[call.endpoint]
        return handler(call, account, level, role)

    def _read_params(self, call: _Call) -> None:
        """Query string merged with the parsed body (body wins); COPY FROM never parses its body."""
        request = call.request
        call.params = request.args.to_dict()
        if call.endpoint != "copyfrom":
            data = request.get_data(cache=True)
            call.record.body_length = len(data)
            if request.mimetype == "application/json":
                parsed = request.get_json(silent=True)
                if parsed is None and data.strip():
                    raise ApiError(400, "Unexpected token in JSON body")
                call.body_params = parsed if isinstance(parsed, dict) else {}
            else:
                call.body_params = request.form.to_dict()
            call.params.update(call.body_params)
        if call.endpoint == "job_create":
            query = call.body_params.get("query", call.params.get("query"))
            call.record.q = query if isinstance(query, str) or query is None else json.dumps(query)
        elif call.endpoint in ("job_get", "job_delete"):
            call.record.q = self._job_text(call.job_id)
        else:
            q = call.params.get("q")
            call.record.q = q if isinstance(q, str) else None

    def _job_text(self, job_id: str | None) -> str:
        with self._lock:
            job = self._jobs.get(job_id or "")
            return f"{job_id} {json.dumps(job.query)}" if job is not None else str(job_id)

    def _authorize(self, call: _Call, account: Account) -> tuple[str, str]:
        """Basic auth, then ``api_key``/``map_key`` from the query string, then from the body."""
        auth = call.request.authorization
        key: str | None = None
        if auth is not None and auth.type == "basic" and auth.username is not None:
            if auth.username != call.user:
                raise ApiError(403, PERMISSION_DENIED)
            key, call.record.credentials = auth.password or "", "basic"
        for name, source in (("query", call.request.args), ("body", call.body_params)):
            if key is None:
                key = _first_key(source)
                call.record.credentials = name if key is not None else None
        call.record.api_key = key
        if key is None:
            level, role = "default", PUBLIC_ROLE
        elif key == account.master_key:
            level, role = "master", account.role
        elif key in account.regular_keys:
            level, role = "regular", account.role
        else:
            raise ApiError(401, UNAUTHORIZED)
        if call.endpoint.startswith("job") and level != "master":
            raise ApiError(403, PERMISSION_DENIED)
        return level, role

    # -- faults ------------------------------------------------------------------------------------------

    def _apply_fault(self, call: _Call) -> Response | None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(call.group, call.record.q or "")), None)
            if fault is not None:
                fault.hits += 1
        if fault is None:
            return None
        call.record.fault = fault.kind
        options = fault.options
        if fault.kind == "reset":
            raise _ResetConnection()
        if fault.kind in ("http_500", "http_502", "http_503"):
            return _server_error_response(int(fault.kind[-3:]))
        if fault.kind == "slow":
            self._stopping.wait(float(options.get("seconds", 5)))
            return None
        if fault.kind == "rate_limit":
            retry_after = int(options.get("retry_after", 1))
            raise rate_limit_error({
                "Carto-Rate-Limit-Limit": str(options.get("limit", 1)),
                "Carto-Rate-Limit-Remaining": str(options.get("remaining", 0)),
                "Carto-Rate-Limit-Reset": str(options.get("reset", retry_after)),
                "Retry-After": str(retry_after),
            })
        if fault.kind == "statement_timeout":
            raise timeout_error()
        call.fault = fault  # midstream_error and copy_abort_after_bytes act inside the handlers
        return None

    # -- SQL API -----------------------------------------------------------------------------------------

    def _handle_query(self, call: _Call, account: Account, level: str, role: str) -> Response:
        q = call.params.get("q")
        if not isinstance(q, str):
            raise ApiError(400, MISSING_SQL)
        fmt = _format_param(call.params.get("format"))
        if fmt not in _KNOWN_FORMATS:
            raise ApiError(400, f"Invalid format: {fmt}")
        if fmt != "json":
            raise ApiError(400, f"format {fmt} is not supported by the CARTO emulator (only json)")
        skipfields = [name for name in str(call.params.get("skipfields") or "").split(",") if name]
        midstream = call.fault if call.fault and call.fault.kind == "midstream_error" else None
        started = time.monotonic()
        outcome = Outcome()
        with self._session(role, account, None) as conn:  # the role's statement_timeout, as on CARTO
            conn.add_notice_handler(
                lambda diag: outcome.notices.append((diag.severity or "NOTICE", diag.message_primary or "")))
            if midstream is not None:
                conn.execute("BEGIN")  # the statement "fails" after streaming: nothing may persist
            with _cancel_on_client_abort(call.request.environ, conn, call.record):
                run_sql(conn, wrap_query(q, call.params), self._require_types(), outcome)
            if midstream is not None:
                conn.execute("ROLLBACK")
                outcome = self._midstream(outcome, midstream)
        if outcome.error is not None and not outcome.rows:
            raise outcome.error.api_error()
        body = self._query_body(outcome, skipfields, time.monotonic() - started)
        response = _json_response(body, 200)
        inline = not any(call.params.get(name) for name in ("format", "filename"))
        filename = str(call.params.get("filename") or "cartodb-query")
        response.headers["Content-Disposition"] = f"{'inline' if inline else 'attachment'}; filename={filename}.json"
        response.headers["X-Served-By-DB-Host"] = self._db_host
        return response

    @staticmethod
    def _midstream(outcome: Outcome, fault: Fault) -> Outcome:
        keep = fault.options.get("keep_rows")
        keep = (len(outcome.rows) + 1) // 2 if keep is None else int(keep)
        outcome.rows = outcome.rows[:keep]
        outcome.row_count = None
        message = str(fault.options.get("message", "canceling statement due to statement timeout"))
        outcome.error = PgError(message)
        return outcome

    def _query_body(self, outcome: Outcome, skipfields: list[str], elapsed: float) -> dict[str, Any]:
        rows = outcome.rows
        columns = outcome.columns
        if skipfields:
            rows = [{k: v for k, v in row.items() if k not in skipfields} for row in rows]
            columns = [column for column in columns if column[0] not in skipfields]
        body: dict[str, Any] = {
            "rows": rows,
            "time": _js_seconds(elapsed),
            "fields": self._require_types().fields(columns),
            "total_rows": outcome.total_rows,
        }
        if outcome.error is not None:
            body["error"] = outcome.error.api_error().body()["error"]
        for severity, message in outcome.notices:
            body.setdefault(severity.lower() + "s", []).append(message)
        return body

    # -- COPY API ----------------------------------------------------------------------------------------

    def _handle_copy_from(self, call: _Call, account: Account, level: str, role: str) -> Response:
        started = time.monotonic()
        with self._session(role, account, COPY_TIMEOUT) as conn:
            remaining = self._remaining_quota(conn)
            q = _copy_sql(call.params)
            abort = call.fault if call.fault and call.fault.kind == "copy_abort_after_bytes" else None
            rows = self._stream_copy_in(conn, call, q, remaining, abort)
        if not rows:
            raise ApiError(400, NO_ROWS_COPIED)
        return _json_response({"time": _js_seconds(time.monotonic() - started), "total_rows": rows}, 200)

    @staticmethod
    def _remaining_quota(conn: psycopg.Connection[Any]) -> int:
        """The db-quota middleware's check, which needs ``_CDB_UserQuotaInBytes()`` on the search_path."""
        try:
            row = conn.execute(
                "SELECT _CDB_UserQuotaInBytes() - CDB_UserDataSize(current_schema()) AS remaining_quota"
            ).fetchone()
        except psycopg.Error as exc:
            raise PgError.from_exception(exc).api_error(map_permission=False) from None
        return int(row[0]) if row and row[0] is not None else 0

    def _stream_copy_in(self, conn: psycopg.Connection[Any], call: _Call, q: str, remaining: int,
                        abort: Fault | None) -> int:
        """Stream the (optionally gzipped, chunked or sized) body into ``COPY … FROM STDIN``."""
        stream = call.request.stream
        gunzip = _Gunzip() if call.request.headers.get("Content-Encoding", "").lower() == "gzip" else None
        abort_after = int(abort.options.get("after_bytes", 1024)) if abort else None
        received = decoded = 0
        try:
            with conn.cursor() as cur:
                with cur.copy(q) as copy:
                    while chunk := stream.read(COPY_READ_SIZE):
                        received += len(chunk)
                        call.record.body_length = received
                        data = gunzip.feed(chunk) if gunzip else chunk
                        decoded += len(data)
                        if decoded > remaining:
                            raise ApiError(400, DB_QUOTA_EXCEEDED)
                        if data:
                            copy.write(data)
                        if abort_after is not None and received >= abort_after:
                            self._abort_copy(call, abort)
                    if gunzip:
                        copy.write(gunzip.finish())
                return cur.rowcount
        except psycopg.Error as exc:
            # The genuine server answers 400 even for "permission denied" here (external-apis.md §8.2).
            raise PgError.from_exception(exc).api_error(map_permission=False) from None

    @staticmethod
    def _abort_copy(call: _Call, fault: Fault | None) -> None:
        options = fault.options if fault else {}
        if options.get("mode", "reset") == "reset":
            raise _ResetConnection()
        _drain(call.request)
        raise ApiError(int(options.get("status", 400)),
                       str(options.get("message", "Connection closed by server: input data too slow")))

    def _handle_copy_to(self, call: _Call, account: Account, level: str, role: str) -> Response:
        q = _copy_sql(call.params)
        filename = str(call.params.get("filename") or "carto-sql-copyto.dmp")
        conn = self._open_session(role, account, COPY_TIMEOUT)
        try:
            chunks = self._copy_out_chunks(conn, q)
            first = next(chunks, b"")
        except psycopg.Error as exc:
            conn.close()
            raise PgError.from_exception(exc).api_error() from None
        except BaseException:
            conn.close()
            raise
        midstream = call.fault if call.fault and call.fault.kind == "midstream_error" else None
        body = self._copy_to_body(conn, first, chunks, midstream)
        response = Response(body, status=200, content_type="application/octet-stream", direct_passthrough=True)
        response.headers["Content-Disposition"] = f"attachment; filename={quote(filename, safe='')}"
        return response

    @staticmethod
    def _copy_out_chunks(conn: psycopg.Connection[Any], q: str) -> Iterator[bytes]:
        with conn.cursor() as cur, cur.copy(q) as copy:
            while data := copy.read():
                yield bytes(data)

    @staticmethod
    def _copy_to_body(conn: psycopg.Connection[Any], first: bytes, chunks: Iterator[bytes],
                      midstream: Fault | None) -> Iterator[bytes]:
        """Stream COPY TO output; an error after the 200 is appended as a JSON error object, as CARTO does."""
        try:
            if midstream is not None:
                data = first + b"".join(chunks)
                lines = data.splitlines(keepends=True)
                yield b"".join(lines[: (len(lines) + 1) // 2])
                message = str(midstream.options.get("message", "canceling statement due to statement timeout"))
                yield json.dumps(error_for(message).body(), separators=(",", ":")).encode()
                return
            if first:
                yield first
            try:
                yield from chunks
            except psycopg.Error as exc:
                yield json.dumps(PgError.from_exception(exc).api_error().body(), separators=(",", ":")).encode()
        finally:
            conn.close()

    # -- Batch API ---------------------------------------------------------------------------------------

    def _handle_job_create(self, call: _Call, account: Account, level: str, role: str) -> Response:
        job = build_job(call.user, call.params.get("query"))
        with self._lock:
            queued = sum(1 for j in self._jobs.values() if j.user == call.user and j.status == "pending")
            if queued >= MAX_QUEUED_JOBS:
                raise ApiError(400, f"Failed to create job. Max number of jobs ({MAX_QUEUED_JOBS}) queued reached")
            self._jobs[job.job_id] = job
            body = job.serialize()
        self._job_queue.put(job.job_id)
        return _json_response(body, 201)

    def _find_job(self, call: _Call) -> Job:
        job = self._jobs.get(call.job_id or "")
        if job is None or job.user != call.user:
            raise ApiError(400, f"Job with id {call.job_id} not found")
        return job

    def _handle_job_get(self, call: _Call, account: Account, level: str, role: str) -> Response:
        with self._lock:
            body = self._find_job(call).serialize()
        return _json_response(body, 200)

    def _handle_job_delete(self, call: _Call, account: Account, level: str, role: str) -> Response:
        with self._lock:
            job = self._find_job(call)
            job.set_status("cancelled")
            for item in job.items():
                if _valid_transition(item["status"], "cancelled"):
                    item["status"] = "cancelled"
                    break
            connection = job.connection
            body = job.serialize()
        if connection is not None:
            threading.Thread(target=self._interrupt_job, args=(job, connection), daemon=True).start()
        return _json_response(body, 200)

    def _interrupt_job(self, job: Job, connection: psycopg.Connection[Any]) -> None:
        """Cancel the job's query, retrying while the worker still holds that connection.

        A cancel request that lands just before the query starts is ignored by PostgreSQL, hence the retry.
        """
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._stopping.is_set():
            _cancel_quietly(connection)
            with self._lock:
                if job.connection is not connection:
                    return
            time.sleep(0.05)

    def _job_loop(self) -> None:
        """The Batch worker: runs queued jobs one at a time, one query at a time."""
        while not self._stopping.is_set():
            job_id = self._job_queue.get()
            if job_id is None:
                return
            while not self._jobs_running.wait(0.1):
                if self._stopping.is_set():
                    return
            if self._stopping.is_set():
                return
            with self._lock:
                job = self._jobs.get(job_id)
            if job is not None:
                try:
                    self._run_job(job)
                except Exception as exc:  # keep the worker alive; the job records why
                    with self._lock:
                        if job.status not in _FINAL_STATUSES:
                            job.status, job.failed_reason, job.updated_at = "failed", str(exc), iso_now()

    def _run_job(self, job: Job) -> None:
        if job.kind == "simple":
            with self._lock:
                if job.status != "pending":
                    return
                job.set_status("running")
            error = self._run_job_sql(job, job.query)
            with self._lock:
                if job.status == "running":
                    job.set_status("failed" if error else "done", error)
            return
        items = job.items()
        for index, item in enumerate(items):
            with self._lock:
                if job.status != "pending":
                    return
                job.set_status("running")
                item["status"] = "running"
            error = self._run_job_sql(job, item["query"])
            with self._lock:
                if job.status != "running":
                    return
                item["status"] = "failed" if error else "done"
                if error:
                    item["failed_reason"] = error
            if job.kind == "fallback":
                self._run_item_fallback(job, item, error)
            with self._lock:
                if error:
                    job.set_status("failed", error)
                    if job.kind == "fallback":
                        for rest in items[index + 1:]:
                            rest["status"] = "skipped"
                    break
                job.set_status("pending" if index + 1 < len(items) else "done")
        if job.kind == "fallback":
            self._run_job_fallback(job)

    def _run_item_fallback(self, job: Job, item: dict[str, Any], error: str | None) -> None:
        template = item.get("onerror" if error else "onsuccess")
        if isinstance(template, str):
            fallback_error = self._run_job_sql(job, _render_fallback(template, job, error))
            with self._lock:
                item["fallback_status"] = "failed" if fallback_error else "done"

    def _run_job_fallback(self, job: Job) -> None:
        with self._lock:
            status = job.status
        if status not in ("done", "failed"):
            return
        template = job.query.get("onerror" if status == "failed" else "onsuccess")
        if isinstance(template, str):
            fallback_error = self._run_job_sql(job, _render_fallback(template, job, job.failed_reason))
            with self._lock:
                job.query["fallback_status"] = "failed" if fallback_error else "done"

    def _run_job_sql(self, job: Job, q: str) -> str | None:
        """Run one job query as the account's owner role; returns the failure reason, if any."""
        account = self._accounts[job.user]
        try:
            conn = self._open_session(account.role, account, BATCH_QUERY_TIMEOUT)
        except psycopg.Error as exc:
            return PgError.from_exception(exc).message
        with self._lock:
            if job.status == "cancelled":  # cancelled while connecting: nothing to interrupt
                conn.close()
                return None
            job.connection = conn
        try:  # the genuine Batch runner marks each query with its job id (so a user can find and cancel it)
            outcome = run_sql(conn, f"/* {job.job_id} */ {q}", self._require_types(), Outcome())
        finally:
            with self._lock:
                job.connection = None
            conn.close()
        return outcome.error.message if outcome.error else None

    # -- helpers -----------------------------------------------------------------------------------------

    def _require_types(self) -> TypeRegistry:
        if self._types is None:
            raise RuntimeError("CartoEmulator.start() has not been called")
        return self._types

    @staticmethod
    def _error_response(err: ApiError) -> Response:
        response = _json_response(err.body(), err.status)
        response.headers["Content-Disposition"] = "inline"
        for key, value in err.headers.items():
            response.headers[key] = value
        return response


# --- Small helpers --------------------------------------------------------------------------------------


class _Gunzip:
    """Incremental gunzip that also accepts concatenated gzip members, like Node's zlib."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            while data:
                out.append(self._inflater.decompress(data))
                data = self._inflater.unused_data if self._inflater.eof else b""
                if data:
                    self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as exc:
            raise ApiError(400, f"Error while gunzipping: {_zlib_reason(exc)}") from None
        return b"".join(out)

    def finish(self) -> bytes:
        if not self._inflater.eof:
            raise ApiError(400, "Error while gunzipping: unexpected end of file")
        return self._inflater.flush()


def _zlib_reason(exc: zlib.error) -> str:
    return str(exc).split(": ", 1)[-1]


def _ensure_role(conn: psycopg.Connection[Any], role: str, *, login: bool) -> None:
    """CREATE ROLE if missing; roles are cluster-wide and several test databases may race for them."""
    statement = sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role), sql.SQL("LOGIN" if login else "NOLOGIN"))
    conn.execute(sql.SQL(
        "DO $do$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) THEN EXECUTE {}; END IF; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $do$"
    ).format(sql.Literal(role), sql.Literal(statement.as_string(conn))))


@contextmanager
def _cancel_on_client_abort(environ: Mapping[str, Any], conn: psycopg.Connection[Any], record: RequestRecord) -> Iterator[None]:
    """The genuine server's cancelOnClientAbort: a client that hangs up while its query runs (a worker stopped
    by SIGTERM, a read timeout) gets its query cancelled, so a ``BEGIN; …; COMMIT;`` in flight rolls back.
    The request body was read before the query started, so a readable socket here means end of file."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                    record.fault = record.fault or "client_abort"
                    _cancel_quietly(conn)
                    return
            except (OSError, ValueError):
                return

    watcher = threading.Thread(target=watch, name="carto-emulator-abort-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=1)


def _cancel_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.cancel_safe(timeout=5)
    except Exception:
        pass


def _first_key(source: Mapping[str, Any]) -> str | None:
    for name in ("api_key", "map_key"):
        value = source.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _user_from_host(host: str) -> str:
    """``<u>.localhost`` (development config) or else the first host label (test config)."""
    hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    match = re.match(r"^(.*)\.localhost$", hostname) or re.match(r"^([^.]*)\.", hostname)
    return match.group(1) if match else ""


def _format_param(value: Any) -> str:
    if isinstance(value, list):
        value = value[-1] if value else None
    if value is None or value == "":
        return "json"
    return str(value).lower()


def _copy_sql(params: Mapping[str, Any]) -> str:
    q = params.get("q")
    if not isinstance(q, str):
        raise ApiError(400, COPY_SQL_MISSING)
    if not q.upper().startswith("COPY "):
        raise ApiError(400, COPY_SQL_NOT_COPY)
    return q


def _js_seconds(seconds: float) -> float | int:
    value = round(seconds, 3)
    return int(value) if value.is_integer() else value


def _json_response(body: Any, status: int) -> Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Response(text.encode("utf-8"), status=status, content_type="application/json; charset=utf-8")


def _not_found_route(request: Request) -> Response:
    return Response(f"Cannot {request.method} {request.path}", status=404, content_type="text/html; charset=utf-8")


def _server_error_response(status: int) -> Response:
    """What a failing CARTO front end answers: JSON from the app for 500, nginx pages for 502/503."""
    if status == 500:
        return _json_response({"error": ["Internal Server Error"]}, 500)
    title = {502: "502 Bad Gateway", 503: "503 Service Temporarily Unavailable"}[status]
    page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n" \
           "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    return Response(page, status=status, content_type="text/html")


def _drain(request: Request) -> None:
    """Read what is left of the request body so the client is not reset while still sending it."""
    try:
        while request.stream.read(COPY_READ_SIZE):
            pass
    except (OSError, ValueError):
        pass


def _reset_socket(environ: Mapping[str, Any]) -> None:
    """Abort the TCP connection: linger 0 makes the final close send RST instead of a response."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --- Command line ---------------------------------------------------------------------------------------


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values or []:
        user, sep, key = value.partition(":")
        if not sep or not user or not key:
            raise SystemExit(f"{option} expects USER:KEY, got {value!r}")
        pairs[user] = key
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators.carto", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="PostGIS database DSN (a superuser connection)")
    parser.add_argument("--account", action="append", required=True, metavar="USER:KEY",
                        help="CARTO user and master API key (repeatable)")
    parser.add_argument("--regular-key", action="append", metavar="USER:KEY", help="extra non-master key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--statement-timeout-ms", type=int, default=None)
    parser.add_argument("--quota-bytes", type=int, default=DEFAULT_QUOTA_BYTES)
    parser.add_argument("--non-organization", action="append", default=[], metavar="USER",
                        help="a non-organization account: its tables live in public (at most one)")
    args = parser.parse_args(argv)

    emulator = CartoEmulator(
        args.dsn,
        _pairs(args.account, "--account"),
        regular_keys=_pairs(args.regular_key, "--regular-key"),
        statement_timeout_ms=args.statement_timeout_ms,
        quota_bytes=args.quota_bytes,
        non_organization=args.non_organization,
        host=args.host,
        port=args.port,
    ).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(emulator.url, flush=True)
    while not stop.wait(0.5):
        pass
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
