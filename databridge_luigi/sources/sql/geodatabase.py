"""An Esri enterprise geodatabase on PostgreSQL ("Databridge v2"): a PostgreSQL source with Esri's system tables
in the ``sde`` schema. Chosen when ``sde.gdb_items`` exists; everything else is the PostgreSQL path (COPY).

* ``gdb_geomattr_data`` (ArcGIS bookkeeping for true curves and the like) is never published.
* Geometry stored as PostGIS ``geometry`` keeps the COPY fast path. Geometry stored as Esri's ``sde.st_geometry``
  is read through Esri's SQL functions (``sde.st_astext``, ``sde.st_isempty``, ``sde.st_geometrytype``,
  ``sde.st_is3d``, ``sde.st_ismeasured``) with the layer's SRID from ``sde.sde_layers`` →
  ``sde.sde_spatial_references.auth_srid``, still inside the server's COPY.
* Z and M: the column's typmod when PostGIS declares them, otherwise the layer's definition XML in
  ``sde.gdb_items`` (``<HasZ>``, ``<HasM>``); the declaration gives the column its dimensions when the data has
  no shape to show them (an empty layer), and a layer whose shapes disagree with it is logged and recorded
  (``facts.declared_dims``): what is published is what the shapes hold.
* Null measures that Esri writes as ``1.#QNAN000`` (Oracle/Windows text for NaN) become ``NaN``, which PostGIS
  stores as a measure; an ``M`` value is never invented or dropped.
* Esri-only SRIDs (300001…, numbers ArcGIS gives coordinate systems it adds to ``spatial_ref_sys``) resolve to an
  EPSG code: ``geometry.srid`` if set, else the layer definition's ``<LatestWKID>``/``<WKID>``, else
  ``spatial_ref_sys``'s EPSG authority, else the coordinate system's name for the systems the City uses; if none
  answers, the extract stops naming the SRID and ``geometry.srid``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import sqlalchemy as sa

from ...schema import Column, geometry_type_from_seen, split_dimensions
from .base import SourceColumn, quote
from .postgres import PostgresAdapter

log = logging.getLogger("databridge_luigi.sources.sql")
BOOKKEEPING_COLUMNS = {"gdb_geomattr_data"}
ESRI_NULL_MEASURE = r"-?1\.#(QNAN|IND)[0-9]*"  # 1.#QNAN000, -1.#IND00: Windows/Oracle text for NaN
# Coordinate systems by the name Esri writes in spatial_ref_sys.srtext (PROJCS/GEOGCS), for Esri-only SRIDs whose
# layer definition has no EPSG code: the systems the City's geodatabase stores.
ESRI_NAMES_TO_EPSG = {
    "NAD_1983_StatePlane_Pennsylvania_South_FIPS_3702_Feet": 2272,
    "NAD_1983_StatePlane_Pennsylvania_South_FIPS_3702_Ft_US": 2272,
    "NAD_1983_2011_StatePlane_Pennsylvania_South_FIPS_3702_Ft_US": 6565,
    "WGS_1984_Web_Mercator_Auxiliary_Sphere": 3857,
    "GCS_WGS_1984": 4326,
    "GCS_North_American_1983": 4269,
}
_ESRI_SHAPE_TYPES = {"esriGeometryPoint": "point", "esriGeometryMultipoint": "multipoint"}


def is_geodatabase(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT to_regclass('sde.gdb_items') IS NOT NULL")).scalar_one())


class GeodatabaseAdapter(PostgresAdapter):
    dialect = "postgresql"

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.facts["geodatabase"] = True
        self._definition: str | None | bool = False  # not read yet
        self._st_geometry: set[str] = set()

    # --- the layer's definition (sde.gdb_items) -------------------------------------------------------------
    def definition(self, conn: sa.Connection) -> str | None:
        if self._definition is False:
            schema, table = (self.dataset.source_schema or "public").lower(), self.dataset.source_table.lower()
            self._definition = conn.execute(sa.text(
                "SELECT definition::text FROM sde.gdb_items WHERE lower(coalesce(physicalname, name)) IN "
                "(lower(current_database() || '.' || :s || '.' || :t), :s || '.' || :t) "
                "OR lower(name) IN (lower(current_database() || '.' || :s || '.' || :t), :s || '.' || :t) LIMIT 1"),
                {"s": schema, "t": table}).scalar()
        return self._definition  # type: ignore[return-value]

    def _xml(self, conn: sa.Connection, tag: str) -> str | None:
        definition = self.definition(conn) or ""
        match = re.search(rf"<{tag}>\s*([^<]*?)\s*</{tag}>", definition)
        return match.group(1) if match else None

    def declared_dims(self, conn: sa.Connection, name: str) -> str | None:
        typmod = conn.execute(sa.text(
            "SELECT postgis_typmod_type(a.atttypmod) FROM pg_attribute a WHERE a.attrelid = to_regclass(:r) "
            "AND a.attname = :c AND a.atttypmod > 0"), {"r": self.from_clause(), "c": name}).scalar()
        if typmod:  # PostGIS declares it: PolygonZ, PointM, GeometryZM, Polygon (2-D)
            return split_dimensions(typmod.lower())[1]
        has_z, has_m = self._xml(conn, "HasZ"), self._xml(conn, "HasM")
        if has_z is None and has_m is None:
            return None
        return ("z" if (has_z or "").lower() == "true" else "") + ("m" if (has_m or "").lower() == "true" else "")

    def esri_srid(self, conn: sa.Connection, name: str, srid: int) -> int | None:
        for tag in ("LatestWKID", "WKID"):
            value = self._xml(conn, tag)
            if value and value.isdigit() and 0 < int(value) < 100000:  # EPSG codes; 102xxx are Esri's own
                return int(value)
        epsg = super().esri_srid(conn, name, srid)
        if epsg:
            return epsg
        srtext = conn.execute(sa.text("SELECT srtext FROM spatial_ref_sys WHERE srid = :s"), {"s": srid}).scalar() or ""
        match = re.match(r'\s*(?:PROJCS|GEOGCS)\["([^"]+)"', srtext)
        if match and match.group(1) in ESRI_NAMES_TO_EPSG:
            log.info("%s: SRID %s (%s) is EPSG:%s", self.dataset.id, srid, match.group(1), ESRI_NAMES_TO_EPSG[match.group(1)])
            return ESRI_NAMES_TO_EPSG[match.group(1)]
        return None

    # --- columns --------------------------------------------------------------------------------------------
    def special_column(self, conn: sa.Connection, name: str, typname: str, notnull: bool, typmod: int) -> SourceColumn | None | bool:
        if name.lower() in BOOKKEEPING_COLUMNS:
            self.facts.setdefault("dropped_columns", []).append(name.lower())
            return False
        if typname == "st_geometry":
            wanted = self.dataset.geometry_column
            if wanted is not None and wanted != name.lower():
                return SourceColumn(name, name.lower(), "string", notnull, None, f"sde.st_astext({quote(name)}) AS {quote(name.lower())}")
            return self._st_geometry_column(conn, name, notnull)
        return None

    def _st_geometry_column(self, conn: sa.Connection, name: str, notnull: bool) -> SourceColumn:
        layer = conn.execute(sa.text(
            "SELECT l.srid, r.auth_srid FROM sde.sde_layers l LEFT JOIN sde.sde_spatial_references r ON r.srid = l.srid "
            "WHERE lower(l.owner) = :s AND lower(l.table_name) = :t AND lower(l.spatial_column) = :c"),
            {"s": (self.dataset.source_schema or "public").lower(), "t": self.dataset.source_table.lower(), "c": name.lower()},
        ).first() if conn.execute(sa.text("SELECT to_regclass('sde.sde_layers') IS NOT NULL")).scalar_one() else None
        if layer and layer[1]:
            srid = self.resolve_srid(conn, name, int(layer[1]))
        elif layer:  # no auth_srid: an Esri-only system, resolved like an Esri-only PostGIS SRID (or geometry.srid)
            srid = self.resolve_esri(conn, name, int(layer[0]))
        else:
            srid = self.resolve_srid(conn, name, None)
        self._st_geometry.add(name)
        g = quote(name)
        text = f"regexp_replace(sde.st_astext({g}), {sql_literal(ESRI_NULL_MEASURE)}, 'NaN', 'g')"
        expression = f"CASE WHEN {g} IS NULL OR sde.st_isempty({g})::text IN ('t', 'true', '1') THEN NULL ELSE 'SRID={int(srid)};' || {text} END AS {quote(name.lower())}"
        self.facts["st_geometry"] = name.lower()
        return SourceColumn(name, name.lower(), "geometry", notnull, srid, expression, dims=self.declared_dims(conn, name))

    def geometry_types(self, columns: Sequence[SourceColumn]) -> set[str]:
        geometry = next((c for c in columns if c.type == "geometry"), None)
        if geometry is None or geometry.source_name not in self._st_geometry:
            return super().geometry_types(columns)
        g = quote(geometry.source_name)
        sql = (
            f"SELECT DISTINCT lower(substr(sde.st_geometrytype({g}), 4)), sde.st_is3d({g})::text, sde.st_ismeasured({g})::text "
            f"FROM {self.from_clause()} WHERE {g} IS NOT NULL AND sde.st_isempty({g})::text NOT IN ('t', 'true', '1')"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(sql)).all()
        yes = ("t", "true", "1")
        return {base + ("z" if z in yes else "") + ("m" if m in yes else "") for base, z, m in rows}

    def schema_column(self, column: SourceColumn, geometry_types: set[str]) -> Column:
        if column.type != "geometry" or column.dims is None:
            return super().schema_column(column, geometry_types)
        if not geometry_types:  # no shape to tell: the declaration (typmod or HasZ/HasM) and the layer's shape type
            with self.engine.connect() as conn:
                base = _ESRI_SHAPE_TYPES.get(self._xml(conn, "ShapeType") or "", "geometry")
            return Column(column.name, "geometry", column.required, base + column.dims, column.srid)
        seen = geometry_type_from_seen(geometry_types)
        dims = split_dimensions(seen)[1]
        if dims != column.dims:
            log.warning("%s: column %s: the layer declares %s but its shapes are %s; publishing the shapes as they are",
                        self.dataset.id, column.name, column.dims.upper() or "2-D", dims.upper() or "2-D")
            self.facts["declared_dims"] = {"declared": column.dims or "2d", "data": dims or "2d"}
        return Column(column.name, "geometry", column.required, seen, column.srid)


def sql_literal(text: str) -> str:
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"

