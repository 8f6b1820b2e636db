"""The direct PostGIS transport: the load protocol over one psycopg 3 connection.

URL: ``postgresql://user:pw@host:5432/db[?schema=name]`` (``schema`` defaults to ``public``; every other
query parameter is passed to libpq). COPY streams the staged CSV straight from staging, decompressing as
it goes.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from ..config import Dataset
from ..connections import redact
from ..schema import TableSchema
from ..staging import StagedTable
from . import sql

COPY_CHUNK = 1024 * 1024
# The load's index builds (GiST on the geometry, configured btrees) sort in memory up to maintenance_work_mem;
# the server default (64MB) spills a 1M-point GiST build to disk. The session asks for this much, never less
# than the server's own setting (measured: GiST on 1M points 0.94 s → 0.85 s).
MAINTENANCE_WORK_MEM_KB = 256 * 1024


class PostgisError(RuntimeError):
    """A destination error, with the connection name and a redacted message."""


def split_schema(url: str) -> tuple[str, str]:
    """``postgresql://…?schema=x&sslmode=require`` → (libpq URL without ``schema``, ``x``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


class PostgisTransport:
    managed_columns: tuple[str, ...] = ()  # every column of the shadow is the load's to write
    own_triggers: tuple[str, ...] = ()
    # An in-place load's shadow is scratch: UNLOGGED keeps its rows out of the WAL (and so out of replication
    # and WAL archives); only the rows written to the live table are logged. No faster here (COPY is CPU-bound
    # on this machine, bench/README.md "Load modes"). CARTO's shadow stays as cartodbfy expects it.
    unlogged_scratch = True

    def __init__(self, name: str, url: str, connect_timeout: int = 30):
        self.name = name
        self._url, self.default_schema = split_schema(url)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._url, autocommit=True, row_factory=dict_row, connect_timeout=self._connect_timeout,
                                             application_name="databridge-luigi")
                self._conn.execute("SELECT set_config('maintenance_work_mem', %s, false) FROM pg_settings "
                                   "WHERE name = 'maintenance_work_mem' AND setting::bigint < %s",
                                   (f"{MAINTENANCE_WORK_MEM_KB}kB", MAINTENANCE_WORK_MEM_KB))
            except psycopg.Error as exc:
                raise PostgisError(f"cannot connect to destination {self.name!r}: {redact(str(exc)).strip()}") from None
        return self._conn

    def query(self, statement: str) -> list[dict[str, Any]]:
        try:
            with self._connection().cursor() as cursor:
                cursor.execute(statement.encode())  # bytes: no client-side parameter parsing of % signs
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise self._error(statement, exc) from None

    def long_query(self, statement: str) -> None:
        """No statement timeout to work around on a direct connection."""
        self.query(statement)

    def transaction(self, statements: list[str]) -> None:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement.encode())
        except psycopg.Error as exc:
            raise self._error("; ".join(statements), exc) from None

    def copy_in(self, copy_statement: str, staged: StagedTable) -> int:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                with cursor.copy(copy_statement.encode()) as copy, staged.open_csv() as data:
                    while chunk := data.read(COPY_CHUNK):
                        copy.write(chunk)
                return cursor.rowcount
        except psycopg.Error as exc:
            raise self._error(copy_statement, exc) from None

    def finish_shadow(self, schema: str, shadow: str, table_schema: TableSchema) -> None:
        self.query(f"ANALYZE {sql.qualified(schema, shadow)}")

    def post_swap(self, schema: str, table: str, table_schema: TableSchema, dataset: Dataset) -> None:
        """Nothing more on plain PostGIS: privacy is the grants already made in the swap."""

    def index_columns(self, dataset: Dataset, table_schema: TableSchema) -> list[list[str]]:
        wanted = [index.split("+") for index in dataset.indexes]
        geometry = table_schema.geometry
        if geometry and [geometry.name] not in wanted:
            wanted.append([geometry.name])  # a spatial index, as CARTO's cartodbfy would add
        return wanted

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _error(self, statement: str, exc: psycopg.Error) -> PostgisError:
        first_line = statement.strip().splitlines()[0][:200]
        return PostgisError(f"destination {self.name!r}: {redact(str(exc)).strip()} (while running: {first_line})")
