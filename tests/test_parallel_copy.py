"""The PostGIS transport's COPY over two connections (publish/parallel_copy.py), on a real PostGIS.

A big staged table is COPYed by two backends at once, fed record-aligned blocks of the staged CSV. The tests
shrink the threshold and the block size so that small tables take that path and nearly every record (quoted
values with newlines, quotes and commas) straddles a block boundary, then check: the rows are exactly those
of a one-connection load; both connections really carried rows and both ran with the main session's settings
(seen from inside the server); a bad value gives the same "at staged row N, column c" as one connection and
leaves the live table as it was; a statement timeout stops both streams promptly; the one-connection fallbacks
(no second connection, an overlong record) still load everything.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import random
import re
import signal
import time

import psycopg
import pytest

from databridge_luigi.config import Registry
from databridge_luigi.connections import resolve
from databridge_luigi.publish import open_transport, parallel_copy, postgis
from databridge_luigi.publish.postgis import PostgisError, PostgisTransport
from databridge_luigi.publish.protocol import Loader, LoadError, _timed_out
from databridge_luigi.schema import Column, TableSchema
from databridge_luigi.sources import extract
from databridge_luigi.staging import LocalStore, StagedTable, open_store
from tests.conftest import ensure_role
from tests.test_kill import dest_dsn, source_dsn  # noqa: F401  (fixtures: a source database per module, a destination per test)

CONFIG = "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\nrow_count_tolerance: 100\n"
ROWS = 1500
# Values that end a CSV line inside a quoted value, or look like the end of one.
AWKWARD = ['a\nb', 'quote " inside', '""', '"\n"', 'comma, and\nnewline', '\n', 'x"\n,"y', ',,', 'é\r\nü', '']


@pytest.fixture()
def parallel(monkeypatch):
    """Every staged table takes the two-connection path, cut into blocks of a few bytes."""
    monkeypatch.setattr(postgis, "PARALLEL_COPY_MIN_BYTES", 0)
    monkeypatch.setattr(parallel_copy, "BLOCK_SIZE", 7)


def publish(pipeline, dataset_id: str, version: str) -> PostgisTransport:
    """Extract then load as the tasks do; returns the (closed) transport to read its copy_streams."""
    pipeline.reset()
    dataset = Registry(pipeline.config_dir).get(dataset_id)
    staged = StagedTable(open_store(pipeline.staging), dataset.id, version)
    extract(dataset, resolve(dataset.source_conn), staged)
    transport = open_transport(dataset.dest_conn)
    try:
        Loader(dataset, transport).load(staged, force=True)
    finally:
        transport.close()
    assert isinstance(transport, PostgisTransport)
    return transport


def awkward_source(pipeline, bad_at: int | None = None) -> None:
    """gis_par.notes: ids 1..ROWS in order, awkward text, a number as text and a point."""
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_par")
    pipeline.source("DROP TABLE IF EXISTS gis_par.notes")
    pipeline.source("CREATE TABLE gis_par.notes (id integer, note text, code text, shape geometry(Point, 2272))")
    pipeline.source("INSERT INTO gis_par.notes SELECT g, (%s::text[])[1 + g %% %s] || g, (g * 10)::text, "
                    "ST_SetSRID(ST_MakePoint(2690000 + g, 230000 + g), 2272) FROM generate_series(1, %s) g ORDER BY g",
                    (AWKWARD, len(AWKWARD), ROWS))
    if bad_at is not None:  # rewrite the table in id order, so the bad row is staged row `bad_at`
        pipeline.source("CREATE TABLE gis_par.notes2 AS SELECT id, note, CASE WHEN id = %s THEN 'thirty' ELSE code END AS code, shape "
                        "FROM gis_par.notes ORDER BY id", (bad_at,))
        pipeline.source("DROP TABLE gis_par.notes")
        pipeline.source("ALTER TABLE gis_par.notes2 RENAME TO notes")


def dest_rows(pipeline) -> list[tuple]:
    return pipeline.dest("SELECT id, note, code, ST_AsEWKB(shape) FROM notes ORDER BY id")


# --- the splitter, alone ---------------------------------------------------------------------------------

def test_blocks_are_whole_records_whatever_the_block_size():
    rng = random.Random(15)
    pieces = ["a", ",", '"', "\n", "\r", "é", '""', '\n"\n', "  "]
    for trial in range(400):
        rows = [["id", 'na"me', "x"]] + [[str(i), *("".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(2))]
                                         for i in range(rng.randint(0, 40))]
        out = io.StringIO()
        csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
        data = out.getvalue().encode()
        header, blocks = parallel_copy.header_and_blocks(io.BytesIO(data), rng.randint(1, 40))
        blocks = list(blocks)
        assert header + b"".join(blocks) == data
        assert list(csv.reader(io.StringIO(header.decode(), newline=""))) == rows[:1]
        parsed = [row for block in blocks for row in csv.reader(io.StringIO(block.decode(), newline=""), strict=True)]
        assert parsed == rows[1:], trial


def test_a_record_longer_than_the_limit_is_refused_not_buffered():
    data = b'"h"\n"' + b"x\n" * 100 + b'"\n'
    with pytest.raises(parallel_copy.RecordTooLong):
        list(parallel_copy.record_blocks(io.BytesIO(data), 8, max_record=64))


# --- through the load protocol ---------------------------------------------------------------------------

def test_a_big_table_loads_over_two_connections_with_the_rows_of_one(pipeline, parallel, monkeypatch):
    awkward_source(pipeline)
    pipeline.config("par__notes", CONFIG)
    two = publish(pipeline, "par__notes", "v1")
    # Two COPYs ran and committed, and together hold every row. How the fixture's one-record blocks (7 bytes) split
    # between them is the GIL's call: a stream thread can lose every race for the shared queue to the other for
    # the whole copy (seen once in CI: 0 and 1500). Real blocks are 1 MiB: each write is long enough for the other
    # stream to take the next one.
    assert len(two.copy_streams) == 2 and sum(two.copy_streams) == ROWS, two.copy_streams
    over_two = dest_rows(pipeline)
    source = pipeline.source("SELECT id, note, code, ST_AsEWKB(shape) FROM gis_par.notes ORDER BY id")
    assert over_two == source

    monkeypatch.setattr(postgis, "PARALLEL_COPY_MIN_BYTES", 10**12)
    one = publish(pipeline, "par__notes", "v2")
    assert one.copy_streams == (ROWS,)
    assert dest_rows(pipeline) == over_two


def test_a_small_table_stays_on_one_connection(pipeline):
    awkward_source(pipeline)
    pipeline.config("par__notes", CONFIG)
    assert publish(pipeline, "par__notes", "v1").copy_streams == (ROWS,)  # well under PARALLEL_COPY_MIN_BYTES


def _refusal(pipeline, version: str) -> str:
    before = pipeline.table_digest("notes")
    with pytest.raises(LoadError) as caught:
        publish(pipeline, "par__notes", version)
    assert pipeline.table_digest("notes") == before
    assert pipeline.dest("SELECT relname FROM pg_class WHERE relname LIKE 'notes__shadow%'") == []
    return re.sub(r"__shadow_\w+", "__shadow_<run>", str(caught.value))


def test_a_bad_value_names_the_same_staged_row_as_one_connection(pipeline, parallel, monkeypatch, caplog):
    awkward_source(pipeline)
    path = pipeline.config("par__notes", CONFIG + "schema_override: notes.schema.json\n")
    path.with_name("notes.schema.json").write_text('{"fields": [{"name": "code", "type": "integer"}]}')
    publish(pipeline, "par__notes", "v1")
    bad_at = ROWS * 3 // 4
    awkward_source(pipeline, bad_at=bad_at)

    with caplog.at_level(logging.INFO, logger="databridge_luigi.publish.postgis"):
        over_two = _refusal(pipeline, "v2")
    assert "parallel COPY failed" in caplog.text  # the two-connection COPY ran and failed first
    # PostgreSQL numbers physical lines (a newline inside a quoted value counts; a record is numbered by its
    # last line); the message names the staged row, record `bad_at` — exactly as on one connection.
    newlines = pipeline.source("SELECT sum(length(note) - length(replace(note, E'\\n', ''))) FROM gis_par.notes WHERE id <= %s", (bad_at,))[0][0]
    line = 1 + bad_at + newlines
    assert newlines > 0 and f"at staged row {bad_at}, column code failed" in over_two, over_two
    assert f"line {line}, column code" in over_two and "thirty" in over_two

    monkeypatch.setattr(postgis, "PARALLEL_COPY_MIN_BYTES", 10**12)
    over_one = _refusal(pipeline, "v3")
    assert over_two == over_one.replace("v3", "v2")


# --- the transport's contract ----------------------------------------------------------------------------

def _staged(tmp_path, rows: int, width: int = 1) -> StagedTable:
    staged = StagedTable(LocalStore(tmp_path / "staging"), "par__t", "v1")
    schema = TableSchema((Column("id", "integer"), Column("note", "text")))
    with staged.writer() as writer:
        writer.write_header(["id", "note"])
        writer.write_rows([str(i), f"row {i}\n" + "x" * width] for i in range(1, rows + 1))
        writer.finish(schema, {}, "2026-11-24T00:00:00+00:00")
    return staged


COPY = 'COPY public.t (id, note) FROM STDIN WITH (FORMAT csv, HEADER true)'


@pytest.fixture()
def dest(fresh_postgis_dsn):
    with psycopg.connect(fresh_postgis_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id integer, note text)")
        yield fresh_postgis_dsn, conn


def test_every_connection_runs_with_the_sessions_settings(tmp_path, dest, parallel):
    """Seen from inside the server: a trigger records the backend and its settings for each row."""
    dsn, conn = dest
    conn.execute("CREATE TABLE seen (pid int, statement_timeout text, app text, mwm text, n bigint, PRIMARY KEY (pid, statement_timeout, app, mwm))")
    conn.execute("CREATE FUNCTION note_session() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "INSERT INTO seen VALUES (pg_backend_pid(), current_setting('statement_timeout'), current_setting('application_name'), "
                 "current_setting('maintenance_work_mem'), 1) ON CONFLICT (pid, statement_timeout, app, mwm) DO UPDATE SET n = seen.n + 1; "
                 "RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER note_session BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION note_session()")
    transport = PostgisTransport("dest", dsn)
    try:
        transport.query("SET statement_timeout = '4321ms'")  # as Loader._set_timeout does
        assert transport.copy_in(COPY, _staged(tmp_path, 400)) == 400
        main_pid = transport.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    finally:
        transport.close()
    seen = conn.execute("SELECT pid, statement_timeout, app, mwm, n FROM seen ORDER BY pid").fetchall()
    assert len(seen) == 2, seen  # two backends, each with one set of settings
    assert {row[1:4] for row in seen} == {("4321ms", "databridge-luigi", "256MB")}
    assert main_pid in {row[0] for row in seen} and sum(row[4] for row in seen) == 400
    assert all(row[4] > 0 for row in seen)
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchone() == (400, 400)


def test_a_statement_timeout_stops_both_streams_promptly(tmp_path, dest, parallel):
    dsn, conn = dest
    conn.execute("CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER slow_row BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow_row()")
    staged = _staged(tmp_path, 2000)  # 10 s of triggers: 5 s per stream
    transport = PostgisTransport("dest", dsn)
    try:
        transport.query("SET statement_timeout = '700ms'")
        started = time.monotonic()
        with pytest.raises(PostgisError) as caught:
            transport.copy_in(COPY, staged)
        elapsed = time.monotonic() - started
        main_pid = transport.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    finally:
        transport.close()
    others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'databridge-luigi' AND pid <> %s"
    deadline = time.monotonic() + 5  # a closed connection's backend leaves pg_stat_activity as it exits
    while (still := conn.execute(others, (main_pid,)).fetchone()[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _timed_out(caught.value), caught.value  # what Loader turns into "timed out: … timeout of Ns"
    assert "while running: COPY public.t" in str(caught.value)
    assert elapsed < 4.0, f"{elapsed:.1f}s: a stream ran on after the other timed out (no retry on one connection either)"
    assert still == 0, "the second connection was left open"
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_no_second_connection_means_one_connection(tmp_path, dest, parallel, caplog):
    """A role at its connection limit: the load goes on over the one connection it has."""
    dsn, conn = dest
    ensure_role("one_conn")
    conn.execute("ALTER ROLE one_conn LOGIN CONNECTION LIMIT 1")
    conn.execute("GRANT INSERT, SELECT ON t TO one_conn")
    transport = PostgisTransport("dest", dsn.replace("postgres@", "one_conn@"))
    try:
        with caplog.at_level(logging.WARNING, logger="databridge_luigi.publish.postgis"):
            assert transport.copy_in(COPY, _staged(tmp_path, 300)) == 300
    finally:
        transport.close()
    assert transport.copy_streams == (300,)
    assert "no second connection for a parallel COPY" in caplog.text
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 300


def test_an_overlong_record_falls_back_to_one_connection(tmp_path, dest, parallel, monkeypatch):
    dsn, conn = dest
    monkeypatch.setattr(parallel_copy, "MAX_RECORD", 1000)
    transport = PostgisTransport("dest", dsn)
    try:
        assert transport.copy_in(COPY, _staged(tmp_path, 50, width=3000)) == 50
    finally:
        transport.close()
    assert transport.copy_streams == (50,)
    assert conn.execute("SELECT count(*), min(length(note)) FROM t").fetchone() == (50, len("row 1\n") + 3000)


# --- a real worker process ---------------------------------------------------------------------------------

def test_sigterm_during_a_parallel_copy_cancels_both_copies_on_the_server(tmp_path, source_dsn, dest_dsn):
    """At the default threshold, in a real luigi process: the server shows two COPYs into the shadow at once;
    SIGTERM stops both on the server (none left running), drops the shadow and releases the lease."""
    from tests.killing import Activity, markers, wait_for
    from tests.test_load_concurrency import V_A, V_B, setup_case

    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=150_000, payload_md5s=4)  # ~28 MB of CSV: above 16 MiB
    before = case.live()
    case.stage(V_B, 150_000, generation=2, payload_md5s=4)
    activity = Activity(dest_dsn)
    try:
        loader = case.publish(V_B)
        def two_copies() -> list[tuple] | None:
            found = activity.find("COPY %__shadow%FROM STDIN%")
            return found if len(found) == 2 else None

        copies = wait_for("two COPYs into the shadow at once", two_copies, loader)
        os.kill(loader.pid, signal.SIGTERM)
        loader.wait(30)
        still = activity.conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'active'",
                                      ([row[0] for row in copies],)).fetchall()
        assert still == [], "a COPY is still running on the server after the worker stopped"
    finally:
        activity.close()
    assert "stopped by SIGTERM" in loader.output()
    assert case.live() == before and case.shadows() == [] and case.leases() == []
    assert [m[0] for m in markers(dest_dsn, case.dataset_id)] == [V_A]


# --- the table a COPY fills, created in the COPY's own transaction -----------------------------------------

CREATE_NEW = "CREATE TABLE public.t_new (id integer, note text)"
COPY_NEW = COPY.replace("public.t ", "public.t_new ")


def _asking_at_first_read(staged: StagedTable, dsn: str, answers: list[bool]) -> None:
    """While the COPY reads the staged CSV, another session asks whether public.t_new exists (once)."""
    original = staged.open_csv

    @contextlib.contextmanager
    def open_csv():  # type: ignore[no-untyped-def]
        with original() as data:
            class Reader:
                def read(self, size: int = -1) -> bytes:
                    if not answers:
                        with psycopg.connect(dsn, autocommit=True) as other:
                            answers.append(other.execute("SELECT to_regclass('public.t_new') IS NOT NULL").fetchone()[0])
                    return data.read(size)
            yield Reader()

    staged.open_csv = open_csv  # type: ignore[method-assign]


def _copy_new_table(tmp_path, dsn: str) -> tuple[list[bool], tuple[int, ...]]:
    """COPY 300 staged rows into public.t_new, created by copy_in; returns whether another session saw the table
    at the COPY's first read, and the rows each connection carried."""
    staged, answers = _staged(tmp_path, 300), []
    _asking_at_first_read(staged, dsn, answers)
    transport = PostgisTransport("dest", dsn)
    try:
        assert transport.copy_in(COPY_NEW, staged, create=CREATE_NEW) == 300
        return answers, transport.copy_streams
    finally:
        transport.close()


def test_the_table_a_copy_fills_is_seen_by_no_one_until_the_copy_commits(tmp_path, dest):
    dsn, conn = dest
    answers, _ = _copy_new_table(tmp_path, dsn)
    assert answers == [False]  # mid-COPY, another session saw no table
    assert conn.execute("SELECT count(*) FROM t_new").fetchone()[0] == 300


def test_a_copy_that_fails_leaves_no_table_behind(tmp_path, dest):
    dsn, conn = dest
    transport = PostgisTransport("dest", dsn)
    try:
        with pytest.raises(PostgisError, match="invalid input syntax for type integer"):
            transport.copy_in(COPY_NEW, _staged(tmp_path, 300), create=CREATE_NEW.replace("note text", "note integer"))
    finally:
        transport.close()
    assert conn.execute("SELECT to_regclass('public.t_new')").fetchone()[0] is None


def test_over_two_connections_the_table_is_created_and_committed_first(tmp_path, dest, parallel):
    dsn, conn = dest
    answers, streams = _copy_new_table(tmp_path, dsn)
    assert len(streams) == 2
    assert answers == [True]  # the second connection must see it: it exists before the rows
    assert conn.execute("SELECT count(*) FROM t_new").fetchone()[0] == 300
