"""An Esri enterprise geodatabase on PostgreSQL as a source (issue 14), against a database built to look like one.

What is real here: PostgreSQL + PostGIS, the ``sde`` schema's system tables as ArcGIS lays them out (``gdb_items``
with XML definitions, ``sde_layers``, ``sde_spatial_references``, ``sde_table_registry``), ArcGIS's
``gdb_geomattr_data`` column, a registered ``objectid``, a Z polygon layer, an Esri-only SRID (300001) in
``spatial_ref_sys``, views over a layer, and the whole extract → load. What is NOT Esri's: ``sde.st_geometry`` is
a stand-in (a composite type holding Esri-style WKT and an SRID, with SQL functions named and shaped like Esri's
``sde.st_astext``/``st_isempty``/``st_geometrytype``/``st_is3d``/``st_ismeasured``/``st_srid``), because Esri's
type ships only with ArcGIS. It is deliberately not PostGIS, so a PostGIS function applied to it would fail.
"""
from __future__ import annotations

import pytest

from databridge_luigi.config import Registry
from databridge_luigi.connections import resolve
from databridge_luigi.sources import extract
from databridge_luigi.sources.sql import ExtractError, ExtractTimeout
from databridge_luigi.staging import StagedTable, open_store
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.pipeline import Pipeline
from tests.test_bad_data import publish

CONFIG = "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\nsource: {schema: gis_test}\n"

SDE = r"""
CREATE SCHEMA sde;
CREATE TABLE sde.gdb_items (objectid integer PRIMARY KEY, uuid text, type text, name text, physicalname text, path text, definition xml);
CREATE TABLE sde.sde_table_registry (registration_id integer PRIMARY KEY, table_name text, owner text, rowid_column text);
CREATE TABLE sde.sde_spatial_references (srid integer PRIMARY KEY, auth_name text, auth_srid integer, srtext text);
CREATE TABLE sde.sde_layers (layer_id integer PRIMARY KEY, owner text, table_name text, spatial_column text, srid integer);
-- Stand-in for Esri's st_geometry (not PostGIS): Esri-style WKT text plus the Esri SRID.
CREATE TYPE sde.st_geometry AS (wkt text, srid integer);
CREATE FUNCTION sde.st_astext(g sde.st_geometry) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT g.wkt $$;
CREATE FUNCTION sde.st_srid(g sde.st_geometry) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT g.srid $$;
CREATE FUNCTION sde.st_isempty(g sde.st_geometry) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT g.wkt ILIKE '%EMPTY' $$;
CREATE FUNCTION sde.st_geometrytype(g sde.st_geometry) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'ST_' || upper(split_part(g.wkt, ' ', 1)) $$;
CREATE FUNCTION sde.st_is3d(g sde.st_geometry) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT g.wkt ~* '^\w+ ZM? ' $$;
CREATE FUNCTION sde.st_ismeasured(g sde.st_geometry) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT g.wkt ~* '^\w+ Z?M ' $$;
-- An Esri-only spatial reference ArcGIS added to PostGIS (State Plane PA South ftUS with a vertical system).
INSERT INTO spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text)
SELECT 300001, 'ESRI', 300001, 'PROJCS["NAD_1983_StatePlane_Pennsylvania_South_FIPS_3702_Feet",' || substr(srtext, strpos(srtext, 'GEOGCS')), proj4text
FROM spatial_ref_sys WHERE srid = 2272;
INSERT INTO spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text)
SELECT 300002, 'ESRI', 300002, 'PROJCS["Custom_Local_Grid",' || substr(srtext, strpos(srtext, 'GEOGCS')), proj4text FROM spatial_ref_sys WHERE srid = 2272;
INSERT INTO sde.sde_spatial_references VALUES (1, 'EPSG', 2272, 'PROJCS["NAD_1983_StatePlane_Pennsylvania_South_FIPS_3702_Feet"]');
CREATE SCHEMA gis_test;
"""


def definition(name: str, shape: str, has_z: bool, has_m: bool, wkid: int | None = None, latest: int | None = None) -> str:
    """The parts of a feature class's gdb_items definition that the source reads (ArcGIS writes far more)."""
    sr = f"<SpatialReference><WKID>{wkid}</WKID><LatestWKID>{latest}</LatestWKID></SpatialReference>" if wkid else ""
    return (f"<DEFeatureClassInfo><CatalogPath>\\{name}</CatalogPath><Name>{name}</Name><HasOID>true</HasOID>"
            f"<OIDFieldName>objectid</OIDFieldName><ShapeType>{shape}</ShapeType><ShapeFieldName>shape</ShapeFieldName>"
            f"<HasM>{'true' if has_m else 'false'}</HasM><HasZ>{'true' if has_z else 'false'}</HasZ>{sr}</DEFeatureClassInfo>")


@pytest.fixture()
def gdb(tmp_path, monkeypatch):
    """A geodatabase-like source database and a PostGIS destination, wired into the pipeline harness."""
    ensure_role("publicuser")
    source, dest = create_postgis_database("dbl_gdb"), create_postgis_database("dbl_dest")
    pipeline = Pipeline(tmp_path, source, dest, monkeypatch)
    pipeline.source(SDE)
    db = pipeline.source("SELECT current_database()")[0][0]

    def layer(item: int, table: str, ddl: str, xml: str | None, rows: str = "") -> None:
        pipeline.source(f"CREATE TABLE gis_test.{table} ({ddl})")
        if rows:
            pipeline.source(f"INSERT INTO gis_test.{table} VALUES {rows}")
        pipeline.source("INSERT INTO sde.sde_table_registry VALUES (%s, %s, 'gis_test', 'objectid')", (item, table))
        if xml is not None:
            pipeline.source("INSERT INTO sde.gdb_items (objectid, type, name, physicalname, path, definition) VALUES "
                            "(%s, '{70737809-852C-4A03-9E22-2CECEA5B9BFA}', %s, %s, %s, %s::xml)",
                            (item, f"{db}.gis_test.{table}", f"{db.upper()}.GIS_TEST.{table.upper()}", f"\\{table}", xml))

    pipeline.layer = layer  # type: ignore[attr-defined]
    yield pipeline
    drop_database(source)
    drop_database(dest)


def staged_extract(pipeline, dataset_id: str, version: str = "v1", progress=lambda *a: None):
    pipeline.reset()
    dataset = Registry(pipeline.config_dir).get(dataset_id)
    staged = StagedTable(open_store(pipeline.staging), dataset.id, version)
    return extract(dataset, resolve(dataset.source_conn), staged, progress), staged


def typmod(pipeline, table: str, column: str = "shape") -> str:
    return pipeline.dest(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = %s", (column,))[0][0]


def test_z_polygon_layer_drops_gdb_geomattr_data_and_keeps_z(gdb):
    gdb.layer(1, "buildings", "objectid integer NOT NULL, name text, shape geometry(PolygonZ, 2272), gdb_geomattr_data bytea",
              definition("buildings", "esriGeometryPolygon", True, False, 102729, 2272),
              "(1, 'City Hall', 'SRID=2272;POLYGON Z ((0 0 10, 10 0 10, 10 10 12, 0 0 10))', '\\x01'), (2, NULL, NULL, NULL)")
    gdb.config("test__buildings", CONFIG)
    manifest = publish(gdb, "test__buildings", "v1")
    assert manifest.columns == ["objectid", "name", "shape"] and manifest.source["geodatabase"] is True
    assert manifest.source["dropped_columns"] == ["gdb_geomattr_data"]
    assert typmod(gdb, "buildings") == "geometry(PolygonZ,2272)"
    assert gdb.dest("SELECT objectid, ST_AsEWKT(shape) FROM buildings ORDER BY 1") == [
        (1, "SRID=2272;POLYGON((0 0 10,10 0 10,10 10 12,0 0 10))"), (2, None)]


def test_z_and_m_come_from_gdb_items_when_postgis_does_not_declare_them(gdb):
    """An unconstrained geometry column on an empty layer: only the definition says Z/M (HasZ, HasM)."""
    gdb.layer(2, "routes", "objectid integer NOT NULL, route text, shape geometry",
              definition("routes", "esriGeometryPolyline", True, True, 102729, 2272))
    gdb.config("test__routes", CONFIG + "allow_empty: true\ngeometry: {srid: 2272}\n")
    publish(gdb, "test__routes", "v1")
    assert typmod(gdb, "routes") == "geometry(GeometryZM,2272)"
    gdb.layer(3, "stops", "objectid integer NOT NULL, shape geometry", definition("stops", "esriGeometryPoint", False, True))
    gdb.config("test__stops", CONFIG + "allow_empty: true\ngeometry: {srid: 2272}\n")
    publish(gdb, "test__stops", "v1")
    assert typmod(gdb, "stops") == "geometry(PointM,2272)"


def test_esri_only_srid_maps_to_epsg_from_the_layer_definition_or_fails_naming_it(gdb):
    gdb.layer(4, "parcels", "objectid integer NOT NULL, pin text, shape geometry(MultiPolygon, 300001)",
              definition("parcels", "esriGeometryPolygon", False, False, 102729, 2272),
              "(1, 'A', 'SRID=300001;MULTIPOLYGON(((0 0, 1 0, 1 1, 0 0)))')")
    gdb.config("test__parcels", CONFIG)
    manifest = publish(gdb, "test__parcels", "v1")
    assert typmod(gdb, "parcels") == "geometry(MultiPolygon,2272)"
    assert gdb.dest("SELECT ST_AsEWKT(shape) FROM parcels") == [("SRID=2272;MULTIPOLYGON(((0 0,1 0,1 1,0 0)))",)]
    assert manifest.source["srid_mapped"] == {"shape": {"source": 300001, "epsg": 2272}}

    # No definition: the coordinate system's name in spatial_ref_sys still identifies it.
    gdb.layer(5, "lots", "objectid integer NOT NULL, shape geometry(Point, 300001)", None, "(1, 'SRID=300001;POINT(5 6)')")
    gdb.config("test__lots", CONFIG)
    publish(gdb, "test__lots", "v1")
    assert gdb.dest("SELECT ST_AsEWKT(shape) FROM lots") == [("SRID=2272;POINT(5 6)",)]

    # Neither: refused naming the SRID and geometry.srid; declaring it publishes.
    gdb.layer(6, "grid", "objectid integer NOT NULL, shape geometry(Point, 300002)", None, "(1, 'SRID=300002;POINT(1 2)')")
    path = gdb.config("test__grid", CONFIG)
    with pytest.raises(ExtractError, match=r"test__grid: column shape: SRID 300002 .* Esri-only .*geometry.srid in .*grid.yml"):
        staged_extract(gdb, "test__grid")
    path.write_text(CONFIG + "geometry: {srid: 2272}\n")
    publish(gdb, "test__grid", "v1")
    assert gdb.dest("SELECT ST_AsEWKT(shape) FROM grid") == [("SRID=2272;POINT(1 2)",)]


def test_st_geometry_is_read_through_esri_functions_with_the_layer_srid_and_qnan_measures(gdb):
    gdb.layer(7, "hydrants", "objectid integer NOT NULL, status text, shape sde.st_geometry, gdb_geomattr_data bytea",
              definition("hydrants", "esriGeometryPoint", True, True, 102729, 2272),
              "(1, 'ok', ROW('POINT ZM ( 2690000.5 230000.25 12.5 1.#QNAN000)', 1)::sde.st_geometry, NULL), "
              "(2, 'ok', ROW('POINT ZM ( 2690001 230001 13 7)', 1)::sde.st_geometry, NULL), "
              "(3, 'gone', ROW('POINT EMPTY', 1)::sde.st_geometry, NULL), (4, NULL, NULL, NULL)")
    gdb.source("INSERT INTO sde.sde_layers VALUES (1, 'gis_test', 'hydrants', 'shape', 1)")
    gdb.config("test__hydrants", CONFIG)
    manifest = publish(gdb, "test__hydrants", "v1")
    assert manifest.source["st_geometry"] == "shape" and manifest.columns == ["objectid", "status", "shape"]
    assert typmod(gdb, "hydrants") == "geometry(PointZM,2272)"
    rows = gdb.dest("SELECT objectid, ST_X(shape), ST_Y(shape), ST_Z(shape), ST_M(shape) FROM hydrants ORDER BY 1")
    assert rows[0][:4] == (1, 2690000.5, 230000.25, 12.5) and rows[0][4] != rows[0][4]  # the null measure is NaN
    assert rows[1] == (2, 2690001, 230001, 13, 7) and rows[2][1:] == (None,) * 4 and rows[3][1:] == (None,) * 4


def test_views_take_geometry_srid_and_their_row_count_is_checked(gdb):
    gdb.layer(8, "permits", "objectid integer NOT NULL, kind text, shape geometry(Point, 2272)",
              definition("permits", "esriGeometryPoint", False, False, 102729, 2272),
              ", ".join(f"({i}, 'k{i % 3}', 'SRID=2272;POINT({i} {i})')" for i in range(1, 101)))
    # A view whose geometry is computed has no SRID in geometry_columns.
    gdb.source("CREATE VIEW gis_test.permits_buffered AS SELECT objectid, kind, ST_Buffer(shape, 1.0, 2) AS shape FROM gis_test.permits")
    assert gdb.source("SELECT srid FROM geometry_columns WHERE f_table_name = 'permits_buffered'") == [(0,)]
    path = gdb.config("test__permits_buffered", CONFIG)
    with pytest.raises(ExtractError, match=r"test__permits_buffered: column shape: the source column has no SRID .*set geometry.srid"):
        staged_extract(gdb, "test__permits_buffered")
    path.write_text(CONFIG + "geometry: {srid: 2272}\n")
    publish(gdb, "test__permits_buffered", "v1")
    assert gdb.dest("SELECT count(*), min(ST_SRID(shape)) FROM permits_buffered") == [(100, 2272)]
    assert typmod(gdb, "permits_buffered") == "geometry(Polygon,2272)"

    # A view over the layer that keeps the typmod takes its SRID from the catalog; rows written during the extract fail it.
    gdb.source("CREATE VIEW gis_test.permits_k1 AS SELECT objectid, shape FROM gis_test.permits WHERE kind = 'k1'")
    gdb.config("test__permits_k1", CONFIG)

    def someone_writes(done, total=None):
        gdb.source("INSERT INTO gis_test.permits VALUES (1000, 'k1', 'SRID=2272;POINT(0 0)')")

    with pytest.raises(ExtractError, match=r"row count changed during the extract \(before 34, extracted 34, after 35\)"):
        staged_extract(gdb, "test__permits_k1", progress=someone_writes)


def test_exclude_fields_are_dropped_and_unknown_names_refused(gdb):
    gdb.layer(9, "cases", "objectid integer NOT NULL, owner_name text, owner_phone text, status text, shape geometry(Point, 2272)",
              definition("cases", "esriGeometryPoint", False, False, 102729, 2272), "(1, 'Ann', '555', 'open', 'SRID=2272;POINT(1 1)')")
    path = gdb.config("test__cases", CONFIG + "exclude_fields: [OWNER_NAME, owner_phone]\n")
    manifest = publish(gdb, "test__cases", "v1")
    assert manifest.columns == ["objectid", "status", "shape"]
    path.write_text(CONFIG + "exclude_fields: [owner_name, ownr_phone]\n")
    with pytest.raises(ExtractError, match=r"test__cases: exclude_fields in .*cases.yml names 'ownr_phone', which gis_test.cases does not have \(columns: objectid, owner_name, owner_phone, status, shape\)"):
        staged_extract(gdb, "test__cases", "v2")


def test_a_statement_past_the_dataset_timeout_is_reported_as_a_timeout(gdb):
    gdb.source("CREATE VIEW gis_test.slow AS SELECT g AS objectid FROM generate_series(1, 4) g WHERE pg_sleep(0.5) IS NOT NULL")
    gdb.config("test__slow", CONFIG + "timeout: 1\n")
    with pytest.raises(ExtractTimeout, match=r"test__slow: source databridge: a statement on gis_test.slow ran longer than the dataset's timeout \(1 s\)"):
        staged_extract(gdb, "test__slow")
