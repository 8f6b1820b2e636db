"""The CARTO transport against the CARTO emulator over a fresh PostGIS database, through real luigi.

Source: the session's PostGIS database (tests/pipeline.py); destination: ``CartoEmulator`` with two
accounts (``phl`` and ``gsg``), reached only over HTTP by the code under test. The tests look at the
result directly in the emulator's database.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import psycopg
import pytest

import databridge_luigi.publish.carto as carto
import databridge_luigi.schedule as schedule
import databridge_luigi.tasks as tasks
from databridge_luigi.publish.carto import CartoConfigError, CartoError, CartoTimeoutError, CartoTransport
from databridge_luigi.tasks import Publish, PublishAll
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.emulators.carto import CartoEmulator
from tests.pipeline import Pipeline, make_points_table

PHL_KEY = "phl-master-KEY-5f3a9c71"
GSG_KEY = "gsg-master-KEY-0b8e44d2"

DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: [publicuser, tileuser]
    indexes: [address, code+opened, shape]
    """


@pytest.fixture(scope="module")
def carto_db() -> Iterator[str]:
    ensure_role("publicuser")
    ensure_role("tileuser")
    dsn = create_postgis_database("dbl_carto")
    yield dsn
    drop_database(dsn)


@pytest.fixture(scope="module")
def emu(carto_db: str) -> Iterator[CartoEmulator]:
    with CartoEmulator(carto_db, {"phl": PHL_KEY, "gsg": GSG_KEY}) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(emu: CartoEmulator, carto_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(carto, "BACKOFF_INITIAL", 0.05)
    yield
    emu.clear_faults()
    emu.clear_rate_limits()
    emu.clear_requests()
    with psycopg.connect(carto_db, autocommit=True) as conn:
        for schema in ("phl", "gsg"):
            for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall():
                conn.execute(f'DROP TABLE IF EXISTS "{schema}"."{table}" CASCADE')


@pytest.fixture()
def failures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The failure text each failed task hands luigid (Load.on_failure / Extract.on_failure)."""
    seen: list[str] = []
    original = tasks.DatasetTask.on_failure

    def recording(self, exception):  # type: ignore[no-untyped-def]
        text = original(self, exception)
        seen.append(text)
        return text

    monkeypatch.setattr(tasks.DatasetTask, "on_failure", recording)
    return seen


@pytest.fixture()
def pipeline(tmp_path, monkeypatch, postgis_dsn, emu) -> Pipeline:
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_GSG", emu.connection_url("gsg"))
    at(monkeypatch, "2026-11-24T12:00:00")
    return Pipeline(tmp_path, postgis_dsn, emu.connection_url("phl"), monkeypatch)


def at(monkeypatch, moment: str) -> None:
    fixed = datetime.fromisoformat(moment).replace(tzinfo=timezone.utc)
    monkeypatch.setattr(schedule, "utc_now", lambda: fixed)


def db(dsn: str, statement: str, params=None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def oid(dsn: str, name: str) -> int | None:
    return db(dsn, "SELECT to_regclass(%s)::oid", (name,))[0][0]


def digest(dsn: str, name: str) -> str:
    return db(dsn, f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {name} t")[0][0]


def markers(dsn: str, schema: str, dataset_id: str) -> list[tuple]:
    return db(dsn, f'SELECT version, row_count, rewritten FROM "{schema}".databridge_luigi_publications '
                   "WHERE dataset_id = %s ORDER BY published_at, version", (dataset_id,))


def publish_once(pipeline: Pipeline, rows: int = 150) -> None:
    make_points_table(pipeline, "gis_cartot", "violations", rows)
    pipeline.config("cartot__violations", DAILY)
    first = pipeline.run(PublishAll())
    assert first.ok, first.summary


# --- publishing through luigi ------------------------------------------------------------------------------

def test_first_publish_cartodbfies_indexes_grants_and_marks(pipeline, emu, carto_db):
    publish_once(pipeline, 150)
    table = "phl.violations"
    columns = [r[0] for r in db(carto_db, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                                          "AND NOT attisdropped ORDER BY attnum", (table,))]
    assert columns[:3] == ["cartodb_id", "the_geom", "the_geom_webmercator"]
    assert "shape" not in columns and {"objectid", "address", "code", "opened", "fine"} <= set(columns)
    srids = db(carto_db, "SELECT ST_SRID(the_geom), ST_SRID(the_geom_webmercator), min(ST_X(the_geom)), max(ST_Y(the_geom)), "
                         "count(*), count(DISTINCT cartodb_id) FROM phl.violations GROUP BY 1, 2")
    assert len(srids) == 1
    srid, merc, x, y, count, ids = srids[0]
    assert (srid, merc, count, ids) == (4326, 3857, 150, 150)
    assert -76 < x < -74 and 39 < y < 41  # EPSG:2272 (PA South, ftUS) really was transformed
    indexes = {r[0]: r[1] for r in db(carto_db, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'phl' AND tablename = 'violations'")}
    assert {"violations_address", "violations_code_opened"} <= set(indexes)
    assert not any("shape" in name for name in indexes)  # the source geometry index is skipped: cartodbfy consumed it
    assert any("gist (the_geom)" in d for d in indexes.values()) and any("gist (the_geom_webmercator)" in d for d in indexes.values())
    for role in ("publicuser", "tileuser"):
        assert db(carto_db, "SELECT has_table_privilege(%s, 'phl.violations', 'SELECT')", (role,))[0][0] is True
    assert markers(carto_db, "phl", "cartot__violations") == [("20261124T110400Z", 150, True)]
    assert oid(carto_db, "phl.violations__shadow") is None
    # Public through the SQL API without a key, as CARTO's anonymous role.
    import requests

    reply = requests.get(f"{emu.base_url('phl')}/api/v2/sql", params={"q": "SELECT count(*) AS n FROM violations"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["rows"] == [{"n": 150}]


def test_rerun_is_a_no_op(pipeline, emu, carto_db):
    publish_once(pipeline, 60)
    before = oid(carto_db, "phl.violations")
    emu.clear_requests()
    again = pipeline.run(PublishAll())
    assert again.ok and again.did_nothing, again.summary
    assert oid(carto_db, "phl.violations") == before
    assert not [r for r in emu.requests if r.group == "copy_from"]
    assert len(markers(carto_db, "phl", "cartot__violations")) == 1


def test_an_incremental_version_merges_changed_rows_and_deletes_through_the_key_set(pipeline, emu, carto_db, monkeypatch):
    """change_signal.incremental over CARTO's APIs: the changed rows and the key set both go through the COPY API;
    unchanged rows keep their cartodb_id."""
    make_points_table(pipeline, "gis_cartot", "violations", 120)
    pipeline.source("ALTER TABLE gis_cartot.violations ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()")
    pipeline.source("UPDATE gis_cartot.violations SET updated_at = now() - interval '2 hours' - objectid * interval '2 minutes'")
    pipeline.config("cartot__violations", DAILY.rstrip(" ") + "    primary_key: [objectid]\n"
                    "    change_signal: {column: updated_at, settle_seconds: 60, incremental: true}\n")
    assert pipeline.run(PublishAll()).ok
    ids = dict(db(carto_db, "SELECT objectid, cartodb_id FROM phl.violations"))
    pipeline.source("UPDATE gis_cartot.violations SET code = 'changed', updated_at = now() WHERE objectid = 7")
    pipeline.source("DELETE FROM gis_cartot.violations WHERE objectid = 8")
    at(monkeypatch, "2026-11-25T12:00:00")
    assert pipeline.run(PublishAll()).ok
    rows = "SELECT objectid, code FROM {} ORDER BY objectid"
    assert db(carto_db, rows.format("phl.violations")) == pipeline.source(rows.format("gis_cartot.violations"))
    assert markers(carto_db, "phl", "cartot__violations")[-1] == ("20261125T110400Z", 119, True)
    assert dict(db(carto_db, "SELECT objectid, cartodb_id FROM phl.violations")) == {k: v for k, v in ids.items() if k != 8}
    copies = [r for r in emu.requests if r.group == "copy_from"]
    assert len(copies) >= 3  # first publish, then the changed rows and the key set
    assert not db(carto_db, "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'violations%shadow%'")


def test_copy_is_gzip_chunked_raw_body_with_header_csv(pipeline, emu):
    publish_once(pipeline, 80)
    copies = [r for r in emu.requests if r.group == "copy_from"]
    assert len(copies) == 1
    copy = copies[0]
    assert copy.path == "/user/phl/api/v2/sql/copyfrom" and copy.status == 200
    assert copy.header("Content-Encoding") == "gzip"
    assert copy.header("Transfer-Encoding") == "chunked" and copy.header("Content-Length") is None
    assert copy.header("Content-Type") == "application/octet-stream"
    assert copy.query["q"].startswith('COPY "phl"."violations__shadow') and "HEADER true" in copy.query["q"]
    # the key travels as HTTP Basic auth on every endpoint, never in a URL or a body
    assert copy.header("Authorization") == "Basic ***"
    assert all("api_key" not in r.query and r.credentials == "basic" and r.api_key == PHL_KEY for r in emu.requests)
    # SQL API calls carry the key in the form body, never in the URL.
    assert all("api_key" not in r.query for r in emu.requests if r.group == "query")


def test_two_accounts_in_one_run(pipeline, carto_db):
    make_points_table(pipeline, "gis_cartot", "violations", 40)
    make_points_table(pipeline, "gis_cartot", "permits", 30)
    pipeline.config("cartot__violations", DAILY)
    pipeline.config("cartot__permits", DAILY + "destination: {conn: carto_gsg}\n")
    run = pipeline.run(PublishAll())
    assert run.ok, run.summary
    assert db(carto_db, "SELECT count(*) FROM phl.violations")[0][0] == 40
    assert db(carto_db, "SELECT count(*) FROM gsg.permits")[0][0] == 30
    assert oid(carto_db, "phl.permits") is None and oid(carto_db, "gsg.violations") is None
    assert db(carto_db, "SELECT tableowner FROM pg_tables WHERE schemaname = 'gsg' AND tablename = 'permits'")[0][0] == "carto_gsg"
    assert markers(carto_db, "gsg", "cartot__permits") == [("20261124T110400Z", 30, True)]


def test_rate_limited_copy_and_query_are_retried_after_retry_after(pipeline, emu, carto_db):
    emu.inject("copy_from", "rate_limit", times=1, retry_after=1)
    emu.inject("query", "rate_limit", times=1, retry_after=1, match="cdb_cartodbfytable")
    started = time.monotonic()
    publish_once(pipeline, 50)
    assert time.monotonic() - started >= 2.0  # both waits honoured Retry-After (backoff alone is 0.05 s)
    assert [r.status for r in emu.requests if r.group == "copy_from"] == [429, 200]
    assert db(carto_db, "SELECT count(*) FROM phl.violations")[0][0] == 50


def test_killed_copy_leaves_the_live_table_exactly_as_it_was(pipeline, emu, carto_db, monkeypatch, failures):
    publish_once(pipeline, 400)
    before, before_oid = digest(carto_db, "phl.violations"), oid(carto_db, "phl.violations")
    pipeline.source("UPDATE gis_cartot.violations SET address = 'changed'")
    emu.inject("copy_from", "copy_abort_after_bytes", times=None, after_bytes=512)
    emu.clear_requests()
    at(monkeypatch, "2026-11-25T12:00:00")
    failed = pipeline.run(PublishAll())
    assert not failed.ok
    copies = [r for r in emu.requests if r.group == "copy_from"]
    assert len(copies) == carto.MAX_ATTEMPTS and all(r.fault == "copy_abort_after_bytes" for r in copies)
    assert digest(carto_db, "phl.violations") == before and oid(carto_db, "phl.violations") == before_oid
    assert oid(carto_db, "phl.violations__shadow") is None
    assert [m[0] for m in markers(carto_db, "phl", "cartot__violations")] == ["20261124T110400Z"]
    assert any("/user/phl/api/v2/sql/copyfrom" in text and "connection failed" in text for text in failures)


def test_failed_cartodbfy_leaves_the_live_table_exactly_as_it_was(pipeline, emu, carto_db, monkeypatch, failures):
    publish_once(pipeline, 100)
    before, before_oid = digest(carto_db, "phl.violations"), oid(carto_db, "phl.violations")
    pipeline.source("UPDATE gis_cartot.violations SET address = 'changed'")
    emu.inject("query", "http_500", times=None, match="cdb_cartodbfytable")
    at(monkeypatch, "2026-11-25T12:00:00")
    assert not pipeline.run(PublishAll()).ok
    assert digest(carto_db, "phl.violations") == before and oid(carto_db, "phl.violations") == before_oid
    assert oid(carto_db, "phl.violations__shadow") is None
    assert [m[0] for m in markers(carto_db, "phl", "cartot__violations")] == ["20261124T110400Z"]
    assert any("server error 500" in text and "CDB_CartodbfyTable" in text and f"gave up after {carto.MAX_ATTEMPTS} attempts" in text
               for text in failures)


def test_api_key_never_in_failure_text_or_logs(pipeline, emu, monkeypatch, failures, caplog):
    caplog.set_level(logging.DEBUG)
    make_points_table(pipeline, "gis_cartot", "violations", 30)
    pipeline.config("cartot__violations", DAILY)
    emu.inject("copy_from", "http_503", times=None)
    assert not pipeline.run(PublishAll()).ok
    text = "\n".join(failures) + caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert failures and "server error 503" in text
    assert "copyfrom" in text  # the requests were logged (urllib3 debug lines), redacted
    assert "api_key" not in text  # the key is in the Authorization header, so no logged URL holds it
    assert PHL_KEY not in text and PHL_KEY not in repr(CartoTransport("carto_phl", emu.connection_url("phl")))


def test_wrong_key_is_a_connection_error(pipeline, emu, monkeypatch, caplog):
    wrong = "wrong-KEY-77aa31"
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", emu.connection_url("phl").replace(PHL_KEY, wrong))
    make_points_table(pipeline, "gis_cartot", "violations", 20)
    pipeline.config("cartot__violations", DAILY)
    run = pipeline.run(Publish(dataset_id="cartot__violations"))
    assert not run.ok
    assert "401 Unauthorized" in caplog.text and "API key" in caplog.text
    assert wrong not in caplog.text and PHL_KEY not in caplog.text
    transport = CartoTransport("carto_phl", emu.connection_url("phl").replace(PHL_KEY, wrong))
    with pytest.raises(CartoConfigError, match=r"401 Unauthorized.*while running: SELECT 1") as raised:
        transport.query("SELECT 1")
    assert raised.value.status == 401 and wrong not in str(raised.value)
    assert len([r for r in emu.requests if r.status == 401]) >= 2  # one per call: a 401 is never retried


def test_unknown_user_is_a_connection_error(pipeline, emu, monkeypatch, caplog):
    url = f"carto+http://nobody:some-KEY-1234@127.0.0.1:{emu.port}/user/nobody"
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", url)
    make_points_table(pipeline, "gis_cartot", "violations", 20)
    pipeline.config("cartot__violations", DAILY)
    assert not pipeline.run(Publish(dataset_id="cartot__violations")).ok
    assert "can't find CARTO user 'nobody'" in caplog.text and "some-KEY-1234" not in caplog.text
    with pytest.raises(CartoConfigError, match=r"'carto_x'.*/user/nobody/api/v2/sql\): 404 Sorry"):
        CartoTransport("carto_x", url).query("SELECT 1")


# --- error classes, on the transport directly --------------------------------------------------------------

@pytest.fixture()
def transport(emu) -> Iterator[CartoTransport]:
    t = CartoTransport("carto_phl", emu.connection_url("phl"))
    yield t
    t.close()


def test_sql_error_400_names_connection_endpoint_and_statement(transport, emu):
    with pytest.raises(CartoError) as raised:
        transport.query("SELECT * FROM nope\nWHERE true")
    message = str(raised.value)
    assert raised.value.status == 400
    assert "'carto_phl'" in message and "/user/phl/api/v2/sql" in message and 'relation "nope" does not exist' in message
    assert "while running: SELECT * FROM nope)" in message and PHL_KEY not in message
    assert len(emu.requests) == 1  # never retried


def test_statement_timeout_429_fails_at_once_with_a_hint(transport, emu):
    emu.inject("query", "statement_timeout", times=None)
    with pytest.raises(CartoTimeoutError, match="Batch SQL API"):
        transport.query("SELECT pg_sleep(100)")
    assert len(emu.requests) == 1


def test_rate_limit_429_is_retried_honouring_retry_after(transport, emu):
    emu.inject("query", "rate_limit", times=1, retry_after=1)
    started = time.monotonic()
    assert transport.query("SELECT 1 AS one") == [{"one": 1}]
    assert time.monotonic() - started >= 0.95
    assert [r.status for r in emu.requests] == [429, 200]


@pytest.mark.parametrize("fault", ["http_500", "http_502", "http_503", "reset"])
def test_server_errors_and_resets_are_retried(transport, emu, fault):
    emu.inject("query", fault, times=2)
    assert transport.query("SELECT 2 AS two") == [{"two": 2}]
    assert len(emu.requests) == 3


def test_persistent_server_error_gives_up_after_bounded_attempts(transport, emu):
    emu.inject("query", "http_502", times=None)
    with pytest.raises(CartoError, match=r"server error 502.*gave up after 5 attempts"):
        transport.query("SELECT 1")
    assert len(emu.requests) == carto.MAX_ATTEMPTS


def test_200_with_error_is_a_failure(transport, emu):
    emu.inject("query", "midstream_error", times=1)
    with pytest.raises(CartoError, match="mid-stream.*SQL query timeout"):
        transport.query("SELECT g FROM generate_series(1, 10) g")
    assert len(emu.requests) == 1


def test_transaction_is_one_call_and_rolls_back_as_a_whole(transport, emu, carto_db):
    transport.query("CREATE TABLE t_tx (a int)")
    emu.clear_requests()
    with pytest.raises(CartoError, match="does not exist"):
        transport.transaction(["INSERT INTO t_tx VALUES (1)", "INSERT INTO no_such_table VALUES (2)"])
    assert len(emu.requests) == 1 and emu.requests[0].q.startswith("BEGIN; INSERT")
    assert db(carto_db, "SELECT count(*) FROM phl.t_tx")[0][0] == 0
    transport.transaction(["INSERT INTO t_tx VALUES (1)", "INSERT INTO t_tx VALUES (2)"])
    assert db(carto_db, "SELECT count(*) FROM phl.t_tx")[0][0] == 2


def test_default_schema_is_the_accounts_current_schema(transport, emu):
    assert transport.default_schema == "phl"  # an organization member: search_path "phl", cartodb, public
    emu.clear_requests()
    assert transport.default_schema == "phl"
    assert not emu.requests  # asked once per transport
    override = CartoTransport("carto_phl", emu.connection_url("phl") + "?schema=elsewhere")
    assert override.default_schema == "elsewhere" and not emu.requests


def test_a_long_transaction_runs_again_as_one_batch_job(transport, emu, carto_db):
    """A transaction that passed the SQL API's statement timeout was rolled back whole; it goes as one Batch job."""
    transport.query("CREATE TABLE t_long (a int); INSERT INTO t_long VALUES (0)")
    emu.clear_requests()
    emu.inject("query", "statement_timeout", times=1, match="BEGIN")
    monkey_poll = carto.JOB_POLL_INITIAL
    carto.JOB_POLL_INITIAL = 0.05
    try:
        transport.transaction(["SET LOCAL lock_timeout = '2s'", "DELETE FROM t_long", "INSERT INTO t_long VALUES (1), (2)",
                               "DO $$ BEGIN IF (SELECT count(*) FROM t_long) <> 2 THEN RAISE EXCEPTION 'bad'; END IF; END $$"])
        assert db(carto_db, "SELECT array_agg(a ORDER BY a) FROM phl.t_long")[0][0] == [1, 2]
        assert [r.group for r in emu.requests][:2] == ["query", "job_create"]
        with pytest.raises(CartoError, match="Batch SQL job .* failed: fenced out"):
            emu.inject("query", "statement_timeout", times=1, match="BEGIN")
            transport.transaction(["DELETE FROM t_long", "DO $$ BEGIN RAISE EXCEPTION 'fenced out'; END $$"])
        assert db(carto_db, "SELECT count(*) FROM phl.t_long")[0][0] == 2
    finally:
        carto.JOB_POLL_INITIAL = monkey_poll


@pytest.fixture(scope="module")
def solo_emu() -> Iterator[CartoEmulator]:
    """A non-organization account (its own database; tables in public), like the City's phl.carto.com."""
    dsn = create_postgis_database("dbl_carto_solo")
    try:
        with CartoEmulator(dsn, {"phl": PHL_KEY}, non_organization=["phl"]) as server:
            yield server
    finally:
        drop_database(dsn)


def test_a_non_organization_account_publishes_to_public(tmp_path, monkeypatch, postgis_dsn, solo_emu):
    """carto://phl:KEY on a non-organization account: the tables live in public, not in a schema named phl
    (which the genuine server answered with 400 schema "phl" does not exist)."""
    at(monkeypatch, "2026-11-24T12:00:00")
    pipeline = Pipeline(tmp_path, postgis_dsn, solo_emu.connection_url("phl"), monkeypatch)
    publish_once(pipeline, 40)
    with psycopg.connect(solo_emu_dsn(solo_emu), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM public.violations").fetchone()[0] == 40
        assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = 'public.violations'::regclass AND attname = 'cartodb_id'").fetchone()[0] == "bigint"
        triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.violations'::regclass "
                                               "AND NOT tgisinternal").fetchall()}
        assert triggers == {"track_updates", "update_the_geom_webmercator_trigger", "test_quota", "test_quota_per_row"}
        assert conn.execute("SELECT count(*) FROM public.databridge_luigi_publications").fetchone()[0] == 1
        assert conn.execute("SELECT to_regnamespace('phl')").fetchone()[0] is None
        table_oid = conn.execute("SELECT 'public.violations'::regclass::oid").fetchone()[0]
    # The next day's version replaces the rows in place through the triggers of the cartodbfied table
    pipeline.source("UPDATE gis_cartot.violations SET fine = fine + 1 WHERE objectid <= 4")
    at(monkeypatch, "2026-11-25T12:00:00")
    again = pipeline.run(PublishAll())
    assert again.ok, again.summary
    with psycopg.connect(solo_emu_dsn(solo_emu), autocommit=True) as conn:
        assert conn.execute("SELECT 'public.violations'::regclass::oid").fetchone()[0] == table_oid  # identity kept
        assert conn.execute("SELECT count(*), count(the_geom_webmercator), sum(fine) FROM public.violations").fetchone()[:2] == (40, 40)
        assert conn.execute("SELECT count(*) FROM public.databridge_luigi_publications").fetchone()[0] == 2


def solo_emu_dsn(emu: CartoEmulator) -> str:
    return emu._dsn  # the emulator's own database


def test_merge_by_key_on_carto_keeps_cartodb_ids_and_runs_long_commits_as_a_batch_job(pipeline, emu, carto_db, monkeypatch):
    """merge (primary_key): unchanged rows keep their cartodb_id (apps link to it); the commit, here past the
    SQL API's statement timeout, runs again as one Batch SQL API job."""
    monkeypatch.setattr(carto, "JOB_POLL_INITIAL", 0.05)
    make_points_table(pipeline, "gis_cartot", "violations", 50)
    pipeline.config("cartot__violations", DAILY + "primary_key: [objectid]\n")
    assert pipeline.run(PublishAll()).ok
    before = dict(db(carto_db, "SELECT objectid, cartodb_id FROM phl.violations"))
    pipeline.source("UPDATE gis_cartot.violations SET fine = fine + 100 WHERE objectid IN (1, 2)")
    pipeline.source("DELETE FROM gis_cartot.violations WHERE objectid = 3")
    pipeline.source("INSERT INTO gis_cartot.violations SELECT 51, 'new', 'C1', now(), 1, ST_SetSRID(ST_MakePoint(2690000, 230000), 2272)")
    at(monkeypatch, "2026-11-25T12:00:00")
    emu.clear_requests()
    emu.inject("query", "statement_timeout", times=1, match="WITH deleted AS")  # the merge commit
    result = pipeline.run(PublishAll())
    assert result.ok, result.summary
    after = dict(db(carto_db, "SELECT objectid, cartodb_id FROM phl.violations"))
    assert set(after) == set(before) - {3} | {51}
    assert all(after[k] == before[k] for k in after if k != 51)  # kept, the changed ones too
    assert db(carto_db, "SELECT fine FROM phl.violations WHERE objectid = 1")[0][0] == 101.25
    assert [r.group for r in emu.requests if r.group.startswith("job")][:1] == ["job_create"]
    counts = db(carto_db, "SELECT mode, inserted, updated, deleted, unchanged FROM phl.databridge_luigi_publications "
                          "ORDER BY published_at DESC LIMIT 1")
    assert counts == [("merge", 1, 2, 1, 47)]


def test_url_forms():
    parse = carto.parse_url
    assert parse("carto://phl:k-123456")[:2] == ("https://phl.carto.com/api/v2/sql", "phl")
    assert parse("carto://phl:k-123456@carto.city.gov/user/phl/")[0] == "https://carto.city.gov/user/phl/api/v2/sql"
    assert parse("carto+http://phl:k-123456@127.0.0.1:8080/user/phl")[0] == "http://127.0.0.1:8080/user/phl/api/v2/sql"
    assert parse("carto://phl:k-123456")[3] == ""  # the account's own schema, asked from the server
    assert parse("carto://phl:k-123456@h/user/phl?schema=public")[3] == "public"
    with pytest.raises(CartoConfigError) as raised:
        CartoTransport("carto_bad", "carto://phl-without-key-99@host")
    assert "phl-without-key-99" not in str(raised.value)


def test_dependent_view_survives_a_republish_through_the_sql_api(pipeline, emu, carto_db, monkeypatch):
    publish_once(pipeline, 70)
    db(carto_db, "SET ROLE carto_phl; CREATE VIEW phl.violations_c1 AS SELECT cartodb_id, the_geom, address FROM phl.violations "
                 "WHERE code = 'C1'; GRANT SELECT ON phl.violations_c1 TO publicuser")
    before = db(carto_db, "SELECT count(*) FROM phl.violations_c1")[0][0]
    pipeline.source("INSERT INTO gis_cartot.violations SELECT 1000 + g, 'new', 'C1', now(), 1, NULL FROM generate_series(1, 5) g")
    at(monkeypatch, "2026-11-25T12:00:00")
    run = pipeline.run(PublishAll())
    assert run.ok, run.summary
    assert db(carto_db, "SELECT count(*) FROM phl.violations_c1")[0][0] == before + 5
    assert db(carto_db, "SELECT has_table_privilege('publicuser', 'phl.violations_c1', 'SELECT')")[0][0] is True


def test_privacy_mismatch_is_a_warning(transport, carto_db, caplog):
    from types import SimpleNamespace

    transport.query("CREATE TABLE t_priv (a int)")
    transport.query("GRANT SELECT ON t_priv TO publicuser")
    caplog.set_level(logging.WARNING)
    transport.post_swap("phl", "t_priv", None, SimpleNamespace(id="x__t_priv", grants=("publicuser",)))  # type: ignore[arg-type]
    assert "PUBLIC" not in caplog.text
    transport.post_swap("phl", "t_priv", None, SimpleNamespace(id="x__t_priv", grants=()))  # type: ignore[arg-type]
    assert "phl.t_priv on carto_phl is PUBLIC but carto_users does not include publicuser" in caplog.text


def test_statement_timeout_on_cartodbfy_and_index_falls_back_to_the_batch_sql_api(pipeline, emu, carto_db, monkeypatch):
    monkeypatch.setattr(carto, "JOB_POLL_INITIAL", 0.05)
    emu.inject("query", "statement_timeout", times=1, match="cdb_cartodbfytable")
    emu.inject("query", "statement_timeout", times=1, match="create index if not exists")
    publish_once(pipeline)
    jobs = [r for r in emu.requests if r.group == "job_create"]
    assert len(jobs) == 2
    assert db(carto_db, "SELECT count(*) FROM phl.violations")[0][0] == 150
    assert db(carto_db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'phl.violations'::regclass AND attname = 'cartodb_id'")[0][0] == 1
    assert {"violations_address", "violations_code_opened"} <= {r[0] for r in db(carto_db, "SELECT indexname FROM pg_indexes WHERE schemaname = 'phl' AND tablename = 'violations'")}


def test_a_batch_job_is_cancelled_when_its_load_is_stopped(transport, emu, monkeypatch):
    """SIGTERM (Terminated, a KeyboardInterrupt) while a Batch SQL job is pending: the job is cancelled on the
    server, so it cannot run (and commit) after the worker is gone."""
    from databridge_luigi.stopping import Terminated

    emu.pause_jobs()

    def stopped(_seconds: float) -> None:
        raise Terminated("stopped by signal 15")

    monkeypatch.setattr(carto, "time", type("Clock", (), {"sleep": staticmethod(stopped), "monotonic": staticmethod(time.monotonic)}))
    emu.inject("query", "statement_timeout", times=1)
    try:
        with pytest.raises(Terminated):
            transport.transaction(["CREATE TABLE t_never (a int)"])
    finally:
        emu.resume_jobs()
    jobs = [r for r in emu.requests if r.group == "job_create"]
    assert len(jobs) == 1
    job_id = next(r.path.rsplit("/", 1)[1] for r in emu.requests if r.group == "job_delete")
    assert emu.job(job_id)["status"] == "cancelled"


def test_a_statement_too_long_for_a_batch_job_fails_saying_so(transport, emu):
    emu.inject("query", "statement_timeout", times=1)
    long = "SELECT 1 WHERE true" + " AND true" * 2000  # ~18 KB
    with pytest.raises(CartoTimeoutError, match="16 KB limit per job"):
        transport.long_query(long)
    assert not [r for r in emu.requests if r.group == "job_create"]


def test_failed_batch_job_fails_the_load_with_its_reason(transport, emu, carto_db):
    emu.inject("query", "statement_timeout", times=1, match="select no_such_function")
    with pytest.raises(CartoError, match=r"Batch SQL job .* failed: .*no_such_function"):
        transport.long_query("SELECT no_such_function()")


def test_demo_examples_publish_to_carto(tmp_path, monkeypatch, emu, carto_db):
    from pathlib import Path

    from scripts.sample_databridge import build as build_sample

    sample = build_sample(tmp_path / "databridge.sqlite", rows=300)
    demo = Pipeline(tmp_path, f"sqlite:///{sample}", emu.connection_url("phl"), monkeypatch)
    monkeypatch.setenv("DATABRIDGE_CONFIG_DIR", str(Path(__file__).resolve().parents[1] / "configs" / "examples"))
    at(monkeypatch, "2026-11-24T12:00:00")
    first = demo.run(PublishAll())
    assert first.ok, first.summary
    counts = {t: db(carto_db, f"SELECT count(*) FROM phl.{t}")[0][0] for t in ("violations", "zoning_districts", "permit_types")}
    assert counts == {"violations": 300, "zoning_districts": 40, "permit_types": 6}
    # cartodbfy: the_geom in 4326 for both layers, NULL geometry columns for the lookup table
    assert db(carto_db, "SELECT DISTINCT ST_SRID(the_geom) FROM phl.zoning_districts") == [(4326,)]
    assert db(carto_db, "SELECT count(*) FROM phl.permit_types WHERE the_geom IS NULL")[0][0] == 6
    assert db(carto_db, "SELECT has_table_privilege('publicuser', 'phl.violations', 'SELECT')")[0][0] is True
    assert demo.run(PublishAll()).did_nothing


# --- credentials rotated in Secrets Manager ------------------------------------------------------------------

def test_rotated_api_key_is_reread_from_secrets_manager_once(pipeline, emu, carto_db, aws, monkeypatch, caplog):
    """One secret per connection (DATABRIDGE_SECRETS_PREFIX); the key is rotated while the worker's cache
    still holds the old one: the 401 makes it re-read the secret and retry once, and the publish succeeds."""
    import boto3
    from databridge_luigi import connections

    client = boto3.client("secretsmanager")
    prefix = f"dbl-test-{time.monotonic_ns()}/conn/"
    client.create_secret(Name=prefix + "carto_phl", SecretString=emu.connection_url("phl"))
    monkeypatch.delenv("DATABRIDGE_CONN_CARTO_PHL")
    monkeypatch.setenv("DATABRIDGE_SECRETS_PREFIX", prefix)
    monkeypatch.setattr(connections, "_secret_sources", {})
    publish_once(pipeline, 150)  # caches the first key for the rest of this "process"

    rotated = "phl-master-KEY-rotated-44e1"
    emu.account("phl").master_key = rotated
    try:
        client.put_secret_value(SecretId=prefix + "carto_phl", SecretString=emu.connection_url("phl"))
        emu.clear_requests()
        with caplog.at_level(logging.WARNING, logger="databridge_luigi.connections"):
            forced = pipeline.run(Publish(dataset_id="cartot__violations", force=True))
        assert forced.ok, forced.summary
        assert [row[2] for row in markers(carto_db, "phl", "cartot__violations")] == [True, True]
        assert "Secrets Manager holds new ones — retrying once" in caplog.text
        rejected = [r for r in emu.requests if r.status == 401]
        assert len(rejected) == 1  # one 401, then every request carried the new key

        # A key that is wrong in Secrets Manager too: one re-read, no retry loop, a clear 401 error.
        emu.account("phl").master_key = "phl-master-KEY-elsewhere-9"
        emu.clear_requests()
        again = pipeline.run(Publish(dataset_id="cartot__violations", force=True))
        assert not again.ok
        assert len([r for r in emu.requests if r.status == 401]) == 1
        assert rotated not in again.summary and "phl-master-KEY-elsewhere-9" not in caplog.text
    finally:
        emu.account("phl").master_key = PHL_KEY


# --- load modes and the lease over the SQL API (no persistent session) ------------------------------------

def test_merge_on_carto_keeps_cartodb_id_of_rows_it_does_not_insert(pipeline, emu, carto_db, monkeypatch):
    make_points_table(pipeline, "gis_cartot", "violations", 200)
    pipeline.config("cartot__violations", DAILY + "primary_key: [objectid]\n")
    assert pipeline.run(PublishAll()).ok
    table_oid = oid(carto_db, "phl.violations")
    ids_before = dict(db(carto_db, "SELECT objectid, cartodb_id FROM phl.violations"))
    pipeline.source("UPDATE gis_cartot.violations SET address = 'new ' || address WHERE objectid <= 3")
    pipeline.source("DELETE FROM gis_cartot.violations WHERE objectid IN (4, 5)")
    pipeline.source("INSERT INTO gis_cartot.violations SELECT 9001, address, code, opened, fine, shape FROM gis_cartot.violations WHERE objectid = 6")
    at(monkeypatch, "2026-11-25T12:00:00")
    run = pipeline.run(PublishAll())
    assert run.ok, run.summary
    assert oid(carto_db, "phl.violations") == table_oid
    assert db(carto_db, "SELECT mode, inserted, updated, deleted, unchanged FROM phl.databridge_luigi_publications "
                        "WHERE version = '20261125T110400Z'") == [("merge", 1, 3, 2, 195)]
    ids_after = dict(db(carto_db, "SELECT objectid, cartodb_id FROM phl.violations"))
    kept = {k: v for k, v in ids_before.items() if k not in (4, 5)}
    assert {k: ids_after[k] for k in kept} == kept, "updated and unchanged rows must keep their cartodb_id"
    assert ids_after[9001] > max(ids_before.values())
    # The new row's the_geom_webmercator comes from CARTO's own trigger, as for rows CARTO users insert.
    assert db(carto_db, "SELECT the_geom_webmercator IS NOT NULL FROM phl.violations WHERE objectid = 9001") == [(True,)]


def test_replace_on_carto_rewrites_rows_in_the_same_table(pipeline, emu, carto_db, monkeypatch):
    publish_once(pipeline, rows=120)
    table_oid = oid(carto_db, "phl.violations")
    pipeline.source("UPDATE gis_cartot.violations SET address = 'new ' || address")
    at(monkeypatch, "2026-11-25T12:00:00")
    run = pipeline.run(PublishAll())
    assert run.ok, run.summary
    assert oid(carto_db, "phl.violations") == table_oid
    assert db(carto_db, "SELECT count(*), count(the_geom_webmercator) FROM phl.violations WHERE address LIKE 'new %'") == [(120, 120)]
    assert db(carto_db, "SELECT mode FROM phl.databridge_luigi_publications WHERE version = '20261125T110400Z'") == [("replace",)]
    assert db(carto_db, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'violations\\_\\_shadow%'") == [(0,)]
    assert db(carto_db, "SELECT count(*) FROM phl.databridge_luigi_leases") == [(0,)]


def test_a_load_held_by_another_run_fails_naming_it(pipeline, emu, carto_db, monkeypatch, caplog):
    import luigi

    publish_once(pipeline, rows=50)
    before = digest(carto_db, "phl.violations")
    db(carto_db, "INSERT INTO phl.databridge_luigi_leases VALUES ('phl.violations', 'cartot__violations', "
                 "'0badc0ffee0000000000000000000000', 'worker-7', 4242, 'worker-7|pid:[1]|4242|1', 'violations__shadow_0badc0', "
                 "now(), now() + interval '1 hour')")
    config = luigi.configuration.get_config()
    config.set("databridge", "lease_wait_seconds", "1")
    try:
        pipeline.source("UPDATE gis_cartot.violations SET address = 'new ' || address")
        at(monkeypatch, "2026-11-25T12:00:00")
        with caplog.at_level(logging.ERROR):
            assert not pipeline.run(PublishAll()).ok
    finally:
        config.remove_option("databridge", "lease_wait_seconds")
    assert "another load of cartot__violations is running (run 0badc0ffee00, host worker-7 pid 4242, since" in caplog.text
    assert digest(carto_db, "phl.violations") == before

