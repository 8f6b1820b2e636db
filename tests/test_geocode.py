"""Geocoding end to end: a Databridge table of addresses (session PostGIS) → Extract → Geocode (AIS emulator)
→ Load into PostGIS through real luigi; the staging cache; retries; the miss-ratio limit; the Census batch
client against its emulator."""
from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path

import pytest

from databridge_luigi.config import load_datasets
from databridge_luigi.geocode import GeocodeError, geocode_table, read_rows
from databridge_luigi.geocode.cache import GeocodeCache
from databridge_luigi.schema import Column, TableSchema
from databridge_luigi.staging import LocalStore, StagedTable
from databridge_luigi.tasks import Publish
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.emulators.ais import AISEmulator, CensusGeocoderEmulator
from tests.pipeline import Pipeline

KEY = "ais-test-key"
DATASET = "geotest__addresses"
CONFIG = """\
    schedule_interval: false
    upload_to_carto: true
    carto_users: [publicuser]
    source: {{schema: geotest, table: addresses}}
    geocode:
      provider: ais
      query_fields: [street_address]
      rate_per_second: 500
      {extra}
    """


@pytest.fixture()
def pipeline(tmp_path, monkeypatch, postgis_dsn):
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_geo")
    monkeypatch.setenv("DATABRIDGE_GEOCODE_BACKOFF", "0.05")
    yield Pipeline(tmp_path, postgis_dsn, dest, monkeypatch)
    drop_database(dest)


@pytest.fixture()
def ais(monkeypatch):
    with AISEmulator(KEY) as emulator:
        monkeypatch.setenv("DATABRIDGE_CONN_AIS", f"ais+http://tester:{KEY}@{emulator.url.split('://')[1]}/ais/v1")
        yield emulator


def source_table(pipeline: Pipeline, rows: list[tuple[str | None, str | None]]) -> None:
    pipeline.source("CREATE SCHEMA IF NOT EXISTS geotest")
    pipeline.source("DROP TABLE IF EXISTS geotest.addresses")
    pipeline.source("CREATE TABLE geotest.addresses (objectid integer PRIMARY KEY, street_address text, zip text)")
    with_ids = [(i + 1, a, z) for i, (a, z) in enumerate(rows)]
    for start in range(0, len(with_ids), 500):
        chunk = with_ids[start:start + 500]
        values = ",".join(["(%s, %s, %s)"] * len(chunk))
        pipeline.source(f"INSERT INTO geotest.addresses VALUES {values}", [v for row in chunk for v in row])


def configure(pipeline: Pipeline, extra: str = "fields: [lat, lon, shape]") -> None:
    pipeline.config(DATASET, CONFIG.format(extra=extra.replace("\n", "\n      ")))


def facts(pipeline: Pipeline) -> list[dict]:
    paths = sorted(Path(pipeline.staging, f"{DATASET}__geocoded").glob("*/manifest.json"))
    return [json.loads(p.read_text())["source"]["geocode"] for p in paths]


def synthetic(n: int, street: str = "Synthetic St") -> list[str]:
    return [f"{100 + i} {street}" for i in range(n)]


# --- AIS end to end -----------------------------------------------------------------------------------------

def test_ais_hits_misses_and_acceptance_end_to_end(pipeline, ais):
    extras = synthetic(12)
    ais.add_synthetic(extras)
    rows = [("1234 Market St", "19107"),
            ("  1500   market street ", "19102"),  # normalized by AIS
            ("999 Nowhere Rd", None),               # 404: a miss, never retried
            ("N 12th St & Market St", None),        # an intersection: rejected by default
            ("1250 Market St", None),               # an unmatched estimate: rejected by default
            ("1300 Market St", None),               # a match without coordinates: a miss
            (None, None)] + [(a, None) for a in extras]
    source_table(pipeline, rows)
    configure(pipeline, "fields: [lat, lon, shape, match_type, geocode_type, opa_account_num, zip_code]\nmax_miss_ratio: 0.5")
    run = pipeline.run(Publish(dataset_id=DATASET, force=True))
    assert run.ok, run.summary

    got = {r[0]: r[1:] for r in pipeline.dest(
        "SELECT objectid, lat, lon, ST_AsText(shape), ST_SRID(shape), match_type, geocode_type, opa_account_num, zip_code "
        "FROM addresses ORDER BY objectid")}
    assert len(got) == len(rows)
    assert float(got[1][0]) == pytest.approx(39.95142) and float(got[1][1]) == pytest.approx(-75.16047)
    assert got[1][2] == "POINT(-75.16047 39.95142)" and got[1][3] == 4326
    assert got[1][4:6] == ("exact", "pwd_parcel") and got[1][6] and got[1][7] == "19107"
    assert got[2][2] == "POINT(-75.16593 39.95225)"
    for miss in (3, 4, 5, 6, 7):
        assert got[miss] == (None,) * 8, miss
    assert all(got[i][2] for i in range(8, 8 + len(extras)))
    types = dict(pipeline.dest("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                               "WHERE attrelid = 'addresses'::regclass AND attnum > 0 AND NOT attisdropped"))
    assert types["shape"] == "geometry(Point,4326)" and types["lat"] == "numeric"

    (f,) = facts(pipeline)
    assert (f["rows"], f["hits"], f["misses"]) == (len(rows), 2 + len(extras), 5)
    assert f["distinct_queries"] == len(rows) - 1 and f["cache_hits"] == 0 and f["api_calls"] == len(rows) - 1
    assert ais.call_count("999 Nowhere Rd") == 1  # a 404 is not retried
    searched = ais.requests_to("/search/")
    assert all(r.query.get("srid") == ["4326"] and r.query.get("estimate") == ["false"] for r in searched)
    assert all("gatekeeperKey" not in r.query and r.headers.get("Authorization") == f"Gatekeeper-Key {KEY}" for r in searched)


def test_zip_tie_break_and_state_plane_srid(pipeline, ais):
    source_table(pipeline, [("440 Broad St", "19146"), ("440 Broad St", "19130"), ("440 Broad St", None),
                            ("1234 Market St", "19107-1234")])
    configure(pipeline, "fields: [shape, zip_code]\nsrid: 2272\nzip_field: zip")
    run = pipeline.run(Publish(dataset_id=DATASET, force=True))
    assert run.ok, run.summary
    got = pipeline.dest("SELECT objectid, zip_code, ST_SRID(shape), round(ST_X(ST_Transform(shape, 4326))::numeric, 4), "
                        "round(ST_Y(ST_Transform(shape, 4326))::numeric, 4), ST_X(shape) FROM addresses ORDER BY objectid")
    assert [r[1] for r in got] == ["19146", "19130", "19130", "19107"]  # no zip: the first feature (N Broad)
    assert all(r[2] == 2272 for r in got)
    assert (float(got[0][3]), float(got[0][4])) == (-75.1649, 39.9441)  # S Broad, back in lon/lat
    assert (float(got[3][3]), float(got[3][4])) == (-75.1605, 39.9514)
    assert got[3][5] > 2_000_000  # feet, not degrees
    assert ais.call_count("440 Broad St") == 1  # one query for three rows
    assert {r.query["srid"][0] for r in ais.requests_to("/search/")} == {"2272"}


def test_cache_rerun_makes_no_calls_and_new_addresses_only_theirs(pipeline, ais):
    addresses = synthetic(200, "Cache St")
    ais.add_synthetic(addresses)
    source_table(pipeline, [(a, None) for a in addresses])
    configure(pipeline)
    assert pipeline.run(Publish(dataset_id=DATASET, version="20260101T000000Z")).ok
    assert sum(ais.calls().values()) == 200 and set(ais.calls().values()) == {1}

    ais.clear_requests()
    run = pipeline.run(Publish(dataset_id=DATASET, version="20260102T000000Z"))  # a new version, same addresses
    assert run.ok, run.summary
    assert ais.requests_to("/search/") == []

    new = synthetic(10, "Fresh St")  # 5% new
    ais.add_synthetic(new)
    source_table(pipeline, [(a, None) for a in addresses + new])
    run = pipeline.run(Publish(dataset_id=DATASET, version="20260103T000000Z"))
    assert run.ok, run.summary
    assert ais.calls() == {a.upper(): 1 for a in new}
    assert [(f["cache_hits"], f["api_calls"], f["hits"]) for f in facts(pipeline)] == [(0, 200, 200), (200, 0, 200), (200, 10, 210)]
    assert pipeline.dest("SELECT count(*) FROM addresses WHERE shape IS NOT NULL")[0][0] == 210
    cache = list(Path(pipeline.staging, "_geocode_cache", "ais").glob("*.jsonl.gz"))
    assert [p.name for p in cache] == [f"{DATASET}.jsonl.gz"]
    assert len(gzip.decompress(cache[0].read_bytes()).decode().splitlines()) == 210


def test_cache_entries_expire(tmp_path):
    store = LocalStore(tmp_path)
    cache = GeocodeCache(store, "ais", "x__y", max_age_days=90, now=1_000_000_000)
    cache.put("1234 MARKET ST", "o", [{"x": 1}])
    cache.save()
    assert GeocodeCache(store, "ais", "x__y", 90, now=1_000_000_000 + 89 * 86400).load().get("1234 MARKET ST", "o") == [{"x": 1}]
    assert GeocodeCache(store, "ais", "x__y", 90, now=1_000_000_000 + 89 * 86400).load().get("1234 MARKET ST", "other") is None
    assert GeocodeCache(store, "ais", "x__y", 90, now=1_000_000_000 + 91 * 86400).load().get("1234 MARKET ST", "o") is None


def test_429_5xx_and_resets_are_retried(pipeline, ais):
    addresses = synthetic(6, "Retry St")
    ais.add_synthetic(addresses)
    source_table(pipeline, [(a, None) for a in addresses])
    configure(pipeline, "fields: [shape]\nmax_in_flight: 1")
    ais.inject("http_503", times=1)
    ais.inject("rate_limit", times=1)
    ais.inject("http_500", times=1)
    ais.inject("reset", times=1)
    run = pipeline.run(Publish(dataset_id=DATASET, force=True))
    assert run.ok, run.summary
    assert [r.fault for r in ais.requests_to("/search/")][:5] == ["http_503", "rate_limit", "http_500", "reset", None]
    assert pipeline.dest("SELECT count(*) FROM addresses WHERE shape IS NOT NULL")[0][0] == 6
    (f,) = facts(pipeline)
    assert f["retries"] == 4 and f["misses"] == 0 and f["errors"] == 0


def test_miss_ratio_above_the_limit_fails_and_stages_nothing(pipeline, ais):
    source_table(pipeline, [("1234 Market St", None), ("1500 Market St", None), ("1 Nowhere Rd", None), ("2 Nowhere Rd", None)])
    configure(pipeline)  # default max_miss_ratio 0.2; 50% miss here
    run = pipeline.run(Publish(dataset_id=DATASET, version="20260101T000000Z"))
    assert not run.ok
    assert facts(pipeline) == []
    assert pipeline.table_oid("addresses") is None
    # What was learned is cached: the rerun (with a higher limit) asks nothing.
    ais.clear_requests()
    configure(pipeline, "fields: [shape]\nmax_miss_ratio: 0.5")
    assert pipeline.run(Publish(dataset_id=DATASET, version="20260102T000000Z")).ok
    assert ais.requests_to("/search/") == []


def test_read_rows_keeps_null_apart_from_empty_text():
    data = b'"a","b","c"\n"x",,""\n"multi\nline","q""uote",\n'
    import io
    assert list(read_rows(io.BytesIO(data))) == [["a", "b", "c"], ["x", None, ""], ["multi\nline", 'q"uote', None]]


# --- Census -------------------------------------------------------------------------------------------------

def census_dataset(tmp_path: Path, extra: str = ""):
    path = tmp_path / "configs" / "databridge" / "geotest" / "places.yml"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent("""\
        schedule_interval: false
        upload_to_carto: false
        geocode:
          provider: census
          query_fields: [street]
          fields: [lat, lon, shape, match_type, matched_address]
        """) + extra)
    (dataset,), problems = load_datasets(tmp_path / "configs")
    assert problems == []
    return dataset


def staged_source(store: LocalStore, rows: list[list[str | None]]) -> StagedTable:
    staged = StagedTable(store, "geotest__places", "20260101T000000Z")
    with staged.writer() as writer:
        writer.write_header(["id", "street", "zip"])
        writer.write_rows(rows)
        writer.finish(TableSchema((Column("id", "integer"), Column("street", "string"), Column("zip", "string"))), {}, "now")
    return staged


@pytest.fixture()
def census(monkeypatch):
    with CensusGeocoderEmulator(seed=3) as emulator:
        monkeypatch.setenv("DATABRIDGE_CONN_CENSUS", f"{emulator.url}/geocoder")
        yield emulator


def staged_rows(staged: StagedTable) -> list[list[str | None]]:
    with staged.open_csv() as stream:
        return list(read_rows(stream))


def test_census_batch_unordered_reply_no_match_and_tie(tmp_path, census):
    dataset = census_dataset(tmp_path, "  zip_field: zip\n  max_miss_ratio: 0.5\n")
    store = LocalStore(tmp_path / "staging")
    rows = [["1", "1234 Market St", "19107"], ["2", "700 Arch Street", "19106"], ["3", "1 Nowhere Rd", "19107"],
            ["4", "440 Broad St", None], ["5", "1500 Market St", "19102"], ["6", None, None]]
    source = staged_source(store, rows)
    target = StagedTable(store, "geotest__places__geocoded", "20260101T000000Z")
    manifest = geocode_table(dataset, source, target)
    out = {r[0]: r for r in staged_rows(target)[1:]}
    assert staged_rows(target)[0] == ["id", "street", "zip", "lat", "lon", "shape", "match_type", "matched_address"]
    assert out["1"][3:] == ["39.95142", "-75.16047", "SRID=4326;POINT(-75.16047 39.95142)", "Exact", "1234 MARKET ST, PHILADELPHIA, PA, 19107"]
    assert out["2"][5] == "SRID=4326;POINT(-75.15088 39.95265)"
    assert out["5"][5] == "SRID=4326;POINT(-75.16593 39.95225)"
    for miss in ("3", "4", "6"):
        assert out[miss][3:] == [None] * 5
    f = manifest.source["geocode"]
    assert (f["hits"], f["misses"], f["ties"], f["api_calls"]) == (3, 3, 1, 1)
    assert census.batches == [5]
    schema = target.schema()
    assert (schema.geometry.name, schema.geometry.geometry_type, schema.geometry.srid) == ("shape", "point", 4326)

    again = geocode_table(dataset, source, StagedTable(store, "geotest__places__geocoded", "20260102T000000Z"))
    assert again.source["geocode"]["api_calls"] == 0 and census.batches == [5]


def test_census_splits_batches_at_ten_thousand_rows(tmp_path, census):
    dataset = census_dataset(tmp_path, "  max_miss_ratio: 1\n")
    store = LocalStore(tmp_path / "staging")
    rows = [[str(i), f"{i} Market St", None] for i in range(10_001)]
    manifest = geocode_table(dataset, staged_source(store, rows), StagedTable(store, "geotest__places__geocoded", "v1"))
    assert census.batches == [10_000, 1]
    assert manifest.rows == 10_001 and manifest.source["geocode"]["api_calls"] == 2


def test_census_miss_ratio_fails(tmp_path, census):
    dataset = census_dataset(tmp_path)
    store = LocalStore(tmp_path / "staging")
    target = StagedTable(store, "geotest__places__geocoded", "v1")
    with pytest.raises(GeocodeError, match="max_miss_ratio"):
        geocode_table(dataset, staged_source(store, [["1", "1 Nowhere Rd", None], ["2", "1234 Market St", None]]), target)
    assert not target.exists()


def test_shipped_airtable_config_geocodes_through_ais(pipeline, ais, monkeypatch):
    """configs/airtable/airtable/immigrant_services.yml as shipped: Airtable → AIS → PostGIS, then a cached rerun."""
    from tests.emulators.airtable import AirtableEmulator

    shipped = Path(__file__).resolve().parents[1] / "configs/airtable/airtable/immigrant_services.yml"
    target = pipeline.config_dir / "airtable/airtable/immigrant_services.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(shipped.read_text())
    base, token = "appXXXXXXXXXXXXXX", "patGeocodeToken0001"
    records = [{"Name": f"Org {i}", "Street Address": a} for i, a in enumerate(["1234 Market St", "700 Arch St", "1500 Market St", "1401 John F Kennedy Blvd", "9 Nowhere Rd"])]
    with AirtableEmulator(penalty_seconds=1.5) as airtable:
        monkeypatch.setenv("DATABRIDGE_CONN_AIRTABLE", f"airtable+http://:{token}@{airtable.url.split('://')[1]}")
        airtable.add_base(base, token, {"immigrant_services": records}, scopes={"data.records:read"})
        run = pipeline.run(Publish(dataset_id="airtable__immigrant_services", version="20260101T000000Z"))
        assert run.ok, run.summary
        assert pipeline.dest("SELECT count(*), count(shape), count(lat) FROM oia_services")[0] == (5, 4, 4)
        ais.clear_requests()
        assert pipeline.run(Publish(dataset_id="airtable__immigrant_services", version="20260102T000000Z")).ok
    assert ais.requests_to("/search/") == []
    found = sorted(Path(pipeline.staging, "airtable__immigrant_services__geocoded").glob("*/manifest.json"))
    got = [json.loads(p.read_text())["source"]["geocode"] for p in found]
    assert [(f["hits"], f["misses"], f["cache_hits"], f["api_calls"]) for f in got] == [(4, 1, 0, 5), (4, 1, 5, 0)]
