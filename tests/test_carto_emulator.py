"""Tests of the CARTO emulator against real PostGIS, driven by the official ``carto`` SDK where it can be.

The SDK (carto 1.11.3) is an independent client: if the emulator's wire format drifts from CARTO's, the
SDK's parsing and exception mapping notice. Raw ``requests`` calls check what the SDK hides (status
codes, headers, bodies).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from carto.auth import APIKeyAuthClient
    from carto.exceptions import CartoException, CartoRateLimitException
    from carto.sql import BatchSQLClient, CopySQLClient, SQLClient

from tests.conftest import create_postgis_database, drop_database
from tests.emulators.carto import TIMEOUT_MESSAGE, CartoEmulator

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

USER = "phl"
MASTER = "master-key-phl"
REGULAR = "regular-key-phl"
OTHER_USER = "gsg"
OTHER_MASTER = "master-key-gsg"
SOLO = "solo"  # a non-organization account: its tables live in public
SOLO_MASTER = "master-key-solo"
CARTO_TRIGGERS = ("track_updates", "update_the_geom_webmercator_trigger", "test_quota", "test_quota_per_row")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def emu(postgis_dsn: str) -> Iterator[CartoEmulator]:
    with CartoEmulator(postgis_dsn, {USER: MASTER, OTHER_USER: OTHER_MASTER}, regular_keys={USER: REGULAR}) as server:
        yield server


@pytest.fixture(scope="module")
def solo_emu() -> Iterator[CartoEmulator]:
    """A non-organization account on a database of its own, as on the genuine platform."""
    dsn = create_postgis_database("dbl_carto_solo")
    try:
        with CartoEmulator(dsn, {SOLO: SOLO_MASTER}, non_organization=[SOLO]) as server:
            yield server
    finally:
        drop_database(dsn)


@pytest.fixture(autouse=True)
def _clean_controls(emu: CartoEmulator) -> Iterator[None]:
    yield
    emu.clear_faults()
    emu.clear_rate_limits()
    emu.clear_requests()
    emu.resume_jobs()
    emu.account(USER).statement_timeout_ms = None


@pytest.fixture()
def table() -> str:
    """A table name no other test uses (all tests share one database)."""
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def sql_client(emu: CartoEmulator) -> SQLClient:
    return SQLClient(APIKeyAuthClient(emu.base_url(USER), MASTER))


@pytest.fixture()
def copy_client(emu: CartoEmulator) -> CopySQLClient:
    return CopySQLClient(APIKeyAuthClient(emu.base_url(USER), MASTER))


@pytest.fixture()
def batch_client(emu: CartoEmulator) -> BatchSQLClient:
    return BatchSQLClient(APIKeyAuthClient(emu.base_url(USER), MASTER))


def sql_url(emu: CartoEmulator, user: str = USER, rest: str = "") -> str:
    return f"{emu.base_url(user)}/api/v2/sql{rest}"


def post_sql(emu: CartoEmulator, q: str, key: str | None = MASTER, **extra: str) -> requests.Response:
    data = {"q": q, **extra}
    if key is not None:
        data["api_key"] = key
    return requests.post(sql_url(emu), data=data, timeout=30)


def admin(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def wait_for_job(emu: CartoEmulator, job_id: str, statuses: tuple[str, ...], timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(sql_url(emu, rest=f"/job/{job_id}"), params={"api_key": MASTER}, timeout=10).json()
        if body["status"] in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


# --- SQL API --------------------------------------------------------------------------------------------


def test_sql_send_returns_the_json_shape(sql_client: SQLClient) -> None:
    result = sql_client.send("SELECT 1 AS a, 'x'::text AS b")

    assert list(result) == ["rows", "time", "fields", "total_rows"]
    assert result["rows"] == [{"a": 1, "b": "x"}]
    assert result["fields"] == {"a": {"type": "number", "pgtype": "int4"}, "b": {"type": "string", "pgtype": "text"}}
    assert result["total_rows"] == 1
    assert isinstance(result["time"], (int, float))


def test_values_are_serialized_like_carto(sql_client: SQLClient) -> None:
    row = sql_client.send(
        "SELECT count(*) AS n, 12345678901::int8 AS big, 1.25::numeric AS num, 'NaN'::float8 AS nan,"
        " '-Infinity'::float8 AS ninf, '2020-01-31'::date AS d,"
        " '2020-01-31 12:34:56.789'::timestamp AS ts, '2020-01-31 12:00:00-05'::timestamptz AS tstz,"
        " ST_SetSRID(ST_MakePoint(-75.16, 39.95), 4326)::geometry(Point,4326) AS g,"
        " '{\"k\": [1, 2]}'::jsonb AS j, ARRAY[1.5, 2]::float8[] AS fa, ARRAY['a', NULL] AS ta,"
        " true AS flag, '12:30:00'::time AS t, 9223372036854775807::int8 AS huge"
        " FROM (VALUES (1)) v"
    )
    values = row["rows"][0]
    assert values["n"] == 1 and values["big"] == 12345678901 and values["num"] == 1.25
    assert values["nan"] == "NaN" and values["ninf"] == "-Infinity"
    assert values["d"] == "2020-01-31T00:00:00Z"
    assert values["ts"] == "2020-01-31T12:34:56Z"
    assert values["tstz"] == "2020-01-31T17:00:00Z"
    assert values["g"].startswith("0101000020E6100000")  # hex EWKB, SRID 4326
    assert values["j"] == {"k": [1, 2]} and values["fa"] == [1.5, 2] and values["ta"] == ["a", None]
    assert values["flag"] is True and values["t"] == "12:30:00"
    assert values["huge"] == 9223372036854776000  # parseFloat, printed as JavaScript does
    fields = row["fields"]
    assert fields["n"] == {"type": "number", "pgtype": "int8"}
    assert fields["tstz"] == {"type": "date", "pgtype": "timestamptz"}
    assert fields["g"] == {"type": "geometry", "wkbtype": "Point", "dims": 2, "srid": 4326}
    assert fields["ta"] == {"type": "string[]", "pgtype": "_text"}


def test_multi_statement_returns_rows_of_every_statement_and_last_fields(sql_client: SQLClient, table: str) -> None:
    result = sql_client.send(
        f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1), (2), (3);"
        f" SELECT 1 AS a; SELECT 'x' AS b, 2 AS c;"
    )
    assert result["rows"] == [{"a": 1}, {"b": "x", "c": 2}]
    assert list(result["fields"]) == ["b", "c"]
    assert result["total_rows"] == 1


def test_ddl_shape_and_notices(sql_client: SQLClient, table: str) -> None:
    result = sql_client.send(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int)")
    assert result["rows"] == [] and result["fields"] == {} and result["total_rows"] == 0
    assert result["notices"] == [f'table "{table}" does not exist, skipping']

    swap = sql_client.send(
        f"BEGIN; ALTER TABLE {table} RENAME TO {table}_new; GRANT SELECT ON {table}_new TO publicuser; COMMIT;"
    )
    assert swap["total_rows"] == 0
    assert sql_client.send(f"INSERT INTO {table}_new VALUES (1), (2)")["total_rows"] == 2


def test_sql_errors_map_like_carto(emu: CartoEmulator, sql_client: SQLClient) -> None:
    with pytest.raises(CartoException) as info:
        sql_client.send("SELECT * FROM nope_missing")
    assert str(info.value) == "['relation \"nope_missing\" does not exist']"
    assert info.value.args[0].status_code == 400

    hinted = post_sql(emu, "SELECT no_such_function(1)")
    assert hinted.status_code == 400
    assert hinted.json()["error"] == ["function no_such_function(integer) does not exist"]
    assert "hint" in hinted.json()
    assert hinted.headers["Content-Type"] == "application/json; charset=utf-8"
    assert hinted.headers["Content-Disposition"] == "inline"

    missing = requests.post(sql_url(emu), data={"api_key": MASTER}, timeout=10)
    assert (missing.status_code, missing.json()) == (400, {"error": ["You must indicate a sql query"]})


def test_success_headers(emu: CartoEmulator) -> None:
    response = post_sql(emu, "SELECT 1")
    assert response.headers["Carto-User"] == USER
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Content-Disposition"] == "inline; filename=cartodb-query.json"


def test_sql_accepts_get_json_and_host_routing(emu: CartoEmulator) -> None:
    by_get = requests.get(sql_url(emu), params={"q": "SELECT 2 AS x", "api_key": MASTER}, timeout=10)
    by_json = requests.post(sql_url(emu), json={"q": "SELECT 3 AS x", "api_key": MASTER}, timeout=10)
    body_wins = requests.post(sql_url(emu), params={"q": "SELECT 0 AS x"},
                              data={"q": "SELECT 4 AS x", "api_key": MASTER}, timeout=10)
    by_host = requests.get(f"{emu.url}/api/v2/sql", params={"q": "SELECT 5 AS x", "api_key": MASTER},
                           headers={"Host": f"{USER}.localhost:{emu.port}"}, timeout=10)
    v1 = requests.get(f"{emu.base_url(USER)}/api/v1/sql", params={"q": "SELECT 6 AS x", "api_key": MASTER}, timeout=10)
    assert [r.json()["rows"][0]["x"] for r in (by_get, by_json, body_wins, by_host, v1)] == [2, 3, 4, 5, 6]


def test_paging_sorting_and_skipfields(sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} AS SELECT generate_series(1, 10) AS id, 'x'::text AS name")
    page = sql_client.send(f"SELECT * FROM {table};", rows_per_page=3, page=1, order_by="id", sort_order="desc",
                           skipfields="name")
    assert page["rows"] == [{"id": 7}, {"id": 6}, {"id": 5}]
    assert page["fields"] == {"id": {"type": "number", "pgtype": "int4"}} and page["total_rows"] == 3


def test_urls(emu: CartoEmulator) -> None:
    assert emu.url == f"http://127.0.0.1:{emu.port}"
    assert emu.base_url(USER) == f"{emu.url}/user/{USER}"
    assert emu.connection_url(USER) == f"carto+http://{USER}:{MASTER}@127.0.0.1:{emu.port}/user/{USER}"


def test_vacuum_runs_alone_but_not_in_a_multi_statement(sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int)")
    assert sql_client.send(f'VACUUM ANALYZE "{table}"')["total_rows"] == 0
    with pytest.raises(CartoException, match="VACUUM cannot run inside a transaction block"):
        sql_client.send(f'VACUUM ANALYZE "{table}"; SELECT 1')


def test_statement_timeout_is_a_429_without_retry_after(emu: CartoEmulator, sql_client: SQLClient) -> None:
    emu.account(USER).statement_timeout_ms = 100
    response = post_sql(emu, "SELECT pg_sleep(2)")
    assert response.status_code == 429
    assert response.json() == {"error": [TIMEOUT_MESSAGE], "context": "limit", "detail": "datasource"}
    assert "Retry-After" not in response.headers

    with pytest.raises(CartoException) as info:
        sql_client.send("SELECT pg_sleep(2)")
    assert not isinstance(info.value, CartoRateLimitException)


def test_rate_limit_raises_carto_rate_limit_exception(emu: CartoEmulator, sql_client: SQLClient) -> None:
    emu.set_rate_limit("query", 2, 60)
    first = post_sql(emu, "SELECT 1")
    assert first.headers["Carto-Rate-Limit-Limit"] == "2"
    assert first.headers["Carto-Rate-Limit-Remaining"] == "1"
    assert "Retry-After" not in first.headers
    sql_client.send("SELECT 1")

    with pytest.raises(CartoRateLimitException) as info:
        sql_client.send("SELECT 1")
    assert (info.value.limit, info.value.remaining) == (2, 0)
    assert 25 <= info.value.retry_after <= 31 and 55 <= info.value.reset <= 60

    blocked = post_sql(emu, "SELECT 1")
    assert blocked.status_code == 429
    assert blocked.json() == {
        "error": ["You are over platform's limits. Please contact us to know more details"],
        "context": "limit",
        "detail": "rate-limit",
    }
    for header in ("Carto-Rate-Limit-Limit", "Carto-Rate-Limit-Remaining", "Carto-Rate-Limit-Reset", "Retry-After"):
        assert header in blocked.headers


# --- Authentication and privacy ------------------------------------------------------------------------


def test_auth_errors_have_the_real_bodies(emu: CartoEmulator) -> None:
    wrong = post_sql(emu, "SELECT 1", key="not-the-key")
    assert (wrong.status_code, wrong.json()) == (401, {"error": ["Unauthorized"]})

    unknown = requests.get(sql_url(emu, user="nobody"), params={"q": "SELECT 1"}, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": [
        "Sorry, we can't find CARTO user 'nobody'. Please check that you have entered the correct domain."]}

    with pytest.raises(CartoException, match="Access denied"):
        SQLClient(APIKeyAuthClient(emu.base_url(USER), "not-the-key")).send("SELECT 1")

    basic = requests.get(sql_url(emu), params={"q": "SELECT current_user AS u"}, auth=(USER, MASTER), timeout=10)
    assert basic.json()["rows"] == [{"u": f"carto_{USER}"}]
    other = requests.get(sql_url(emu), params={"q": "SELECT 1"}, auth=(OTHER_USER, OTHER_MASTER), timeout=10)
    assert (other.status_code, other.json()) == (403, {"error": ["permission denied"]})


def test_unkeyed_requests_run_as_publicuser_until_granted(emu: CartoEmulator, sql_client: SQLClient,
                                                          table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (7)")
    assert post_sql(emu, "SELECT current_user AS u", key=None).json()["rows"] == [{"u": "publicuser"}]

    denied = post_sql(emu, f"SELECT * FROM {table}", key=None)
    assert (denied.status_code, denied.json()) == (403, {"error": [f"permission denied for table {table}"]})

    sql_client.send(f'GRANT SELECT ON "{table}" TO publicuser')
    assert post_sql(emu, f"SELECT * FROM {table}", key=None).json()["rows"] == [{"id": 7}]


def test_accounts_are_isolated_schemas(emu: CartoEmulator, sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int)")
    assert sql_client.send("SELECT current_schema() AS s")["rows"] == [{"s": USER}]
    other = requests.post(sql_url(emu, user=OTHER_USER), data={"q": f"SELECT * FROM {USER}.{table}",
                                                                  "api_key": OTHER_MASTER}, timeout=10)
    assert other.status_code == 403 and other.json()["error"] == [f"permission denied for schema {USER}"]


def test_a_non_organization_account_keeps_its_tables_in_public(emu: CartoEmulator, solo_emu: CartoEmulator, table: str) -> None:
    solo = SQLClient(APIKeyAuthClient(solo_emu.base_url(SOLO), SOLO_MASTER))
    assert solo_emu.schema(SOLO) == "public" and emu.schema(USER) == USER
    assert solo.send("SELECT current_schema() AS s")["rows"] == [{"s": "public"}]
    # the failure on the genuine server: the user name is not a schema of a non-organization account
    with pytest.raises(CartoException, match=f'schema "{SOLO}" does not exist'):
        solo.send(f"CREATE TABLE {SOLO}.{table} (id int)")
    solo.send(f"CREATE TABLE {table} (id int, shape geometry(Point, 4326)); INSERT INTO {table} VALUES (1, NULL)")
    assert solo.send(f"SELECT cdb_cartodbfytable('public', '{table}')::text AS t")["rows"] == [{"t": table}]
    assert solo.send(f"SELECT to_regclass('public.{table}') IS NOT NULL AS found")["rows"] == [{"found": True}]
    copied = CopySQLClient(APIKeyAuthClient(solo_emu.base_url(SOLO), SOLO_MASTER)).copyfrom(
        f"COPY {table} (id) FROM STDIN WITH (FORMAT csv, HEADER true)", [b"id\n", b"9\n"])  # quota: public._CDB_UserQuotaInBytes()
    assert copied["total_rows"] == 1
    with pytest.raises(ValueError, match="cannot share one database"):
        CartoEmulator("postgresql:///unused", {"a": "k1", "b": "k2"}, non_organization=["a", "b"])


def test_basic_auth_works_on_sql_copy_and_batch(emu: CartoEmulator, table: str) -> None:
    """The genuine server's authorization middleware reads HTTP Basic auth first on every endpoint."""
    auth = (USER, MASTER)
    created = requests.post(sql_url(emu), data={"q": f"CREATE TABLE {table} (id int)"}, auth=auth, timeout=10)
    assert created.status_code == 200
    copied = requests.post(sql_url(emu, rest="/copyfrom"), params={"q": f"COPY {table} FROM STDIN WITH (FORMAT csv)"},
                           data=b"1\n2\n", auth=auth, timeout=10)
    assert (copied.status_code, copied.json()["total_rows"]) == (200, 2)
    copied_to = requests.get(sql_url(emu, rest="/copyto"), params={"q": f"COPY {table} TO STDOUT"}, auth=auth, timeout=10)
    assert copied_to.content == b"1\n2\n"
    job = requests.post(sql_url(emu, rest="/job"), json={"query": f"INSERT INTO {table} VALUES (3)"}, auth=auth, timeout=10)
    assert job.status_code == 201
    done = requests.get(sql_url(emu, rest=f"/job/{job.json()['job_id']}"), auth=auth, timeout=10)
    assert done.status_code == 200
    assert wait_for_job(emu, job.json()["job_id"], ("done", "failed"))["status"] == "done"
    # a wrong key in the header is a 401; another user's name in it is "permission denied"
    wrong = requests.post(sql_url(emu), data={"q": "SELECT 1"}, auth=(USER, "nope"), timeout=10)
    assert (wrong.status_code, wrong.json()) == (401, {"error": ["Unauthorized"]})
    for endpoint in ("/copyfrom", "/job"):
        other = requests.post(sql_url(emu, rest=endpoint), params={"q": "COPY x FROM STDIN"}, json={"query": "SELECT 1"},
                              auth=(OTHER_USER, OTHER_MASTER), timeout=10)
        assert (other.status_code, other.json()) == (403, {"error": ["permission denied"]})


def test_statement_timeout_is_the_roles_setting(emu: CartoEmulator, postgis_dsn: str, table: str) -> None:
    """CARTO keeps the SQL API's statement timeout on the database role; COPY (5 h) and Batch (12 h) set their own."""
    database = psycopg.conninfo.conninfo_to_dict(postgis_dsn)["dbname"]
    admin(postgis_dsn, f'ALTER ROLE carto_{USER} IN DATABASE "{database}" SET statement_timeout = 200')
    try:
        assert post_sql(emu, "SHOW statement_timeout").json()["rows"] == [{"statement_timeout": "200ms"}]
        assert post_sql(emu, "SELECT pg_sleep(1)").status_code == 429
        assert post_sql(emu, "SHOW statement_timeout", key=None).json()["rows"] == [{"statement_timeout": "0"}]
        job = requests.post(sql_url(emu, rest="/job"), json={"query": "SELECT pg_sleep(0.5)"}, auth=(USER, MASTER), timeout=10)
        assert wait_for_job(emu, job.json()["job_id"], ("done", "failed"))["status"] == "done"
    finally:
        admin(postgis_dsn, f'ALTER ROLE carto_{USER} IN DATABASE "{database}" RESET statement_timeout')
    assert post_sql(emu, "SELECT pg_sleep(0.3)").status_code == 200


def test_transactions_with_lock_timeout_do_blocks_and_raise(emu: CartoEmulator, sql_client: SQLClient, table: str,
                                                           postgis_dsn: str) -> None:
    """What replace-in-place and merge loads send: one multi-statement transaction per request."""
    sql_client.send(f"CREATE TABLE {table} (id int PRIMARY KEY, v text); INSERT INTO {table} VALUES (1, 'old')")
    ok = post_sql(emu, f"BEGIN; SET LOCAL lock_timeout = '2s'; DELETE FROM {table}; "
                       f"INSERT INTO {table} SELECT 2, 'new'; "
                       f"DO $$ BEGIN IF (SELECT count(*) FROM {table}) <> 1 THEN RAISE EXCEPTION 'bad count'; END IF; END $$; "
                       "COMMIT;")
    assert ok.status_code == 200 and ok.json()["total_rows"] == 1  # the last tag with a count: INSERT 0 1
    # RAISE EXCEPTION in a DO block: a 400 with the message (and its hint), and nothing of the transaction persists
    raised = post_sql(emu, f"BEGIN; DELETE FROM {table}; "
                           "DO $$ BEGIN RAISE EXCEPTION 'lease lost: run %', 'r1' USING HINT = 'retry later'; END $$; COMMIT;")
    assert raised.status_code == 400
    assert raised.json() == {"error": ["lease lost: run r1"], "hint": "retry later"}
    assert sql_client.send(f"SELECT v FROM {table}")["rows"] == [{"v": "new"}]
    # a lock held elsewhere: SET LOCAL lock_timeout ends the wait with a 400 (a lock timeout is not a 429)
    with psycopg.connect(postgis_dsn) as holder:
        holder.execute(f"LOCK TABLE {USER}.{table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        blocked = post_sql(emu, f"BEGIN; SET LOCAL lock_timeout = '300ms'; DELETE FROM {table}; COMMIT;")
        assert time.monotonic() - started < 5
        holder.rollback()
    assert blocked.status_code == 400
    assert blocked.json()["error"] == ["canceling statement due to lock timeout"]
    assert sql_client.send(f"SELECT v FROM {table}")["rows"] == [{"v": "new"}]


def test_a_client_that_hangs_up_cancels_its_query(emu: CartoEmulator, sql_client: SQLClient, table: str,
                                                  postgis_dsn: str) -> None:
    """The genuine server's cancelOnClientAbort: a transaction in flight when the client goes away rolls back."""
    sql_client.send(f"CREATE TABLE {table} (id int)")
    with pytest.raises(requests.ReadTimeout):
        requests.post(sql_url(emu), data={"q": f"BEGIN; INSERT INTO {table} VALUES (1); SELECT pg_sleep(30); COMMIT;"},
                      auth=(USER, MASTER), timeout=(5, 0.5))
    deadline = time.monotonic() + 5
    while admin(postgis_dsn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()") != [(0,)]:
        assert time.monotonic() < deadline, "the abandoned query is still running"
        time.sleep(0.1)
    assert sql_client.send(f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 0}]


def test_batch_job_runs_a_multi_statement_transaction(emu: CartoEmulator, sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)")
    auth = (USER, MASTER)
    good = requests.post(sql_url(emu, rest="/job"), auth=auth, timeout=10, json={
        "query": f"BEGIN; SET LOCAL lock_timeout = '2s'; DELETE FROM {table}; INSERT INTO {table} VALUES (2), (3); COMMIT;"})
    assert wait_for_job(emu, good.json()["job_id"], ("done", "failed"))["status"] == "done"
    bad = requests.post(sql_url(emu, rest="/job"), auth=auth, timeout=10, json={
        "query": f"BEGIN; DELETE FROM {table}; DO $$ BEGIN RAISE EXCEPTION 'fenced out'; END $$; COMMIT;"})
    failed = wait_for_job(emu, bad.json()["job_id"], ("done", "failed"))
    assert (failed["status"], failed["failed_reason"]) == ("failed", "fenced out")
    assert sql_client.send(f"SELECT id FROM {table} ORDER BY id")["rows"] == [{"id": 2}, {"id": 3}]


# --- COPY API -------------------------------------------------------------------------------------------


def test_copyfrom_with_the_sdk_is_chunked_gzip(emu: CartoEmulator, copy_client: CopySQLClient,
                                               sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int, name text)")
    lines = [b"id,name\n"] + [f"{i},name {i}\n".encode() for i in range(5000)]

    result = copy_client.copyfrom(f"COPY {table} (id, name) FROM STDIN WITH (FORMAT csv, HEADER true)", iter(lines))

    assert result["total_rows"] == 5000 and set(result) == {"time", "total_rows"}
    assert sql_client.send(f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 5000}]
    record = next(r for r in emu.requests if r.path.endswith("/copyfrom"))
    assert record.header("Transfer-Encoding") == "chunked"
    assert record.header("Content-Encoding") == "gzip"
    assert record.header("Content-Type") == "application/octet-stream"
    assert record.query["q"].startswith("COPY") and record.status == 200
    assert 0 < record.body_length < sum(map(len, lines))  # compressed on the wire


def test_copyfrom_with_a_content_length_body(emu: CartoEmulator, sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int, geom geometry(Point, 4326))")
    body = b"id,geom\n1,SRID=4326;POINT(-75 40)\n2,\n"
    response = requests.post(sql_url(emu, rest="/copyfrom"), data=body, timeout=30, params={
        "q": f"COPY {table} (id, geom) FROM STDIN WITH (FORMAT csv, HEADER true)", "api_key": MASTER})
    assert response.status_code == 200 and response.json()["total_rows"] == 2
    record = emu.requests[-1]
    assert record.header("Content-Length") == str(len(body)) and record.header("Transfer-Encoding") is None
    assert record.body_length == len(body)


def test_copyfrom_errors(emu: CartoEmulator, sql_client: SQLClient, table: str, postgis_dsn: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int)")
    copy = f"COPY {table} (id) FROM STDIN WITH (FORMAT csv, HEADER true)"

    def post(q: str | None, body: bytes, key: str | None = MASTER, **headers: str) -> requests.Response:
        params = {k: v for k, v in (("q", q), ("api_key", key)) if v is not None}
        return requests.post(sql_url(emu, rest="/copyfrom"), params=params, data=body, headers=headers, timeout=30)

    assert post(copy, b"id\n").json() == {"error": ["No rows copied"]}
    bad = post(copy, b"id\nnotanint\n")
    assert (bad.status_code, bad.json()["error"]) == (400, ['invalid input syntax for type integer: "notanint"'])
    assert post(None, b"id\n1\n").json() == {"error": ["SQL is missing"]}
    assert post(f"SELECT 1 FROM {table}", b"").json() == {"error": ["SQL must start with COPY"]}
    unkeyed = post(copy, b"id\n1\n", key=None)
    assert (unkeyed.status_code, unkeyed.json()["error"]) == (400, [f"permission denied for table {table}"])
    broken = post(copy, b"this is not gzip", **{"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and broken.json()["error"][0].startswith("Error while gunzipping: ")
    assert sql_client.send(f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 0}]

    admin(postgis_dsn, f"ALTER FUNCTION {USER}._cdb_userquotainbytes() RENAME TO quota_away")
    try:
        no_quota = post(copy, b"id\n1\n")
    finally:
        admin(postgis_dsn, f"ALTER FUNCTION {USER}.quota_away() RENAME TO _cdb_userquotainbytes")
    assert no_quota.status_code == 400
    assert no_quota.json()["error"] == ["function _cdb_userquotainbytes() does not exist"]


def test_copyto_streams_copy_output(emu: CartoEmulator, copy_client: CopySQLClient,
                                    sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int, name text); INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
    response = copy_client.copyto(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)")
    assert response.status_code == 200
    assert response.text == "id,name\n1,a\n2,b\n"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == "attachment; filename=carto-sql-copyto.dmp"

    missing = requests.get(sql_url(emu, rest="/copyto"), params={"q": "COPY nope_x TO STDOUT", "api_key": MASTER},
                           timeout=10)
    assert (missing.status_code, missing.json()) == (400, {"error": ['relation "nope_x" does not exist']})


# --- Batch API ------------------------------------------------------------------------------------------


def test_batch_job_with_the_sdk(batch_client: BatchSQLClient, sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int)")
    created = batch_client.create([f"INSERT INTO {table} VALUES (1)", f"INSERT INTO {table} VALUES (2)"])
    assert created["status"] == "pending" and ISO_MS.match(created["created_at"])
    assert created["query"] == [{"query": f"INSERT INTO {table} VALUES (1)", "status": "pending"},
                                {"query": f"INSERT INTO {table} VALUES (2)", "status": "pending"}]

    done = batch_client.create_and_wait_for_completion(f"INSERT INTO {table} VALUES (3)")
    assert done["status"] == "done" and ISO_MS.match(done["updated_at"])
    assert batch_client.read(created["job_id"])["status"] == "done"
    assert sql_client.send(f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 3}]


def test_batch_job_lifecycle_over_the_wire(emu: CartoEmulator) -> None:
    jobs = sql_url(emu, rest="/job")
    created = requests.post(jobs, json={"query": "SELECT * FROM nope_job", "api_key": MASTER}, timeout=10)
    assert created.status_code == 201  # no trailing slash; the SDK uses one
    failed = wait_for_job(emu, created.json()["job_id"], ("failed",))
    assert failed["status"] == "failed" and failed["failed_reason"] == 'relation "nope_job" does not exist'
    assert list(failed) == ["user", "query", "job_id", "created_at", "updated_at", "status", "failed_reason"]

    emu.pause_jobs()
    pending = requests.post(jobs + "/", json={"query": "SELECT 1", "api_key": MASTER}, timeout=10).json()
    assert wait_for_job(emu, pending["job_id"], ("pending",))["status"] == "pending"
    cancelled = requests.delete(f"{jobs}/{pending['job_id']}", params={"api_key": MASTER}, timeout=10)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    emu.resume_jobs()

    finished = requests.post(jobs, json={"query": "SELECT 1", "api_key": MASTER}, timeout=10).json()
    assert wait_for_job(emu, finished["job_id"], ("done",))["status"] == "done"
    again = requests.delete(f"{jobs}/{finished['job_id']}", params={"api_key": MASTER}, timeout=10)
    assert (again.status_code, again.json()) == (400, {"error": ["Cannot set status from done to cancelled"]})

    unknown = requests.get(f"{jobs}/abc", params={"api_key": MASTER}, timeout=10)
    assert (unknown.status_code, unknown.json()) == (400, {"error": ["Job with id abc not found"]})


def test_batch_job_running_cancel_and_access_rules(emu: CartoEmulator) -> None:
    jobs = sql_url(emu, rest="/job")
    running = requests.post(jobs, json={"query": "SELECT pg_sleep(30)", "api_key": MASTER}, timeout=10).json()
    assert wait_for_job(emu, running["job_id"], ("running",))["status"] == "running"
    requests.delete(f"{jobs}/{running['job_id']}", params={"api_key": MASTER}, timeout=10)
    assert wait_for_job(emu, running["job_id"], ("cancelled",))["status"] == "cancelled"

    regular = requests.post(jobs, json={"query": "SELECT 1", "api_key": REGULAR}, timeout=10)
    assert (regular.status_code, regular.json()) == (403, {"error": ["permission denied"]})
    assert requests.post(sql_url(emu), data={"q": "SELECT 1", "api_key": REGULAR}, timeout=10).status_code == 200

    too_big = requests.post(jobs, json={"query": "SELECT '" + "x" * 17000 + "'", "api_key": MASTER}, timeout=10)
    assert too_big.status_code == 400
    assert too_big.json()["error"][0].startswith("Your payload is too large: ")
    assert "Max size allowed is 16384 bytes (16kb)." in too_big.json()["error"][0]


# --- CDB_CartodbfyTable ----------------------------------------------------------------------------------


def columns(sql_client: SQLClient, table: str, schema: str = USER) -> list[tuple[str, str]]:
    rows = sql_client.send(
        "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
        f" WHERE a.attrelid = '{schema}.{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )["rows"]
    return [(row["name"], row["type"]) for row in rows]


def indexes(sql_client: SQLClient, table: str) -> set[str]:
    rows = sql_client.send(f"SELECT indexname FROM pg_indexes WHERE schemaname = '{USER}' AND tablename = '{table}'")
    return {row["indexname"] for row in rows["rows"]}


def test_cartodbfy_rewrites_a_2272_table(sql_client: SQLClient, table: str) -> None:
    sql_client.send(
        f"CREATE TABLE {table} (name text, shape geometry(Point, 2272), cartodb_id int, n numeric);"
        f" CREATE INDEX {table}_name ON {table} (name);"
        f" INSERT INTO {table} VALUES ('city hall', ST_SetSRID(ST_MakePoint(2694000, 235000), 2272), 10, 1.5),"
        f" ('nowhere', NULL, 20, 2)"
    )
    result = sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{table}')")

    assert result["rows"] == [{"cdb_cartodbfytable": table}]
    # cartodbfy first drops the CARTO triggers with DROP TRIGGER IF EXISTS: a fresh table says so in notices
    assert result["notices"] == [f'trigger "{name}" for relation "{table}" does not exist, skipping' for name in CARTO_TRIGGERS] + [
        "Column cartodb_id already exists"]
    assert columns(sql_client, table) == [
        ("cartodb_id", "integer"),
        ("the_geom", "geometry(Geometry,4326)"),
        ("the_geom_webmercator", "geometry(Geometry,3857)"),
        ("name", "text"),
        ("n", "numeric"),
    ]
    assert indexes(sql_client, table) == {f"{table}_pkey", f"{table}_the_geom_idx", f"{table}_the_geom_webmercator_idx"}
    rows = sql_client.send(
        f"SELECT cartodb_id, ST_X(the_geom) AS x, ST_Y(the_geom) AS y, ST_SRID(the_geom_webmercator) AS merc, name"
        f" FROM {table} ORDER BY cartodb_id"
    )["rows"]
    assert [row["cartodb_id"] for row in rows] == [10, 20]
    assert rows[0]["x"] == pytest.approx(-75.16, abs=0.01) and rows[0]["y"] == pytest.approx(39.95, abs=0.01)
    assert rows[0]["merc"] == 3857 and rows[1]["x"] is None

    fields = sql_client.send(f"SELECT the_geom FROM {table} LIMIT 0")["fields"]
    assert fields == {"the_geom": {"type": "geometry", "wkbtype": "Unknown", "dims": 2, "srid": 4326}}

    sql_client.send(f"INSERT INTO {table} (the_geom, name) VALUES (ST_SetSRID(ST_MakePoint(-75, 40), 4326), 'new')")
    new = sql_client.send(f"SELECT cartodb_id, ST_SRID(the_geom_webmercator) AS merc FROM {table} WHERE name = 'new'")
    assert new["rows"] == [{"cartodb_id": 21, "merc": 3857}]


def triggers(sql_client: SQLClient, table: str, schema: str = USER) -> dict[str, str]:
    rows = sql_client.send(f"SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger"
                           f" WHERE tgrelid = '{schema}.{table}'::regclass AND NOT tgisinternal")["rows"]
    return {row["tgname"]: row["def"] for row in rows}


def test_cartodbfy_adds_the_four_carto_triggers(sql_client: SQLClient, table: str, postgis_dsn: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (name text, shape geometry(Point, 2272)); INSERT INTO {table} VALUES ('a', NULL)")
    sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{USER}.{table}')")

    defs = triggers(sql_client, table)
    assert set(defs) == set(CARTO_TRIGGERS)
    assert "AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE" in defs["track_updates"] and "FOR EACH STATEMENT" in defs["track_updates"]
    assert "BEFORE INSERT OR UPDATE OF the_geom" in defs["update_the_geom_webmercator_trigger"]
    assert "FOR EACH STATEMENT" in defs["test_quota"] and f"cdb_checkquota('0.1', '-1', '{USER}')" in defs["test_quota"].lower()
    assert "FOR EACH ROW" in defs["test_quota_per_row"] and "('0.001', '-1'" in defs["test_quota_per_row"]
    # cartodb_id is bigint (nextval of the table's own sequence), as the genuine server's rewrite makes it
    assert columns(sql_client, table)[0] == ("cartodb_id", "bigint")
    # track_updates records the write; the webmercator trigger keeps the_geom_webmercator in step
    sql_client.send(f"UPDATE {table} SET the_geom = ST_SetSRID(ST_MakePoint(-75, 40), 4326)")
    row = sql_client.send(f"SELECT ST_SRID(the_geom_webmercator) AS srid FROM {table}")["rows"]
    assert row == [{"srid": 3857}]
    assert admin(postgis_dsn, f"SELECT count(*) FROM cartodb.cdb_tablemetadata WHERE tabname = '{USER}.{table}'::regclass") == [(1,)]
    # DELETE + INSERT … SELECT in one transaction (replace in place) goes through the triggers
    sql_client.send(f"BEGIN; DELETE FROM {table}; INSERT INTO {table} (name) SELECT 'b' FROM generate_series(1, 3); COMMIT;")
    assert sql_client.send(f"SELECT name, cartodb_id FROM {table} ORDER BY cartodb_id")["rows"] == [
        {"name": "b", "cartodb_id": 2}, {"name": "b", "cartodb_id": 3}, {"name": "b", "cartodb_id": 4}]


def test_quota_trigger_refuses_writes_over_the_quota(sql_client: SQLClient, table: str, postgis_dsn: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (v int); SELECT cdb_cartodbfytable('{USER}', '{USER}.{table}')")
    admin(postgis_dsn, f"SELECT cartodb.CDB_SetUserQuotaInBytes('{USER}', 1)")
    try:
        # test_quota checks with probability 0.1 per statement: enough statements make a check certain
        with pytest.raises(CartoException, match="Quota exceeded by"):
            for _ in range(200):
                sql_client.send(f"INSERT INTO {table} (v) VALUES (1)")
    finally:
        admin(postgis_dsn, f"SELECT cartodb.CDB_SetUserQuotaInBytes('{USER}', {100 * 1024**3})")


def test_cartodbfy_is_idempotent_on_a_cartodbfied_table(sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (v int); INSERT INTO {table} VALUES (1)")
    sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{table}')")
    sql_client.send(f"CREATE INDEX {table}_v ON {table} (v)")
    oid_before = sql_client.send(f"SELECT '{table}'::regclass::oid AS oid")["rows"]

    again = sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{table}')")

    assert "notices" not in again
    assert sql_client.send(f"SELECT '{table}'::regclass::oid AS oid")["rows"] == oid_before
    assert f"{table}_v" in indexes(sql_client, table)


def test_cartodbfy_without_geometry_adds_null_columns(sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (a text, b int); INSERT INTO {table} VALUES ('x', 1)")
    sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{table}')")
    assert columns(sql_client, table) == [
        ("cartodb_id", "bigint"), ("the_geom", "geometry(Geometry,4326)"),
        ("the_geom_webmercator", "geometry(Geometry,3857)"), ("a", "text"), ("b", "integer"),
    ]
    assert sql_client.send(f"SELECT * FROM {table}")["rows"] == [
        {"cartodb_id": 1, "the_geom": None, "the_geom_webmercator": None, "a": "x", "b": 1}]


def test_cartodbfy_prerequisites(sql_client: SQLClient, table: str, postgis_dsn: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (a int)")
    with pytest.raises(CartoException, match='Invalid schema name "nope"'):
        sql_client.send(f"SELECT cdb_cartodbfytable('nope', '{table}')")

    admin(postgis_dsn, f"ALTER FUNCTION {USER}._cdb_userquotainbytes() RENAME TO quota_away")
    try:
        with pytest.raises(CartoException, match="Please set user quota before cartodbfying tables."):
            sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{table}')")
    finally:
        admin(postgis_dsn, f"ALTER FUNCTION {USER}.quota_away() RENAME TO _cdb_userquotainbytes")


def test_cartodbfy_resolves_the_table_through_search_path(sql_client: SQLClient, table: str, postgis_dsn: str) -> None:
    admin(postgis_dsn, f"CREATE TABLE public.{table} (a int); ALTER TABLE public.{table} OWNER TO carto_{USER}")
    result = sql_client.send(f"SELECT cdb_cartodbfytable('{USER}', '{table}')::text AS t")
    assert result["rows"] == [{"t": table}]
    assert admin(postgis_dsn, f"SELECT to_regclass('public.{table}'), to_regclass('{USER}.{table}') IS NOT NULL") == [
        (None, True)]


# --- Injected faults ------------------------------------------------------------------------------------


def test_injected_rate_limit_and_timeout(emu: CartoEmulator, sql_client: SQLClient) -> None:
    emu.inject("query", "rate_limit", retry_after=7, limit=3)
    with pytest.raises(CartoRateLimitException) as info:
        sql_client.send("SELECT 1")
    assert (info.value.retry_after, info.value.limit, info.value.remaining, info.value.reset) == (7, 3, 0, 7)
    assert sql_client.send("SELECT 1")["rows"] == [{"?column?": 1}]  # times=1

    emu.inject("query", "statement_timeout")
    response = post_sql(emu, "SELECT 1")
    assert response.status_code == 429 and response.json()["error"] == [TIMEOUT_MESSAGE]
    assert "Retry-After" not in response.headers


def test_injected_http_errors_then_recovery(emu: CartoEmulator) -> None:
    emu.inject("query", "http_502", times=2)
    emu.inject("query", "http_503")
    emu.inject("query", "http_500")
    statuses = [post_sql(emu, "SELECT 1").status_code for _ in range(5)]
    assert statuses == [502, 502, 503, 500, 200]
    assert [r.fault for r in emu.requests] == ["http_502", "http_502", "http_503", "http_500", None]


def test_injected_fault_only_for_matching_sql(emu: CartoEmulator, sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (a int)")
    emu.inject("query", "http_500", times=None, match="cdb_cartodbfytable")
    assert post_sql(emu, "SELECT 1").status_code == 200
    assert post_sql(emu, f"SELECT CDB_CartodbfyTable('{USER}', '{table}')").status_code == 500
    assert post_sql(emu, f"SELECT CDB_CartodbfyTable('{USER}', '{table}')").status_code == 500


def test_injected_reset_and_slow(emu: CartoEmulator) -> None:
    emu.inject("query", "reset")
    with pytest.raises(requests.ConnectionError):
        post_sql(emu, "SELECT 1")

    emu.inject("query", "slow", seconds=1.5)
    with pytest.raises(requests.Timeout):
        requests.post(sql_url(emu), data={"q": "SELECT 1", "api_key": MASTER}, timeout=0.3)
    started = time.monotonic()
    emu.inject("query", "slow", seconds=0.5)
    assert post_sql(emu, "SELECT 1").status_code == 200 and time.monotonic() - started >= 0.5


def test_injected_midstream_error(emu: CartoEmulator, sql_client: SQLClient, table: str) -> None:
    emu.inject("query", "midstream_error", message="division by zero")
    response = post_sql(emu, "SELECT generate_series(1, 4) AS i")
    assert response.status_code == 200
    body = response.json()
    assert body["rows"] == [{"i": 1}, {"i": 2}] and body["error"] == ["division by zero"]

    sql_client.send(f"CREATE TABLE {table} (i int); INSERT INTO {table} SELECT generate_series(1, 4)")
    emu.inject("copy_to", "midstream_error")
    copied = requests.get(sql_url(emu, rest="/copyto"), timeout=10,
                          params={"q": f"COPY (SELECT i FROM {table} ORDER BY i) TO STDOUT", "api_key": MASTER})
    assert copied.status_code == 200
    assert copied.text.startswith("1\n2\n{") and json.loads(copied.text[4:])["error"] == [TIMEOUT_MESSAGE]


def test_real_midstream_error_keeps_the_rows(emu: CartoEmulator) -> None:
    body = post_sql(emu, "SELECT 1 AS a; SELECT 1/0 AS b").json()
    assert body["rows"] == [{"a": 1}] and body["error"] == ["division by zero"]


def test_injected_copy_abort(emu: CartoEmulator, copy_client: CopySQLClient, sql_client: SQLClient, table: str) -> None:
    sql_client.send(f"CREATE TABLE {table} (id int)")
    copy = f"COPY {table} (id) FROM STDIN WITH (FORMAT csv)"
    body = b"".join(f"{i}\n".encode() for i in range(20000))

    emu.inject("copy_from", "copy_abort_after_bytes", after_bytes=4096)
    with pytest.raises(CartoException):
        copy_client.copyfrom(copy, iter([body[i:i + 8192] for i in range(0, len(body), 8192)]), compress=False)

    emu.inject("copy_from", "copy_abort_after_bytes", after_bytes=4096, mode="error")
    aborted = requests.post(sql_url(emu, rest="/copyfrom"), params={"q": copy, "api_key": MASTER}, data=body,
                            timeout=30)
    assert aborted.status_code == 400
    assert aborted.json()["error"] == ["Connection closed by server: input data too slow"]
    assert sql_client.send(f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 0}]


def test_injected_batch_faults(emu: CartoEmulator, batch_client: BatchSQLClient) -> None:
    emu.inject("job_create", "rate_limit", retry_after=2)
    with pytest.raises(CartoRateLimitException):
        batch_client.create("SELECT 1")
    job = batch_client.create("SELECT 1")
    emu.inject("job_get", "http_503")
    with pytest.raises(CartoException):
        batch_client.read(job["job_id"])
    assert wait_for_job(emu, job["job_id"], ("done",))["status"] == "done"


def test_unknown_fault_or_group_is_rejected(emu: CartoEmulator) -> None:
    with pytest.raises(ValueError):
        emu.inject("query", "explode")
    with pytest.raises(ValueError):
        emu.inject("nope", "reset")
    with pytest.raises(ValueError):
        emu.inject("query", "copy_abort_after_bytes")


# --- Running as a process --------------------------------------------------------------------------------


def test_runs_as_a_process(postgis_dsn: str) -> None:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.emulators.carto", "--dsn", postgis_dsn, "--account", f"{USER}:{MASTER}",
         "--port", "0"],
        cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert re.match(r"^http://127\.0\.0\.1:\d+$", url)
        response = requests.get(f"{url}/user/{USER}/api/v2/sql", params={"q": "SELECT 1 AS one", "api_key": MASTER},
                                timeout=10)
        assert response.json()["rows"] == [{"one": 1}]

        injected = requests.post(f"{url}/__emulator__/faults", json={"group": "query", "fault": "http_503"}, timeout=10)
        assert injected.json() == {"ok": True}
        failed = requests.get(f"{url}/user/{USER}/api/v2/sql", params={"q": "SELECT 1", "api_key": MASTER}, timeout=10)
        assert failed.status_code == 503
        state = requests.get(f"{url}/__emulator__/state", timeout=10).json()
        assert [(r["status"], r["fault"]) for r in state["requests"]] == [(200, None), (503, "http_503")]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
