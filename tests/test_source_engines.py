"""One source engine per URL and process (sources/sql/engines.py): the change signal, the extract and the next
dataset share a PostgreSQL backend, which comes back to the pool without the last user's session settings,
is replaced when the source dropped it, and is never shared with a forked process."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from databridge_luigi.change import extract_unless_unchanged
from databridge_luigi.config import load_datasets
from databridge_luigi.sources import extract
from databridge_luigi.sources.sql import ExtractError, engines
from databridge_luigi.sources.sql.base import sqlalchemy_url
from databridge_luigi.staging import LocalStore, StagedTable
from tests.pipeline import Pipeline, make_points_table

SETTINGS = ("statement_timeout", "TimeZone", "DateStyle", "IntervalStyle", "max_parallel_workers_per_gather", "synchronize_seqscans")


@pytest.fixture()
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgis_dsn: str):
    """Two datasets on one source (the second with a statement timeout), and a clean engine cache."""
    pipeline = Pipeline(tmp_path, postgis_dsn, postgis_dsn, monkeypatch)
    for table in ("shared_a", "shared_b"):
        make_points_table(pipeline, "gis_qa", table, 200)
    pipeline.config("qa__shared_a", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")
    pipeline.config("qa__shared_b", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\ntimeout: 7\n")
    datasets = {d.id: d for d in load_datasets(pipeline.config_dir)[0]}
    engines.close_all()
    yield pipeline, datasets
    engines.close_all()


def _stage(tmp_path: Path, dataset, dsn: str, version: str) -> StagedTable:
    staged = StagedTable(LocalStore(tmp_path / "staging"), dataset.id, version)
    extract_unless_unchanged(dataset, dsn, staged, lambda: extract(dataset, dsn, staged))
    return staged


class Backends:
    """The backend pids of every connection SQLAlchemy opens, and of every checkout."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.checked_out: list[int] = []

    def __enter__(self) -> "Backends":
        sa.event.listen(sa.pool.Pool, "connect", self._opened)
        sa.event.listen(sa.pool.Pool, "checkout", self._checked_out)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(sa.pool.Pool, "connect", self._opened)
        sa.event.remove(sa.pool.Pool, "checkout", self._checked_out)

    def _opened(self, dbapi_connection, record) -> None:
        self.opened.append(dbapi_connection.info.backend_pid)

    def _checked_out(self, dbapi_connection, record, proxy) -> None:
        self.checked_out.append(dbapi_connection.info.backend_pid)


def test_the_change_signal_and_the_extracts_of_two_datasets_share_one_backend(source, tmp_path, postgis_dsn):
    pipeline, datasets = source
    with Backends() as backends:
        first = _stage(tmp_path, datasets["qa__shared_a"], postgis_dsn, "v1")
        second = _stage(tmp_path, datasets["qa__shared_b"], postgis_dsn, "v1")
    assert first.manifest().rows == second.manifest().rows == 200
    assert first.manifest().change_signal and second.manifest().change_signal  # both read a signal first
    assert len(backends.opened) == 1, backends.opened  # was four: a signal's and an extract's for each dataset
    assert set(backends.checked_out) == set(backends.opened)


def test_a_connection_comes_back_without_the_previous_datasets_session_settings(source, tmp_path, postgis_dsn):
    """Dataset b's statement timeout and the COPY path's SETs (time zone, date style, no parallel plans) must not
    reach the next user of the pooled backend: the next dataset without a timeout, or the change signal, whose
    table identity includes the server start time as text in the session's time zone."""
    pipeline, datasets = source
    with psycopg.connect(postgis_dsn) as fresh:
        defaults = {name: fresh.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS}
    assert defaults["statement_timeout"] == "0"
    with Backends() as backends:
        _stage(tmp_path, datasets["qa__shared_b"], postgis_dsn, "v1")
        with engines.source_engine(sqlalchemy_url(postgis_dsn)).connect() as conn:
            after = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in SETTINGS}
    assert len(set(backends.checked_out)) == 1  # the same backend: the extract's settings were on it
    assert after == defaults


def test_the_dataset_timeout_still_applies_on_a_reused_connection(source, tmp_path, postgis_dsn):
    pipeline, datasets = source
    _stage(tmp_path, datasets["qa__shared_a"], postgis_dsn, "v1")  # leaves a pooled connection without a timeout
    seen: list[str] = []

    def timeout_at_checkin(dbapi_connection, record) -> None:  # before the pool's RESET ALL (insert=True)
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        seen.append(dbapi_connection.execute("SHOW statement_timeout").fetchone()[0])
        dbapi_connection.autocommit = autocommit

    engine = engines.source_engine(sqlalchemy_url(postgis_dsn))
    sa.event.listen(engine, "checkin", timeout_at_checkin, insert=True)
    try:
        extract(datasets["qa__shared_b"], postgis_dsn, StagedTable(LocalStore(tmp_path / "staging"), "qa__shared_b", "v2"))
    finally:
        sa.event.remove(engine, "checkin", timeout_at_checkin)
    # Every use after the adapter is chosen (catalog, counts, COPY); the choice itself is one to_regclass().
    assert seen[0] == "0" and set(seen[1:]) == {"7s"} and len(seen) >= 4, seen


def test_a_backend_the_source_dropped_between_two_datasets_is_replaced(source, tmp_path, postgis_dsn):
    """A source restarted (or an idle session killed) between two datasets of one run costs a reconnect."""
    pipeline, datasets = source
    with Backends() as backends:
        _stage(tmp_path, datasets["qa__shared_a"], postgis_dsn, "v1")
        pipeline.source("SELECT pg_terminate_backend(%s)", (backends.opened[0],))
        assert _stage(tmp_path, datasets["qa__shared_b"], postgis_dsn, "v1").manifest().rows == 200
    assert len(backends.opened) == 2


def test_a_failed_extract_does_not_leave_its_connection_to_the_next(source, tmp_path, postgis_dsn):
    pipeline, datasets = source
    with Backends() as backends:
        _stage(tmp_path, datasets["qa__shared_a"], postgis_dsn, "v1")
        pipeline.source("ALTER TABLE gis_qa.shared_b RENAME TO shared_b_gone")
        try:
            with pytest.raises(ExtractError, match="qa__shared_b"):
                extract(datasets["qa__shared_b"], postgis_dsn, StagedTable(LocalStore(tmp_path / "staging"), "qa__shared_b", "v1"))
        finally:
            pipeline.source("ALTER TABLE gis_qa.shared_b_gone RENAME TO shared_b")
        _stage(tmp_path, datasets["qa__shared_a"], postgis_dsn, "v2")
    assert len(backends.opened) == 2 and backends.opened[0] != backends.opened[1]


def _extract_in_child(dataset, dsn: str, root: str, queue) -> None:
    staged = StagedTable(LocalStore(Path(root)), dataset.id, "child")
    queue.put(extract(dataset, dsn, staged).rows)


def test_a_forked_task_process_opens_its_own_connection_and_leaves_the_parents_alone(source, tmp_path, postgis_dsn):
    """luigi --workers N forks a process per task: a child must neither use nor close the parent's backend."""
    pipeline, datasets = source
    dataset = datasets["qa__shared_a"]
    with Backends() as backends:
        _stage(tmp_path, dataset, postgis_dsn, "v1")
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_extract_in_child, args=(dataset, postgis_dsn, str(tmp_path / "staging"), queue))
        child.start()
        child.join(60)
        assert child.exitcode == 0 and queue.get(timeout=5) == 200
        _stage(tmp_path, dataset, postgis_dsn, "v2")
    assert len(backends.opened) == 1  # the parent's backend, alive after the child exited (pids: the parent's only)
    assert set(backends.checked_out) == {backends.opened[0]}
