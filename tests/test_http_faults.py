"""Issue 7: one matrix of HTTP faults — every emulated service × every fault it can serve — through our real
client code and real luigi (in-process local scheduler, tests/pipeline.py).

For each service × fault:

* **transient** (the fault served once or twice): retried, the run succeeds with the right data, and the
  emulator's request log shows the retry;
* **persistent** (served until cleared): the run ends in bounded time after a bounded number of requests, and
  the failure names the dataset, the step and the endpoint (host and path; never the key) — in the exception
  luigid stores and in the Slack alert.

Slack itself never fails a task: an outage costs bounded time, the task's own outcome is unchanged. S3 (moto)
gets its faults through ``tests/emulators/fault_proxy.py``.

Retry waits are shortened through configuration (``DATABRIDGE_HTTP_BACKOFF``, ``DATABRIDGE_GEOCODE_BACKOFF``,
``DATABRIDGE_AIRTABLE_PENALTY_SECONDS``, ``AWS_MAX_ATTEMPTS``) or module constants (CARTO backoff, the
read timeouts for the "slow" fault); the HTTP itself is always real.
"""
from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import databridge_luigi.geocode.ais as ais_client
import databridge_luigi.geocode.census as census_client
import databridge_luigi.notify as notify
import databridge_luigi.publish.carto as carto
import databridge_luigi.sources.airtable as airtable_source
import databridge_luigi.sources.knack as knack_source
import databridge_luigi.staging as staging
import databridge_luigi.tasks as tasks
from databridge_luigi.tasks import Extract, Publish
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.emulators.airtable import AirtableEmulator, all_cell_types_tables
from tests.emulators.ais import AISEmulator, CensusGeocoderEmulator
from tests.emulators.carto import CartoEmulator
from tests.emulators.fault_proxy import FaultProxy
from tests.emulators.knack import KnackEmulator, all_field_types_objects
from tests.emulators.slack import SlackEmulator
from tests.pipeline import Pipeline, make_points_table

APP, KNACK_KEY = "5d79bbbbbbbbbbbbbbbbbbbb", "knack-FAULT-key-7731"
BASE, AIRTABLE_TOKEN = "appFaultMatrix001", "patFaultMatrixToken0042"
AIS_KEY = "ais-FAULT-key-5521"
CARTO_KEY = "carto-FAULT-master-9134"
SLACK_SECRET = "xoxFAULTslack0077"
SECRETS = (KNACK_KEY, AIRTABLE_TOKEN, AIS_KEY, CARTO_KEY, SLACK_SECRET)

RECORDS = 40
ADDRESSES = ["1234 Market St", "1500 Market St"]
READ_TIMEOUT = 0.3  # the clients' read timeout in the "slow" cases (their defaults are 30 s to 1 h)
SLOW = 0.8          # how long the "slow" fault stalls: past READ_TIMEOUT
BOUND = 30.0        # seconds any persistent fault may cost a run, at the shortened waits

# fault name in the matrix → (emulator fault, options for a transient, options for a persistent fault)
FAULTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "rate_limit": ("rate_limit", {}, {}),
    "http_500": ("http_500", {}, {}),
    "http_502": ("http_502", {}, {}),
    "http_503": ("http_503", {}, {}),
    "reset": ("reset", {}, {}),
    "read_timeout": ("slow", {"seconds": SLOW}, {"seconds": SLOW}),
    "truncated_json": ("truncated_json", {}, {}),
    "short_read": ("truncated_json", {"short_read": True}, {"short_read": True}),
    "malformed_json": ("malformed_json", {}, {}),
}
JSON_FAULTS = list(FAULTS)
CENSUS_FAULTS = ["rate_limit", "http_500", "http_502", "http_503", "reset", "read_timeout", "short_read"]
SOURCE_CASES = ([("knack", f) for f in JSON_FAULTS] + [("airtable", f) for f in JSON_FAULTS]
                + [("ais", f) for f in JSON_FAULTS] + [("census", f) for f in CENSUS_FAULTS])

STAGE_ONLY = {
    "knack": ("knack/carto_phl/flt/facilities.yml", "flt__facilities__carto_phl", "extract", """\
        schedule_interval: false
        upload_to_carto: false
        carto_conn_id: carto_phl
        knack_object_id: 1
        knack_conn_id: knack
        """),
    "airtable": ("airtable/flt/services.yml", "flt__services", "extract", f"""\
        schedule_interval: false
        upload_to_carto: false
        source: {{conn: airtable, base: {BASE}, table: "Services"}}
        """),
    "ais": ("databridge/flt/addresses.yml", "flt__addresses", "geocode", """\
        schedule_interval: false
        upload_to_carto: false
        source: {schema: flt, table: addresses}
        geocode:
          provider: ais
          query_fields: [street_address]
          fields: [lat, lon, shape]
          max_in_flight: 1
          rate_per_second: 500
        """),
    "census": ("databridge/flt/addresses.yml", "flt__addresses", "geocode", """\
        schedule_interval: false
        upload_to_carto: false
        source: {schema: flt, table: addresses}
        geocode:
          provider: census
          query_fields: [street_address]
          fields: [lat, lon, shape]
        """),
}


# --- emulators (one per module; faults, logs and rate windows are reset for every test) --------------------

@pytest.fixture(scope="module")
def knack() -> Iterator[KnackEmulator]:
    with KnackEmulator(rate_limit_per_second=None) as emulator:
        emulator.add_app(APP, KNACK_KEY, "America/New_York", all_field_types_objects(RECORDS, app_id=APP))
        yield emulator


@pytest.fixture(scope="module")
def airtable() -> Iterator[AirtableEmulator]:
    with AirtableEmulator(rate_limit_per_second=None, penalty_seconds=0.1) as emulator:
        emulator.add_base(BASE, AIRTABLE_TOKEN, all_cell_types_tables(RECORDS))
        yield emulator


@pytest.fixture(scope="module")
def ais() -> Iterator[AISEmulator]:
    with AISEmulator(AIS_KEY) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def census() -> Iterator[CensusGeocoderEmulator]:
    with CensusGeocoderEmulator(seed=5) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        emulator.add_webhook(f"/services/T0/B0/{SLACK_SECRET}")
        yield emulator


@pytest.fixture()
def emulators(knack, airtable, ais, census, slack, monkeypatch) -> Iterator[dict[str, Any]]:
    """All source-side emulators wired up as connections, with short retry waits and a clean state."""
    every = {"knack": knack, "airtable": airtable, "ais": ais, "census": census, "slack": slack}
    for emulator in every.values():
        emulator.clear_faults()
        emulator.clear_requests()
    slack.messages.clear()
    for hook in slack.webhooks.values():
        hook.messages.clear()
    monkeypatch.setenv("DATABRIDGE_CONN_KNACK", f"knack+http://{APP}:{KNACK_KEY}@{host(knack)}")
    monkeypatch.setenv("DATABRIDGE_CONN_AIRTABLE", f"airtable+http://:{AIRTABLE_TOKEN}@{host(airtable)}")
    monkeypatch.setenv("DATABRIDGE_CONN_AIS", f"ais+http://tester:{AIS_KEY}@{host(ais)}/ais/v1")
    monkeypatch.setenv("DATABRIDGE_CONN_CENSUS", f"{census.url}/geocoder")
    monkeypatch.setenv("DATABRIDGE_CONN_SLACK", f"{slack.url}/services/T0/B0/{SLACK_SECRET}")
    monkeypatch.setenv("DATABRIDGE_HTTP_BACKOFF", "0.01")
    monkeypatch.setenv("DATABRIDGE_GEOCODE_BACKOFF", "0.01")
    monkeypatch.setenv("DATABRIDGE_AIRTABLE_PENALTY_SECONDS", "0.1")
    monkeypatch.setenv("DATABRIDGE_CENSUS_BATCH_ROWS", "100")
    monkeypatch.delenv(notify.TASK_ALERTS_ENV, raising=False)
    monkeypatch.setattr(notify, "RETRY_WAIT", 0.05)
    yield every
    for emulator in every.values():
        emulator.clear_faults()


def host(emulator: Any) -> str:
    return emulator.url.split("://", 1)[1]


def short_read_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "read timeout" cases: every client's read timeout down to READ_TIMEOUT (connect stays generous)."""
    for module in (knack_source, airtable_source, ais_client, census_client):
        monkeypatch.setattr(module, "TIMEOUT", (5.0, READ_TIMEOUT))
    monkeypatch.setattr(carto, "QUERY_TIMEOUT", READ_TIMEOUT)
    monkeypatch.setattr(notify, "TIMEOUT", READ_TIMEOUT)


class Failures:
    """What each failed task hands luigid (its on_failure text) and the exception, with the task's step."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, BaseException, str]] = []

    def only(self) -> tuple[str, str, BaseException, str]:
        assert len(self.seen) == 1, [(s[0], s[1], str(s[2])) for s in self.seen]
        return self.seen[0]


@pytest.fixture()
def failures(monkeypatch: pytest.MonkeyPatch) -> Failures:
    record = Failures()
    original = tasks.DatasetTask.on_failure

    def recording(self, exception):  # type: ignore[no-untyped-def]
        text = original(self, exception)
        record.seen.append((self.get_task_family(), str(self.dataset_id), exception, text))
        return text

    monkeypatch.setattr(tasks.DatasetTask, "on_failure", recording)
    return record


def assert_clear_failure(failures: Failures, slack: SlackEmulator, *, dataset_id: str, step: str, endpoint: str,
                         in_message: tuple[str, ...]) -> str:
    """The failure names dataset, step and endpoint, in what luigid stores and in the Slack alert; no secret
    anywhere. ``in_message``: what the exception's own message must name (the rest comes from the task)."""
    family, failed_id, exception, stored = failures.only()
    message = str(exception)
    assert (family.lower(), failed_id) == (step, dataset_id)
    for part in in_message:
        assert part in message, (part, message)
    assert endpoint in message and endpoint in stored, (endpoint, message)
    assert len(slack.messages) == 1, slack.messages
    alert = slack.messages[0]["text"]
    assert dataset_id in alert and f"step *{family}*" in alert and endpoint in alert, alert
    for secret in SECRETS:
        assert secret not in stored and secret not in json.dumps(slack.messages), secret
    return message


# --- pipeline helpers ----------------------------------------------------------------------------------------

@pytest.fixture()
def stage_pipeline(tmp_path, monkeypatch, postgis_dsn, emulators) -> Pipeline:
    """The real pipeline, stage-only: a source fault never needs a destination (nothing is loaded)."""
    return Pipeline(tmp_path, postgis_dsn, postgis_dsn, monkeypatch)


def configure(pipeline: Pipeline, service: str) -> tuple[str, str]:
    relative, dataset_id, step, text = STAGE_ONLY[service]
    path = pipeline.config_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    import textwrap

    path.write_text(textwrap.dedent(text))
    if service in ("ais", "census"):
        pipeline.source("CREATE SCHEMA IF NOT EXISTS flt")
        pipeline.source("DROP TABLE IF EXISTS flt.addresses")
        pipeline.source("CREATE TABLE flt.addresses (objectid integer PRIMARY KEY, street_address text)")
        for i, address in enumerate(ADDRESSES, 1):
            pipeline.source("INSERT INTO flt.addresses VALUES (%s, %s)", (i, address))
    return dataset_id, step


def manifests(pipeline: Pipeline, dataset_id: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in Path(pipeline.staging, dataset_id).glob("*/manifest.json")]


def staged_rows(pipeline: Pipeline, dataset_id: str) -> list[str]:
    (path,) = Path(pipeline.staging, dataset_id).glob("*/data*.csv.gz")
    return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()


def service_requests(service: str, emulator: Any) -> list[Any]:
    return emulator.requests_to("/addressbatch") if service == "census" else emulator.requests


def clean_fingerprint(pipeline: Pipeline, service: str, emulator: Any) -> tuple[str, int]:
    """(sha256 of the staged CSV, requests made) of a fault-free run: what a retried run must reproduce."""
    dataset_id, _ = configure(pipeline, service)
    run = pipeline.run(Publish(dataset_id=dataset_id, force=True))
    assert run.ok, run.summary
    staged_id = f"{dataset_id}__geocoded" if service in ("ais", "census") else dataset_id
    (manifest,) = manifests(pipeline, staged_id)
    count = len(service_requests(service, emulator))
    emulator.clear_requests()
    for path in sorted(Path(pipeline.staging).rglob("*"), reverse=True):  # the next run starts from nothing
        path.unlink() if path.is_file() else path.rmdir()
    return manifest["sha256"], count


_CLEAN: dict[str, tuple[str, int]] = {}


# --- the source matrix: Knack, Airtable (extract), AIS, Census (geocode) ---------------------------------------

@pytest.mark.parametrize(("service", "fault"), SOURCE_CASES)
def test_transient_fault_is_retried_and_the_data_is_right(stage_pipeline, emulators, monkeypatch, service, fault):
    emulator = emulators[service]
    if service not in _CLEAN:
        _CLEAN[service] = clean_fingerprint(stage_pipeline, service, emulator)
    sha256, clean_requests = _CLEAN[service]
    name, options, _ = FAULTS[fault]
    if fault == "read_timeout":
        short_read_timeouts(monkeypatch)
    if service == "ais" and fault == "rate_limit":
        options = {"retry_after": 1}
    times = 1 if fault in ("rate_limit", "read_timeout") else 2
    emulator.inject(name, times=times, **options)
    dataset_id, _ = configure(stage_pipeline, service)
    started = time.monotonic()
    run = stage_pipeline.run(Publish(dataset_id=dataset_id, force=True))
    elapsed = time.monotonic() - started
    assert run.ok, run.summary

    staged_id = f"{dataset_id}__geocoded" if service in ("ais", "census") else dataset_id
    (manifest,) = manifests(stage_pipeline, staged_id)
    assert manifest["sha256"] == sha256  # byte for byte what a fault-free run stages
    logged = service_requests(service, emulator)
    assert [r.fault for r in logged].count(name) == times
    assert len(logged) == clean_requests + times  # each faulted request was made once more, no more
    if service in ("ais", "census"):
        facts = manifest["source"]["geocode"]
        assert (facts["hits"], facts["misses"], facts["errors"], facts["retries"]) == (len(ADDRESSES), 0, 0, times)
    else:
        assert manifest["rows"] == RECORDS and manifest["source"]["retries"] == times
    if service == "ais" and fault == "rate_limit":
        assert elapsed >= 1.0  # AIS's Retry-After was honoured
    assert emulators["slack"].messages == []


# Requests a persistent fault may cost: the first call's attempts, then the run stops.
PERSISTENT_REQUESTS = {
    "knack": knack_source.MAX_ATTEMPTS,
    "airtable": airtable_source.MAX_ATTEMPTS,  # the meta API; an outage there no longer falls back to guessing
    "ais": ais_client.MAX_ATTEMPTS * len(ADDRESSES),
    "census": census_client.MAX_ATTEMPTS,
}


@pytest.mark.parametrize(("service", "fault"), SOURCE_CASES)
def test_persistent_fault_fails_in_bounded_time_naming_dataset_step_endpoint(stage_pipeline, emulators, monkeypatch,
                                                                              failures, service, fault):
    emulator = emulators[service]
    name, _, options = FAULTS[fault]
    if fault == "read_timeout":
        short_read_timeouts(monkeypatch)
    if service == "ais" and fault == "rate_limit":
        options = {"retry_after": 0}
    if service == "knack" and fault == "rate_limit":
        monkeypatch.setattr(knack_source, "RATE_LIMIT_WAIT_MAX", 0.2)  # Knack's reset is ~1 s away, 7 times
    emulator.inject(name, times=None, **options)
    dataset_id, step = configure(stage_pipeline, service)
    started = time.monotonic()
    run = stage_pipeline.run(Publish(dataset_id=dataset_id, force=True))
    elapsed = time.monotonic() - started
    emulator.clear_faults()
    assert not run.ok
    assert elapsed < BOUND
    logged = service_requests(service, emulator)
    assert len(logged) == PERSISTENT_REQUESTS[service], [(r.path, r.fault) for r in logged]
    endpoint = {
        "knack": f"{emulator.url}/v1/applications/{APP}",
        "airtable": f"{emulator.url}/v0/meta/bases/{BASE}/tables",
        "ais": f"{emulator.url}/ais/v1/search",
        "census": f"{emulator.url}/geocoder/locations/addressbatch",
    }[service]
    message = assert_clear_failure(failures, emulators["slack"], dataset_id=dataset_id, step=step, endpoint=endpoint,
                                   in_message=(dataset_id, f": {step}: "))
    assert "attempts" in message
    assert manifests(stage_pipeline, f"{dataset_id}__geocoded" if step == "geocode" else dataset_id) == []


# --- CARTO (load) ---------------------------------------------------------------------------------------------

CARTO_DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: [publicuser]
    """
COUNT = "count(*) AS n FROM"  # the shadow's row count: read-only, safe to have run late
# (group, emulator fault, match, options): which CARTO request the fault hits
CARTO_FAULTS: dict[str, tuple[str, str, str | None, dict[str, Any]]] = {
    "query_rate_limit": ("query", "rate_limit", "CDB_CartodbfyTable", {"retry_after": 1}),
    "query_http_500": ("query", "http_500", "CDB_CartodbfyTable", {}),
    "query_http_502": ("query", "http_502", "CDB_CartodbfyTable", {}),
    "query_http_503": ("query", "http_503", "CDB_CartodbfyTable", {}),
    "query_reset": ("query", "reset", "CDB_CartodbfyTable", {}),
    "query_read_timeout": ("query", "slow", COUNT, {"seconds": SLOW}),
    "copy_rate_limit": ("copy_from", "rate_limit", None, {"retry_after": 1}),
    "copy_http_503": ("copy_from", "http_503", None, {}),
    "copy_reset": ("copy_from", "reset", None, {}),
    "copy_abort_after_bytes": ("copy_from", "copy_abort_after_bytes", None, {"after_bytes": 512}),
}


@pytest.fixture(scope="module")
def carto_emu() -> Iterator[tuple[CartoEmulator, str]]:
    ensure_role("publicuser")
    ensure_role("tileuser")
    dsn = create_postgis_database("dbl_faults_carto")
    try:
        with CartoEmulator(dsn, {"phl": CARTO_KEY}) as server:
            yield server, dsn
    finally:
        drop_database(dsn)


@pytest.fixture()
def carto_pipeline(tmp_path, monkeypatch, postgis_dsn, carto_emu, emulators) -> Iterator[Pipeline]:
    emu, dsn = carto_emu
    monkeypatch.setattr(carto, "BACKOFF_INITIAL", 0.01)
    emu.clear_faults()
    emu.clear_requests()
    pipeline = Pipeline(tmp_path, postgis_dsn, emu.connection_url("phl"), monkeypatch)
    make_points_table(pipeline, "gis_flt", "violations", 120)
    pipeline.config("flt__violations", CARTO_DAILY)
    yield pipeline
    emu.clear_faults()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'phl'").fetchall():
            conn.execute(f'DROP TABLE IF EXISTS phl."{table}" CASCADE')


def carto_count(dsn: str, table: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"phl.{table}",)).fetchone()[0] is None:
            return None
        return conn.execute(f"SELECT count(*) FROM phl.{table}").fetchone()[0]


def carto_group(emu: CartoEmulator, group: str, match: str | None) -> list[Any]:
    return [r for r in emu.requests if r.group == group and (match is None or match.lower() in (r.q or "").lower())]


@pytest.mark.parametrize("case", list(CARTO_FAULTS))
def test_carto_transient_fault_is_retried_and_the_table_published(carto_pipeline, carto_emu, monkeypatch, case):
    emu, dsn = carto_emu
    group, fault, match, options = CARTO_FAULTS[case]
    if fault == "slow":
        short_read_timeouts(monkeypatch)
    emu.inject(group, fault, times=1, match=match, **options)
    started = time.monotonic()
    run = carto_pipeline.run(Publish(dataset_id="flt__violations", force=True))
    assert run.ok, run.summary
    hit = carto_group(emu, group, match)
    assert [r.fault for r in hit][:2] == [fault, None] and len(hit) == 2
    if fault == "rate_limit":
        assert time.monotonic() - started >= 1.0  # Retry-After honoured
    assert carto_count(dsn, "violations") == 120 and carto_count(dsn, "violations__shadow") is None


@pytest.mark.parametrize("case", list(CARTO_FAULTS) + ["query_midstream_error"])
def test_carto_persistent_fault_fails_in_bounded_time_naming_dataset_step_endpoint(carto_pipeline, carto_emu, monkeypatch,
                                                                                   failures, emulators, case):
    emu, dsn = carto_emu
    if case == "query_midstream_error":  # a 200 whose body carries `error`: a failure at once, never retried
        group, fault, match, options = "query", "midstream_error", COUNT, {}
    else:
        group, fault, match, options = CARTO_FAULTS[case]
    if fault == "slow":
        short_read_timeouts(monkeypatch)
    if fault == "rate_limit":
        options = {"retry_after": 0}
    emu.inject(group, fault, times=None, match=match, **options)
    started = time.monotonic()
    run = carto_pipeline.run(Publish(dataset_id="flt__violations", force=True))
    elapsed = time.monotonic() - started
    emu.clear_faults()
    assert not run.ok and elapsed < BOUND
    attempts = 1 if fault == "midstream_error" else carto.MAX_ATTEMPTS
    assert len(carto_group(emu, group, match)) == attempts
    path = "/user/phl/api/v2/sql" + ("/copyfrom" if group == "copy_from" else "")
    message = assert_clear_failure(failures, emulators["slack"], dataset_id="flt__violations", step="load",
                                   endpoint=f"{emu.url}{path}", in_message=("'carto_phl'",))
    assert ("mid-stream" in message) if fault == "midstream_error" else (f"gave up after {attempts} attempts" in message)
    assert carto_count(dsn, "violations") is None and carto_count(dsn, "violations__shadow") is None


# --- Slack (notify): never fails the task, bounded time ---------------------------------------------------------

MISSING = """\
    schedule_interval: false
    upload_to_carto: false
    source: {table: no_such_table}
    """
SLACK_FAULTS = ["rate_limit", "http_500", "http_502", "http_503", "reset", "read_timeout"]


def fail_extract(pipeline: Pipeline) -> tuple[Any, float]:
    pipeline.config("flt__broken", MISSING)
    started = time.monotonic()
    run = pipeline.run(Extract(dataset_id="flt__broken", version="20261124T110400Z"))
    return run, time.monotonic() - started


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("fault", SLACK_FAULTS)
def test_slack_fault_never_changes_the_task_and_costs_bounded_time(stage_pipeline, emulators, monkeypatch, failures,
                                                                    fault, persistent):
    slack = emulators["slack"]
    name, options, _ = FAULTS[fault]
    if fault == "read_timeout":
        short_read_timeouts(monkeypatch)
    slack.inject(name, times=None if persistent else 1, **({"retry_after": 1} if fault == "rate_limit" else options))
    run, elapsed = fail_extract(stage_pipeline)
    slack.clear_faults()
    assert not run.ok
    family, dataset_id, exception, _ = failures.only()  # the task's own failure, unchanged by Slack's trouble
    assert (family, dataset_id) == ("Extract", "flt__broken") and "no_such_table" in str(exception)
    posts = slack.requests_to("/services/T0/B0/")
    if fault == "read_timeout":
        # Never retried (Slack may have posted it): one request, the message arrives late or not at all.
        assert len(posts) == 1 and elapsed < 10
    elif persistent:
        assert len(posts) == notify.MAX_RETRIES + 1 and slack.messages == []
        assert elapsed < (2 * 1.0 if fault == "rate_limit" else 0) + 10
    else:
        assert len(posts) == 2 and len(slack.messages) == 1  # retried once, delivered
        assert "flt__broken" in slack.messages[0]["text"]


# --- S3 staging through the fault proxy (moto) --------------------------------------------------------------

BUCKET = "databridge-faults"
S3_DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: [publicuser]
    """
S3_ROWS = 3000


@pytest.fixture()
def s3(aws, monkeypatch, tmp_path, postgis_dsn, emulators) -> Iterator[tuple[FaultProxy, Pipeline]]:
    import boto3
    import moto.s3.models

    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)  # small parts, many of them
    monkeypatch.setattr(staging.tuning, "PART_SIZE", 16 * 1024)
    client = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_faults_s3")
    with FaultProxy(aws) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        pipeline = Pipeline(tmp_path, postgis_dsn, dest, monkeypatch, staging=f"s3://{BUCKET}/staging")
        make_points_table(pipeline, "gis_flt", "violations", S3_ROWS)
        pipeline.config("flt__violations", S3_DAILY)
        try:
            yield proxy, pipeline
        finally:
            proxy.clear_faults()
            drop_database(dest)


def s3_state(moto_url: str) -> tuple[list[str], list[str]]:
    """(object keys, keys with an unfinished multipart upload), straight from moto."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]
    return sorted(keys), uploads


# (where, fault): where = which S3 request the fault hits
S3_CASES = {
    "upload_part": {"match": "partNumber=", "method": "PUT"},
    "put_schema": {"match": "/schema-", "method": "PUT"},
    "get_data": {"match": "/data-", "method": "GET"},
}
S3_FAULTS = ["http_500", "http_503", "rate_limit", "reset"]


@pytest.mark.parametrize("fault", S3_FAULTS)
@pytest.mark.parametrize("where", list(S3_CASES))
def test_s3_transient_fault_is_retried_by_botocore(s3, aws, where, fault):
    proxy, pipeline = s3
    proxy.inject(fault, times=1, **S3_CASES[where])
    run = pipeline.run(Publish(dataset_id="flt__violations", force=True))
    assert run.ok, run.summary
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == S3_ROWS
    faulted = [r for r in proxy.requests if r.fault]
    assert len(faulted) == 1 and faulted[0].method == S3_CASES[where]["method"]
    again = [r for r in proxy.requests if r.method == faulted[0].method and r.path == faulted[0].path
             and r.query.get("partNumber") == faulted[0].query.get("partNumber")]
    assert len(again) == 2 and again[1].status == 200  # botocore's retry of that very request
    assert len([r for r in proxy.requests if "partNumber" in r.query and r.status == 200]) >= 3  # really multipart


@pytest.mark.parametrize("where", list(S3_CASES))
def test_s3_persistent_fault_fails_without_a_manifest(s3, aws, monkeypatch, failures, emulators, where):
    proxy, pipeline = s3
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # botocore's own setting; the default (legacy mode) is 5
    proxy.inject("http_503", times=None, **S3_CASES[where])
    started = time.monotonic()
    run = pipeline.run(Publish(dataset_id="flt__violations", force=True))
    elapsed = time.monotonic() - started
    proxy.clear_faults()
    assert not run.ok and elapsed < BOUND
    faulted = [r for r in proxy.requests if r.fault]
    # AWS_MAX_ATTEMPTS for the one failing S3 call, then the run stops (an aborted writer sends nothing more).
    assert len(faulted) == 3, [(r.method, r.query.get("partNumber")) for r in faulted]
    keys, uploads = s3_state(aws)
    prefix = "staging/flt__violations/"
    if where == "get_data":  # the extract finished; the load could not read it
        step, expected = "load", ".csv.gz"
        assert [k.rsplit("/", 1)[1].split("-")[0] for k in keys if k.startswith(prefix)] == ["data", "manifest.json", "schema"]
    else:  # nothing half-written counts: no manifest, no data object, no unfinished multipart upload
        step, expected = "extract", "cannot write s3://"
        assert not any(k.endswith("manifest.json") for k in keys) and uploads == []
        assert not any(k.endswith(".csv.gz") for k in keys)  # a failed schema write removes its run's data too
    # Nothing outside the dataset's versions but its run records (what `status` reads of the failure).
    assert all(k.startswith((prefix, "staging/_runs/flt__violations/")) for k in keys), keys
    family, dataset_id, exception, stored = failures.only()
    assert (family.lower(), dataset_id) == (step, "flt__violations")
    assert expected in str(exception), str(exception)
    assert len(emulators["slack"].messages) == 1 and "flt__violations" in emulators["slack"].messages[0]["text"]
    assert pipeline.dest("SELECT to_regclass('public.violations')")[0][0] is None


@pytest.mark.parametrize("where", list(S3_CASES))
def test_s3_read_timeout_is_retried_then_bounded(s3, aws, monkeypatch, where):
    """S3 answering too slowly: botocore's read timeout (DATABRIDGE_S3_READ_TIMEOUT) ends the wait and the
    request is retried; a server that is always too slow fails the run in bounded time."""
    proxy, pipeline = s3
    monkeypatch.setenv("DATABRIDGE_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    proxy.inject("slow", times=1, seconds=2.5, **S3_CASES[where])
    run = pipeline.run(Publish(dataset_id="flt__violations", force=True))
    assert run.ok, run.summary
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == S3_ROWS
    assert [r.fault for r in proxy.requests if r.fault] == ["slow"]

    proxy.inject("slow", times=None, seconds=2.5, **S3_CASES[where])
    started = time.monotonic()
    again = pipeline.run(Publish(dataset_id="flt__violations", force=True))
    elapsed = time.monotonic() - started
    proxy.clear_faults()
    assert not again.ok and elapsed < BOUND
    assert len([r for r in proxy.requests if r.fault]) == 1 + 2  # AWS_MAX_ATTEMPTS, then the run stops
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == S3_ROWS  # the live table is untouched


# --- ArcGIS Online (issue 13): LoadAgo against the AGO emulator -------------------------------------------------

import databridge_luigi.publish.ago as ago_publish  # noqa: E402
from tests.emulators.ago import ORG_ID, AgoEmulator, field_def  # noqa: E402

AGO_PASSWORD = "ago-FAULT-password-6620"
AGO_DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: false
    upload_to_ago: true
    ago: {{conn: ago_faults, item: {view}, sources: [{a}, {b}], batch_size: 50}}
    """
# case → (emulator fault, path fragment it hits, options): reads are retried; an edit that may have gone
# through is counted before it is resent; "timeout_after_commit" applies the edit, then answers "timed out".
AGO_FAULTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "query_rate_limit": ("rate_limit", "/FeatureServer/0/query", {"retry_after": 0}),
    "query_http_500": ("http_500", "/FeatureServer/0/query", {}),
    "query_http_502": ("http_502", "/FeatureServer/0/query", {}),
    "query_http_503": ("http_503", "/FeatureServer/0/query", {}),
    "query_reset": ("reset", "/FeatureServer/0/query", {}),
    "query_read_timeout": ("slow", "/FeatureServer/0/query", {"seconds": SLOW}),
    "query_truncated_json": ("truncated_json", "/FeatureServer/0/query", {}),
    "query_malformed_json": ("malformed_json", "/FeatureServer/0/query", {}),
    "item_http_503": ("http_503", "/sharing/rest/content/items/", {}),
    "add_rate_limit": ("rate_limit", "/addFeatures", {"retry_after": 0}),
    "add_http_502": ("http_502", "/addFeatures", {}),
    "add_reset": ("reset", "/addFeatures", {}),
    "add_error_in_200": ("esri_error", "/addFeatures", {"code": 503, "message": "Service unavailable."}),
}
AGO_TRANSIENT_ONLY = {"add_timeout_after_commit": ("timeout_after_commit", "/addFeatures", {})}


@pytest.fixture(scope="module")
def ago_emu() -> Iterator[AgoEmulator]:
    with AgoEmulator({"phl_etl": AGO_PASSWORD}) as server:
        yield server


@pytest.fixture()
def ago_pipeline(tmp_path, monkeypatch, postgis_dsn, ago_emu, emulators) -> Iterator[tuple[Pipeline, dict[str, str]]]:
    monkeypatch.setattr(ago_publish.client, "BACKOFF_INITIAL", 0.01)  # each tunable where the code reads it
    monkeypatch.setattr(ago_publish.layer, "RECOUNT_WAIT", 0.01)
    monkeypatch.setattr(ago_publish.item, "LEASE_SETTLE", 0.01)
    ago_emu.clear_faults()
    ago_emu.clear_requests()
    suffix = tmp_path.name[-12:].replace("-", "_")
    fields = [field_def("address", "esriFieldTypeString", 60), field_def("code", "esriFieldTypeString", 10),
              field_def("opened", "esriFieldTypeDate"), field_def("fine", "esriFieldTypeDouble")]
    a = ago_emu.create_service(f"a_{suffix}", fields)
    b = ago_emu.create_service(f"b_{suffix}", fields)
    view = ago_emu.create_view(f"v_{suffix}", f"a_{suffix}")
    pipeline = Pipeline(tmp_path, postgis_dsn, "postgresql://unused@127.0.0.1:9/unused", monkeypatch)
    monkeypatch.setenv("DATABRIDGE_CONN_AGO_FAULTS", ago_emu.connection_url("phl_etl"))
    make_points_table(pipeline, "gis_flt", "violations", 120)
    pipeline.config("flt__violations", AGO_DAILY.format(view=view.id, a=a.id, b=b.id))
    yield pipeline, {"a": f"a_{suffix}", "b": f"b_{suffix}", "view": f"v_{suffix}"}
    ago_emu.clear_faults()


@pytest.mark.parametrize("case", list(AGO_FAULTS) + list(AGO_TRANSIENT_ONLY))
def test_ago_transient_fault_is_retried_and_the_layer_published(ago_pipeline, ago_emu, monkeypatch, case):
    pipeline, names = ago_pipeline
    fault, match, options = {**AGO_FAULTS, **AGO_TRANSIENT_ONLY}[case]
    if fault == "slow":
        monkeypatch.setattr(ago_publish.client, "REQUEST_TIMEOUT", READ_TIMEOUT)
    ago_emu.inject(fault, times=1, match=match, **options)
    run = pipeline.run(Publish(dataset_id="flt__violations"))
    assert run.ok, run.summary
    hit = ago_emu.requests_to(match)
    assert hit[0].fault == fault and len(hit) >= 2 and hit[1].fault is None
    assert ago_emu.view_source(names["view"]) == names["b"]
    rows = ago_emu.rows(names["view"])
    assert len(rows) == 120 and len({r["attributes"]["address"] for r in rows}) == 120  # nothing doubled


@pytest.mark.parametrize("case", list(AGO_FAULTS))
def test_ago_persistent_fault_fails_in_bounded_time_naming_dataset_step_endpoint(ago_pipeline, ago_emu, monkeypatch,
                                                                               failures, emulators, case):
    pipeline, names = ago_pipeline
    fault, match, options = AGO_FAULTS[case]
    if fault == "slow":
        monkeypatch.setattr(ago_publish.client, "REQUEST_TIMEOUT", READ_TIMEOUT)
    ago_emu.inject(fault, times=None, match=match, **options)
    started = time.monotonic()
    run = pipeline.run(Publish(dataset_id="flt__violations"))
    elapsed = time.monotonic() - started
    ago_emu.clear_faults()
    assert not run.ok and elapsed < BOUND
    assert len(ago_emu.requests_to(match)) <= 2 * ago_publish.MAX_ATTEMPTS + 2  # bounded
    if match.startswith("/sharing"):  # complete() cannot read the item: a scheduling error (luigi), not a task failure
        assert "LoadAgo" in run.summary and not failures.seen
        assert ago_emu.view_source(names["view"]) == names["a"]
        return
    endpoint = f"{ago_emu.url}/{ORG_ID}/arcgis/rest/services/{names['b']}/FeatureServer/0{match.split('/0', 1)[-1] if 'query' in match else ''}"
    assert_clear_failure(failures, emulators["slack"], dataset_id="flt__violations", step="loadago", endpoint=endpoint,
                         in_message=("flt__violations",))
    assert AGO_PASSWORD not in json.dumps([r.to_json() for r in ago_emu.requests if "generateToken" not in r.path])
    assert ago_emu.view_source(names["view"]) == names["a"] and ago_emu.rows(names["view"]) == []  # readers: as before
