"""What every SQL source shares: the extract driver (``run``), the column model, name checks, the row path's
batch loop, statement timeouts and errors. Dialect adapters live beside this module (``postgres``,
``geodatabase``, ``oracle``, ``mysql``, ``generic``); ``__init__`` picks one for a connection."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ...config import Dataset
from ...schema import Column, SchemaError, TableSchema, geometry_type_from_seen
from ...staging import StagedTableWriter
from ..values import ConversionStats

log = logging.getLogger("databridge_luigi.sources.sql")
BATCH_ROWS = 10_000
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
Progress = Callable[[int], None]


class ExtractError(RuntimeError):
    """The extract cannot produce a trustworthy copy of the source (named with dataset and reason)."""


class ExtractTimeout(ExtractError):
    """The source cancelled a statement at the dataset's ``timeout``: not bad data, a slow or blocked source."""


@dataclass(frozen=True)
class SourceColumn:
    """A source column: its name in the source, its staged (lower-case) name, type and SELECT expression.
    ``timezone`` overrides the dataset's zone for naive timestamps (MySQL TIMESTAMP columns arrive in UTC)."""

    source_name: str
    name: str
    type: str
    required: bool = False
    srid: int | None = None
    expression: str = ""
    timezone: str | None = None
    dims: str | None = None  # declared geometry dimensions ('', 'z', 'm', 'zm') when the catalog says


@dataclass(frozen=True)
class ChangedSince:
    """An incremental extract: only rows whose ``column`` is newer than ``newest`` (the value the source printed
    for the base version) less ``settle_seconds`` — rows stamped before then but committed later are re-read."""

    column: str
    newest: str
    settle_seconds: int
    base_version: str
    columns: tuple[str, ...] = ()  # the base version's staged columns: other columns now mean a whole extract

    def describe(self) -> str:
        return f"{self.column} > {self.newest} - {self.settle_seconds} s (version {self.base_version})"

    def as_dict(self) -> dict[str, Any]:
        """As the manifest records it (``source.changed_since``, and ``delta``)."""
        return {"column": self.column, "newest": self.newest, "settle_seconds": self.settle_seconds,
                "base_version": self.base_version}


@dataclass(frozen=True)
class Extraction:
    schema: TableSchema
    rows: int
    facts: dict[str, Any]


PRELOADED_DIALECTS = ("postgresql.psycopg", "oracle.oracledb")  # the warehouse's: geodatabase on PostgreSQL, Oracle


def preload_dialects() -> None:
    """Import the dialects the City's sources use (``create_engine`` would import one on first use)."""
    import importlib

    for dialect in PRELOADED_DIALECTS:
        try:
            importlib.import_module(f"sqlalchemy.dialects.{dialect}")
        except ImportError:  # not in this SQLAlchemy: create_engine reports it for a source that needs it
            pass


def sqlalchemy_url(url: str) -> str:
    """Connection URLs say ``postgresql://``; SQLAlchemy needs the psycopg 3 driver named."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def quote(identifier: str) -> str:
    """ANSI double-quoted identifier (PostgreSQL, Oracle); adapters quote the dialect's way via ``Adapter.q``."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run(dataset: Dataset, adapter: "Adapter", writer: StagedTableWriter, progress: Progress,
        since: ChangedSince | None = None, only: Sequence[str] = ()) -> Extraction:
    """``since``: only the rows changed since then; ``only``: only these columns (an incremental extract's keys)."""
    started = time.monotonic()
    columns = _only(dataset, _exclude(dataset, adapter.columns(), adapter), only, adapter)
    _check_names(dataset, columns)
    adapter.check(columns)
    if getattr(getattr(dataset, "change_signal", None), "incremental", False) and not adapter.reads_changed_since:
        raise adapter.incremental_refused()  # refused at the first (whole) extract already, not only at the next
    if since is not None and since.columns and tuple(c.name for c in columns) != since.columns:
        log.info("%s: the columns changed since version %s (%s → %s); extracting every row", dataset.id,
                 since.base_version, ", ".join(since.columns), ", ".join(c.name for c in columns))
        since = None  # a new column set needs a new table, which only a whole version can fill
    if since is not None:
        adapter.row_filter = adapter.changed_since_filter(since)
        adapter.facts["changed_since"] = since.as_dict()
    before = adapter.count()
    log.info("%s: extracting %s rows from %s%s", dataset.id, before, adapter.table_label,
             f" changed since version {since.base_version} ({since.describe()})" if since else "")
    stats = ConversionStats()
    rows = adapter.stream(columns, writer, stats, lambda done: progress(done, before))
    after = adapter.count()
    if not (before == rows == after):
        raise ExtractError(
            f"{dataset.id}: source row count changed during the extract (before {before}, extracted {rows}, "
            f"after {after}); nothing was staged — rerun when {adapter.table_label} is not being written"
        )
    geometry_types = stats.geometry_types or adapter.geometry_types(columns)
    try:
        schema = TableSchema(tuple(adapter.schema_column(c, geometry_types) for c in columns))
    except SchemaError as exc:
        column = next((c.name for c in columns if c.type == "geometry"), "?")
        raise ExtractError(f"{dataset.id}: column {column}: {exc}") from None
    elapsed = time.monotonic() - started
    log.info("%s: extracted %d rows in %.1fs (%.0f rows/s)", dataset.id, rows, elapsed, rows / elapsed if elapsed else 0)
    if stats.nul_bytes_removed:
        log.warning("%s: removed %d NUL bytes from text values", dataset.id, stats.nul_bytes_removed)
    facts = {
        "connection": dataset.source_conn,
        "dialect": adapter.dialect,
        "table": adapter.table_label,
        "count_before": before,
        "count_after": after,
        "nul_bytes_removed": stats.nul_bytes_removed,
        "timezone": dataset.timezone,
        "seconds": round(elapsed, 3),
        **adapter.facts,
    }
    return Extraction(schema=schema, rows=rows, facts=facts)


def _exclude(dataset: Dataset, columns: list[SourceColumn], adapter: "Adapter") -> list[SourceColumn]:
    """``exclude_fields``: every name must be a column of the source (case-insensitive), or the extract stops."""
    excluded = [name.lower() for name in (getattr(dataset, "exclude_fields", None) or ())]
    if not excluded:
        return columns
    names = {c.name for c in columns}
    unknown = [name for name in excluded if name not in names]
    if unknown:
        raise ExtractError(
            f"{dataset.id}: exclude_fields in {dataset.path} names {', '.join(repr(n) for n in unknown)}, which "
            f"{adapter.table_label} does not have (columns: {', '.join(c.name for c in columns)})"
        )
    kept = [c for c in columns if c.name not in set(excluded)]
    if not kept:
        raise ExtractError(f"{dataset.id}: exclude_fields in {dataset.path} excludes every column of {adapter.table_label}")
    return kept


def _only(dataset: Dataset, columns: list[SourceColumn], names: Sequence[str], adapter: "Adapter") -> list[SourceColumn]:
    if not names:
        return columns
    by_name = {c.name: c for c in columns}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ExtractError(f"{dataset.id}: primary_key column(s) {missing} in {dataset.path} are not columns of "
                           f"{adapter.table_label} (columns: {', '.join(by_name)})")
    return [by_name[name] for name in names]


def _check_names(dataset: Dataset, columns: Sequence[SourceColumn]) -> None:
    if not columns:
        raise ExtractError(f"{dataset.id}: source {dataset.source_conn}: table {dataset.source_schema}.{dataset.source_table} not found or has no columns")
    seen: dict[str, str] = {}
    for column in columns:
        if not column.name or "\x00" in column.name or len(column.name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            raise ExtractError(
                f"{dataset.id}: column {column.source_name!r} cannot be a PostgreSQL column name (empty, a NUL byte, or "
                f"longer than {MAX_IDENTIFIER_BYTES} bytes in UTF-8: PostgreSQL would silently truncate it); rename it in the source"
            )
        if column.name in seen:
            raise ExtractError(f"{dataset.id}: columns {seen[column.name]!r} and {column.source_name!r} are the same name after lower-casing")
        seen[column.name] = column.source_name
    wanted = dataset.geometry_column
    if wanted and wanted not in {c.name for c in columns if c.type == "geometry"}:
        raise ExtractError(
            f"{dataset.id}: geometry.column {wanted!r} in {dataset.path} is not a geometry column of "
            f"{dataset.source_schema + '.' if dataset.source_schema else ''}{dataset.source_table} (columns: {', '.join(c.name for c in columns)})"
        )
    if sum(1 for c in columns if c.type == "geometry") > 1:
        names = [c.source_name for c in columns if c.type == "geometry"]
        raise ExtractError(f"{dataset.id}: more than one geometry column {names}; set geometry.column to choose one (or exclude_fields)")


def schema_column(column: SourceColumn, geometry_types: set[str]) -> Column:
    if column.type == "geometry":
        return Column(column.name, "geometry", column.required, geometry_type_from_seen(geometry_types), column.srid)
    return Column(column.name, column.type, column.required)


class Adapter:
    """A dialect: its catalog (``columns``), its SELECT, its cursor settings. The default ``stream`` is the row
    path (DBAPI batches → vectorised conversion → CSV); PostgreSQL overrides it with COPY."""

    dialect = "generic"
    reads_changed_since = False  # whether changed_since_filter is implemented (incremental extracts)

    def __init__(self, dataset: Dataset, engine: sa.Engine):
        self.dataset, self.engine = dataset, engine
        self.zone = ZoneInfo(dataset.timezone)
        self.facts: dict[str, Any] = {}
        self.row_filter: str | None = None  # a WHERE condition: an incremental extract's changed rows
        self._preparer = engine.dialect.identifier_preparer

    # --- naming ---------------------------------------------------------------------------------------------
    def q(self, identifier: str) -> str:
        """An identifier quoted the dialect's way (double quotes, MySQL's backticks, …), always quoted."""
        return self._preparer.quote_identifier(identifier)

    @property
    def table_label(self) -> str:
        schema = self.dataset.source_schema
        return f"{schema}.{self.dataset.source_table}" if schema else self.dataset.source_table

    def from_clause(self) -> str:
        schema = self.dataset.source_schema
        return f"{self.q(schema)}.{self.q(self.dataset.source_table)}" if schema else self.q(self.dataset.source_table)

    # --- session --------------------------------------------------------------------------------------------
    @property
    def timeout(self) -> float | None:
        value = getattr(self.dataset, "timeout", None)
        return float(value) if value else None

    def on_connect(self, dbapi_connection: Any) -> None:
        """Session settings for every connection the extract opens (the dataset's statement timeout)."""

    def is_timeout(self, error: BaseException) -> bool:
        """Whether a driver error is the server cancelling a statement at our timeout."""
        return False

    # --- catalog and data -----------------------------------------------------------------------------------
    def columns(self) -> list[SourceColumn]:
        raise NotImplementedError

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {self.from_clause()}{self._where()}")).scalar_one())

    def select_sql(self, columns: Sequence[SourceColumn]) -> str:
        return "SELECT " + ", ".join(c.expression for c in columns) + " FROM " + self.from_clause() + self._where()

    def _where(self) -> str:
        return f" WHERE {self.row_filter}" if self.row_filter else ""

    def changed_since_filter(self, since: ChangedSince) -> str:
        """The WHERE condition of an incremental extract; dialects that can read one override this."""
        raise self.incremental_refused()

    def incremental_refused(self) -> ExtractError:
        return ExtractError(f"{self.dataset.id}: change_signal.incremental in {self.dataset.path} needs a PostgreSQL source; "
                            f"{self.engine.dialect.name} sources are extracted whole (remove incremental)")

    def geometry_types(self, columns: Sequence[SourceColumn]) -> set[str]:
        return set()

    def schema_column(self, column: SourceColumn, geometry_types: set[str]) -> Column:
        return schema_column(column, geometry_types)

    def check(self, columns: Sequence[SourceColumn]) -> None:
        """Refuse, before any data moves, what the catalog already says cannot be published."""

    def open_cursor(self, raw: Any) -> Any:
        """A cursor that streams (server-side where the driver buffers by default), fetch size bounded."""
        cursor = raw.cursor()
        cursor.arraysize = BATCH_ROWS
        return cursor

    def stream(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        """The row path: DBAPI cursor → batches of BATCH_ROWS → vectorised conversion → CSV bytes."""
        from .rows import BatchConverter

        writer.write_header([c.name for c in columns])
        converter = BatchConverter(self.dataset.id, columns, self.zone, stats)
        return self.stream_rows(self.select_sql(columns), writer, converter, progress)

    def stream_rows(self, select: str, writer: StagedTableWriter, converter: Any, progress: Progress, start: int = 0) -> int:
        """Run ``select`` and write its rows, numbered from ``start`` + 1 (so refusals name the right row)."""
        raw = self.engine.raw_connection()
        try:
            cursor = self.open_cursor(raw)
            try:
                cursor.execute(select)
                total = start
                while batch := cursor.fetchmany(BATCH_ROWS):
                    writer.write_csv(converter.convert(batch, total))
                    total += len(batch)
                    writer.rows += len(batch)
                    progress(total)
                return total
            finally:
                cursor.close()
        finally:
            raw.close()


def with_type(column: SourceColumn, **changes: Any) -> SourceColumn:
    return replace(column, **changes)
