"""Oracle through python-oracledb thin mode (no Instant Client): ALL_TAB_COLS catalog; SDE ``ST_Geometry``
through ``sde.st_astext`` with the layer's SRID; Oracle Spatial through ``SDO_UTIL.TO_WKTGEOMETRY``.

Fetch settings (the row path): ``arraysize`` = ``prefetchrows`` = BATCH_ROWS (10,000 rows per round trip, and
the first round trip already carries a full batch), ``defaults.fetch_lobs = False`` so CLOB geometry WKT
arrives as ``str`` without a LOB locator round trip per row. The cursor is server-side by nature (Oracle
streams a query's rows as they are fetched), so memory is bounded by one batch whatever the table's size.
Columns are converted a batch at a time, vectorised (``rows.py``). python-oracledb's ``fetch_df_batches``
(Arrow batches straight from the driver) would skip building Python row tuples; it needs python-oracledb 3
and cannot be tested here without an Oracle server, so it is not used yet (README "Sources").
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .base import BATCH_ROWS, Adapter, SourceColumn, quote

ORACLE_TIMEOUT_ERRORS = ("DPY-4024", "DPY-4011", "ORA-03156", "ORA-01013")


class OracleAdapter(Adapter):
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

    def on_connect(self, dbapi_connection: Any) -> None:
        # python-oracledb: a round trip longer than call_timeout (ms) is cancelled (DPY-4024).
        if self.timeout and hasattr(dbapi_connection, "call_timeout"):
            dbapi_connection.call_timeout = int(self.timeout * 1000)

    def is_timeout(self, error: BaseException) -> bool:
        return any(code in str(error) for code in ORACLE_TIMEOUT_ERRORS)

    def columns(self) -> list[SourceColumn]:
        params = {"owner": self.owner, "table_name": self.table_name}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(self.COLUMNS_SQL), params).all()
            out = []
            for name, data_type, type_owner, nullable, scale in rows:
                required = nullable == "N"
                if name.upper() == "GDB_GEOMATTR_DATA":  # ArcGIS bookkeeping, never published
                    continue
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

    def open_cursor(self, raw: Any) -> Any:
        # Large fetches per round trip; geometry WKT comes back as CLOB and is fetched as str (no LOB locators).
        cursor = raw.cursor()
        cursor.arraysize = BATCH_ROWS
        cursor.prefetchrows = BATCH_ROWS + 1
        try:
            import oracledb

            oracledb.defaults.fetch_lobs = False
        except ImportError:  # the fake cursor in tests
            pass
        return cursor


def _oracle_type(data_type: str, scale: int | None) -> str:
    data_type = data_type.upper()
    if data_type == "NUMBER":
        return "integer" if scale == 0 else "number"
    if data_type in ("FLOAT", "BINARY_FLOAT", "BINARY_DOUBLE"):
        return "number"
    if data_type == "DATE" or data_type.startswith("TIMESTAMP"):
        return "datetime"
    return "string"
