"""PostgreSQL/PostGIS: catalog from pg_attribute + geometry_columns, data through ``COPY (SELECT …) TO STDOUT``
(no per-row Python). Views work the same way as tables (their columns are in pg_attribute; a view's geometry
without a typmod has SRID 0 in geometry_columns and takes ``geometry.srid``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ...config import Dataset
from ...staging import StagedTableWriter
from ..values import ConversionStats
from .base import Adapter, ChangedSince, ExtractError, Progress, SourceColumn, quote, quote_literal

# The column types an incremental extract can compare (the ``column`` change signal takes the same).
CHANGED_SINCE_TYPES = ("timestamptz", "timestamp", "date")

# Esri assigns spatial reference ids from 300001 up to coordinate systems it writes into a PostGIS
# spatial_ref_sys without an EPSG code (e.g. a State Plane variant with a vertical system). They are numbers of
# one geodatabase; the EPSG code comes from the layer's definition (gdb_items LatestWKID) or geometry.srid.
ESRI_SRID_MIN = 300000


class PostgresAdapter(Adapter):
    dialect = "postgresql"
    reads_changed_since = True
    COPY_BLOCK = 1024 * 1024  # COPY output handed to the staging writer at a time
    COPY_PROGRESS_ROWS = 50_000

    def __init__(self, dataset: Dataset, engine: sa.Engine):
        super().__init__(dataset, engine)
        self._unconstrained: set[str] = set()  # geometry columns without a typmod SRID
        self._relabel: dict[str, int] = {}  # geometry column → EPSG code replacing an Esri-only SRID

    # --- session --------------------------------------------------------------------------------------------
    def on_connect(self, dbapi_connection: Any) -> None:
        if self.timeout:
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            dbapi_connection.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
            dbapi_connection.autocommit = autocommit

    def is_timeout(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) == "57014"  # query_canceled (statement_timeout)

    # --- catalog --------------------------------------------------------------------------------------------
    def catalog(self, conn: sa.Connection) -> list[tuple[str, str, bool, str, int]]:
        return conn.execute(
            sa.text(
                "SELECT a.attname, t.typname, a.attnotnull, t.typcategory, a.atttypmod FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = to_regclass(:q) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
            ),
            {"q": self.from_clause()},
        ).all()

    def columns(self) -> list[SourceColumn]:
        with self.engine.connect() as conn:
            rows = self.catalog(conn)
            srids = self._srids(conn)
            out = []
            wanted = self.dataset.geometry_column
            for name, typname, notnull, category, typmod in rows:
                column = self.special_column(conn, name, typname, notnull, typmod)
                if column is False:  # not published (the geodatabase's bookkeeping columns)
                    continue
                if column is not None:
                    out.append(column)
                    continue
                if typname == "geometry" and (wanted is None or wanted == name.lower()):
                    out.append(self._geometry_column(conn, name, notnull, srids.get(name)))
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

    def special_column(self, conn: sa.Connection, name: str, typname: str, notnull: bool, typmod: int) -> SourceColumn | None | bool:
        """A hook for the geodatabase: a column it reads its own way, False for one it drops, None for the usual."""
        return None

    def _geometry_column(self, conn: sa.Connection, name: str, notnull: bool, declared: int | None) -> SourceColumn:
        srid = self.resolve_srid(conn, name, declared)
        g = quote(name)
        # An unconstrained column: rows without an SRID get the configured one; a row with another SRID keeps it
        # (check() refuses it before the extract, and the destination column would reject it).
        if not declared:
            self._unconstrained.add(name)
            expr = f"CASE WHEN ST_SRID({g}) = 0 THEN ST_SetSRID({g}, {int(srid)}) ELSE {g} END"
        elif srid != declared:  # an Esri-only SRID: the same coordinate system under its EPSG code
            self._relabel[name] = srid
            expr = f"ST_SetSRID({g}, {int(srid)})"
        else:
            expr = g
        expression = f"CASE WHEN ST_IsEmpty({expr}) THEN NULL ELSE ST_AsEWKT({expr}) END AS {quote(name.lower())}"
        return SourceColumn(name, name.lower(), "geometry", notnull, srid, expression, dims=self.declared_dims(conn, name))

    def declared_dims(self, conn: sa.Connection, name: str) -> str | None:
        return None

    def resolve_srid(self, conn: sa.Connection, name: str, declared: int | None) -> int:
        """The column's SRID: the catalog's, or geometry.srid where the catalog has none. An Esri-only SRID
        (300001…) must resolve to an EPSG code (``esri_srid``) or the extract stops, naming it."""
        configured, where = self.dataset.geometry_srid, self.dataset.path
        if declared and declared > ESRI_SRID_MIN:
            return self.resolve_esri(conn, name, declared)
        if declared and configured and declared != configured:
            raise ExtractError(
                f"{self.dataset.id}: column {name.lower()}: geometry.srid is {configured} in {where}, but the source column "
                f"{self.table_label}.{name} is declared SRID {declared}; relabelling would move every shape — remove geometry.srid "
                "or transform the data in the source"
            )
        if not (declared or configured):
            raise ExtractError(
                f"{self.dataset.id}: column {name.lower()}: the source column has no SRID (geometry_columns says 0, as for a "
                f"view's computed geometry); set geometry.srid in {where}"
            )
        return int(declared or configured)  # type: ignore[arg-type]

    def resolve_esri(self, conn: sa.Connection, name: str, declared: int) -> int:
        epsg = self.dataset.geometry_srid or self.esri_srid(conn, name, declared)
        if not epsg:
            raise ExtractError(
                f"{self.dataset.id}: column {name.lower()}: SRID {declared} of {self.table_label}.{name} is an Esri-only "
                f"spatial reference id (no EPSG code in the layer's definition or spatial_ref_sys); declare its EPSG "
                f"code as geometry.srid in {self.dataset.path} (e.g. geometry: {{srid: 2272}} for NAD83 / Pennsylvania South ftUS)"
            )
        self.facts.setdefault("srid_mapped", {})[name.lower()] = {"source": declared, "epsg": int(epsg)}
        return int(epsg)

    def esri_srid(self, conn: sa.Connection, name: str, srid: int) -> int | None:
        """The EPSG code of an Esri-only SRID, from spatial_ref_sys when it names one."""
        row = conn.execute(sa.text(
            "SELECT auth_name, auth_srid FROM spatial_ref_sys WHERE srid = :s"), {"s": srid}).first()
        if row and row[0] and row[0].upper() == "EPSG" and row[1] and int(row[1]) < ESRI_SRID_MIN:
            return int(row[1])
        return None

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

    def changed_since_filter(self, since: ChangedSince) -> str:
        """``column > '<newest>'::<its type> - settle``: the base version's newest value, as this server printed
        it, read back as the column's own type (a naive timestamp stays naive), so an index on it is used."""
        with self.engine.connect() as conn:
            typname = conn.execute(sa.text(
                "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = to_regclass(:relation) AND a.attname = :column AND a.attnum > 0 AND NOT a.attisdropped"),
                {"relation": self.from_clause(), "column": since.column}).scalar()
        if typname not in CHANGED_SINCE_TYPES:
            raise ExtractError(f"{self.dataset.id}: change_signal.column {since.column!r} of {self.table_label} is "
                               f"{'missing' if typname is None else typname}, not a timestamp or date; incremental needs one")
        return (f"{quote(since.column)} > CAST({quote_literal(since.newest)} AS {typname}) "
                f"- make_interval(secs => {int(since.settle_seconds)})")

    # --- data -----------------------------------------------------------------------------------------------
    def stream(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        raw = self.engine.raw_connection()
        try:
            pg = raw.driver_connection
            pg.autocommit = True
            pg.execute("SET TIME ZONE 'UTC'")
            pg.execute("SET DateStyle = 'ISO, YMD'")
            pg.execute("SET IntervalStyle = 'iso_8601'")
            # Rows in one stable order, so unchanged data stages the same bytes (the sha256 that lets a republish skip
            # the rewrite): no parallel workers (their rows interleave by timing) and no synchronized scans (which
            # start where another session's scan of the table happens to be).
            pg.execute("SET max_parallel_workers_per_gather = 0")
            pg.execute("SET synchronize_seqscans = off")
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
            _give_back(raw)


def _give_back(raw: Any) -> None:
    """Return the COPY's connection to the extract's pool as the pool handed it out (not autocommit); one the
    COPY left unusable (a cancelled statement, a lost server) is discarded instead."""
    try:
        raw.driver_connection.autocommit = False
    except Exception:
        raw.invalidate()
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
