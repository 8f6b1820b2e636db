"""Extract a table from any SQLAlchemy database into a staged table.

Three dialect paths, one result (a staged CSV with EWKT geometry, and a table schema from the catalog):

* PostgreSQL/PostGIS: ``COPY (SELECT …) TO STDOUT`` streamed as CSV bytes — no per-row Python.
* Oracle (python-oracledb thin mode, no Instant Client): catalog queries on ``ALL_TAB_COLS``; SDE
  ``ST_Geometry`` through ``sde.st_astext`` with the layer's SRID, Oracle Spatial through
  ``SDO_UTIL.TO_WKTGEOMETRY``; CLOBs fetched as strings; rows converted in bounded batches.
* Anything else (SQLite, …): SQLAlchemy reflection; geometry from the dataset's ``geometry`` block or an
  OGC ``geometry_columns`` table.

The source row count is read before and after the extract; a change, or zero rows without
``allow_empty``, fails the extract before anything is staged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ..config import Dataset
from ..connections import redact
from ..schema import Column, SchemaError, TableSchema, geometry_type_from_seen
from ..staging import StagedTableWriter
from .values import ConversionStats, Converter, converter_for

log = logging.getLogger(__name__)
BATCH_ROWS = 10_000
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
Progress = Callable[[int], None]


class ExtractError(RuntimeError):
    """The extract cannot produce a trustworthy copy of the source (named with dataset and reason)."""


@dataclass(frozen=True)
class SourceColumn:
    """A source column: its name in the source, its staged (lower-case) name, type and SELECT expression."""

    source_name: str
    name: str
    type: str
    required: bool = False
    srid: int | None = None
    expression: str = ""


@dataclass(frozen=True)
class Extraction:
    schema: TableSchema
    rows: int
    facts: dict[str, Any]


def sqlalchemy_url(url: str) -> str:
    """Connection URLs say ``postgresql://``; SQLAlchemy needs the psycopg 3 driver named."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def extract_table(dataset: Dataset, url: str, writer: StagedTableWriter, progress: Progress = lambda rows: None) -> Extraction:
    """Stream ``dataset``'s source table into ``writer``; returns the schema and facts for the manifest."""
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        adapter = _adapter_for(engine.dialect.name)(dataset, engine)
        return _run(dataset, adapter, writer, progress)
    except sa.exc.NoSuchTableError as exc:
        raise ExtractError(f"{dataset.id}: source {dataset.source_conn}: table {redact(str(exc))} not found") from None
    except sa.exc.SQLAlchemyError as exc:  # not every SQLAlchemyError wraps a driver error (.orig)
        raise ExtractError(f"{dataset.id}: source {dataset.source_conn}: {redact(str(getattr(exc, 'orig', None) or exc)).splitlines()[0]}") from None
    finally:
        engine.dispose()


def _run(dataset: Dataset, adapter: "Adapter", writer: StagedTableWriter, progress: Progress) -> Extraction:
    started = time.monotonic()
    columns = adapter.columns()
    _check_names(dataset, columns)
    adapter.check(columns)
    before = adapter.count()
    log.info("%s: extracting %s rows from %s", dataset.id, before, adapter.table_label)
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
        schema = TableSchema(tuple(_schema_column(c, geometry_types) for c in columns))
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
    }
    return Extraction(schema=schema, rows=rows, facts=facts)


def _check_names(dataset: Dataset, columns: Sequence[SourceColumn]) -> None:
    if not columns:
        raise ExtractError(f"{dataset.id}: source table {dataset.source_schema}.{dataset.source_table} not found or has no columns")
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
        raise ExtractError(f"{dataset.id}: more than one geometry column {names}; set geometry.column to choose one")


def _schema_column(column: SourceColumn, geometry_types: set[str]) -> Column:
    if column.type == "geometry":
        return Column(column.name, "geometry", column.required, geometry_type_from_seen(geometry_types), column.srid)
    return Column(column.name, column.type, column.required)


# --- dialect adapters --------------------------------------------------------------------------------------

class Adapter:
    dialect = "generic"

    def __init__(self, dataset: Dataset, engine: sa.Engine):
        self.dataset, self.engine = dataset, engine
        self.zone = ZoneInfo(dataset.timezone)

    @property
    def table_label(self) -> str:
        schema = self.dataset.source_schema
        return f"{schema}.{self.dataset.source_table}" if schema else self.dataset.source_table

    def columns(self) -> list[SourceColumn]:
        raise NotImplementedError

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {self.from_clause()}")).scalar_one())

    def from_clause(self) -> str:
        schema = self.dataset.source_schema
        return f"{quote(schema)}.{quote(self.dataset.source_table)}" if schema else quote(self.dataset.source_table)

    def select_sql(self, columns: Sequence[SourceColumn]) -> str:
        return "SELECT " + ", ".join(c.expression for c in columns) + " FROM " + self.from_clause()

    def geometry_types(self, columns: Sequence[SourceColumn]) -> set[str]:
        return set()

    def check(self, columns: Sequence[SourceColumn]) -> None:
        """Refuse, before any data moves, what the catalog already says cannot be published."""

    def stream(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        """The row path: DBAPI cursor → converters → CSV, in batches of BATCH_ROWS."""
        writer.write_header([c.name for c in columns])
        converters = [self._converter(c, stats) for c in columns]
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            self.prepare_cursor(cursor)
            cursor.execute(self.select_sql(columns))
            total = 0
            while batch := cursor.fetchmany(BATCH_ROWS):
                writer.write_rows(self._convert(batch, converters, columns, total))
                total += len(batch)
                progress(total)
            return total
        finally:
            raw.close()

    def prepare_cursor(self, cursor: Any) -> None:
        cursor.arraysize = BATCH_ROWS

    def _converter(self, column: SourceColumn, stats: ConversionStats) -> Converter:
        return converter_for(column.type, zone=self.zone, srid=column.srid, stats=stats)

    def _convert(self, batch: Sequence[Sequence[Any]], converters: Sequence[Converter], columns: Sequence[SourceColumn], offset: int) -> Iterator[list[str | None]]:
        for index, row in enumerate(batch):
            try:
                yield [convert(value) for convert, value in zip(converters, row)]
            except (ValueError, TypeError) as exc:
                column = _failing_column(row, converters, columns)
                raise ExtractError(f"{self.dataset.id}: row {offset + index + 1}, column {column}: {exc}") from None


def _failing_column(row: Sequence[Any], converters: Sequence[Converter], columns: Sequence[SourceColumn]) -> str:
    for convert, value, column in zip(converters, row, columns):
        try:
            convert(value)
        except (ValueError, TypeError):
            return column.name
    return "?"


class GenericAdapter(Adapter):
    """SQLAlchemy reflection for databases without a dialect path of their own (SQLite, MySQL, …)."""

    def prepare_cursor(self, cursor: Any) -> None:
        super().prepare_cursor(cursor)
        connection = getattr(cursor, "connection", None)
        if self.engine.dialect.name == "sqlite" and connection is not None:
            # sqlite3 raises on TEXT that is not UTF-8, naming neither row nor dataset; hand such values over as
            # bytes so the converters refuse them with dataset, row and column.
            connection.text_factory = _sqlite_text

    def columns(self) -> list[SourceColumn]:
        inspector = sa.inspect(self.engine)
        reflected = inspector.get_columns(self.dataset.source_table, schema=self.dataset.source_schema)
        geometry = self._geometry_column(inspector)
        out = []
        for col in reflected:
            name = col["name"]
            if geometry and name.lower() == geometry[0]:
                out.append(SourceColumn(name, name.lower(), "geometry", not col.get("nullable", True), geometry[1], quote(name)))
            else:
                out.append(SourceColumn(name, name.lower(), _generic_type(col["type"]), not col.get("nullable", True), None, quote(name)))
        return out

    def _geometry_column(self, inspector: Any) -> tuple[str, int | None] | None:
        if self.dataset.geometry_column:
            return self.dataset.geometry_column, self.dataset.geometry_srid
        if "geometry_columns" not in inspector.get_table_names(schema=self.dataset.source_schema):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT f_geometry_column, srid FROM geometry_columns WHERE lower(f_table_name) = :t"),
                {"t": self.dataset.source_table.lower()},
            ).first()
        return (str(row[0]).lower(), self.dataset.geometry_srid or int(row[1])) if row else None


def _sqlite_text(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _generic_type(column_type: Any) -> str:
    if isinstance(column_type, sa.Boolean):
        return "boolean"
    if isinstance(column_type, sa.Integer):
        return "integer"
    if isinstance(column_type, (sa.Numeric, sa.Float)):
        return "integer" if getattr(column_type, "scale", None) == 0 and not isinstance(column_type, sa.Float) else "number"
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, sa.Time):
        return "time"
    if isinstance(column_type, sa.JSON):
        return "object"
    return "string"


class PostgresAdapter(Adapter):
    """PostgreSQL/PostGIS: catalog from pg_attribute + geometry_columns, data through COPY TO STDOUT."""

    dialect = "postgresql"
    COPY_BLOCK = 1024 * 1024  # COPY output handed to the staging writer at a time
    COPY_PROGRESS_ROWS = 50_000

    def __init__(self, dataset: Dataset, engine: sa.Engine):
        super().__init__(dataset, engine)
        self._unconstrained: set[str] = set()  # geometry columns without a typmod SRID

    def columns(self) -> list[SourceColumn]:
        qualified = self.from_clause()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT a.attname, t.typname, a.attnotnull, t.typcategory FROM pg_attribute a "
                    "JOIN pg_type t ON t.oid = a.atttypid "
                    "WHERE a.attrelid = to_regclass(:q) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
                ),
                {"q": qualified},
            ).all()
            srids = self._srids(conn)
        wanted = self.dataset.geometry_column
        out = []
        for name, typname, notnull, category in rows:
            if typname == "geometry" and (wanted is None or wanted == name.lower()):
                srid = self._geometry_srid(name, srids.get(name))
                g = quote(name)
                # An unconstrained column: rows without an SRID get the configured one; a row with another SRID
                # keeps it (check() refuses it before the extract, and the destination column would reject it).
                if not srids.get(name):
                    self._unconstrained.add(name)
                expr = g if srids.get(name) else f"CASE WHEN ST_SRID({g}) = 0 THEN ST_SetSRID({g}, {int(srid)}) ELSE {g} END"
                expression = f"CASE WHEN ST_IsEmpty({expr}) THEN NULL ELSE ST_AsEWKT({expr}) END AS {quote(name.lower())}"
                out.append(SourceColumn(name, name.lower(), "geometry", notnull, srid, expression))
                continue
            kind = _pg_type(typname, category)
            expression = quote(name)
            if typname == "timestamp":  # naive: localize to the dataset's zone, written with offset
                expression = f"({quote(name)} AT TIME ZONE {quote_literal(self.dataset.timezone)})"
            elif typname == "geometry":
                kind = "string"
                expression = f"ST_AsEWKT({quote(name)})"
            elif typname == "money":  # COPY writes money in the server's locale ("$1,234.50"); numeric reads it exactly
                expression = f"{quote(name)}::numeric"
            out.append(SourceColumn(name, name.lower(), kind, notnull, None, f"{expression} AS {quote(name.lower())}"))
        return out

    def _geometry_srid(self, name: str, declared: int | None) -> int:
        configured, where = self.dataset.geometry_srid, self.dataset.path
        if declared and configured and declared != configured:
            raise ExtractError(
                f"{self.dataset.id}: column {name.lower()}: geometry.srid is {configured} in {where}, but the source column "
                f"{self.table_label}.{name} is declared SRID {declared}; relabelling would move every shape — remove geometry.srid "
                "or transform the data in the source"
            )
        if not (declared or configured):
            raise ExtractError(f"{self.dataset.id}: column {name.lower()}: the source column has no SRID (geometry_columns says 0); set geometry.srid in {where}")
        return int(declared or configured)  # type: ignore[arg-type]

    def check(self, columns: Sequence[SourceColumn]) -> None:
        """An unconstrained geometry column may hold any SRID: every row must have none or the declared one,
        or the extract is refused naming the row (in scan order, as the extract reads it)."""
        for column in columns:
            if column.type != "geometry" or column.source_name not in self._unconstrained:
                continue
            g = quote(column.source_name)
            sql = (
                f"SELECT n, s FROM (SELECT row_number() OVER () AS n, ST_SRID({g}) AS s FROM {self.from_clause()}) r "
                f"WHERE s NOT IN (0, {int(column.srid or 0)}) LIMIT 1"
            )
            with self.engine.connect() as conn:
                bad = conn.execute(sa.text(sql)).first()
            if bad:
                raise ExtractError(
                    f"{self.dataset.id}: row {bad[0]}, column {column.name}: geometry has SRID {bad[1]} but the column is "
                    f"SRID {column.srid} (geometry.srid or the source catalog); transform it in the source — it is never relabelled"
                )

    def _srids(self, conn: sa.Connection) -> dict[str, int]:
        has_postgis = conn.execute(sa.text("SELECT to_regclass('geometry_columns') IS NOT NULL")).scalar_one()
        if not has_postgis:
            return {}
        rows = conn.execute(
            sa.text("SELECT f_geometry_column, srid FROM geometry_columns WHERE f_table_schema = :s AND f_table_name = :t"),
            {"s": self.dataset.source_schema or "public", "t": self.dataset.source_table},
        ).all()
        return {name: int(srid) for name, srid in rows if srid}

    def geometry_types(self, columns: Sequence[SourceColumn]) -> set[str]:
        geometry = next((c for c in columns if c.type == "geometry"), None)
        if geometry is None:
            return set()
        g = quote(geometry.source_name)
        with self.engine.connect() as conn:
            # A typmod-constrained column (geometry(Point, 2272)) answers from the catalog, plus one probe for
            # a non-empty shape, instead of a scan of the whole table (~0.4 s per 1M rows).
            declared = conn.execute(sa.text(
                "SELECT lower(postgis_typmod_type(a.atttypmod)) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:relation) AND a.attname = :column AND a.atttypmod > 0"),
                {"relation": self.from_clause(), "column": geometry.source_name}).scalar()
            if declared and not declared.startswith("geometry"):
                probe = f"SELECT EXISTS (SELECT 1 FROM {self.from_clause()} WHERE NOT ST_IsEmpty({g}))"
                return {declared} if conn.execute(sa.text(probe)).scalar() else set()
            sql = (
                f"SELECT DISTINCT lower(substr(ST_GeometryType({g}), 4)) || "
                f"(ARRAY['', 'm', 'z', 'zm'])[ST_Zmflag({g}) + 1] FROM {self.from_clause()} WHERE NOT ST_IsEmpty({g})"
            )
            return {row[0] for row in conn.execute(sa.text(sql))}

    def stream(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        raw = self.engine.raw_connection()
        try:
            pg = raw.driver_connection
            pg.autocommit = True
            pg.execute("SET TIME ZONE 'UTC'")
            pg.execute("SET DateStyle = 'ISO, YMD'")
            pg.execute("SET IntervalStyle = 'iso_8601'")
            with pg.cursor() as cursor:
                # The server sends one CopyData message per row: the loop only appends each to a block, and
                # the writer gets whole blocks (its compressor and uploader threads do the rest), so the
                # read keeps up with the server. Messages (header + rows) count rows for progress only; the
                # row count is the server's (cursor.rowcount).
                block, messages, report = bytearray(), 0, self.COPY_PROGRESS_ROWS
                with cursor.copy(f"COPY ({self.select_sql(columns)}) TO STDOUT WITH (FORMAT csv, HEADER true)") as copy:
                    for chunk in copy:
                        block += chunk
                        messages += 1
                        if len(block) >= self.COPY_BLOCK:
                            writer.write_csv(block)
                            block.clear()
                            if messages > report:
                                progress(messages - 1)
                                report = messages + self.COPY_PROGRESS_ROWS
                    if block:
                        writer.write_csv(block)
                rows = cursor.rowcount
            writer.columns = [c.name for c in columns]
            writer.rows = rows
            progress(rows)
            return rows
        finally:
            raw.close()


def _pg_type(typname: str, category: str) -> str:
    if typname in ("int2", "int4", "int8", "oid"):
        return "integer"
    if typname in ("numeric", "float4", "float8", "money"):
        return "number"
    if typname == "bool":
        return "boolean"
    if typname in ("timestamp", "timestamptz"):
        return "datetime"
    if typname == "date":
        return "date"
    if typname == "time":
        return "time"
    if typname == "timetz":
        return "timetz"  # a PostgreSQL type name (passed through): "time" would drop the offset
    if typname == "json":
        return "json"  # a PostgreSQL type name (passed through): jsonb would reorder keys and drop duplicates
    if typname == "jsonb":
        return "object"
    return "string"


class OracleAdapter(Adapter):
    """Oracle through python-oracledb thin mode: ALL_TAB_COLS catalog, SDE and Oracle Spatial geometry."""

    dialect = "oracle"
    # Oracle Spatial's own SRIDs for the common geographic systems, and their EPSG codes.
    ORACLE_SRID_TO_EPSG = {8307: 4326, 8265: 4269}
    COLUMNS_SQL = (
        "SELECT column_name, data_type, data_type_owner, nullable, data_scale FROM all_tab_cols "
        "WHERE owner = :owner AND table_name = :table_name AND hidden_column = 'NO' ORDER BY column_id"
    )
    SDE_SRID_SQL = (
        "SELECT r.auth_srid FROM sde.layers l JOIN sde.spatial_references r ON l.srid = r.srid "
        "WHERE l.owner = :owner AND l.table_name = :table_name AND l.spatial_column = :column_name"
    )
    SDO_SRID_SQL = (
        "SELECT srid FROM all_sdo_geom_metadata WHERE owner = :owner AND table_name = :table_name AND column_name = :column_name"
    )

    @property
    def owner(self) -> str:
        return (self.dataset.source_schema or "").upper()

    @property
    def table_name(self) -> str:
        return self.dataset.source_table.upper()

    def from_clause(self) -> str:
        return f"{quote(self.owner)}.{quote(self.table_name)}"

    def columns(self) -> list[SourceColumn]:
        params = {"owner": self.owner, "table_name": self.table_name}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(self.COLUMNS_SQL), params).all()
            out = []
            for name, data_type, type_owner, nullable, scale in rows:
                required = nullable == "N"
                if data_type == "ST_GEOMETRY" or (data_type == "SDO_GEOMETRY" and type_owner == "MDSYS"):
                    out.append(self._geometry(conn, name, data_type, required, params))
                else:
                    out.append(SourceColumn(name, name.lower(), _oracle_type(data_type, scale), required, None, quote(name)))
        return out

    def _geometry(self, conn: sa.Connection, name: str, data_type: str, required: bool, params: dict[str, str]) -> SourceColumn:
        g = quote(name)
        if data_type == "ST_GEOMETRY":  # ESRI SDE: WKT without SRID; the layer's SRID comes from SDE.LAYERS
            srid_row = conn.execute(sa.text(self.SDE_SRID_SQL), {**params, "column_name": name}).first()
            expression = f"CASE WHEN sde.st_isempty({g}) = 1 THEN NULL ELSE sde.st_astext({g}) END"
        else:
            srid_row = conn.execute(sa.text(self.SDO_SRID_SQL), {**params, "column_name": name}).first()
            expression = f"SDO_UTIL.TO_WKTGEOMETRY({g})"
        srid = self.dataset.geometry_srid or (self.ORACLE_SRID_TO_EPSG.get(int(srid_row[0]), int(srid_row[0])) if srid_row and srid_row[0] else None)
        return SourceColumn(name, name.lower(), "geometry", required, srid, expression)

    def prepare_cursor(self, cursor: Any) -> None:
        # Large fetches per round trip; geometry WKT comes back as CLOB and is fetched as str (no LOB locators).
        cursor.arraysize = BATCH_ROWS
        cursor.prefetchrows = BATCH_ROWS + 1
        try:
            import oracledb

            oracledb.defaults.fetch_lobs = False
        except ImportError:  # the fake cursor in tests
            pass


def _oracle_type(data_type: str, scale: int | None) -> str:
    data_type = data_type.upper()
    if data_type == "NUMBER":
        return "integer" if scale == 0 else "number"
    if data_type in ("FLOAT", "BINARY_FLOAT", "BINARY_DOUBLE"):
        return "number"
    if data_type == "DATE" or data_type.startswith("TIMESTAMP"):
        return "datetime"
    return "string"


def _adapter_for(dialect: str) -> type[Adapter]:
    return {"postgresql": PostgresAdapter, "oracle": OracleAdapter}.get(dialect, GenericAdapter)
