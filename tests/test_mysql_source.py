"""MySQL/MariaDB as a source (issue 15): a plain ``mysql+pymysql://`` URL, identifiers quoted the dialect's way,
an unbuffered (streaming) cursor, ``BOOLEAN``/``tinyint(1)`` published as boolean, and the bad-data corpus on
every row path: the server writing the CSV (default), the vectorised row path, and the per-value reference.

The server is the MariaDB on 127.0.0.1:3306 (``DATABRIDGE_TEST_MYSQL_URL``; scripts/bootstrap.sh installs and
starts it). Each test makes its own database and drops it. A missing server fails these tests; it never skips them.
"""
from __future__ import annotations

import math
import os
import uuid

import pytest

from databridge_luigi.sources.sql import ExtractError, ExtractTimeout
from tests.test_bad_data import TRICKY_TEXT, assert_refused, publish

MYSQL_URL = os.environ.get("DATABRIDGE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
CONFIG = "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\nallow_empty: true\nrow_count_tolerance: 100\n"


def _connect(database: str | None = None):
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_URL)
    try:
        return pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                               password=url.password or "", database=database, autocommit=True, charset="utf8mb4")
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB/MySQL is not reachable at {url.render_as_string(hide_password=True)} ({exc}); "
                    "scripts/bootstrap.sh installs and starts it (or set DATABRIDGE_TEST_MYSQL_URL)")


@pytest.fixture(params=["server", "vectorised", "reference"])
def mysql(request, pipeline, monkeypatch):
    """A fresh MariaDB database as connection ``mysql_src``, on one of the three row paths."""
    monkeypatch.setenv("DATABRIDGE_ROW_PATH", {"server": "fast", "vectorised": "arrow", "reference": "reference"}[request.param])
    name = f"dbl_test_{uuid.uuid4().hex[:10]}"
    admin = _connect()
    admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    monkeypatch.setenv("DATABRIDGE_CONN_MYSQL_SRC", f"{MYSQL_URL}/{name}")
    db = _connect(name)
    db.path = request.param  # type: ignore[attr-defined]
    db.run = lambda sql, args=None: (lambda c: (c.execute(sql, args), c.fetchall())[1])(db.cursor())  # type: ignore[attr-defined]
    db.config = lambda dataset, extra="", table=None: pipeline.config(  # type: ignore[attr-defined]
        dataset, CONFIG + f"source: {{conn: mysql_src, schema: {name}{', table: ' + table if table else ''}}}\n" + extra)
    yield db
    db.close()
    admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


def test_plain_url_reserved_and_mixed_case_names_without_ansi_quotes(pipeline, mysql):
    assert "ANSI_QUOTES" not in mysql.run("SELECT @@SESSION.sql_mode")[0][0]
    mysql.run("CREATE TABLE `Order` (`select` INT, `Mixed Case` VARCHAR(20), `from` TEXT)")
    mysql.run("INSERT INTO `Order` VALUES (1, 'a', 'x'), (2, NULL, 'y')")
    mysql.config("bad__order", table="Order")
    publish(pipeline, "bad__order", "v1")
    assert pipeline.dest('SELECT "select", "mixed case", "from" FROM "order" ORDER BY 1') == [(1, "a", "x"), (2, None, "y")]


def test_text_quotes_newlines_emoji_rtl_1mb_cells_and_nul_bytes(pipeline, mysql):
    mysql.run("CREATE TABLE texts (id INT, note LONGTEXT, vc VARCHAR(20), en ENUM('a', 'b\"c'), js JSON)")
    for i, text in enumerate(TRICKY_TEXT):
        mysql.run("INSERT INTO texts VALUES (%s, %s, %s, %s, %s)", (i, text, text[:20], "a" if i % 2 else 'b"c', '{"b": 1, "a": [1, 2.5, null]}'))
    mysql.run("INSERT INTO texts VALUES (998, 'a\\0b\\0', NULL, NULL, NULL), (999, NULL, NULL, NULL, NULL)")
    mysql.config("bad__texts")
    manifest = publish(pipeline, "bad__texts", "v1")
    got = pipeline.dest("SELECT id, note, vc, en FROM texts ORDER BY id")
    assert got[:len(TRICKY_TEXT)] == [(i, t, t[:20], "a" if i % 2 else 'b"c') for i, t in enumerate(TRICKY_TEXT)]
    assert got[-2:] == [(998, "ab", None, None), (999, None, None, None)]
    assert manifest.source["nul_bytes_removed"] == 2
    # MariaDB's JSON is LONGTEXT with a check: published as the text it holds (MySQL's native JSON becomes jsonb).
    assert pipeline.dest("SELECT js::jsonb->'a' FROM texts WHERE id = 0") == [([1, 2.5, None],)]


def test_numbers_booleans_dates_and_times_round_trip(pipeline, mysql):
    mysql.run("CREATE TABLE things (id BIGINT, flag BOOLEAN, tiny TINYINT, fixed DECIMAL(65, 30), dbl DOUBLE, flt FLOAT, "
              "day DATE, naive DATETIME(6), aware TIMESTAMP(6) NULL, t TIME(6), yr YEAR)")
    rows = [
        (1, 1, 127, "12345678901234567890123456789012345.123456789012345678901234567890", 1e300, 0.1, "1000-01-01",
         "2024-03-10 02:30:00", "2024-03-10 07:30:00", "00:00:00", 1999),  # 02:30 does not exist in New York
        (2, 0, -128, "-0.000000000000000000000000000001", 5e-324, -3.4e38, "9999-12-31", "2024-11-03 01:30:00.5",
         "2038-01-19 03:14:07.999999", "23:59:59.999999", 2155),  # 01:30 happens twice
        (3, None, None, None, 0.1 + 0.2, 1 / 3, "1900-02-28", "1883-11-18 12:03:57", "1970-01-01 00:00:01", "12:34:56.5", None),
        (4, 1, 0, "0", -0.0, 2.0, None, "2024-07-01 12:00:00", None, None, None),
        (2**63 - 1, None, None, None, 1.7976931348623157e308, None, None, None, None, None, None),
    ]
    for row in rows:
        mysql.run("INSERT INTO things VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    mysql.config("bad__things")
    publish(pipeline, "bad__things", "v1")
    types = dict(pipeline.dest("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'things'::regclass AND attnum > 0"))
    assert (types["flag"], types["tiny"], types["fixed"], types["naive"], types["aware"], types["yr"]) == (
        "boolean", "bigint", "numeric", "timestamp with time zone", "timestamp with time zone", "bigint")
    got = pipeline.dest("SELECT id, flag, tiny, fixed::text, dbl::float8, flt::float8, day::text, t::text, yr FROM things ORDER BY id")
    fixed = [r[0] for r in mysql.run("SELECT CAST(fixed AS CHAR) FROM things ORDER BY id")]  # every digit the source holds
    assert fixed[:2] == [rows[0][3], "-0.000000000000000000000000000001"]
    assert [g[:4] for g in got] == [(1, True, 127, fixed[0]), (2, False, -128, fixed[1]), (3, None, None, None), (4, True, 0, fixed[3]),
                                    (2**63 - 1, None, None, None)]
    stored = mysql.run("SELECT dbl, flt FROM things ORDER BY id")  # what the source holds, as the driver reads it
    for (_, _, _, _, dbl, flt, *_), (want_dbl, want_flt) in zip(got, stored):
        assert dbl == want_dbl or (dbl is None and want_dbl is None)
        assert flt is None or math.isclose(flt, want_flt, rel_tol=1e-6)
    assert [g[6:] for g in got] == [("1000-01-01", "00:00:00", 1999), ("9999-12-31", "23:59:59.999999", 2155),
                                    ("1900-02-28", "12:34:56.5", None), (None, None, None), (None, None, None)]
    # Naive DATETIMEs are New York wall-clock times read as PostgreSQL reads them (gap: offset before; fold: standard);
    # TIMESTAMPs are instants.
    expected = pipeline.dest(
        "SELECT (timestamp '2024-03-10 02:30:00' AT TIME ZONE 'America/New_York'), (timestamp '2024-11-03 01:30:00.5' AT TIME ZONE 'America/New_York'), "
        "(timestamp '1883-11-18 12:03:57' AT TIME ZONE 'America/New_York'), (timestamp '2024-07-01 12:00:00' AT TIME ZONE 'America/New_York')")[0]
    assert tuple(r[0] for r in pipeline.dest("SELECT naive FROM things WHERE naive IS NOT NULL ORDER BY id")) == expected
    assert pipeline.dest("SELECT to_char(aware AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM things WHERE aware IS NOT NULL ORDER BY id") == [
        ("2024-03-10 07:30:00.000000",), ("2038-01-19 03:14:07.999999",), ("1970-01-01 00:00:01.000000",)]


@pytest.mark.parametrize(("ddl", "bad", "reason"), [
    ("flag BOOLEAN", "2", "not a boolean: 2"),
    ("day DATE", "'0000-00-00'", "not an ISO-8601 date: '0000-00-00'"),
    ("t TIME", "'25:00:00'", "not an ISO-8601 time"),
])
def test_values_the_destination_cannot_hold_are_refused_naming_row_and_column(pipeline, mysql, ddl, bad, reason):
    column = ddl.split()[0]
    mysql.run("SET SESSION sql_mode = ''")
    mysql.run(f"CREATE TABLE vals (id INT, {ddl})")
    mysql.run("INSERT INTO vals (id) VALUES (1), (2)")
    mysql.config("bad__vals")
    publish(pipeline, "bad__vals", "v1")
    mysql.run(f"INSERT INTO vals VALUES (3, {bad})")
    assert_refused(pipeline, "bad__vals", "vals", "v2", f"bad__vals: row 3, column {column}", reason)


def test_wkt_geometry_column_with_configured_srid(pipeline, mysql):
    mysql.run("CREATE TABLE shapes (id INT, shape TEXT)")
    rows = [(1, "POLYGON((0 0, 10 0, 10 10, 0 0))"), (2, "MULTIPOLYGON(((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5)))"), (3, None)]
    for row in rows:
        mysql.run("INSERT INTO shapes VALUES (%s, %s)", row)
    mysql.config("bad__shapes", "geometry: {column: shape, srid: 2272}\n")
    publish(pipeline, "bad__shapes", "v1")
    assert pipeline.dest("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'shapes'::regclass AND attname = 'shape'") == [
        ("geometry(Geometry,2272)",)]
    assert pipeline.dest("SELECT id, ST_AsEWKT(shape) FROM shapes ORDER BY id") == [
        (1, "SRID=2272;POLYGON((0 0,10 0,10 10,0 0))"), (2, "SRID=2272;MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))"), (3, None)]
    # Shapes the server cannot write as EWKT as they are (an SRID prefix, EMPTY, odd spacing) take the row path.
    mysql.run("INSERT INTO shapes VALUES (4, 'SRID=2272;POINT (1  2)'), (5, 'POINT EMPTY')")
    publish(pipeline, "bad__shapes", "v2")
    assert pipeline.dest("SELECT id, ST_AsEWKT(shape) FROM shapes WHERE id > 3 ORDER BY id") == [(4, "SRID=2272;POINT(1 2)"), (5, None)]
    # The server's look is split over two scans: a value only the second half's tests catch (two spaces) is seen too.
    mysql.run("DELETE FROM shapes WHERE id > 3")
    mysql.run("INSERT INTO shapes VALUES (6, 'LINESTRING (3  4, 5 6)')")
    publish(pipeline, "bad__shapes", "v3")
    assert pipeline.dest("SELECT id, ST_AsEWKT(shape) FROM shapes WHERE id > 3 ORDER BY id") == [(6, "SRID=2272;LINESTRING(3 4,5 6)")]


def test_a_spatial_column_is_refused_clearly_unless_excluded(pipeline, mysql):
    mysql.run("CREATE TABLE places (id INT, name TEXT, pt POINT)")
    mysql.run("INSERT INTO places VALUES (1, 'a', ST_GeomFromText('POINT(1 2)'))")
    path = mysql.config("bad__places")
    with pytest.raises(ExtractError, match=r"bad__places: column pt of .*places has a type this source cannot publish .*exclude_fields"):
        publish(pipeline, "bad__places", "v1")
    path.write_text(path.read_text() + "exclude_fields: [pt]\n")
    publish(pipeline, "bad__places", "v1")
    assert pipeline.dest("SELECT * FROM places") == [(1, "a")]


def test_the_cursor_streams_and_a_timeout_is_reported_as_one(pipeline, mysql):
    import pymysql.cursors
    import sqlalchemy as sa

    from databridge_luigi.config import Registry
    from databridge_luigi.sources.sql.mysql import MySQLAdapter

    mysql.run("CREATE TABLE slow (id INT)")
    mysql.run("INSERT INTO slow VALUES (1), (2), (3), (4)")
    mysql.run("CREATE VIEW slow_v AS SELECT id FROM slow WHERE SLEEP(0.6) = 0")
    mysql.config("bad__slow_v", "timeout: 1\n")
    pipeline.reset()
    dataset = Registry(pipeline.config_dir).get("bad__slow_v")
    engine = sa.create_engine(os.environ["DATABRIDGE_CONN_MYSQL_SRC"], poolclass=sa.pool.NullPool)
    raw = engine.raw_connection()
    try:
        cursor = MySQLAdapter(dataset, engine).open_cursor(raw)
        assert isinstance(cursor, pymysql.cursors.SSCursor)  # unbuffered: rows are read as they are fetched
        cursor.close()
    finally:
        raw.close()
        engine.dispose()
    with pytest.raises(ExtractTimeout, match=r"bad__slow_v: .* ran longer than the dataset's timeout \(1 s\)"):
        publish(pipeline, "bad__slow_v", "v1")
    assert issubclass(ExtractTimeout, ExtractError)


def test_server_csv_lines_read_packet_by_packet_every_length_and_an_error_mid_stream(pipeline, mysql):
    """The server-written CSV is read from PyMySQL's socket buffer packet by packet (``mysql_lines``): rows of
    every length encoding (1-, 2- and 3-byte lengths, rows larger than the buffer, rows straddling its edge)
    come out as PyMySQL reads them, an error the server sends after the first rows is raised as PyMySQL raises
    it, and the connection is usable afterwards (the reader stops at packet boundaries)."""
    import pymysql.cursors

    from databridge_luigi.sources.sql.mysql_lines import lines, single_column_encoding

    mysql.run("CREATE TABLE sizes (id INT, s LONGTEXT)")
    mysql.run("INSERT INTO sizes WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
              "SELECT (a.i - 1) * 30 + b.i, CONCAT('\"', REPEAT(CONCAT('é', CHAR(65 + b.i % 26)), (((a.i - 1) * 30 + b.i) * 7919) % 25000)) "
              "FROM n a JOIN n b ON b.i <= 30")
    mysql.config("bad__sizes")
    publish(pipeline, "bad__sizes", "v1")
    source = mysql.run("SELECT id, CHAR_LENGTH(s), MD5(s) FROM sizes ORDER BY id")
    assert pipeline.dest("SELECT id, length(s), md5(s) FROM sizes ORDER BY id") == [tuple(row) for row in source]

    select = "SELECT CONCAT_WS(',', id, s) FROM sizes ORDER BY id"
    cursor = mysql.cursor(pymysql.cursors.SSCursor)
    cursor.execute(select)
    assert single_column_encoding(cursor) == "utf8"
    got = [line for batch in lines(cursor, 1000) for line in batch]
    cursor.close()
    assert got == [row[0].encode("utf-8") for row in mysql.run(select)]

    cursor = mysql.cursor(pymysql.cursors.SSCursor)
    cursor.execute("SELECT IF(id = 2000, (SELECT 1 UNION SELECT 2), CONCAT_WS(',', id, s)) FROM sizes ORDER BY id")
    read = 0
    with pytest.raises(pymysql.err.OperationalError, match="Subquery returns more than 1 row"):
        for batch in lines(cursor, 1000):
            read += len(batch)
    cursor.close()
    assert read == 1000  # the first batch, then the error the server sent at row 2000
    assert mysql.run("SELECT COUNT(*) FROM sizes") == ((3000,),)


def test_a_pymysql_without_the_internals_the_reader_uses_gets_pymysql_rows(pipeline, mysql, monkeypatch):
    """The packet reader leans on PyMySQL's private connection parts; a PyMySQL release that lacks one makes the
    extract read PyMySQL's own rows instead — the same staged bytes, never a failure."""
    import pymysql.cursors

    from databridge_luigi.sources.sql import mysql_lines

    mysql.run("CREATE TABLE fallback (id INT, s TEXT)")
    mysql.run("INSERT INTO fallback VALUES (1, 'a\"b'), (2, NULL), (3, 'é')")
    mysql.config("bad__fallback")
    fast = publish(pipeline, "bad__fallback", "v1")
    monkeypatch.setattr(mysql_lines, "_CONNECTION_PARTS", mysql_lines._CONNECTION_PARTS + ("_renamed_in_a_later_release",))
    cursor = mysql.cursor(pymysql.cursors.SSCursor)
    cursor.execute("SELECT CONCAT_WS(',', id, s) FROM fallback")
    assert mysql_lines.single_column_encoding(cursor) is None
    cursor.close()
    slow = publish(pipeline, "bad__fallback", "v2")
    assert slow.sha256 == fast.sha256 and slow.rows == 3


def test_an_error_while_the_csv_streams_is_reported_and_ends_the_geometry_types_scan(pipeline, mysql):
    """The geometry's types are read on a second connection while the CSV streams; a statement that fails in the
    stream (here a value only the stream reads: a subquery returning two rows at row 3) is reported as the
    source's error (PyMySQL's, on every row path, in one line naming the dataset and the connection), and the
    types scan beside it is ended, not waited on forever."""
    mysql.run("CREATE TABLE pts (id INT, shape TEXT)")
    mysql.run("INSERT INTO pts VALUES (1, 'POINT(1 2)'), (2, 'POINT(3 4)'), (3, 'POINT(5 6)')")
    mysql.run("CREATE VIEW pts_v AS SELECT id, shape, IF(id = 3, (SELECT 1 UNION SELECT 2), 'x') AS note FROM pts")
    mysql.config("bad__pts_v", "geometry: {column: shape, srid: 2272}\n")
    with pytest.raises(ExtractError, match=r"^bad__pts_v: source mysql_src: \(1242, 'Subquery returns more than 1 row'\)$"):
        publish(pipeline, "bad__pts_v", "v1")
