"""End to end through real luigi: PostgreSQL source → local staging → PostGIS destination."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest

import databridge_luigi.schedule as schedule
from databridge_luigi.tasks import Publish, PublishAll
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.pipeline import Pipeline, make_points_table

DAILY = """\
    schedule_interval: 4 11 * * *   # daily 11:04 UTC
    upload_to_carto: true
    upload_to_ago:
    carto_users: [publicuser]
    indexes: [address, code+opened]
    """


def at(monkeypatch, moment: str) -> None:
    """Pin the pipeline's clock (the cron evaluation) to ``moment`` (UTC)."""
    fixed = datetime.fromisoformat(moment).replace(tzinfo=timezone.utc)
    monkeypatch.setattr(schedule, "utc_now", lambda: fixed)


def test_first_publish_then_rerun_is_a_no_op(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 300)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")

    first = pipeline.run(PublishAll())
    assert first.ok, first.summary
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == 300
    assert pipeline.markers("lni__violations") == [("20261124T110400Z", 300, True)]
    assert pipeline.dest("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'violations'::regclass AND attname = 'shape'")[0][0] == "geometry(Point,2272)"
    indexes = {row[0] for row in pipeline.dest("SELECT indexname FROM pg_indexes WHERE tablename = 'violations'")}
    assert indexes == {"violations_address", "violations_code_opened", "violations_shape"}
    assert pipeline.dest("SELECT has_table_privilege('publicuser', 'violations', 'SELECT')")[0][0] is True
    oid = pipeline.table_oid("violations")

    second = pipeline.run(PublishAll())
    assert second.ok and second.did_nothing, second.summary
    assert pipeline.table_oid("violations") == oid
    assert len(pipeline.markers("lni__violations")) == 1


def test_force_republishes_even_unchanged_data(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 120)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    oid = pipeline.table_oid("violations")

    at(monkeypatch, "2026-11-24T12:30:15")
    xmin = pipeline.dest("SELECT max(xmin::text::bigint) FROM violations")[0][0]
    forced = pipeline.run(Publish(dataset_id="lni__violations", force=True))
    assert forced.ok, forced.summary
    # Rewritten in place (the default mode): new row versions, same table.
    assert pipeline.table_oid("violations") == oid
    assert pipeline.dest("SELECT min(xmin::text::bigint) FROM violations")[0][0] > xmin
    assert pipeline.markers("lni__violations")[-1] == ("20261124T123015Z", 120, True)


def test_schedule_rollover_publishes_the_next_version(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 100)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T11:03:59")  # before today's fire time: yesterday's version is due
    assert pipeline.run(PublishAll()).ok
    at(monkeypatch, "2026-11-24T11:30:00")
    assert pipeline.run(PublishAll()).did_nothing is False
    pipeline.source("INSERT INTO gis_lni.violations SELECT 1000, 'x', 'C', now(), 1, NULL")
    at(monkeypatch, "2026-11-25T11:04:00")  # exactly at the next fire time
    rolled = pipeline.run(PublishAll())
    assert rolled.ok, rolled.summary
    assert [m[0] for m in pipeline.markers("lni__violations")] == ["20261123T110400Z", "20261124T110400Z", "20261125T110400Z"]
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == 101


def test_unchanged_data_records_the_version_without_rewriting(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 80)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    oid = pipeline.table_oid("violations")
    at(monkeypatch, "2026-11-25T12:00:00")
    assert pipeline.run(PublishAll()).ok
    assert pipeline.table_oid("violations") == oid
    assert pipeline.markers("lni__violations")[-1] == ("20261125T110400Z", 80, False)


def test_manual_dataset_is_published_only_when_asked(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_dor", "rtt_summary", 60)
    pipeline.config("dor__rtt_summary", "schedule_interval: false # manually triggered\nupload_to_carto: true\ncarto_users: [publicuser]\n")
    assert pipeline.run(PublishAll()).did_nothing
    assert pipeline.table_oid("rtt_summary") is None
    refused = pipeline.run(Publish(dataset_id="dor__rtt_summary"))
    assert not refused.ok
    assert pipeline.run(Publish(dataset_id="dor__rtt_summary", version="20260101T000000Z")).ok
    assert pipeline.markers("dor__rtt_summary") == [("20260101T000000Z", 60, True)]


def test_stage_only_dataset_never_touches_the_destination(pipeline, monkeypatch, tmp_path):
    make_points_table(pipeline, "gis_commerce", "koz_parcels", 25)
    pipeline.config("commerce__koz_parcels", "schedule_interval: 0 1 * * *\nupload_to_carto: false\ncarto_users: [publicuser]\n")
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    assert pipeline.table_oid("koz_parcels") is None
    assert (tmp_path / "staging" / "commerce__koz_parcels" / "20261124T010000Z" / "manifest.json").is_file()


def test_failed_copy_leaves_the_live_table_byte_for_byte(pipeline, monkeypatch, tmp_path):
    make_points_table(pipeline, "gis_lni", "violations", 400)
    config = pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    before = pipeline.table_digest("violations")
    # Make the staged data fail COPY half-way: the schema says integer, row 301 on holds text.
    pipeline.source("UPDATE gis_lni.violations SET code = CASE WHEN objectid > 300 THEN 'not a number' ELSE objectid::text END")
    (config.parent / "violations.schema.json").write_text('{"fields": [{"name": "code", "type": "integer"}]}')
    config.write_text(config.read_text() + "schema_override: violations.schema.json\n")
    at(monkeypatch, "2026-11-25T12:00:00")
    failed = pipeline.run(PublishAll())
    assert not failed.ok
    assert pipeline.table_digest("violations") == before
    assert pipeline.table_oid("violations__shadow") is None
    assert [m[0] for m in pipeline.markers("lni__violations")] == ["20261124T110400Z"]


def test_empty_source_is_refused_unless_allowed(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "permits", 0)
    config = pipeline.config("lni__permits", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert not pipeline.run(PublishAll()).ok
    assert pipeline.table_oid("permits") is None
    config.write_text(config.read_text() + "allow_empty: true\n")
    assert pipeline.run(PublishAll()).ok
    assert pipeline.dest("SELECT count(*) FROM permits")[0][0] == 0


def test_drift_beyond_tolerance_is_refused(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 200)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    pipeline.source("DELETE FROM gis_lni.violations WHERE objectid > 100")  # -50%
    at(monkeypatch, "2026-11-25T12:00:00")
    assert not pipeline.run(PublishAll()).ok
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == 200


def test_dependent_view_survives_the_swap(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 100)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    pipeline.dest("CREATE VIEW open_violations AS SELECT objectid, address FROM violations WHERE code <> 'C0'")
    pipeline.dest("GRANT SELECT ON open_violations TO publicuser")
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    at(monkeypatch, "2026-11-25T12:00:00")
    assert pipeline.run(PublishAll()).ok
    assert pipeline.dest("SELECT count(*) FROM open_violations WHERE address LIKE 'new %'")[0][0] > 0
    assert pipeline.dest("SELECT has_table_privilege('publicuser', 'open_violations', 'SELECT')")[0][0] is True


def test_view_that_no_longer_fits_rolls_the_swap_back(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 100)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    pipeline.dest("CREATE VIEW codes AS SELECT code FROM violations")
    before = pipeline.table_digest("violations")
    pipeline.source("ALTER TABLE gis_lni.violations DROP COLUMN code")
    at(monkeypatch, "2026-11-25T12:00:00")
    # Even with the column change accepted, the view that needs the column makes the swap roll back.
    run = pipeline.run(Publish(dataset_id="lni__violations", accept_schema_change=True))
    assert not run.ok
    assert pipeline.table_digest("violations") == before
    assert pipeline.dest("SELECT count(*) FROM codes")[0][0] == 100


@pytest.mark.parametrize("change, message", [
    ("ALTER TABLE gis_lni.violations ADD COLUMN ward integer", "added: ward"),
    ("ALTER TABLE gis_lni.violations DROP COLUMN fine", "removed: fine"),
    ("ALTER TABLE gis_lni.violations ALTER COLUMN code TYPE integer USING length(code)", "retyped: code text → bigint"),
    ("ALTER TABLE gis_lni.violations ALTER COLUMN shape TYPE geometry(MultiPoint, 2272) USING ST_Multi(shape)",
     "retyped: shape geometry(Point,2272) → geometry(MultiPoint,2272)"),
])
def test_schema_change_is_refused_until_accepted(pipeline, monkeypatch, caplog, change, message):
    make_points_table(pipeline, "gis_lni", "violations", 100)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    before = pipeline.table_digest("violations")
    pipeline.source(change)
    at(monkeypatch, "2026-11-25T12:00:00")
    with caplog.at_level(logging.ERROR):
        assert not pipeline.run(PublishAll()).ok
    assert f"lni__violations: the columns of carto_phl:public.violations would change — {message}" in caplog.text
    assert "--accept-schema-change" in caplog.text
    assert pipeline.table_digest("violations") == before and pipeline.table_oid("violations__shadow") is None
    assert [m[0] for m in pipeline.markers("lni__violations")] == ["20261124T110400Z"]
    accepted = pipeline.run(Publish(dataset_id="lni__violations", accept_schema_change=True))
    assert accepted.ok, accepted.summary
    assert [m[0] for m in pipeline.markers("lni__violations")] == ["20261124T110400Z", "20261125T110400Z"]


def test_accept_schema_change_in_the_config_accepts_every_time(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 100)
    pipeline.config("lni__violations", DAILY + "accept_schema_change: true\n")
    at(monkeypatch, "2026-11-24T12:00:00")
    assert pipeline.run(PublishAll()).ok
    pipeline.source("ALTER TABLE gis_lni.violations ADD COLUMN ward integer")
    at(monkeypatch, "2026-11-25T12:00:00")
    assert pipeline.run(PublishAll()).ok
    assert "ward" in [r[0] for r in pipeline.dest("SELECT attname FROM pg_attribute WHERE attrelid = 'violations'::regclass")]


def test_staging_on_s3(tmp_path, monkeypatch, postgis_dsn, aws):
    import boto3

    ensure_role("publicuser")
    boto3.client("s3").create_bucket(Bucket="citygeo-databridge-test")
    dest = create_postgis_database("dbl_dest")
    try:
        pipeline = Pipeline(tmp_path, postgis_dsn, dest, monkeypatch, staging="s3://citygeo-databridge-test/staging")
        make_points_table(pipeline, "gis_lni", "violations", 150)
        pipeline.config("lni__violations", DAILY)
        at(monkeypatch, "2026-11-24T12:00:00")
        assert pipeline.run(PublishAll()).ok
        keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="citygeo-databridge-test")["Contents"])
        run = json.loads(boto3.client("s3").get_object(Bucket="citygeo-databridge-test", Key="staging/lni__violations/20261124T110400Z/manifest.json")["Body"].read())["run_id"]
        staged_keys = [k for k in keys if k.startswith("staging/lni__violations/")]
        assert staged_keys == [f"staging/lni__violations/20261124T110400Z/{name}" for name in (f"data-{run}.csv.gz", "manifest.json", f"schema-{run}.json")]
        assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == 150
        assert pipeline.run(PublishAll()).did_nothing
    finally:
        drop_database(dest)


def test_unknown_grant_role_fails_before_copying(pipeline, monkeypatch):
    make_points_table(pipeline, "gis_lni", "violations", 60)
    pipeline.config("lni__violations", DAILY.replace("[publicuser]", "[publicuser, no_such_role_xyz]"))
    at(monkeypatch, "2026-11-24T12:00:00")
    assert not pipeline.run(PublishAll()).ok
    assert pipeline.table_oid("violations") is None and pipeline.table_oid("violations__shadow") is None


def test_schema_override_naming_a_missing_column_fails_the_extract_by_name(pipeline, monkeypatch, caplog):
    make_points_table(pipeline, "gis_lni", "violations", 10)
    path = pipeline.config("lni__violations", DAILY + "schema_override: violations.schema.json\n")
    path.with_name("violations.schema.json").write_text('{"fields": [{"name": "no_such", "type": "integer"}]}')
    pipeline.reset()
    at(monkeypatch, "2026-11-24T12:00:00")
    with caplog.at_level(logging.ERROR):
        assert not pipeline.run(PublishAll()).ok
    assert "lni__violations: schema_override " in caplog.text and "columns the source does not have: ['no_such']" in caplog.text
    assert pipeline.table_oid("violations") is None


def test_a_run_reads_a_staged_manifest_and_schema_once(pipeline, monkeypatch):
    """Completion checks before and after each task and the load itself all ask for the version's manifest; a
    manifest and its schema never change once they exist, so a run reads each at most once (on S3, every read
    is a request). The reads are counted on the real store."""
    from databridge_luigi.staging.stores import LocalStore

    reads: list[str] = []
    read_bytes = LocalStore.read_bytes

    def counted(self, key):
        reads.append(key.rsplit("/", 1)[-1].split("-")[0])
        return read_bytes(self, key)

    monkeypatch.setattr(LocalStore, "read_bytes", counted)
    make_points_table(pipeline, "gis_lni", "violations", 300)
    pipeline.config("lni__violations", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    first = pipeline.run(PublishAll())
    assert first.ok, first.summary
    assert pipeline.markers("lni__violations") == [("20261124T110400Z", 300, True)]
    # Two looks before the extract find no manifest (luigi's check, the race check as the extract starts); then
    # none: the extract wrote manifest and schema, and the load and every later check use what it wrote.
    assert reads.count("manifest.json") == 2, reads
    assert reads.count("schema") == 0, reads


def test_a_run_of_many_datasets_opens_each_destination_connection_and_reads_its_markers_once(pipeline, monkeypatch):
    """One process publishing several datasets to one destination keeps the loader's connection and the lease's
    (a second one, renewing while the loader COPYs) instead of opening a lease connection per dataset: each new
    backend costs the destination a fork. And it reads the destination's markers once: each load adds its own
    version to the snapshot, where re-reading every marker after each load cost a query per dataset that grows
    with the history. Counted where transports are opened and where the snapshot is read."""
    import databridge_luigi.publish as publish
    from databridge_luigi.targets import PublishedVersions

    opened: list[str] = []
    open_transport = publish.open_transport

    def counted(name):
        opened.append(name)
        return open_transport(name)

    snapshots: list[str] = []
    load_snapshot = PublishedVersions._load

    def counted_snapshot(self, connection, schema):
        snapshots.append(connection)
        return load_snapshot(self, connection, schema)

    monkeypatch.setattr(publish, "open_transport", counted)
    monkeypatch.setattr(PublishedVersions, "_load", counted_snapshot)
    for table in ("violations", "permits", "appeals"):
        make_points_table(pipeline, "gis_lni", table, 50)
        pipeline.config(f"lni__{table}", DAILY)
    at(monkeypatch, "2026-11-24T12:00:00")
    run = pipeline.run(PublishAll())
    assert run.ok, run.summary
    assert [pipeline.markers(f"lni__{t}") for t in ("violations", "permits", "appeals")] == [[("20261124T110400Z", 50, True)]] * 3
    assert opened == ["carto_phl", "carto_phl"], opened  # the loader's and the lease's; was one lease connection per dataset
    assert snapshots == ["carto_phl"], snapshots  # was one more after each of the three loads
