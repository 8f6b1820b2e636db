"""Incremental extracts (issue 15, target 4): ``change_signal: {column: updated_at, incremental: true}`` stages
only the rows changed since the version the destination holds, and the load merges them by key.

Real PostgreSQL source and PostGIS destination through real luigi (tests/pipeline.py)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from databridge_luigi.config import ConfigError
from databridge_luigi.schedule import forced_version
from databridge_luigi.publish import transports
from databridge_luigi.publish.protocol import LoadError, Loader
from databridge_luigi.tasks import Extract, Publish, PublishAll, registry, staged_table
from tests.pipeline import make_points_table
from tests.test_change_detection import at

INCREMENTAL = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: []
    source: {{schema: gis_inc, table: {table}}}
    primary_key: [objectid]
    change_signal: {{column: updated_at, settle_seconds: 60, incremental: true}}
    {extra}
    """


class Case:
    def __init__(self, pipeline, monkeypatch, rows: int = 300):
        self.pipeline, self.monkeypatch = pipeline, monkeypatch
        self.table = f"t_{uuid.uuid4().hex[:12]}"
        self.dataset_id = f"inc__{self.table}"
        make_points_table(pipeline, "gis_inc", self.table, rows)
        # Stamped two hours ago and before, two minutes apart: settled, and far below the next changes' stamps.
        self.sql(f"ALTER TABLE gis_inc.{self.table} ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()")
        self.sql(f"UPDATE gis_inc.{self.table} SET updated_at = now() - interval '2 hours' - objectid * interval '2 minutes'")
        pipeline.config(self.dataset_id, INCREMENTAL.format(table=self.table, extra=""))
        self.day = 0

    def sql(self, statement: str, params=None):
        return self.pipeline.source(statement, params)

    def publish(self, force: bool = False) -> str:
        self.day += 1
        version = at(self.monkeypatch, self.day)
        run = self.pipeline.run(Publish(dataset_id=self.dataset_id, force=True) if force else PublishAll())
        assert run.ok, run.summary
        return forced_version() if force else version

    def manifest(self, version: str) -> dict:
        return json.loads(Path(self.pipeline.staging, self.dataset_id, version, "manifest.json").read_text())

    def columns(self, schema: str) -> str:
        return f"SELECT objectid, address, code, fine::text FROM {schema}.{self.table} ORDER BY objectid"

    def source(self) -> list:
        return self.sql(self.columns("gis_inc"))

    def live(self) -> list:
        return self.pipeline.dest(self.columns("public"))

    def marker(self, version: str) -> tuple:
        return self.pipeline.dest("SELECT mode, row_count, inserted, updated, deleted, unchanged FROM databridge_luigi_publications "
                                  "WHERE dataset_id = %s AND version = %s", (self.dataset_id, version))[0]


@pytest.fixture()
def case(pipeline, monkeypatch):
    return Case(pipeline, monkeypatch)


def test_only_changed_rows_are_staged_and_merged(case):
    first = case.publish()
    assert case.manifest(first)["delta"] is None and case.manifest(first)["rows"] == 300  # nothing published yet: every row
    assert case.live() == case.source()
    oid_before = case.pipeline.table_oid(case.table)

    case.sql(f"UPDATE gis_inc.{case.table} SET code = 'changed', updated_at = now() WHERE objectid IN (5, 6, 7)")
    case.sql(f"INSERT INTO gis_inc.{case.table} (objectid, address, code, fine, updated_at) VALUES (1001, 'new', 'N', 1, now()), (1002, 'new', 'N', 2, now())")
    second = case.publish()
    manifest = case.manifest(second)
    assert manifest["delta"]["base_version"] == first and manifest["delta"]["column"] == "updated_at"
    # The three updated and two new rows, and row 1: the base's newest stamp, within settle_seconds of itself.
    assert manifest["rows"] == 6
    assert manifest["source"]["changed_since"]["base_version"] == first
    assert case.live() == case.source()
    assert case.pipeline.table_oid(case.table) == oid_before  # merged in place
    assert case.marker(second) == ("merge", 302, 2, 3, 0, 1)  # row_count is the table's, not the delta's

    # Nothing written since, but the last writes are younger than settle_seconds (the signal is not settled), so
    # the next version reads again what the look-back covers — the five rows stamped just now — and merges nothing.
    third = case.publish()
    assert case.manifest(third)["unchanged_from"] is None and case.manifest(third)["rows"] == 5
    assert case.marker(third) == ("merge", 302, 0, 0, 0, 5)
    assert case.live() == case.source()


def test_a_row_stamped_before_the_base_but_committed_late_is_read_again(case):
    """settle_seconds is a look-back: rows stamped up to that long before the base's newest value are re-read."""
    case.publish()
    case.sql(f"UPDATE gis_inc.{case.table} SET updated_at = now() WHERE objectid = 1")
    second = case.publish()
    newest = case.manifest(second)["change_signal"]["newest"]
    # A write that stamped its row 30 s before the newest value seen, committed only now.
    case.sql(f"UPDATE gis_inc.{case.table} SET code = 'late', updated_at = %s::timestamptz - interval '30 seconds' WHERE objectid = 2", (newest,))
    case.sql(f"UPDATE gis_inc.{case.table} SET updated_at = now() + interval '1 second' WHERE objectid = 3")
    third = case.publish()
    assert case.manifest(third)["delta"]["base_version"] == second
    assert case.live() == case.source()
    assert case.pipeline.dest(f"SELECT code FROM public.{case.table} WHERE objectid = 2")[0][0] == "late"


def test_deleted_rows_are_deleted_through_the_staged_key_set(case):
    first = case.publish()
    case.sql(f"DELETE FROM gis_inc.{case.table} WHERE objectid = 9")
    case.sql(f"UPDATE gis_inc.{case.table} SET code = 'x', updated_at = now() WHERE objectid = 10")
    second = case.publish()
    manifest = case.manifest(second)
    assert manifest["rows"] == 2  # row 10, and row 1 (the base's newest stamp) read again
    assert manifest["delta"]["keys"] == {"staged_as": f"{case.dataset_id}__keys", "rows": 299}
    keys = json.loads(Path(case.pipeline.staging, f"{case.dataset_id}__keys", second, "manifest.json").read_text())
    assert keys["columns"] == ["objectid"] and keys["rows"] == 299
    assert case.live() == case.source()
    assert case.marker(second) == ("merge", 299, 0, 1, 1, 1)
    assert not case.pipeline.dest(f"SELECT relname FROM pg_class WHERE relname LIKE '{case.table}%shadow%'")  # both dropped
    assert first


def test_the_same_changed_rows_with_a_key_gone_are_not_taken_for_unchanged(case):
    """Two versions can re-read the same rows (the look-back); a delete between them changes only the key set."""
    first = case.publish()
    newest = case.manifest(first)["change_signal"]["newest"]
    case.sql(f"UPDATE gis_inc.{case.table} SET code = 'x', updated_at = %s::timestamptz + interval '30 seconds' WHERE objectid = 5", (newest,))
    second = case.publish()
    case.sql(f"DELETE FROM gis_inc.{case.table} WHERE objectid = 9")
    third = case.publish()
    assert case.manifest(third)["sha256"] == case.manifest(second)["sha256"]  # rows 1 and 5 both times
    assert case.marker(third)[0] == "merge" and case.marker(third)[4] == 1  # merged: one deleted
    assert case.live() == case.source()


def test_without_delete_stale_deletes_wait_and_force_reads_every_row(case):
    case.pipeline.config(case.dataset_id, INCREMENTAL.format(table=case.table, extra="delete_stale: false"))
    case.publish()
    case.sql(f"DELETE FROM gis_inc.{case.table} WHERE objectid = 9")
    case.sql(f"UPDATE gis_inc.{case.table} SET code = 'x', updated_at = now() WHERE objectid = 10")
    second = case.publish()
    assert case.manifest(second)["rows"] == 2 and "keys" not in case.manifest(second)["delta"]
    assert not Path(case.pipeline.staging, f"{case.dataset_id}__keys").exists()
    assert case.pipeline.dest(f"SELECT count(*) FROM public.{case.table} WHERE objectid = 9")[0][0] == 1  # not seen
    forced = case.publish(force=True)
    manifest = case.manifest(forced)
    assert manifest["delta"] is None and manifest["rows"] == 299  # --force: every row
    assert case.pipeline.dest(f"SELECT code FROM public.{case.table} WHERE objectid = 10")[0][0] == "x"


def test_a_delta_is_refused_by_a_destination_that_lacks_its_base_version(case, pipeline):
    first = case.publish()
    case.sql(f"UPDATE gis_inc.{case.table} SET code = 'changed', updated_at = now() WHERE objectid = 5")
    case.day += 1
    version = at(case.monkeypatch, case.day)
    assert pipeline.run(Extract(dataset_id=case.dataset_id, version=version)).ok
    assert case.manifest(version)["delta"]["base_version"] == first
    # The destination loses its record of the base version (say a restore from before it was published).
    pipeline.dest("DELETE FROM databridge_luigi_publications WHERE dataset_id = %s", (case.dataset_id,))
    pipeline.reset()
    dataset = registry().get(case.dataset_id)
    before = case.live()
    with pytest.raises(LoadError, match=rf"holds only the rows changed since version {first}.*has no published version.*Publish --force"):
        Loader(dataset, transports.get(dataset.dest_conn)).load(staged_table(case.dataset_id, version))
    assert case.live() == before


def test_an_empty_delta_still_deletes(case):
    case.publish()
    case.sql(f"DELETE FROM gis_inc.{case.table} WHERE objectid = 1")  # the newest stamp: nothing is left to re-read
    second = case.publish()
    manifest = case.manifest(second)
    assert manifest["delta"] is not None and manifest["rows"] == 0
    assert case.marker(second) == ("merge", 299, 0, 0, 1, 0)
    assert case.live() == case.source()


@pytest.mark.parametrize("extra, message", [
    ("", None),
    ("load_mode: swap", "load_mode must be merge"),
    ("upload_to_ago: true\n    ago: {item: 0123456789abcdef0123456789abcdef, mode: upsert}", "CARTO/PostGIS only"),
])
def test_config_checks(pipeline, extra, message):
    text = INCREMENTAL.format(table="t_cfg", extra=extra)
    pipeline.config("inc__t_cfg", text)
    if message is None:
        assert registry().get("inc__t_cfg").change_signal.incremental is True
        return
    with pytest.raises((ConfigError, KeyError)):
        registry().get("inc__t_cfg")
    assert message in str(registry().broken_files())


def test_config_needs_a_key(pipeline):
    pipeline.config("inc__t_cfg2", INCREMENTAL.format(table="t_cfg2", extra="").replace("primary_key: [objectid]", ""))
    assert "needs primary_key" in str(registry().broken_files())


def test_a_source_without_incremental_reads_is_refused_at_the_first_extract(tmp_path):
    """Only the PostgreSQL path reads changed rows; another dialect says so before anything is staged."""
    from dataclasses import replace

    from databridge_luigi.config.options import ChangeSignalOptions
    from databridge_luigi.sources import extract
    from databridge_luigi.sources.sql import ExtractError
    from databridge_luigi.staging import LocalStore, StagedTable
    from scripts.sample_databridge import build as build_sample
    from tests.test_extract import example

    db = build_sample(tmp_path / "sample.sqlite", rows=5)
    dataset = replace(example("demo__violations"), primary_key=("objectid",),
                      change_signal=ChangeSignalOptions(column="inspected_at", incremental=True))
    staged = StagedTable(LocalStore(tmp_path / "staging"), dataset.id, "20261124T060000Z")
    with pytest.raises(ExtractError, match=r"change_signal.incremental in .* needs a PostgreSQL source; sqlite sources"):
        extract(dataset, f"sqlite:///{db}", staged)
    assert not staged.exists()


def test_a_merge_that_changes_little_leaves_statistics_to_autovacuum(case):
    """ANALYZE after an in-place merge only past PostgreSQL's own autovacuum threshold (50 rows + 10%)."""
    case.pipeline.config(case.dataset_id, INCREMENTAL.format(table=case.table, extra="row_count_tolerance: 0.5"))
    case.publish()
    reltuples = f"SELECT reltuples::bigint FROM pg_class WHERE oid = 'public.{case.table}'::regclass"
    assert case.pipeline.dest(reltuples)[0][0] == 300
    case.sql(f"INSERT INTO gis_inc.{case.table} (objectid, address, updated_at) SELECT g, 'new', now() FROM generate_series(1001, 1002) g")
    case.publish()
    assert case.pipeline.dest(reltuples)[0][0] == 300  # 2 new rows: not analyzed
    case.sql(f"INSERT INTO gis_inc.{case.table} (objectid, address, updated_at) SELECT g, 'new', now() FROM generate_series(2001, 2100) g")
    case.publish()
    assert case.pipeline.dest(reltuples)[0][0] == 402  # 100 new rows (over 50 + 10%): analyzed


def test_the_key_count_is_held_to_the_row_count_tolerance(case):
    """A source that suddenly holds a third fewer keys (a broken view, a bad filter) is refused, not merged."""
    case.publish()
    case.sql(f"DELETE FROM gis_inc.{case.table} WHERE objectid > 200")
    before = case.live()
    case.day += 1
    at(case.monkeypatch, case.day)
    run = case.pipeline.run(PublishAll())
    assert not run.ok
    assert case.live() == before
    dataset = registry().get(case.dataset_id)
    with pytest.raises(LoadError, match=r"row count would change from 300 to 200 \(-33.3%\), beyond the ±15% tolerance"):
        Loader(dataset, transports.get(dataset.dest_conn)).load(staged_table(case.dataset_id, at(case.monkeypatch, case.day)))


def test_a_new_column_reads_every_row_and_a_retyped_one_is_refused(case):
    """Other columns need a new table, which only a whole version can fill: a changed column set is extracted
    whole; a column whose type alone changed shows only at the load, which refuses changed rows for it."""
    case.pipeline.config(case.dataset_id, INCREMENTAL.format(table=case.table, extra="accept_schema_change: true"))
    case.publish()
    case.sql(f"ALTER TABLE gis_inc.{case.table} ADD COLUMN ward integer")
    case.sql(f"UPDATE gis_inc.{case.table} SET ward = objectid % 10, updated_at = now() WHERE objectid = 4")
    second = case.publish()
    manifest = case.manifest(second)
    assert manifest["delta"] is None and manifest["rows"] == 300 and "ward" in manifest["columns"]
    assert case.pipeline.dest(f"SELECT count(*), count(ward) FROM public.{case.table}")[0] == (300, 1)

    case.sql(f"ALTER TABLE gis_inc.{case.table} ALTER COLUMN ward TYPE text")
    case.sql(f"UPDATE gis_inc.{case.table} SET ward = 'seven', updated_at = now() WHERE objectid = 5")
    before = case.live()
    case.day += 1
    third = at(case.monkeypatch, case.day)
    assert not case.pipeline.run(PublishAll()).ok
    assert case.manifest(third)["delta"] is not None  # the names are the same: changed rows only
    assert case.live() == before
    dataset = registry().get(case.dataset_id)
    with pytest.raises(LoadError, match=r"columns of .* change, which needs a new table, but version .* holds only changed rows"):
        Loader(dataset, transports.get(dataset.dest_conn)).load(staged_table(case.dataset_id, third))
