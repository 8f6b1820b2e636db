"""Extract paths: PostgreSQL COPY, SQLite (the bundled sample), Oracle (fake DBAPI cursor + Oracle dialect)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from databridge_luigi.config import load_datasets
from databridge_luigi.sources import extract
from databridge_luigi.sources.sql import ExtractError, OracleAdapter, _run
from databridge_luigi.staging import LocalStore, StagedTable
from scripts.sample_databridge import build as build_sample
from tests.pipeline import Pipeline, make_points_table

ROOT = Path(__file__).resolve().parents[1]


def example(dataset_id: str):
    datasets, problems = load_datasets(ROOT / "configs" / "examples")
    assert not problems
    return next(d for d in datasets if d.id == dataset_id)


def test_sqlite_sample_extracts_with_ewkt_and_localized_timestamps(tmp_path):
    db = build_sample(tmp_path / "sample.sqlite", rows=50)
    staged = StagedTable(LocalStore(tmp_path / "staging"), "demo__violations", "20261124T060000Z")
    manifest = extract(example("demo__violations"), f"sqlite:///{db}", staged)
    assert manifest.rows == 50 and manifest.source["count_before"] == manifest.source["count_after"] == 50
    schema = staged.schema()
    shape = schema.geometry
    assert shape is not None and (shape.name, shape.geometry_type, shape.srid) == ("shape", "point", 2272)
    with staged.open_csv() as data:
        text = data.read().decode("utf-8")
    lines = text.splitlines()
    assert lines[0] == '"objectid","casenumber","violation_date","inspected_at","address","fine_amount","status","notes","shape"'
    assert ',"2024-03-09T22:17:00-05:00",' in lines[1]  # naive sample timestamps localized to America/New_York
    assert text.count('"SRID=2272;POINT (') == 50


def test_sqlite_polygon_mix_gives_generic_geometry(tmp_path):
    db = build_sample(tmp_path / "sample.sqlite", rows=5)
    staged = StagedTable(LocalStore(tmp_path / "staging"), "demo__zoning_districts", "v")
    extract(example("demo__zoning_districts"), f"sqlite:///{db}", staged)
    assert staged.schema().geometry.geometry_type == "geometry"


def test_row_count_change_during_extract_is_caught(tmp_path, monkeypatch, postgis_dsn):
    pipeline = Pipeline(tmp_path, postgis_dsn, postgis_dsn, monkeypatch)
    make_points_table(pipeline, "gis_qa", "moving", 500)
    pipeline.config("qa__moving", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")
    dataset = next(iter(load_datasets(pipeline.config_dir)[0]))
    staged = StagedTable(LocalStore(tmp_path / "staging"), dataset.id, "v1")

    def someone_writes(rows, total=None):  # another session inserts while the extract runs
        pipeline.source("INSERT INTO gis_qa.moving (objectid) SELECT max(objectid) + 1 FROM gis_qa.moving")

    with pytest.raises(ExtractError, match="row count changed during the extract"):
        extract(dataset, postgis_dsn, staged, progress=someone_writes)
    assert not staged.exists()
    assert list((tmp_path / "staging").rglob("*.gz")) == []


def test_duplicate_names_after_lower_casing_are_refused(tmp_path, monkeypatch, postgis_dsn):
    pipeline = Pipeline(tmp_path, postgis_dsn, postgis_dsn, monkeypatch)
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_qa")
    pipeline.source('DROP TABLE IF EXISTS gis_qa.dupes; CREATE TABLE gis_qa.dupes ("Name" text, name text); INSERT INTO gis_qa.dupes VALUES (\'a\', \'b\')')
    pipeline.config("qa__dupes", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")
    dataset = load_datasets(pipeline.config_dir)[0][0]
    with pytest.raises(ExtractError, match="same name after lower-casing"):
        extract(dataset, postgis_dsn, StagedTable(LocalStore(tmp_path / "s"), dataset.id, "v"))


# --- Oracle: no server here, so a fake python-oracledb connection answers the catalog and the data query ---

class FakeOracleCursor:
    """Answers the SQL our Oracle adapter sends, the way python-oracledb would (positional row tuples)."""

    def __init__(self, db: "FakeOracle"):
        self.db, self.arraysize, self.prefetchrows, self._rows, self.description = db, 100, 2, [], None

    def execute(self, statement: str, params=None):
        self.db.statements.append((statement, dict(params or {})))
        text = " ".join(statement.split()).lower()
        if "from all_tab_cols" in text:
            self._rows = list(self.db.columns)
        elif "from sde.layers" in text:
            self._rows = [(2272,)]
        elif text.startswith("select count(*)"):
            self._rows = [(len(self.db.rows),)]
        elif "sde.st_astext" in text:
            self._rows = list(self.db.rows)
        elif " from dual" in text or "v$" in text:  # SQLAlchemy's dialect set-up queries
            self._rows = [("GIS_LNI",)]
        else:
            raise AssertionError(f"unexpected SQL: {statement}")
        width = len(self._rows[0]) if self._rows else 1
        self.description = [(f"c{i}", None, None, None, None, None, True) for i in range(width)]

    def fetchall(self):
        rows, self._rows = self._rows, []
        return rows

    def fetchone(self):
        return self._rows.pop(0) if self._rows else None

    def fetchmany(self, size=None):
        size = size or self.arraysize
        batch, self._rows = self._rows[:size], self._rows[size:]
        return batch

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeOracle:
    def __init__(self, columns, rows):
        self.columns, self.rows, self.statements = columns, rows, []


def test_oracle_sde_extract_with_fake_cursor(tmp_path):
    from datetime import datetime

    dataset = replace(example("demo__violations"), id="lni__violations", source_schema="gis_lni", source_table="violations")
    db = FakeOracle(
        columns=[("OBJECTID", "NUMBER", None, "N", 0), ("ADDRESS", "VARCHAR2", None, "Y", None),
                 ("FINE", "NUMBER", None, "Y", 2), ("INSPECTED", "DATE", None, "Y", None), ("SHAPE", "ST_GEOMETRY", "SDE", "Y", None)],
        rows=[(1, "1234 Market St\x00", 12.5, datetime(2024, 7, 1, 9, 30), "POINT  ( 2712205.71100539 259685.27615705)"),
              (2, "Café Peña", None, None, None)],
    )
    engine = sa.create_engine("oracle+oracledb://u:p@h:1521/?service_name=GISDBP", creator=lambda: _FakeConnection(db), poolclass=sa.pool.NullPool)
    # The Oracle dialect compiles our catalog queries with its own bind style.
    compiled = str(sa.text(OracleAdapter.COLUMNS_SQL).compile(dialect=engine.dialect))
    assert ":owner" in compiled and ":table_name" in compiled
    adapter = OracleAdapter(dataset, engine)
    staged = StagedTable(LocalStore(tmp_path), dataset.id, "v")
    with staged.writer() as writer:
        extraction = _run(dataset, adapter, writer, lambda rows, total=None: None)
        writer.finish(extraction.schema, extraction.facts, "now")
    select = next(s for s, _ in db.statements if "st_astext" in s)
    assert 'FROM "GIS_LNI"."VIOLATIONS"' in select and 'sde.st_isempty("SHAPE") = 1' in select
    catalog_params = next(p for s, p in db.statements if "all_tab_cols" in s)
    assert catalog_params == {"owner": "GIS_LNI", "table_name": "VIOLATIONS"}
    schema = staged.schema()
    assert [(c.name, c.type) for c in schema.columns] == [("objectid", "integer"), ("address", "string"), ("fine", "number"), ("inspected", "datetime"), ("shape", "geometry")]
    assert schema.geometry.srid == 2272
    with staged.open_csv() as data:
        text = data.read().decode()
    assert '"SRID=2272;POINT  ( 2712205.71100539 259685.27615705)"' in text
    assert '"2024-07-01T09:30:00-04:00"' in text and '"1234 Market St"' in text
    assert staged.manifest().source["nul_bytes_removed"] == 1


class _FakeConnection:
    """Just enough of a DBAPI connection for SQLAlchemy's Oracle dialect and our adapter."""

    version = "19.0.0.0.0"
    max_identifier_length = 128
    autocommit = False
    stmtcachesize = 20

    def __init__(self, db):
        self.db = db

    def cursor(self):
        return FakeOracleCursor(self.db)

    def commit(self):
        pass

    def rollback(self):
        pass

    def close(self):
        pass


def test_empty_source_is_refused_for_every_kind_in_one_place(tmp_path):
    db = build_sample(tmp_path / "sample.sqlite", rows=5)
    import sqlite3

    sqlite3.connect(db).execute("DELETE FROM violations").connection.commit()
    staged = StagedTable(LocalStore(tmp_path / "staging"), "demo__violations", "v")
    with pytest.raises(ExtractError, match=r"databridge source main\.violations has 0 rows; refusing"):
        extract(example("demo__violations"), f"sqlite:///{db}", staged)
    assert not staged.exists() and list((tmp_path / "staging").rglob("*.gz")) == []


def test_pg_copy_stages_the_same_bytes_for_the_same_rows_even_where_a_parallel_plan_would_interleave_them(tmp_path, monkeypatch, fresh_postgis_dsn):
    """The staged sha256 decides whether a republish may skip the rewrite: PostgreSQL's parallel workers (and
    synchronized scans) would hand the same rows over in a different order each time."""
    pipeline = Pipeline(tmp_path, fresh_postgis_dsn, fresh_postgis_dsn, monkeypatch)
    make_points_table(pipeline, "gis_qa", "many", 60_000)
    database = fresh_postgis_dsn.rsplit("/", 1)[1]
    for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0"):
        pipeline.source(f'ALTER DATABASE "{database}" SET {setting}')
    pipeline.config("qa__many", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")
    dataset = load_datasets(pipeline.config_dir)[0][0]
    digests = {extract(dataset, fresh_postgis_dsn, StagedTable(LocalStore(tmp_path / "staging"), dataset.id, f"v{i}")).sha256 for i in range(3)}
    assert len(digests) == 1


def test_a_postgresql_extract_opens_one_connection_not_one_per_step(tmp_path, monkeypatch, postgis_dsn):
    """The adapter choice, the catalog, both row counts, the geometry probe and the COPY share one pooled
    connection: each new backend costs a fork and a PostGIS library load. (That the pooled connection carries
    the dataset's statement timeout all the same: test_geodatabase's timeout test.)"""
    pipeline = Pipeline(tmp_path, postgis_dsn, postgis_dsn, monkeypatch)
    make_points_table(pipeline, "gis_qa", "pooled", 300)
    pipeline.config("qa__pooled", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")
    dataset = next(iter(load_datasets(pipeline.config_dir)[0]))
    staged = StagedTable(LocalStore(tmp_path / "staging"), dataset.id, "v1")
    connects: list[int] = []

    def connected(dbapi_connection, record):
        connects.append(dbapi_connection.info.backend_pid)

    sa.event.listen(sa.engine.Engine, "connect", connected)
    try:
        manifest = extract(dataset, postgis_dsn, staged)
    finally:
        sa.event.remove(sa.engine.Engine, "connect", connected)
    assert manifest.rows == 300 and manifest.source["count_before"] == manifest.source["count_after"] == 300
    assert len(connects) == 1, connects
    with staged.open_csv() as data:
        assert data.read().count(b"\n") == 301


def _view_dataset(tmp_path: Path, monkeypatch, dsn: str, name: str, column: str):
    """Dataset ``qa__<name>`` over the view gis_qa.<name>: objectid and ``column`` over 300 rows."""
    pipeline = Pipeline(tmp_path, dsn, dsn, monkeypatch)
    make_points_table(pipeline, "gis_qa", f"{name}_base", 300)
    pipeline.source(f"CREATE OR REPLACE VIEW gis_qa.{name} AS SELECT objectid, {column} FROM gis_qa.{name}_base")
    pipeline.config(f"qa__{name}", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")
    dataset = next(iter(load_datasets(pipeline.config_dir)[0]))
    return dataset, StagedTable(LocalStore(tmp_path / "staging"), dataset.id, "v1")


def test_a_source_error_in_the_middle_of_the_copy_names_the_dataset_and_the_connection(tmp_path, monkeypatch, postgis_dsn):
    """A view that fails on row 150 of 300: the COPY raises its driver's error outside SQLAlchemy, after rows were
    read. The error is one line naming the dataset and the source connection, and nothing is staged."""
    dataset, staged = _view_dataset(tmp_path, monkeypatch, postgis_dsn, "divides", "100 / (objectid - 150) AS ratio")
    with pytest.raises(ExtractError) as raised:
        extract(dataset, postgis_dsn, staged)
    assert str(raised.value) == "qa__divides: source databridge: division by zero"
    assert not staged.exists()


def test_a_statement_cancelled_on_the_source_without_a_timeout_is_reported_as_cancelled(tmp_path, monkeypatch, postgis_dsn):
    """A DBA's pg_cancel_backend gives the same sqlstate as a statement timeout; a dataset without a timeout was
    not timed out, and the report says what the source said (it used to fail formatting a timeout of None)."""
    import threading
    import time

    import psycopg

    dataset, staged = _view_dataset(tmp_path, monkeypatch, postgis_dsn, "sleepy", "pg_sleep(0.02)::text AS slept")
    cancelled: list[int] = []

    def cancel_the_extract() -> None:
        with psycopg.connect(postgis_dsn, autocommit=True) as admin:
            deadline = time.monotonic() + 20
            while not cancelled and time.monotonic() < deadline:
                rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE '%gis_qa%sleepy%' AND state = 'active' "
                                     "AND pid <> pg_backend_pid()").fetchall()
                for (pid,) in rows:
                    admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
                    cancelled.append(pid)
                time.sleep(0.05)

    canceller = threading.Thread(target=cancel_the_extract)
    canceller.start()
    try:
        with pytest.raises(ExtractError) as raised:
            extract(dataset, postgis_dsn, staged)
    finally:
        canceller.join()
    assert cancelled
    assert str(raised.value) == "qa__sleepy: source databridge: canceling statement due to user request"
    assert not staged.exists()
