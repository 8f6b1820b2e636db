"""Bad input (issue 7): every awkward value either lands EQUAL to the source, or is refused with an error naming
the dataset, the row and the column, before the live table is touched (no partial table, no shadow left).

Two sources: the PostgreSQL source (``COPY TO STDOUT``, no per-row Python) and the generic SQLAlchemy source
(SQLite, the row path), the latter three times: Arrow batches from ADBC (``sources/sql/sqlite_adbc.py``), sqlite3
rows vectorised (``sources/sql/arrow.py``) and per value (``sources/values.py``, the reference). MySQL/MariaDB runs the same corpus in ``test_mysql_source.py``. PostgreSQL text cannot hold NUL bytes, so NUL and non-UTF-8
bytes come from SQLite. Values are compared row by row, column by column: text as text, numbers as text (and
as float8 where the destination type differs), times as instants, geometry as EWKB.

Decisions (each pinned by a test below):

* Round trip: quotes, commas, newlines, CR, backslashes, ``\\N``, the word NULL, '' vs NULL, emoji, RTL and
  combining text, 1 MB cells; numeric(38,12), 1000-digit numerics, 1e300, 5e-324, NaN and ±Infinity (float8
  and numeric); dates before 1900, year 1 and BC (PostgreSQL source); naive timestamps at DST edges read as
  PostgreSQL reads them (gap → offset before the change, ambiguous → standard time) by both sources;
  timestamptz; booleans; json (kept as json), jsonb, arrays (as their text); Polygon/MultiPolygon mixes
  (generic typmod), PointZ/PointM/PointZM, invalid (self-intersecting) polygons, full-precision coordinates.
* Documented normalizations: NUL bytes are removed and counted in the manifest (PostgreSQL text cannot hold
  them); empty geometries (POINT EMPTY) become NULL, as the old system's SDE extract did.
* Refused at extract (dataset, row, column): bytes that are not UTF-8 (never guessed as latin-1), a geometry
  whose SRID differs from the column's, non-numbers in number columns, fractions in integer columns,
  non-booleans, bad dates, timestamps Python cannot represent (BC, from a text source). Refused at extract
  (dataset, column): 2-D and Z shapes mixed in one column, a geometry column with no SRID, a configured SRID
  that contradicts the source catalog, names that collide after lower-casing.
"""
from __future__ import annotations

import math
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from databridge_luigi.config import Registry
from databridge_luigi.connections import resolve
from databridge_luigi.publish import open_transport
from databridge_luigi.publish.protocol import Loader
from databridge_luigi.sources import extract
from databridge_luigi.sources.sql import ExtractError
from databridge_luigi.staging import StagedTable, open_store

CONFIG = "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\nallow_empty: true\nrow_count_tolerance: 100\n"
SQLITE_CONFIG = CONFIG + "source: {conn: sqlite_src, schema: main}\n"
MB = 1024 * 1024

TRICKY_TEXT = [
    "plain", "", "comma, inside", 'quote " inside', '""', "single ' quote", "new\nline", "carriage\rreturn", "crlf\r\n",
    "backslash \\ and \\N", "\\N", "NULL", "null", "tab\there", "emoji 🚲🏙️👩‍👩‍👧", "right-to-left עברית العربية \u202eabc",
    "combining é vs é", "  padded  ", "\u2028line separator", "💩" * 10, "x" * MB, "é" * (MB // 2),
]


# --- harness ---------------------------------------------------------------------------------------------

def pytest_generate_tests(metafunc):
    """The generic-source corpus runs on all three row paths: Arrow batches from ADBC (the default for SQLite),
    sqlite3 rows vectorised with pyarrow, and the per-value reference both must equal
    (DATABRIDGE_ROW_PATH=fast / arrow / reference)."""
    if metafunc.function.__name__.startswith("test_sqlite"):
        metafunc.fixturenames.append("row_path")
        metafunc.parametrize("row_path", ["adbc", "vectorised", "reference"], indirect=True)


@pytest.fixture()
def row_path(request, monkeypatch):
    monkeypatch.setenv("DATABRIDGE_ROW_PATH", {"adbc": "fast", "vectorised": "arrow", "reference": "reference"}[request.param])
    return request.param


def publish(pipeline, dataset_id: str, version: str):
    """Extract then load, exactly as the Extract and Load tasks do; the real exception reaches the test."""
    pipeline.reset()
    dataset = Registry(pipeline.config_dir).get(dataset_id)
    staged = StagedTable(open_store(pipeline.staging), dataset.id, version)
    manifest = extract(dataset, resolve(dataset.source_conn), staged)
    transport = open_transport(dataset.dest_conn)
    try:
        Loader(dataset, transport).load(staged, force=True)
    finally:
        transport.close()
    return manifest


def sqlite_source(pipeline, monkeypatch, tmp_path: Path, script: str, rows: dict[str, list[tuple]] | None = None) -> sqlite3.Connection:
    path = tmp_path / "source.sqlite"
    db = sqlite3.connect(path)
    db.executescript(script)
    for table, values in (rows or {}).items():
        for row in values:
            db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    db.commit()
    monkeypatch.setenv("DATABRIDGE_CONN_SQLITE_SRC", f"sqlite:///{path}")
    return db


def pg_table(pipeline, ddl: str) -> None:
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_bad")
    name = ddl.split("(", 1)[0].split()[-1]
    pipeline.source(f"DROP TABLE IF EXISTS {name}")
    pipeline.source(f"CREATE TABLE {ddl}")


def assert_refused(pipeline, dataset_id: str, table: str, version: str, *fragments: str) -> str:
    """Publishing ``version`` fails with a message holding every fragment; the live table (published before)
    is byte-for-byte unchanged, no shadow is left, and no marker was written for the version."""
    before = pipeline.table_digest(table)
    with pytest.raises(Exception) as caught:
        publish(pipeline, dataset_id, version)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert pipeline.table_digest(table) == before
    assert pipeline.dest("SELECT to_regclass(%s)", (f"public.{table}__shadow",)) == [(None,)]
    assert version not in [m[0] for m in pipeline.markers(dataset_id)]
    return message


# --- PostgreSQL source: round trips ---------------------------------------------------------------------------

def test_pg_text_quotes_newlines_emoji_rtl_and_1mb_cells_round_trip(pipeline):
    pg_table(pipeline, "gis_bad.texts (id integer, note text, vc varchar(20), ch char(5))")
    for i, text in enumerate(TRICKY_TEXT):
        pipeline.source("INSERT INTO gis_bad.texts VALUES (%s, %s, %s, %s)", (i, text, text[:20], text[:5]))
    pipeline.source("INSERT INTO gis_bad.texts VALUES (999, NULL, NULL, NULL)")
    pipeline.config("bad__texts", CONFIG)
    publish(pipeline, "bad__texts", "v1")
    src = pipeline.source("SELECT id, note, vc, ch FROM gis_bad.texts ORDER BY id")
    dst = pipeline.dest("SELECT id, note, vc, ch FROM texts ORDER BY id")
    assert len(dst) == len(TRICKY_TEXT) + 1
    for expected, actual in zip(src, dst, strict=True):
        assert actual == expected, expected[0]
    assert dst[1][1] == "" and dst[-1][1] is None  # '' and NULL stay distinct


def test_pg_numbers_beyond_float_precision_nan_and_infinity_round_trip(pipeline):
    pg_table(pipeline, "gis_bad.numbers (id integer, fixed numeric(38,12), free numeric, dbl double precision, "
                       "real4 real, big bigint, small smallint)")
    values = [
        (1, "12345678901234567890123456.123456789012", "9" * 500 + "." + "1" * 500, 1e300, 3.4e38, 2**63 - 1, 32767),
        (2, "-99999999999999999999999999.999999999999", "0.000000000000000000000000000001", -1e-300, -1.5e-45, -2**63, -32768),
        (3, "0.000000000001", "NaN", 5e-324, 0.1, 0, 0),
        (4, "1.5", "Infinity", float("inf"), float("inf"), 1, 1),
        (5, "-1.5", "-Infinity", float("-inf"), float("-inf"), -1, -1),
        (6, "0", "1e-30", float("nan"), float("nan"), 42, 42),
        (7, None, None, 1.7976931348623157e308, 1 / 3, None, None),
        (8, "42", "42.000", 0.1 + 0.2, -0.0, 7, 7),
    ]
    for row in values:
        pipeline.source("INSERT INTO gis_bad.numbers VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
    pipeline.config("bad__numbers", CONFIG)
    publish(pipeline, "bad__numbers", "v1")
    # Numerics compare as text (every digit, NaN, ±Infinity); floats as float8 values (the destination is numeric).
    src = pipeline.source("SELECT id, fixed::text, free::text, dbl, real4::float8, big, small FROM gis_bad.numbers ORDER BY id")
    dst = pipeline.dest("SELECT id, fixed::text, free::text, dbl::float8, real4::float8::float4::float8, big, small FROM numbers ORDER BY id")
    assert len(dst) == len(values)
    for expected, actual in zip(src, dst, strict=True):
        for e, a in zip(expected, actual, strict=True):
            assert (isinstance(e, float) and math.isnan(e) and math.isnan(a)) or a == e, (expected, actual)
    assert pipeline.dest("SELECT dbl::float8::text, free::text = %s FROM numbers WHERE id = 1", ("9" * 500 + "." + "1" * 500,)) == [("1e+300", True)]
    assert pipeline.dest("SELECT count(*) FROM numbers WHERE dbl = 'Infinity' OR dbl = '-Infinity' OR dbl = 'NaN'") == [(3,)]


def test_pg_dates_before_1900_year_1_bc_and_dst_edges_round_trip(pipeline):
    pg_table(pipeline, "gis_bad.times (id integer, day date, naive timestamp, aware timestamptz, t time, tz timetz, span interval)")
    rows = [
        (1, "1850-02-01", "2024-03-10 02:30:00", "2024-03-10 07:30:00+00", "00:00:00", "12:00:00+05", "1 year 2 months"),  # nonexistent 02:30
        (2, "1899-12-31", "2024-11-03 01:30:00", "2024-11-03 05:30:00+00", "23:59:59.999999", "12:00:00-03:30", "-3 days 04:05:06"),  # ambiguous 01:30
        (3, "0001-01-01", "0001-01-01 00:00:00", "0001-01-01 00:00:00+00", "12:34:56.5", "00:00:00+00", "0"),
        (4, "0044-03-15 BC", "0044-03-15 12:00:00 BC", "0044-03-15 12:00:00+00 BC", "01:02:03", "23:59:59+14", "1 microsecond"),
        (5, "9999-12-31", "9999-12-31 23:59:59.999999", "2024-11-03 06:30:00.123456+00", "24:00:00", "24:00:00-12", "100 years"),
        (6, "infinity", "infinity", "-infinity", None, None, None),
        (7, "2024-02-29", "2024-03-10 01:59:59.999999", "2024-03-10 03:00:00-04", "02:30:00", "02:30:00+01", "P1D"),
        (8, None, None, None, None, None, None),
    ]
    for row in rows:
        pipeline.source("INSERT INTO gis_bad.times VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
    pipeline.config("bad__times", CONFIG)
    publish(pipeline, "bad__times", "v1")
    zone = "'America/New_York'"
    src = pipeline.source(f"SELECT id, day::text, (naive AT TIME ZONE {zone})::text, aware::text, t::text, tz::text, span::text FROM gis_bad.times ORDER BY id")
    dst = pipeline.dest("SELECT id, day::text, naive::text, aware::text, t::text, tz::text, span::interval::text FROM times ORDER BY id")
    assert len(dst) == len(rows)
    for expected, actual in zip(src, dst, strict=True):
        assert actual == expected
    # The DST edges as instants: the gap takes the offset before the change, the ambiguous time standard time.
    assert pipeline.dest("SELECT to_char(naive AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM times WHERE id IN (1, 2) ORDER BY id") == [
        ("2024-03-10 07:30",), ("2024-11-03 06:30",)]


def test_pg_booleans_json_jsonb_arrays_and_other_types_round_trip(pipeline):
    pg_table(pipeline, "gis_bad.misc (id integer, flag boolean, doc json, docb jsonb, ints integer[], texts text[], "
                       "uid uuid, raw bytea, addr inet, money_ money)")
    rows = [
        (1, True, '{"b": 1, "a": 2, "a": 3}', '{"x": "ü \\" ,\\n", "y": [1, 2.50, null]}', [1, None, 3], ["a,b", 'q"uote', "", None, "NULL"],
         "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"\x00\xff", "192.168.0.1/24", "12.34"),
        (2, False, '[1,   2 ,"x"]', '"just a string"', [], [], None, b"", "::1", "-0.01"),
        (3, None, None, None, None, None, None, None, None, None),
    ]
    for row in rows:
        pipeline.source("INSERT INTO gis_bad.misc VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    pipeline.config("bad__misc", CONFIG)
    publish(pipeline, "bad__misc", "v1")
    columns = "id, flag, doc::text, docb::text, ints::text, texts::text, uid::text, raw::text, addr::text, money_::numeric::text"
    src = pipeline.source(f"SELECT {columns} FROM gis_bad.misc ORDER BY id")
    # Types without a schema type of their own (arrays, uuid, bytea, inet) land as their text; cast back, equal.
    dst = pipeline.dest(f"SELECT {columns.replace('::numeric', '').replace('addr::text', 'addr::inet::text')} FROM misc ORDER BY id")
    assert dst == src
    # json stays json (keys in order, duplicates kept); jsonb stays jsonb.
    types = dict(pipeline.dest("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'misc'::regclass AND attnum > 0"))
    assert (types["doc"], types["docb"], types["flag"]) == ("json", "jsonb", "boolean")


def test_pg_geometry_mixes_dimensions_invalid_shapes_and_precision_round_trip(pipeline):
    pg_table(pipeline, "gis_bad.shapes (id integer, shape geometry(Geometry, 2272))")
    pg_table(pipeline, "gis_bad.shapes_z (id integer, shape geometry(PointZ, 2272))")
    pg_table(pipeline, "gis_bad.shapes_m (id integer, shape geometry(PointM, 4326))")
    pg_table(pipeline, "gis_bad.shapes_zm (id integer, shape geometry(MultiLineStringZM, 2272))")
    mixed = [
        "SRID=2272;POLYGON((0 0,10 0,10 10,0 10,0 0))",
        "SRID=2272;MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))",
        "SRID=2272;POLYGON((0 0,10 10,10 0,0 10,0 0))",  # self-intersecting bow-tie: invalid, published as it is
        "SRID=2272;POLYGON((0 0,4 0,4 4,0 4,0 0),(1 1,2 1,2 2,1 1))",
        "SRID=2272;MULTIPOLYGON(((2690000.1234567891 230000.65432109876,2690001 230000,2690001 230001,2690000.1234567891 230000.65432109876)))",
    ]
    for i, ewkt in enumerate(mixed):
        pipeline.source("INSERT INTO gis_bad.shapes VALUES (%s, ST_GeomFromEWKT(%s))", (i, ewkt))
    pipeline.source("INSERT INTO gis_bad.shapes VALUES (99, NULL)")
    pipeline.source("INSERT INTO gis_bad.shapes_z VALUES (1, 'SRID=2272;POINT Z (2690000.5 230000.25 -12.125)'), (2, 'SRID=2272;POINT Z (1 2 1e-9)')")
    pipeline.source("INSERT INTO gis_bad.shapes_m VALUES (1, 'SRID=4326;POINT M (-75.16349876543211 39.95234567890123 1700000000)')")
    pipeline.source("INSERT INTO gis_bad.shapes_zm VALUES (1, 'SRID=2272;MULTILINESTRING ZM ((0 0 1 2,1 1 3 4),(5 5 5 5,6 6 6 6))')")
    for table in ("shapes", "shapes_z", "shapes_m", "shapes_zm"):
        pipeline.config(f"bad__{table}", CONFIG)
        publish(pipeline, f"bad__{table}", "v1")
        src = pipeline.source(f"SELECT id, ST_AsEWKB(shape) FROM gis_bad.{table} ORDER BY id")
        dst = pipeline.dest(f"SELECT id, ST_AsEWKB(shape) FROM {table} ORDER BY id")
        assert dst == src, table
    typmods = [pipeline.dest(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'shape'")[0][0]
               for t in ("shapes", "shapes_z", "shapes_m", "shapes_zm")]
    assert typmods == ["geometry(Geometry,2272)", "geometry(PointZ,2272)", "geometry(PointM,4326)", "geometry(MultiLineStringZM,2272)"]
    assert pipeline.dest("SELECT ST_IsValid(shape) FROM shapes WHERE id = 2") == [(False,)]


def test_pg_empty_geometry_becomes_null_by_design(pipeline):
    """Documented normalization (README: empty shapes as NULL): an EMPTY geometry carries no location."""
    pg_table(pipeline, "gis_bad.empties (id integer, shape geometry(Point, 2272))")
    pipeline.source("INSERT INTO gis_bad.empties VALUES (1, 'SRID=2272;POINT EMPTY'), (2, 'SRID=2272;POINT(1 2)'), (3, NULL)")
    pipeline.config("bad__empties", CONFIG)
    publish(pipeline, "bad__empties", "v1")
    assert pipeline.dest("SELECT id, ST_AsEWKT(shape) FROM empties ORDER BY id") == [(1, None), (2, "SRID=2272;POINT(1 2)"), (3, None)]


# --- PostgreSQL source: refusals ------------------------------------------------------------------------------

def test_pg_mixed_2d_and_z_geometries_are_refused_naming_the_column(pipeline):
    pg_table(pipeline, "gis_bad.dims (id integer, shape geometry)")  # a typed column could not hold the mix at all
    pipeline.source("INSERT INTO gis_bad.dims VALUES (1, 'SRID=2272;POINT(1 2)'), (2, 'SRID=2272;POINT(3 4)')")
    pipeline.config("bad__dims", CONFIG + "geometry: {srid: 2272}\n")
    publish(pipeline, "bad__dims", "v1")
    pipeline.source("INSERT INTO gis_bad.dims VALUES (3, 'SRID=2272;POINT Z (1 2 3)')")
    assert_refused(pipeline, "bad__dims", "dims", "v2", "bad__dims", "column shape", "different dimensions", "point, pointz")


def test_pg_srid_mismatch_in_an_unconstrained_column_is_refused_naming_the_row(pipeline):
    """geometry.srid labels rows without an SRID; a row with another SRID is never silently relabelled."""
    pg_table(pipeline, "gis_bad.srids (id integer, shape geometry)")
    pipeline.source("INSERT INTO gis_bad.srids VALUES (1, 'POINT(2690000 230000)'), (2, 'SRID=2272;POINT(2690001 230001)')")
    pipeline.config("bad__srids", CONFIG + "geometry: {srid: 2272}\n")
    publish(pipeline, "bad__srids", "v1")
    assert pipeline.dest("SELECT id, ST_AsEWKT(shape) FROM srids ORDER BY id") == [
        (1, "SRID=2272;POINT(2690000 230000)"), (2, "SRID=2272;POINT(2690001 230001)")]
    pipeline.source("INSERT INTO gis_bad.srids VALUES (3, 'SRID=4326;POINT(-75.1 39.9)')")
    assert_refused(pipeline, "bad__srids", "srids", "v2", "bad__srids", "row 3", "column shape", "SRID 4326", "SRID 2272")


def test_pg_configured_srid_contradicting_the_catalog_or_missing_is_refused(pipeline):
    pg_table(pipeline, "gis_bad.typed (id integer, shape geometry(Point, 4326))")
    pipeline.source("INSERT INTO gis_bad.typed VALUES (1, 'SRID=4326;POINT(-75.1 39.9)')")
    pipeline.config("bad__typed", CONFIG)
    publish(pipeline, "bad__typed", "v1")
    pipeline.config("bad__typed", CONFIG + "geometry: {srid: 2272}\n")
    assert_refused(pipeline, "bad__typed", "typed", "v2", "bad__typed", "column shape", "geometry.srid is 2272", "declared SRID 4326")

    pg_table(pipeline, "gis_bad.nosrid (id integer, shape geometry)")
    pipeline.source("INSERT INTO gis_bad.nosrid VALUES (1, 'POINT(1 2)')")
    pipeline.config("bad__nosrid", CONFIG)
    with pytest.raises(ExtractError, match=r"bad__nosrid: column shape: the source column has no SRID .*set geometry.srid in .*nosrid.yml"):
        publish(pipeline, "bad__nosrid", "v1")
    assert pipeline.dest("SELECT to_regclass('nosrid'), to_regclass('nosrid__shadow')") == [(None, None)]


def test_pg_duplicate_column_names_after_lower_casing_are_refused(pipeline):
    pg_table(pipeline, 'gis_bad.dupes (id integer, "Name" text)')
    pipeline.source("INSERT INTO gis_bad.dupes VALUES (1, 'a')")
    pipeline.config("bad__dupes", CONFIG)
    publish(pipeline, "bad__dupes", "v1")
    pipeline.source("ALTER TABLE gis_bad.dupes ADD COLUMN \"NAME\" text")
    assert_refused(pipeline, "bad__dupes", "dupes", "v2", "bad__dupes", "'Name'", "'NAME'", "same name after lower-casing")


def test_a_value_the_destination_rejects_fails_the_load_with_the_live_table_unchanged(pipeline, tmp_path):
    """The last line of defence: a staged value the destination type refuses (here forced by a schema override
    typing text as integer) fails the COPY; the shadow is dropped and the live table is untouched."""
    pg_table(pipeline, "gis_bad.late (id integer, code text)")
    pipeline.source("INSERT INTO gis_bad.late VALUES (1, '10'), (2, '20')")
    path = pipeline.config("bad__late", CONFIG + "schema_override: late.schema.json\n")
    path.with_name("late.schema.json").write_text('{"fields": [{"name": "code", "type": "integer"}]}')
    publish(pipeline, "bad__late", "v1")
    assert pipeline.dest("SELECT code FROM late ORDER BY id") == [(10,), (20,)]
    pipeline.source("INSERT INTO gis_bad.late VALUES (3, 'thirty')")
    assert_refused(pipeline, "bad__late", "late", "v2", "thirty", "late__shadow")


def test_schema_override_srid_contradicting_the_data_fails_the_load_with_the_live_table_unchanged(pipeline):
    """An override cannot relabel shapes: the destination column refuses the staged EWKT's SRID at COPY time."""
    pg_table(pipeline, "gis_bad.override (id integer, shape geometry(Point, 2272))")
    pipeline.source("INSERT INTO gis_bad.override VALUES (1, 'SRID=2272;POINT(1 2)')")
    path = pipeline.config("bad__override", CONFIG)
    publish(pipeline, "bad__override", "v1")
    pipeline.config("bad__override", CONFIG + "schema_override: override.schema.json\n")
    path.with_name("override.schema.json").write_text('{"fields": [{"name": "shape", "type": "geometry", "geometry_type": "point", "srid": 4326}]}')
    assert_refused(pipeline, "bad__override", "override", "v2", "Geometry SRID (2272) does not match column SRID (4326)", "line 2, column shape",
                  "bad__override: COPY into carto_phl:public.override at staged row 1, column shape failed")


# --- SQLite (generic) source ------------------------------------------------------------------------------------

SQLITE_SCHEMA = """
CREATE TABLE geometry_columns (f_table_name TEXT, f_geometry_column TEXT, geometry_type TEXT, srid INTEGER);
CREATE TABLE things (id INTEGER, note TEXT, amount NUMERIC, ratio REAL, qty INTEGER, flag BOOLEAN, day DATE,
                     seen TIMESTAMP, at TIME, shape TEXT);
INSERT INTO geometry_columns VALUES ('things', 'shape', 'GEOMETRY', 2272);
"""


def sqlite_things(pipeline, monkeypatch, tmp_path, rows: list[tuple]) -> sqlite3.Connection:
    db = sqlite_source(pipeline, monkeypatch, tmp_path, SQLITE_SCHEMA, {"things": rows})
    pipeline.config("bad__things", SQLITE_CONFIG)
    return db


GOOD_ROW = (1, "ok", 1.5, 0.25, 7, 1, "2024-01-02", "2024-07-01 12:00:00", "12:00:00", "POINT (2690000 230000)")


def test_sqlite_text_quotes_newlines_emoji_rtl_and_1mb_cells_round_trip(pipeline, monkeypatch, tmp_path):
    rows = [(i, text) for i, text in enumerate(TRICKY_TEXT)] + [(999, None)]
    sqlite_source(pipeline, monkeypatch, tmp_path, "CREATE TABLE texts (id INTEGER, note TEXT);", {"texts": rows})
    pipeline.config("bad__texts", SQLITE_CONFIG)
    publish(pipeline, "bad__texts", "v1")
    assert pipeline.dest("SELECT id, note FROM texts ORDER BY id") == rows


def test_sqlite_nul_bytes_are_removed_and_counted_by_design(pipeline, monkeypatch, tmp_path):
    """Documented normalization: PostgreSQL text cannot hold NUL, so NUL bytes are removed, counted in the
    manifest (source.nul_bytes_removed) and logged; every other character is kept."""
    rows = [(1, "a\x00b"), (2, "\x00\x00"), (3, "clean"), (4, "x\x00" * 1000)]
    sqlite_source(pipeline, monkeypatch, tmp_path, "CREATE TABLE nuls (id INTEGER, note TEXT);", {"nuls": rows})
    assert sqlite3.connect(tmp_path / "source.sqlite").execute("SELECT note FROM nuls WHERE id = 1").fetchone() == ("a\x00b",)
    pipeline.config("bad__nuls", SQLITE_CONFIG)
    manifest = publish(pipeline, "bad__nuls", "v1")
    assert pipeline.dest("SELECT id, note FROM nuls ORDER BY id") == [(i, text.replace("\x00", "")) for i, text in rows]
    assert manifest.source["nul_bytes_removed"] == 1 + 2 + 1000


def test_sqlite_utf8_bytes_round_trip_but_latin1_bytes_are_refused_naming_row_and_column(pipeline, monkeypatch, tmp_path):
    """Bytes are decoded as UTF-8 or refused: latin-1 is never guessed (cp1252's 0x93 would become U+0093)."""
    db = sqlite_things(pipeline, monkeypatch, tmp_path, [GOOD_ROW, (2, "café".encode(), *GOOD_ROW[2:])])
    publish(pipeline, "bad__things", "v1")
    assert pipeline.dest("SELECT note FROM things ORDER BY id") == [("ok",), ("café",)]

    db.execute("INSERT INTO things VALUES (?,?,?,?,?,?,?,?,?,?)", (3, "caf\xe9".encode("latin-1"), *GOOD_ROW[2:]))  # a BLOB
    db.commit()
    assert_refused(pipeline, "bad__things", "things", "v2", "bad__things", "row 3", "column note", "not valid UTF-8", "0xe9")

    # Undecodable bytes stored as TEXT (sqlite3 itself would raise naming neither dataset nor row).
    db.execute("DELETE FROM things WHERE id = 3")
    db.execute("INSERT INTO things (id, note, shape) VALUES (4, CAST(X'6361669320E9' AS TEXT), 'POINT (1 2)')")
    db.commit()
    assert db.execute("SELECT typeof(note) FROM things WHERE id = 4").fetchone() == ("text",)
    assert_refused(pipeline, "bad__things", "things", "v3", "bad__things", "row 3", "column note", "not valid UTF-8", "0x93")


def test_sqlite_numbers_booleans_and_times_round_trip(pipeline, monkeypatch, tmp_path):
    rows = [
        GOOD_ROW,
        (2, "big", 1e300, float("inf"), 2**63 - 1, 0, "1850-02-01", "2024-03-10 02:30:00", "23:59:59.999999", None),
        (3, "tiny", -5e-324, float("-inf"), -2**63, 1, "0001-01-01", "2024-11-03 01:30:00", "00:00:00", None),
        (4, "text numbers", "12.50", 0.1, "42", "true", "0044-03-15 BC", "2024-07-01T12:00:00.123456+02:00", None, None),
        (5, "dst", Decimal("0.30000000000000004"), 1 / 3, None, "f", "9999-12-31 00:00:00", "0001-01-01 00:00:00", None, None),
        (6, None, None, None, None, None, None, None, None, None),
    ]
    sqlite_things(pipeline, monkeypatch, tmp_path, [tuple(str(v) if isinstance(v, Decimal) else v for v in r) for r in rows])
    publish(pipeline, "bad__things", "v1")
    got = pipeline.dest("SELECT id, amount::float8, ratio::float8, qty, flag, day::text, at::text FROM things ORDER BY id")
    assert got == [
        (1, 1.5, 0.25, 7, True, "2024-01-02", "12:00:00"),
        (2, 1e300, math.inf, 2**63 - 1, False, "1850-02-01", "23:59:59.999999"),
        (3, -5e-324, -math.inf, -2**63, True, "0001-01-01", "00:00:00"),
        (4, 12.5, 0.1, 42, True, "0044-03-15 BC", None),
        (5, 0.30000000000000004, 1 / 3, None, False, "9999-12-31", None),
        (6, None, None, None, None, None, None),
    ]
    # Naive timestamps mean the same instants as PostgreSQL's ``timestamp AT TIME ZONE`` gives (DST gap and fold).
    expected = pipeline.dest(
        "SELECT (timestamp '2024-07-01 12:00:00' AT TIME ZONE 'America/New_York'), (timestamp '2024-03-10 02:30:00' AT TIME ZONE 'America/New_York'), "
        "(timestamp '2024-11-03 01:30:00' AT TIME ZONE 'America/New_York'), timestamptz '2024-07-01 10:00:00.123456+00', "
        "(timestamp '0001-01-01 00:00:00' AT TIME ZONE 'America/New_York')")[0]
    assert tuple(r[0] for r in pipeline.dest("SELECT seen FROM things WHERE seen IS NOT NULL ORDER BY id")) == expected


def test_sqlite_nan_is_null_in_sqlite_itself(pipeline, monkeypatch, tmp_path):
    """SQLite cannot store NaN (it stores NULL): the destination matches what the source holds."""
    db = sqlite_things(pipeline, monkeypatch, tmp_path, [(1, "nan", float("nan"), float("nan"), *GOOD_ROW[4:])])
    assert db.execute("SELECT amount, ratio FROM things").fetchone() == (None, None)
    publish(pipeline, "bad__things", "v1")
    assert pipeline.dest("SELECT amount, ratio FROM things") == [(None, None)]


@pytest.mark.parametrize(
    ("column", "bad", "reason"),
    [
        ("amount", "n/a", "not a number: 'n/a'"),
        ("qty", 1.5, "not an integer: 1.5"),
        ("qty", "7 apples", "not an integer"),
        ("flag", 2, "not a boolean: 2"),
        ("flag", "maybe", "not a boolean: 'maybe'"),
        ("day", "2024-02-30", "not an ISO-8601 date: '2024-02-30'"),
        ("day", "2024-02-03 10:15:00", "a date column holds a time of day"),
        ("seen", "0044-03-15 12:00:00 BC", "not an ISO-8601 timestamp"),
        ("seen", "yesterday", "not an ISO-8601 timestamp"),
        ("at", "25:61", "not an ISO-8601 time"),
        ("shape", "SRID=4326;POINT (-75.1 39.9)", "SRID 4326 but the column is declared SRID 2272"),
    ],
)
def test_sqlite_values_the_destination_cannot_hold_are_refused_naming_row_and_column(pipeline, monkeypatch, tmp_path, column, bad, reason):
    db = sqlite_things(pipeline, monkeypatch, tmp_path, [GOOD_ROW, (2, *GOOD_ROW[1:])])
    publish(pipeline, "bad__things", "v1")
    db.execute("INSERT INTO things VALUES (?,?,?,?,?,?,?,?,?,?)", (3, *GOOD_ROW[1:]))
    db.execute(f'UPDATE things SET "{column}" = ? WHERE id = 3', (bad,))
    db.commit()
    assert_refused(pipeline, "bad__things", "things", "v2", "bad__things: row 3, column " + column, reason)


def test_sqlite_geometries_polygon_mix_z_m_invalid_and_empty(pipeline, monkeypatch, tmp_path):
    script = """
    CREATE TABLE geometry_columns (f_table_name TEXT, f_geometry_column TEXT, geometry_type TEXT, srid INTEGER);
    INSERT INTO geometry_columns VALUES ('mix', 'shape', 'GEOMETRY', 2272), ('zs', 'shape', 'POINTZ', 2272),
        ('ms', 'shape', 'POINTM', 2272), ('zms', 'shape', 'POINTZM', 2272);
    CREATE TABLE mix (id INTEGER, shape TEXT); CREATE TABLE zs (id INTEGER, shape TEXT);
    CREATE TABLE ms (id INTEGER, shape TEXT); CREATE TABLE zms (id INTEGER, shape TEXT);
    """
    data = {
        "mix": [(1, "POLYGON ((0 0, 10 0, 10 10, 0 0))"), (2, "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5)))"),
                (3, "POLYGON ((0 0, 10 10, 10 0, 0 10, 0 0))"), (4, "POLYGON EMPTY"), (5, "SRID=2272;POLYGON ((1 1, 2 1, 2 2, 1 1))"),
                (6, "MULTIPOLYGON (((2690000.1234567891 230000.65432109876, 2690001 230000, 2690001 230001, 2690000.1234567891 230000.65432109876)))"),
                (7, None)],
        "zs": [(1, "POINT Z (1 2 3)"), (2, "POINT Z (2690000.5 230000.25 -12.125)")],
        "ms": [(1, "POINT M (1 2 3)"), (2, "POINTM (4 5 6)")],
        "zms": [(1, "POINT ZM (1 2 3 4)"), (2, "POINT (5 6 7 8)")],
    }
    sqlite_source(pipeline, monkeypatch, tmp_path, script, data)
    for table, rows in data.items():
        pipeline.config(f"bad__{table}", SQLITE_CONFIG)
        publish(pipeline, f"bad__{table}", "v1")
        expected = [(i, None if wkt is None or wkt.endswith("EMPTY") else wkt.removeprefix("SRID=2272;")) for i, wkt in rows]
        for i, wkt in expected:
            got = pipeline.dest(f"SELECT shape IS NULL, ST_AsEWKB(shape) = ST_AsEWKB(ST_GeomFromEWKT('SRID=2272;' || %s)) FROM {table} WHERE id = %s", (wkt or "POINT EMPTY", i))
            assert got == [(wkt is None, None if wkt is None else True)], (table, i)
    typmods = [pipeline.dest(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'shape'")[0][0]
               for t in data]
    assert typmods == ["geometry(Geometry,2272)", "geometry(PointZ,2272)", "geometry(PointM,2272)", "geometry(PointZM,2272)"]


def test_sqlite_mixed_2d_and_z_geometries_are_refused(pipeline, monkeypatch, tmp_path):
    db = sqlite_things(pipeline, monkeypatch, tmp_path, [GOOD_ROW])
    publish(pipeline, "bad__things", "v1")
    db.execute("INSERT INTO things (id, shape) VALUES (2, 'POINT Z (1 2 3)')")
    db.commit()
    assert_refused(pipeline, "bad__things", "things", "v2", "bad__things", "column shape", "different dimensions", "point, pointz")
