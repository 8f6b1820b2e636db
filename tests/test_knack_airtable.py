"""Knack and Airtable sources end to end: HTTP emulator → real luigi → local staging → PostGIS."""
from __future__ import annotations

import csv
import gzip
import io
import textwrap
import time
from pathlib import Path

import pytest

from databridge_luigi.config import load_datasets
from databridge_luigi.sources import extract
from databridge_luigi.sources.knack import KnackPlanLimitError, snake_name
from databridge_luigi.staging import LocalStore, StagedTable
from databridge_luigi.tasks import Publish
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.emulators.airtable import AirtableEmulator, all_cell_types_tables
from tests.emulators.knack import KnackEmulator, all_field_types_objects
from tests.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
APP, KEY = "5d79aaaaaaaaaaaaaaaaaaaa", "knack-secret-key"
BASE, TOKEN = "appEmulatorBase01", "patEmulatorToken0001"

KNACK_CONFIG = """\
    schedule_interval: 25 8 * * 2-6
    upload_to_carto: true
    carto_conn_id: carto_phl
    upload_to_ago:
    carto_users:
      - publicuser
      - tileuser
    knack_object_id: 1
    knack_conn_id: knack
    """

AIRTABLE_CONFIG = f"""\
    schedule_interval: false
    upload_to_carto: true
    carto_users: [publicuser, tileuser]
    source: {{conn: airtable, base: {BASE}, table: "Services"}}
    destination: {{table: oia_services}}
    """


def write(pipeline: Pipeline, relative: str, text: str) -> None:
    path = pipeline.config_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def staged_csv(pipeline: Pipeline, dataset_id: str) -> list[list[str]]:
    (path,) = Path(pipeline.staging, dataset_id).glob("*/data*.csv.gz")
    return list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode("utf-8"))))


@pytest.fixture()
def knack(monkeypatch):
    with KnackEmulator() as emulator:
        monkeypatch.setenv("DATABRIDGE_CONN_KNACK", f"knack+http://{APP}:{KEY}@{emulator.url.split('://')[1]}")
        yield emulator


@pytest.fixture()
def airtable(monkeypatch):
    with AirtableEmulator(penalty_seconds=1.5) as emulator:
        monkeypatch.setenv("DATABRIDGE_CONN_AIRTABLE", f"airtable+http://:{TOKEN}@{emulator.url.split('://')[1]}")
        monkeypatch.setenv("DATABRIDGE_AIRTABLE_PENALTY_SECONDS", "1.5")
        yield emulator


# --- Knack --------------------------------------------------------------------------------------------------

def test_snake_names_match_the_old_tool():
    assert snake_name("Facility ID") == "facility_id"
    assert snake_name("Capacity per Staff") == "capacity_per_staff"
    assert snake_name("Cost (USD)") == "cost_u_s_d"  # what stringcase + the old fix-ups made of it
    assert snake_name("Last Inspection") == "last_inspection"


def test_knack_object_of_every_field_type_to_postgis(pipeline, knack):
    knack.seed_all_field_types(APP, KEY, 2600, timezone="America/Chicago")  # not the dataset's default zone
    write(pipeline, "knack/carto_phl/ppr/facilities.yml", KNACK_CONFIG)
    run = pipeline.run(Publish(dataset_id="ppr__facilities__carto_phl", force=True))
    assert run.ok, run.summary

    pages = [r for r in knack.requests_to("/records")]
    assert [(r.arg("page"), r.arg("rows_per_page")) for r in pages] == [("1", "1000"), ("2", "1000"), ("3", "1000")]
    assert pipeline.dest("SELECT count(*) FROM facilities")[0][0] == 2600
    columns = [r[0] for r in pipeline.dest(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'facilities'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
    assert columns[:6] == ["id", "facility_name", "description", "notes", "capacity", "facility_id"]
    assert {"capacity_per_staff", "event_window", "event_window_end", "manager", "department", "shape"} <= set(columns)
    types = dict(pipeline.dest("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'facilities'::regclass AND attnum > 0"))
    assert types["last_inspection"] == "timestamp with time zone"
    assert types["department"] == types["amenities"] == types["address"] == "jsonb"
    assert types["budget"] == "numeric" and types["facility_id"] == "bigint" and types["is_open"] == "boolean"
    assert types["shape"] == "geometry(Point,4326)"

    # Record 0: wall time 2019-01-01 08:00 in Chicago (Knack sends it as "08:00Z") is 14:00 UTC.
    row = pipeline.dest(
        "SELECT to_char(last_inspection AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), to_char(opened_on AT TIME ZONE 'America/Chicago', 'YYYY-MM-DD HH24:MI'), "
        "to_char(event_window_end AT TIME ZONE 'America/Chicago', 'YYYY-MM-DD HH24:MI'), "
        "phone, email, website, manager, is_open, budget, capacity_per_staff, amenities, department, address->>'city', "
        "round(ST_Y(shape)::numeric, 2), ST_SRID(shape), status FROM facilities WHERE facility_id = 1")[0]
    assert row[:3] == ("2019-01-01 14:00", "2019-01-01 00:00", "2019-01-01 09:00")
    assert row[3:7] == ("2156861776", "facility1@phila.gov", "https://www.phila.gov/facilities/1", "José Nguyễn")
    assert row[7] is False and float(row[8]) == 1000.0 and float(row[9]) == pytest.approx(25 / 2)
    assert row[10] is None  # record 0 has no amenities
    assert isinstance(row[11], list) and len(row[11]) == 2 and all(len(i) == 24 for i in row[11])
    assert row[12] == "Philadelphia" and 39.8 < float(row[13]) < 40.1 and row[14] == 4326
    assert row[15] == ["Open"]  # a single-choice field is still a JSON array, as the old tool made it
    # Empty fields are NULL (record 9: every "blank_every(10)" field), and the [None] multi-select quirk.
    nulls = pipeline.dest("SELECT description, email, phone, last_inspection, department, budget FROM facilities WHERE facility_id = 10")[0]
    assert nulls == (None,) * 6
    assert pipeline.dest("SELECT amenities FROM facilities WHERE facility_id = 97")[0][0] is None
    assert pipeline.dest("SELECT count(*) FROM facilities WHERE amenities IS NOT NULL AND jsonb_typeof(amenities) <> 'array'")[0][0] == 0
    # The staged text carries the app zone's offset, not a fake Z.
    lines = staged_csv(pipeline, "ppr__facilities__carto_phl")
    header, first = lines[0], dict(zip(lines[0], next(r for r in lines[1:] if r[1] == "Market Recreation Center #1")))
    assert first["last_inspection"] == "2019-01-01T08:00:00-06:00"
    assert first["opened_on"] == "2019-01-01T00:00:00-06:00"
    assert header[0] == "id" and len(lines) == 2601


def test_knack_429_then_success(pipeline, knack):
    knack.add_app(APP, KEY, "America/New_York", all_field_types_objects(40, app_id=APP))
    knack.inject("rate_limit", times=2, match="/records")
    write(pipeline, "knack/carto_phl/ppr/facilities.yml", KNACK_CONFIG)
    run = pipeline.run(Publish(dataset_id="ppr__facilities__carto_phl", force=True))
    assert run.ok, run.summary
    statuses = [r.status for r in knack.requests_to("/records")]
    assert statuses == [429, 429, 200]
    assert pipeline.dest("SELECT count(*) FROM facilities")[0][0] == 40


def test_knack_daily_limit_fails_clearly_without_retrying(pipeline, knack, tmp_path):
    knack.add_app(APP, KEY, "America/New_York", all_field_types_objects(40, app_id=APP), plan_limit=0)
    write(pipeline, "knack/carto_phl/ppr/facilities.yml", KNACK_CONFIG)
    run = pipeline.run(Publish(dataset_id="ppr__facilities__carto_phl", force=True))
    assert not run.ok
    assert pipeline.dest("SELECT to_regclass('public.facilities')")[0][0] is None

    knack.clear_requests()
    (dataset,), _ = load_datasets(pipeline.config_dir)
    url = f"knack+http://{APP}:{KEY}@{knack.url.split('://')[1]}"
    started = time.monotonic()
    with pytest.raises(KnackPlanLimitError) as excinfo:
        extract(dataset, url, StagedTable(LocalStore(tmp_path / "direct"), dataset.id, "v"))
    message = str(excinfo.value)
    assert "daily API plan limit" in message and "X-PlanLimit-Limit 0" in message and KEY not in message
    assert len(knack.requests_to("/records")) == 1 and time.monotonic() - started < 5


def test_knack_other_4xx_is_not_retried(pipeline, knack, tmp_path):
    knack.add_app(APP, "another-key", "America/New_York", all_field_types_objects(5, app_id=APP))
    write(pipeline, "knack/carto_phl/ppr/facilities.yml", KNACK_CONFIG)
    (dataset,), _ = load_datasets(pipeline.config_dir)
    url = f"knack+http://{APP}:{KEY}@{knack.url.split('://')[1]}"
    with pytest.raises(Exception, match="HTTP 401"):
        extract(dataset, url, StagedTable(LocalStore(tmp_path / "direct"), dataset.id, "v"))
    assert len(knack.requests_to("/records")) == 1


# --- Airtable -----------------------------------------------------------------------------------------------

def test_airtable_table_of_every_cell_type_to_postgis(pipeline, airtable):
    airtable.add_base(BASE, TOKEN, all_cell_types_tables(2600))
    write(pipeline, "airtable/oia/services.yml", AIRTABLE_CONFIG)
    run = pipeline.run(Publish(dataset_id="oia__services", force=True))
    assert run.ok, run.summary
    assert len(airtable.requests_to("/Services")) == 26  # every page, no 1000 cap
    assert pipeline.dest("SELECT count(*) FROM oia_services")[0][0] == 2600
    types = dict(pipeline.dest("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'oia_services'::regclass AND attnum > 0"))
    assert types["updated_at"] == types["created"] == "timestamp with time zone"
    assert types["start_date"] == "date" and types["active"] == "boolean" and types["record_no"] == "bigint"
    for name in ("photos", "neighborhood", "neighborhood_name", "reviewers", "owner", "languages", "barcode", "open_map", "summary"):
        assert types[name] == "jsonb", name
    row = pipeline.dest(
        "SELECT name, active, to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), start_date::text, "
        "jsonb_array_length(photos), photos->0->>'filename', owner->>'email', neighborhood->>0, neighborhood_name, "
        "completion, budget, notes, languages FROM oia_services WHERE record_no = 1")[0]
    assert row[0].startswith("") and row[1] is False  # checkbox omitted on the wire = false
    assert row[2] == "2023-01-02 14:00" and row[3] == "2023-02-01"
    assert row[4] == 1 and row[5] == "photo-0-0.jpg" and row[6].endswith("@phila.gov") and row[7].startswith("rec")
    assert isinstance(row[8], list) and float(row[9]) == 0.0 and float(row[10]) == 2500.0
    empty = pipeline.dest("SELECT notes, photos, reviewers, neighborhood, active FROM oia_services WHERE record_no = 10")[0]
    assert empty[0] is None and empty[1] is not None and empty[4] is False
    assert pipeline.dest("SELECT active FROM oia_services WHERE record_no = 11")[0][0] is True
    assert pipeline.dest("SELECT photos, reviewers FROM oia_services WHERE record_no = 20")[0] == (None, None)
    assert pipeline.dest("SELECT count(*) FROM oia_services WHERE neighborhood IS NULL")[0][0] == 2600 // 15


def test_airtable_without_meta_access_uses_the_union_of_fields(pipeline, airtable):
    tables = {"Immigrant Services": [{"Name": "A"}, {"Name": "B", "Street Address": "1234 Market St"},
                                     {"Languages": ["Español"], "Open": True}]}
    airtable.add_base(BASE, TOKEN, tables, scopes={"data.records:read"})
    write(pipeline, "airtable/airtable/immigrant_services.yml",
          AIRTABLE_CONFIG.replace('"Services"', '"Immigrant Services"'))
    run = pipeline.run(Publish(dataset_id="airtable__immigrant_services", force=True))
    assert run.ok, run.summary
    assert [r[0] for r in pipeline.dest(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'oia_services'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")] == [
        "name", "street_address", "languages", "open"]
    assert pipeline.dest("SELECT name, street_address, languages, open FROM oia_services ORDER BY name NULLS LAST") == [
        ("A", None, None, False), ("B", "1234 Market St", None, False), (None, None, ["Español"], True)]


def test_airtable_429_penalty_is_honoured(pipeline, airtable):
    airtable.add_base(BASE, TOKEN, all_cell_types_tables(350))
    airtable.inject("rate_limit", times=1, match="/Services")
    write(pipeline, "airtable/oia/services.yml", AIRTABLE_CONFIG)
    run = pipeline.run(Publish(dataset_id="oia__services", force=True))
    assert run.ok, run.summary
    listed = airtable.requests_to("/Services")
    assert listed[0].status == 429 and all(r.status == 200 for r in listed[1:]) and len(listed) == 5
    assert listed[1].time - listed[0].time >= 1.5  # waited out the (shortened) penalty
    assert pipeline.dest("SELECT count(*) FROM oia_services")[0][0] == 350


# --- shipped configs ----------------------------------------------------------------------------------------

def test_the_twenty_knack_configs_and_the_airtable_config_load():
    datasets, problems = load_datasets(REPO / "configs")
    assert problems == []
    knack_sets = {d.id: d for d in datasets if d.kind == "knack"}
    assert len(knack_sets) == 20
    tables = {"ppr_activity_categories": 32, "ppr_activity_types": 6, "ppr_amenities": 7, "ppr_amenity_types": 4,
              "ppr_days": 25, "ppr_facilities": 2, "ppr_facility_schedules": 31, "ppr_location_types": 33,
              "ppr_program_schedules": 22, "ppr_programs": 5}
    for env, conn, segment in (("carto_phl", "knack", "ppr"), ("carto_gsg", "knack_test", "ppr_test")):
        for minute, (table, object_id) in zip(range(0, 50, 5), tables.items()):
            d = knack_sets[f"ppr__{table}__{env}"]
            assert (d.knack_object_id, d.source_conn, d.dest_conn, d.staging_segment) == (object_id, conn, env, segment)
            assert d.schedule == f"{minute} 8 * * 2-6" and d.grants == ("publicuser", "tileuser")
    (oia,) = [d for d in datasets if d.kind == "airtable"]
    assert (oia.id, oia.dest_table, oia.schedule, oia.grants) == ("airtable__immigrant_services", "oia_services", None, ("publicuser", "tileuser"))
    raw = (REPO / "configs/knack/carto_gsg/ppr/ppr_days.yml").read_text()
    assert raw.splitlines()[0] == "schedule_interval: 20 8 * * 2-6" and "knack_conn_id: knack_test" in raw


# --- the same sources into the CARTO emulator -----------------------------------------------------------------

def test_knack_and_airtable_publish_to_the_carto_emulator(tmp_path, monkeypatch, postgis_dsn, knack, airtable):
    from tests.emulators.carto import CartoEmulator

    ensure_role("publicuser")
    ensure_role("tileuser")
    carto_db = create_postgis_database("dbl_kacarto")
    try:
        with CartoEmulator(carto_db, {"phl": "phl-key-for-knack-airtable"}) as emu:
            pipeline = Pipeline(tmp_path, postgis_dsn, emu.connection_url("phl"), monkeypatch)
            knack.seed_all_field_types(APP, KEY, 2600, timezone="America/Chicago")
            airtable.add_base(BASE, TOKEN, all_cell_types_tables(2600))
            write(pipeline, "knack/carto_phl/ppr/facilities.yml", KNACK_CONFIG)
            write(pipeline, "airtable/oia/services.yml", AIRTABLE_CONFIG)
            run = pipeline.run(Publish(dataset_id="ppr__facilities__carto_phl", force=True), Publish(dataset_id="oia__services", force=True))
            assert run.ok, run.summary
            import psycopg

            with psycopg.connect(carto_db) as conn:
                assert conn.execute("SELECT count(*), count(the_geom) > 0 FROM phl.facilities").fetchone() == (2600, True)
                assert conn.execute("SELECT count(*) FROM phl.oia_services").fetchone()[0] == 2600
                staged = {row[0]: row for row in staged_csv(pipeline, "ppr__facilities__carto_phl")[1:]}
                first_id = next(iter(staged))
                # the same record's id arrives unchanged through the COPY API and cartodbfy
                assert conn.execute("SELECT count(*) FROM phl.facilities WHERE id = %s", (first_id,)).fetchone()[0] == 1
                assert conn.execute("SELECT has_table_privilege('publicuser', 'phl.oia_services', 'SELECT')").fetchone()[0] is True
    finally:
        drop_database(carto_db)
