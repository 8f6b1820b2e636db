"""Change detection before the extract (issue 14): a version whose source did not change is staged as the
previous version's data without extracting — and every way we know to change a table without changing its
row count, its statistics or its catalog entry is tried against it, each of which must extract.

Real PostgreSQL source and PostGIS destination through real luigi (tests/pipeline.py); Oracle through
SQLAlchemy's Oracle dialect and a fake python-oracledb connection (no Oracle server can run here)."""
from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import databridge_luigi.schedule as schedule
from databridge_luigi import change
from databridge_luigi.change import MAX_XID_DISTANCE, SignalUnavailable, read_signal, why_changed
from databridge_luigi.tasks import Publish, PublishAll, registry
from tests.pipeline import make_points_table
from tests.test_extract import FakeOracleCursor, _FakeConnection

DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: []
    source: {{schema: gis_chg, table: {table}}}
    accept_schema_change: true
    {extra}
    """


def at(monkeypatch, day: int) -> str:
    fixed = datetime(2026, 11, day, 12, 0, tzinfo=timezone.utc)
    monkeypatch.setattr(schedule, "utc_now", lambda: fixed)
    return f"202611{day:02d}T110400Z"


class Case:
    def __init__(self, pipeline, monkeypatch, table: str, rows: int = 200, extra: str = ""):
        self.pipeline, self.monkeypatch, self.table = pipeline, monkeypatch, table
        self.dataset_id = f"chg__{table}"
        make_points_table(pipeline, "gis_chg", table, rows)
        self.configure(extra)
        self.day = 0

    def configure(self, extra: str = "") -> None:
        self.pipeline.config(self.dataset_id, DAILY.format(table=self.table, extra=extra))

    def settle(self, timeout: float = 90) -> None:
        """Wait until no transaction of the source database older than the table's newest write is open (other
        tests share the server): until then the signal is rightly unsettled and the next version would extract."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if read_signal(registry().get(self.dataset_id), self.pipeline.source_dsn)["settled"]:
                    return
            except SignalUnavailable:
                return
            assert time.monotonic() < deadline, "a transaction on the source database stayed open too long"
            time.sleep(0.2)

    def publish(self, settle: bool = True) -> str:
        """Publish the next day's version (PublishAll); return the version."""
        if settle:
            self.settle()
        self.day += 1
        version = at(self.monkeypatch, self.day)
        run = self.pipeline.run(PublishAll())
        assert run.ok, run.summary
        assert self.live() == self.source(), "the live table differs from the source"
        return version

    def manifest(self, version: str) -> dict:
        return json.loads(Path(self.pipeline.staging, self.dataset_id, version, "manifest.json").read_text())

    def extracted(self, version: str) -> bool:
        return self.manifest(version)["unchanged_from"] is None

    def sql(self, statement: str, params=None):
        return self.pipeline.source(statement, params)

    def source(self) -> list:
        return self.sql(f"SELECT objectid, address, code, fine::text FROM gis_chg.{self.table} ORDER BY objectid")

    def live(self) -> list:
        return self.pipeline.dest(f"SELECT objectid, address, code, fine::text FROM public.{self.table} ORDER BY objectid")


@pytest.fixture()
def case(pipeline, monkeypatch, request):
    return Case(pipeline, monkeypatch, f"t_{uuid.uuid4().hex[:12]}")


def test_an_unchanged_source_is_not_extracted_again(case, caplog):
    first = case.publish()
    assert case.extracted(first)
    signal = case.manifest(first)["change_signal"]
    assert signal["kind"] == "postgresql-xmin" and signal["rows"] == 200 and signal["settled"] is True
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = case.publish()
    after = case.manifest(second)
    before = case.manifest(first)
    assert after["unchanged_from"] == first and after["data_key"] == before["data_key"] and after["sha256"] == before["sha256"]
    assert f"unchanged since {first}" in caplog.text
    assert "extracting" not in " ".join(r.getMessage() for r in caplog.records if r.name.startswith("databridge_luigi.sources"))
    # The load recorded the version without rewriting the table.
    assert case.pipeline.markers(case.dataset_id)[-1] == (second, 200, False)
    third = case.publish()
    assert case.manifest(third)["unchanged_from"] == first  # a chain names the version that was extracted
    # And the staged data an unchanged version names is the real thing.
    assert len(list(Path(case.pipeline.staging, case.dataset_id).rglob("data-*.csv.gz"))) == 1


def test_an_update_in_place_with_the_same_row_count_is_extracted(case):
    first = case.publish()
    case.sql(f"UPDATE gis_chg.{case.table} SET code = 'changed' WHERE objectid = 7")
    second = case.publish()  # at once: no statistics flush, no sleep
    assert case.extracted(second)
    assert case.pipeline.markers(case.dataset_id)[-1] == (second, 200, True)


def test_a_delete_and_an_insert_with_the_same_row_count_are_extracted(case):
    case.publish()
    case.sql(f"DELETE FROM gis_chg.{case.table} WHERE objectid = 3")
    case.sql(f"INSERT INTO gis_chg.{case.table} (objectid, address, code) VALUES (100003, 'new', 'n')")
    assert case.extracted(case.publish())


def test_a_truncate_and_reload_with_the_same_rows_is_extracted(case):
    case.publish()
    with psycopg.connect(case.pipeline.source_dsn) as conn:  # one transaction: the count never changes outside it
        conn.execute(f"CREATE TEMP TABLE keep AS SELECT * FROM gis_chg.{case.table}")
        conn.execute(f"TRUNCATE gis_chg.{case.table}")
        conn.execute(f"INSERT INTO gis_chg.{case.table} SELECT * FROM keep")
    second = case.publish()
    assert case.extracted(second)
    # Same bytes: the load sees the fingerprint and records the version without rewriting.
    assert case.pipeline.markers(case.dataset_id)[-1] == (second, 200, False)


def test_vacuum_freeze_and_a_stats_reset_are_not_changes_but_hide_none(case):
    first = case.publish()
    case.sql(f"VACUUM (FREEZE, ANALYZE) gis_chg.{case.table}")
    case.sql("SELECT pg_stat_reset()")
    assert not case.extracted(case.publish())  # nothing changed: still skipped, and the data is right
    case.sql(f"UPDATE gis_chg.{case.table} SET fine = fine + 1 WHERE objectid = 11")
    case.sql(f"VACUUM (FREEZE) gis_chg.{case.table}")  # freezes the updated row too
    case.sql("SELECT pg_stat_reset()")
    case.sql(f"SELECT pg_stat_reset_single_table_counters('gis_chg.{case.table}'::regclass)")
    assert case.extracted(case.publish())
    case.sql(f"UPDATE gis_chg.{case.table} SET fine = fine + 1 WHERE objectid = 12")
    case.sql(f"VACUUM FULL gis_chg.{case.table}")  # rewrites the table (new relfilenode)
    assert case.extracted(case.publish())
    assert first


def test_a_write_committed_late_by_an_older_transaction_is_extracted(case):
    """The trap for a newest-xmin signal: transaction A starts (and takes an xid) before B; B updates a row and
    commits; the signal is read (newest xmin = B's); then A updates another row and commits. A's row carries
    A's xid, which is *older* than B's, so the newest xmin and the row count stay the same. Our signal saw
    that A was still running (the snapshot's xmin <= the newest xmin) and recorded itself as unsettled."""
    case.publish()
    older = psycopg.connect(case.pipeline.source_dsn)
    try:
        older.execute("SELECT txid_current()")  # A has its xid now
        case.sql(f"UPDATE gis_chg.{case.table} SET code = 'by B' WHERE objectid = 21")
        second = case.publish(settle=False)
        assert case.extracted(second)
        assert case.manifest(second)["change_signal"]["settled"] is False
        older.execute(f"UPDATE gis_chg.{case.table} SET code = 'by A, committed late' WHERE objectid = 22")
        older.commit()
    finally:
        older.close()
    signal = read_signal(registry().get(case.dataset_id), case.pipeline.source_dsn)
    assert signal["newest"] == case.manifest(second)["change_signal"]["newest"], "A's row is older than the newest"
    assert signal["rows"] == case.manifest(second)["change_signal"]["rows"]
    third = case.publish()
    assert case.extracted(third)
    assert ("by A, committed late",) in case.pipeline.dest(f"SELECT code FROM public.{case.table} WHERE objectid = 22")
    assert case.manifest(third)["change_signal"]["settled"] is True
    assert not case.extracted(case.publish())  # settled again: the next unchanged version is skipped


def test_a_transaction_open_in_another_database_does_not_unsettle_the_signal(case):
    """Only the source database's transactions can write the table: one open (with an xid) in another database
    of the same server, older than the table's newest write, leaves the signal settled — one open in the source
    database does not."""
    case.publish()
    elsewhere = psycopg.connect(case.pipeline.dest_dsn)
    try:
        elsewhere.execute("SELECT txid_current()")
        case.sql(f"UPDATE gis_chg.{case.table} SET code = 'newer than the open transaction' WHERE objectid = 31")
        second = case.publish(settle=False)
        assert case.extracted(second) and case.manifest(second)["change_signal"]["settled"] is True
        assert not case.extracted(case.publish(settle=False))
    finally:
        elsewhere.close()
    here = psycopg.connect(case.pipeline.source_dsn)
    try:
        here.execute("SELECT txid_current()")
        case.sql(f"UPDATE gis_chg.{case.table} SET code = 'newer again' WHERE objectid = 32")
        fourth = case.publish(settle=False)
        assert case.extracted(fourth) and case.manifest(fourth)["change_signal"]["settled"] is False
    finally:
        here.close()
    assert case.extracted(case.publish())


def test_a_column_added_with_a_default_rewrites_no_row_but_is_extracted(case):
    case.publish()
    case.sql(f"ALTER TABLE gis_chg.{case.table} ADD COLUMN status text DEFAULT 'open'")  # PG11+: no row rewritten
    second = case.publish()
    assert case.extracted(second)
    assert case.pipeline.dest(f"SELECT count(*) FROM public.{case.table} WHERE status = 'open'")[0][0] == 200


def test_a_renamed_column_a_dropped_and_recreated_table_and_a_new_policy_are_extracted(case):
    case.publish()
    case.sql(f"ALTER TABLE gis_chg.{case.table} RENAME COLUMN code TO code2")
    case.sql(f"ALTER TABLE gis_chg.{case.table} RENAME COLUMN code2 TO code")  # and back: the same table again
    assert not case.extracted(case.publish())
    case.sql(f"CREATE TABLE gis_chg.{case.table}_copy AS TABLE gis_chg.{case.table}")
    case.sql(f"DROP TABLE gis_chg.{case.table}")
    case.sql(f"ALTER TABLE gis_chg.{case.table}_copy RENAME TO {case.table}")
    assert case.extracted(case.publish())
    case.sql(f"ALTER TABLE gis_chg.{case.table} ENABLE ROW LEVEL SECURITY")
    case.sql(f"CREATE POLICY p ON gis_chg.{case.table} USING (true)")
    assert case.extracted(case.publish())


def test_force_always_extracts(case):
    first = case.publish()
    case.day += 1
    at(case.monkeypatch, case.day)
    assert case.pipeline.run(Publish(dataset_id=case.dataset_id, force=True)).ok
    versions = sorted(p.name for p in Path(case.pipeline.staging, case.dataset_id).iterdir())
    forced = [v for v in versions if v != first]
    assert len(forced) == 1 and case.extracted(forced[0])


def test_a_config_change_a_missing_previous_manifest_or_change_signal_false_mean_extract(case):
    first = case.publish()
    case.configure("timezone: America/Chicago")
    second = case.publish()
    assert case.extracted(second)
    for path in Path(case.pipeline.staging, case.dataset_id).glob("*/data-*.csv.gz"):
        path.unlink()  # the earlier version's data is gone (an S3 lifecycle rule)
    assert case.extracted(case.publish())
    for path in Path(case.pipeline.staging, case.dataset_id).glob("*/manifest.json"):
        path.unlink()  # no earlier version to compare with
    third = case.publish()
    assert case.extracted(third)
    case.configure("timezone: America/Chicago\n    change_signal: false")
    fourth = case.publish()
    assert case.extracted(fourth) and case.manifest(fourth)["change_signal"] is None
    assert first


def test_a_view_has_no_xmin_signal_but_a_configured_column_works(case, caplog):
    case.sql(f"ALTER TABLE gis_chg.{case.table} ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now() - interval '2 hours'")
    case.sql(f"CREATE OR REPLACE VIEW gis_chg.{case.table}_v AS SELECT * FROM gis_chg.{case.table}")
    view = f"{case.table}_v"
    case.pipeline.config(case.dataset_id, DAILY.format(table=view, extra=""))
    with caplog.at_level(logging.INFO):
        first = case.publish()
    assert case.extracted(first) and case.manifest(first)["change_signal"] is None
    assert "is a view (no xmin)" in caplog.text
    case.pipeline.config(case.dataset_id, DAILY.format(table=view, extra="change_signal: {column: updated_at}"))
    second = case.publish()
    assert case.extracted(second) and case.manifest(second)["change_signal"]["kind"] == "column updated_at"
    assert not case.extracted(case.publish())
    case.sql(f"UPDATE gis_chg.{case.table} SET code = 'stamped', updated_at = now() WHERE objectid = 5")
    fourth = case.publish(settle=False)
    assert case.extracted(fourth)
    assert case.manifest(fourth)["change_signal"]["settled"] is False  # the newest stamp is younger than an hour
    assert case.extracted(case.publish(settle=False))  # ... so the next version extracts too, whatever the signal says


# --- comparing signals, without a database ----------------------------------------------------------------

def _pg_signal(**changes):
    signal = {"format": change.SIGNAL_FORMAT, "kind": "postgresql-xmin", "source": "s", "config": "c", "identity": {"oid": 1},
              "rows": 10, "newest": 500, "snapshot_xmin": 600, "snapshot_xmax": 700, "settled": True}
    return {**signal, **changes}


@pytest.mark.parametrize("changes, reason", [
    ({}, None),
    ({"rows": 9}, "row count"),
    ({"newest": 650}, "rows were written"),
    ({"kind": "column updated_at"}, "kind"),
    ({"identity": {"oid": 2}}, "table or server"),
    ({"config": "d"}, "config"),
    ({"source": "t"}, "source"),
    ({"settled": False}, "not settled"),
    ({"snapshot_xmax": 700 + MAX_XID_DISTANCE}, "wraparound"),
    ({"snapshot_xmax": 600}, "wraparound"),
    ({"format": 99}, "format"),
])
def test_why_changed(changes, reason):
    got = why_changed(_pg_signal(), _pg_signal(**changes))
    assert (got is None) if reason is None else (reason in got), got
    assert "no change signal" in why_changed(None, _pg_signal())
    assert "previous signal was not settled" in why_changed(_pg_signal(settled=False), _pg_signal())


def test_the_xmin_query_widens_32_bit_ids_against_the_snapshot(pipeline):
    """The newest xmin is computed as a 64-bit id: hi - ((hi - xmin) mod 2^32), for a row and the epoch."""
    pipeline.source("CREATE TABLE IF NOT EXISTS public.chg_xmin (a int)")
    pipeline.source("INSERT INTO public.chg_xmin VALUES (1)")
    xid = pipeline.source("SELECT max(xmin::text::bigint) FROM public.chg_xmin")[0][0]
    row = pipeline.source(change.postgres_xmin_sql("public.chg_xmin"))[0]
    lo, hi, n, newest = row
    epoch = hi >> 32
    assert newest & 0xFFFFFFFF == xid and newest >> 32 in (epoch, epoch - 1) and newest < hi and n >= 1


# --- Oracle: SQL compiled by the Oracle dialect and answered by a fake python-oracledb connection ----------

class _FakeOracle:
    def __init__(self, object_type="TABLE", rows=3, scn=1234567, ddl="2026-11-01T00:00:00"):
        self.object_type, self.rows, self.scn, self.ddl, self.statements = object_type, rows, scn, ddl, []


class _Cursor(FakeOracleCursor):
    """test_extract's fake cursor, answering the signal's catalog and ORA_ROWSCN queries."""

    def execute(self, statement, params=None):
        self.db.statements.append((statement, dict(params or {})))
        text = " ".join(statement.split()).lower()
        if "from all_objects" in text:
            self._rows = [(self.db.object_type, 101, 202, self.db.ddl)]
        elif "from all_tab_cols" in text:
            self._rows = [("OBJECTID", "NUMBER", None, 22, None, 0, "N", 1), ("SHAPE", "ST_GEOMETRY", "SDE", 1, None, None, "Y", 2)]
        elif "max(ora_rowscn)" in text:
            self._rows = [(self.db.rows, self.db.scn)]
        elif "cast(max(" in text:  # the updated_at column signal
            self._rows = [(self.db.rows, "2026-11-01T08:00:00.000000", 1)]
        elif " from dual" in text or "v$" in text:
            self._rows = [("GIS_LNI",)]
        else:
            raise AssertionError(f"unexpected SQL: {statement}")
        self.description = [(f"c{i}", None, None, None, None, None, True) for i in range(len(self._rows[0]))]


class _Connection(_FakeConnection):
    """test_extract's fake python-oracledb connection, answering the signal's SQL instead of the extract's."""

    def cursor(self):
        return _Cursor(self.db)


def _oracle_signal(db, change_signal=True):
    from dataclasses import replace

    dataset = replace(next(iter(registry_for_examples())), id="lni__violations", source_schema="gis_lni", source_table="violations",
                      kind="databridge", change_signal=change_signal)
    engine = sa.create_engine("oracle+oracledb://u:p@h:1521/?service_name=GISDBP", creator=lambda: _Connection(db), poolclass=sa.pool.NullPool)
    return read_signal(dataset, "oracle+oracledb://u:p@h:1521/?service_name=GISDBP", engine=engine)


def registry_for_examples():
    from databridge_luigi.config import load_datasets

    datasets, _ = load_datasets(Path(__file__).resolve().parents[1] / "configs" / "examples")
    return datasets


def test_oracle_scn_signal_with_a_fake_connection():
    db = _FakeOracle()
    first = _oracle_signal(db)
    assert first["kind"] == "oracle-scn" and first["rows"] == 3 and first["newest"] == 1234567 and first["settled"]
    scan = next(s for s, _ in db.statements if "ORA_ROWSCN" in s)
    assert scan == 'SELECT COUNT(*) AS n, MAX(ORA_ROWSCN) AS newest FROM "GIS_LNI"."VIOLATIONS"'
    assert next(p for s, p in db.statements if "all_objects" in s) == {"owner": "GIS_LNI", "table_name": "VIOLATIONS"}
    assert why_changed(first, _oracle_signal(_FakeOracle())) is None
    assert "rows were written" in why_changed(first, _oracle_signal(_FakeOracle(scn=1234568)))
    assert "row count" in why_changed(first, _oracle_signal(_FakeOracle(rows=2)))
    assert "table or server" in why_changed(first, _oracle_signal(_FakeOracle(ddl="2026-11-02T00:00:00")))  # TRUNCATE, ALTER
    with pytest.raises(SignalUnavailable, match="view"):
        _oracle_signal(_FakeOracle(object_type="VIEW"))
    # The SQL compiles with the Oracle dialect's bind style.
    compiled = str(sa.text(change.ORACLE_OBJECT_SQL).compile(dialect=sa.create_engine("oracle+oracledb://").dialect))
    assert ":owner" in compiled and ":table_name" in compiled


# --- transaction id wraparound, for real: a private cluster whose next xid is set just below 2^32 ------------

def test_the_signal_sees_a_write_after_the_transaction_counter_wrapped(tmp_path):
    """pg_resetwal puts a private cluster 32,768 transactions before a wraparound (epoch 5). Rows written
    then carry 32-bit xmins near 2^32; after the counter wraps, an UPDATE writes a row whose 32-bit xmin is
    tiny. A plain max(xmin) would not move (and the row count does not change) — the signal's 64-bit newest
    xmin does, and an unchanged table across the wrap still compares equal."""
    from dataclasses import replace

    from tests.test_pg_restart import PrivateCluster

    private = PrivateCluster()
    try:
        private.start()  # freeze what initdb wrote, or its rows would look like the future after the reset
        for database in ("postgres", "template1"):
            psycopg.connect(private.dsn(database), autocommit=True).execute("VACUUM FREEZE")
        private.stop()
        page_before_wrap = 2**32 - 32_768  # a CLOG page boundary, so the server starts that page itself
        private._run("pg_resetwal", "-x", str(page_before_wrap), "-e", "5", "-D", str(private.data))
        private.start()
        dsn = private.dsn()
        sql = lambda statement: psycopg.connect(dsn, autocommit=True).execute(statement)  # noqa: E731
        sql("CREATE TABLE public.wrapped (id int, code text)")
        sql("INSERT INTO public.wrapped SELECT g, 'a' FROM generate_series(1, 100) g")
        sql("CREATE TABLE public.burn (i int)")
        dataset = replace(registry_for_examples()[0], source_schema="public", source_table="wrapped", kind="databridge",
                          change_signal=True)
        before = read_signal(dataset, dsn)
        assert before["newest"] >> 32 == 5 and before["settled"]
        naive_before = sql("SELECT max(xmin::text::bigint) FROM public.wrapped").fetchone()[0]
        # 40,000 subtransactions that write: each takes a transaction id, so the counter wraps into epoch 6.
        sql("DO $$ BEGIN FOR i IN 1..40000 LOOP BEGIN INSERT INTO public.burn VALUES (i); "
            "EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$")
        assert sql("SELECT txid_current()").fetchone()[0] >> 32 == 6
        across = read_signal(dataset, dsn)
        assert why_changed(before, across) is None  # nothing changed: still equal across the wrap
        sql("UPDATE public.wrapped SET code = 'b' WHERE id = 7")
        after = read_signal(dataset, dsn)
        assert sql("SELECT max(xmin::text::bigint) FROM public.wrapped").fetchone()[0] == naive_before, "a naive max moved"
        assert after["rows"] == before["rows"] and after["newest"] >> 32 == 6
        assert why_changed(before, after) == "rows were written"
    finally:
        private.remove()


def test_oracle_updated_at_column_signal_with_a_fake_connection():
    """A view (no ORA_ROWSCN) with change_signal: {column: updated_at}: COUNT and MAX of the column, settled by the
    database's own clock (SYSTIMESTAMP minus settle_seconds)."""
    from databridge_luigi.config import ChangeSignalOptions

    db = _FakeOracle(object_type="VIEW")
    signal = _oracle_signal(db, ChangeSignalOptions(column="updated_at", settle_seconds=600))
    assert signal["kind"] == "column updated_at" and signal["rows"] == 3 and signal["settled"] is True
    assert signal["newest"] == "2026-11-01T08:00:00.000000" and signal["settle_seconds"] == 600
    statement, params = next((s, p) for s, p in db.statements if "CAST(MAX(" in s)
    assert 'MAX("UPDATED_AT")' in statement and 'FROM "GIS_LNI"."VIOLATIONS"' in statement
    assert "NUMTODSINTERVAL(:settle, 'SECOND')" in statement and params == {"settle": 600}
