"""The direct PostGIS transport: the load protocol over one psycopg 3 connection.

URL: ``postgresql://user:pw@host:5432/db[?schema=name]`` (``schema`` defaults to ``public``; every other
query parameter is passed to libpq). COPY streams the staged CSV straight from staging, decompressing as
it goes; a big one goes over two connections at once (parallel_copy.py).
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from ..config import Dataset
from ..connections import redact
from ..schema import TableSchema
from ..staging import StagedTable
from . import parallel_copy, sql

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024
# A staged CSV at least this big (uncompressed: the manifest's csv_bytes) is COPYed over two connections. The
# second connection costs 10–20 ms (connect, then one round trip for the session's settings) and the gain is
# about half the COPY (~80 MB/s per backend here). Measured with the bench table on this 2-core machine,
# busy: 30k rows (5 MB) 0.07 s on one connection, 0.08 s on two; 100k rows (17.5 MB) 0.22 → 0.15 s; 1M rows
# (175 MB) 2.1 → 1.4–1.8 s. Below ~10 MB two connections do not pay; 16 MiB leaves small datasets as they were.
PARALLEL_COPY_MIN_BYTES = 16 * 1024 * 1024
PARALLEL_COPY_STREAMS = 2  # backends parsing at once: measured on a 2-core server; more need more server cores
# Errors of the data or the statement (SQLSTATE classes): the same COPY on one connection fails the same way,
# and its message names the line of the staged CSV (see _copy_parallel). Timeouts, cancels and lost connections
# are not retried: a second pass would only double the wait for the same failure.
_DETERMINISTIC = ("22", "23", "42", "XX")
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
        self.copy_streams: tuple[int, ...] = ()  # rows per connection of the last copy_in (logs, tests)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self._url, autocommit=True, row_factory=dict_row, connect_timeout=self._connect_timeout,
                               application_name="databridge-luigi")

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._connect()
                self._conn.execute("SELECT set_config('maintenance_work_mem', %s, false) FROM pg_settings "
                                   "WHERE name = 'maintenance_work_mem' AND setting::bigint < %s",
                                   (f"{MAINTENANCE_WORK_MEM_KB}kB", MAINTENANCE_WORK_MEM_KB))
            except psycopg.Error as exc:
                raise PostgisError(f"cannot connect to destination {self.name!r}: {redact(str(exc)).strip()}") from None
        return self._conn

    def _sibling(self, conn: psycopg.Connection[dict[str, Any]]) -> psycopg.Connection[dict[str, Any]]:
        """Another connection with ``conn``'s session: every setting SET in it (the dataset's statement_timeout,
        maintenance_work_mem, …) is set here too; connect-time ones (application_name) come from the URL."""
        settings = conn.execute("SELECT name, setting FROM pg_settings WHERE source = 'session'").fetchall()
        sibling = self._connect()
        try:
            if settings:
                sibling.execute("SELECT set_config(name, setting, false) FROM unnest(%s::text[], %s::text[]) AS s(name, setting)",
                                ([r["name"] for r in settings], [r["setting"] for r in settings]))
        except BaseException:
            sibling.close()
            raise
        return sibling

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

    def copy_in(self, copy_statement: str, staged: StagedTable, create: str | None = None) -> int:
        conn = self._connection()
        if staged.manifest().csv_bytes >= PARALLEL_COPY_MIN_BYTES:
            if create is not None:  # the second connection must see the table: created and committed first
                self.query(create)
                create = None
            rows = self._copy_parallel(conn, copy_statement, staged)
            if rows is not None:
                self.copy_streams = tuple(rows)
                log.info("destination %r: COPY over %d connections (%s rows)", self.name, len(rows), " + ".join(map(str, rows)))
                return sum(rows)
        try:
            with conn.transaction(), conn.cursor() as cursor:
                if create is not None:
                    self._execute(cursor, create)
                with cursor.copy(copy_statement.encode()) as copy, staged.open_csv() as data:
                    while chunk := data.read(COPY_CHUNK):
                        copy.write(chunk)
                self.copy_streams = (cursor.rowcount,)
                return cursor.rowcount
        except psycopg.Error as exc:
            raise self._error(copy_statement, exc) from None

    def _copy_parallel(self, conn: psycopg.Connection[dict[str, Any]], copy_statement: str, staged: StagedTable) -> list[int] | None:
        """The COPY over PARALLEL_COPY_STREAMS connections, or None when it should run on one instead.

        A failure leaves the shadow empty (every stream rolls back). A data error is not reported from here:
        PostgreSQL names the line of *its stream*, not of the staged CSV, so the caller runs the same COPY on
        one connection, which fails on the same value with the message a one-connection load always gave
        (Loader's ``_staged_row`` turns its line into the staged row). That costs a second pass over the data,
        only on a load that fails anyway."""
        siblings: list[psycopg.Connection[dict[str, Any]]] = []
        try:
            while len(siblings) < PARALLEL_COPY_STREAMS - 1:
                siblings.append(self._sibling(conn))
        except psycopg.Error as exc:  # e.g. the role's connection limit: one connection still does the job
            log.warning("destination %r: no second connection for a parallel COPY (%s); copying on one", self.name, redact(str(exc)).strip())
            for sibling in siblings:
                sibling.close()
            return None
        try:
            with staged.open_csv() as data:
                return parallel_copy.copy_parallel([conn, *siblings], copy_statement.encode(), data)
        except parallel_copy.RecordTooLong as exc:
            log.info("destination %r: %s; copying on one connection", self.name, exc)
            return None
        except psycopg.Error as exc:
            if (exc.sqlstate or "")[:2] in _DETERMINISTIC and not conn.closed:
                log.info("destination %r: parallel COPY failed (%s); copying again on one connection to name the staged row",
                         self.name, redact(str(exc)).strip().split("\n")[0])
                return None
            raise self._error(copy_statement, exc) from None
        finally:
            for sibling in siblings:
                sibling.close()

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

    def _execute(self, cursor: psycopg.Cursor[dict[str, Any]], statement: str) -> None:
        """One statement inside a larger one's transaction, failing with its own text in the error."""
        try:
            cursor.execute(statement.encode())
        except psycopg.Error as exc:
            raise self._error(statement, exc) from None

    def _error(self, statement: str, exc: psycopg.Error) -> PostgisError:
        first_line = statement.strip().splitlines()[0][:200]
        return PostgisError(f"destination {self.name!r}: {redact(str(exc)).strip()} (while running: {first_line})")
