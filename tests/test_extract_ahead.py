"""Extract ahead (databridge_luigi/ahead.py): with one worker, the next due extract runs on a thread while a
load runs — once, in the process that found it due, never beside another extract."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import luigi.configuration
import pytest

import databridge_luigi.schedule as schedule
from databridge_luigi import runs
from databridge_luigi.ahead import ExtractAhead
from databridge_luigi.publish import sql
from databridge_luigi.staging import open_store
from databridge_luigi.tasks import PublishAll
from tests.killing import Worker, wait_for
from tests.pipeline import make_points_table

DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: [publicuser]
    source: {schema: gis_ahead, table: %s}
    """


# --- the bookkeeping, with real threads --------------------------------------------------------------------

def test_a_due_extract_started_ahead_runs_once_and_its_outcome_is_taken_by_the_task():
    ahead, calls = ExtractAhead(), []
    ahead.due("b", "lni__b", lambda: calls.append(threading.current_thread().name) or "staged b")

    assert ahead.start_next("loads lni__a") == "lni__b"
    assert ahead.result("b", lambda: calls.append("again") or "inline") == "staged b"
    assert calls == ["extract-ahead lni__b"]
    assert ahead.start_next("loads lni__b") is None  # nothing due any more


def test_only_one_extract_runs_ahead_and_an_extract_in_place_waits_for_it():
    ahead, release, order = ExtractAhead(), threading.Event(), []

    def slow() -> str:
        release.wait(10)
        order.append("b ahead")
        return "b"

    ahead.due("b", "lni__b", slow)
    ahead.due("c", "lni__c", lambda: order.append("c") or "c")
    assert ahead.start_next("loads lni__a") == "lni__b"
    assert ahead.start_next("loads lni__x") is None  # b still running: c is not started beside it

    in_place = threading.Thread(target=lambda: order.append(ahead.result("c", lambda: order.append("c in place") or "c")))
    in_place.start()
    in_place.join(0.3)
    assert in_place.is_alive() and order == []  # c waits for b instead of extracting beside it
    release.set()
    in_place.join(10)
    assert order == ["b ahead", "c in place", "c"]


def test_a_failed_run_ahead_is_the_tasks_failure_and_a_retry_extracts_again():
    ahead = ExtractAhead()

    def broken() -> str:
        raise RuntimeError("lni__b: source databridge: table gis_ahead.b not found")

    ahead.due("b", "lni__b", broken)
    ahead.start_next("loads lni__a")
    with pytest.raises(RuntimeError, match="table gis_ahead.b not found"):
        ahead.result("b", lambda: "must not run")
    assert ahead.result("b", lambda: "retried") == "retried"


def _start_next_in_child(ahead: ExtractAhead, answer: "multiprocessing.Queue[object]") -> None:
    answer.put(ahead.start_next("loads lni__a"))


def test_a_forked_task_process_never_runs_its_parents_extracts():
    ahead = ExtractAhead()
    ahead.due("b", "lni__b", lambda: "b")
    context = multiprocessing.get_context("fork")  # as luigi --workers N starts task processes
    answer = context.Queue()
    child = context.Process(target=_start_next_in_child, args=(ahead, answer))
    child.start()
    child.join(20)
    assert answer.get(timeout=5) is None
    assert ahead.start_next("loads lni__a") == "lni__b"  # still due here, in the process that found it due


# --- through luigi, one worker ------------------------------------------------------------------------------

def _three_datasets(pipeline, monkeypatch, missing: str = "") -> None:
    fixed = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
    monkeypatch.setattr(schedule, "utc_now", lambda: fixed)
    pipeline.source("DROP VIEW IF EXISTS gis_ahead.a_slow")  # another test's slow view over table a
    for name in ("a", "b", "c"):
        if name != missing:
            make_points_table(pipeline, "gis_ahead", name, 200 + ord(name))
        pipeline.config(f"lni__{name}", DAILY % name)
    pipeline.source(f"DROP TABLE IF EXISTS gis_ahead.{missing or 'none'}")


def _extract_threads(caplog) -> dict[str, str]:
    """dataset → the thread its extract read its rows on (the SQL source's "extracted N rows" line)."""
    return {r.getMessage().split(":")[0]: r.threadName for r in caplog.records
            if r.name == "databridge_luigi.sources.sql" and ": extracted " in r.getMessage()}


def test_with_one_worker_each_next_extract_runs_while_the_previous_load_runs(pipeline, monkeypatch, caplog):
    _three_datasets(pipeline, monkeypatch)
    caplog.set_level(logging.INFO, logger="databridge_luigi")

    assert pipeline.run(PublishAll()).ok

    for name in ("a", "b", "c"):
        assert pipeline.dest(f"SELECT count(*) FROM {name}")[0][0] == 200 + ord(name)
    threads = _extract_threads(caplog)
    assert sorted(threads) == ["lni__a", "lni__b", "lni__c"]
    assert sorted(t.startswith("extract-ahead") for t in threads.values()) == [False, True, True]  # the first one cannot be
    messages = [(r.created, r.getMessage()) for r in caplog.records]
    for started, message in messages:
        if "extracting ahead, while this worker loads" in message:
            loading = message.rsplit(" ", 1)[1]
            published = [t for t, m in messages if m.startswith(f"{loading}: published ")]
            assert published and started < published[0], message  # started during that load, not after it


def test_extract_ahead_can_be_turned_off(pipeline, monkeypatch, caplog):
    _three_datasets(pipeline, monkeypatch)
    caplog.set_level(logging.INFO, logger="databridge_luigi")
    config = luigi.configuration.get_config()
    config.set("databridge", "extract_ahead", "false")
    try:
        assert pipeline.run(PublishAll()).ok
    finally:
        config.remove_option("databridge", "extract_ahead")
    assert sorted(_extract_threads(caplog).values()) == ["MainThread"] * 3


def test_an_extract_that_fails_ahead_fails_its_own_task_with_its_own_error(pipeline, monkeypatch, caplog):
    _three_datasets(pipeline, monkeypatch, missing="b")
    caplog.set_level(logging.INFO, logger="databridge_luigi")

    run = pipeline.run(PublishAll())

    assert not run.ok
    assert pipeline.dest("SELECT count(*) FROM a")[0][0] == 200 + ord("a")
    assert pipeline.dest("SELECT count(*) FROM c")[0][0] == 200 + ord("c")
    assert pipeline.dest("SELECT to_regclass('public.b')")[0][0] is None
    assert any(r.getMessage().startswith("lni__b: extracting ahead") for r in caplog.records)  # it failed on the thread
    failures = [r for r in runs.read(open_store(pipeline.staging), "lni__b") if r.outcome == "failed"]
    assert [r.step for r in failures] == ["Extract"]  # once, reported by the task that ran ahead
    assert failures[0].error == "lni__b: source databridge: table gis_ahead.b not found or has no columns"


def test_sigterm_while_an_extract_runs_ahead_stops_the_worker_at_once(pipeline, monkeypatch, tmp_path):
    """The thread is a daemon: a worker stopped (as Batch and systemd stop it) while an extract runs ahead exits
    at once instead of waiting for the source, and nothing of that extract is staged."""
    _three_datasets(pipeline, monkeypatch)
    pipeline.source("CREATE OR REPLACE VIEW gis_ahead.a_slow AS SELECT t.* FROM gis_ahead.a t, (SELECT pg_sleep(120)) AS wait")
    pipeline.config("lni__a", DAILY % "a_slow")
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(pipeline.config_dir), DATABRIDGE_STAGING=pipeline.staging,
               DATABRIDGE_CONN_DATABRIDGE=pipeline.source_dsn, DATABRIDGE_CONN_CARTO_PHL=pipeline.dest_dsn)
    worker = Worker(env, "PublishAll", log_path=tmp_path / "worker.log")
    try:
        wait_for("lni__a extracting ahead", lambda: "lni__a: extracting ahead" in worker.output(), worker)
        wait_for("the source's query", lambda: pipeline.source(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%a_slow%' AND state = 'active' AND pid <> pg_backend_pid()"), worker)
        stopped = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        assert time.monotonic() - stopped < 20, "the worker waited for the extract running ahead"
        assert code != 0
    finally:
        if worker.alive():
            worker.kill()
        pipeline.source("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%a_slow%' AND pid <> pg_backend_pid()")
    published = [name for name in ("a", "b", "c") if pipeline.dest(f"SELECT to_regclass('public.{name}')")[0][0]]
    assert "a" not in published and published  # the loads before the signal went through
    manifests = {path.relative_to(pipeline.staging).parts[0] for path in Path(pipeline.staging).rglob("manifest.json")}
    assert {f"lni__{name}" for name in published} <= manifests and "lni__a" not in manifests


def test_the_run_record_of_a_stage_only_extract_run_ahead_has_the_extracts_own_time(pipeline, monkeypatch):
    """luigi times only the Extract's run(), which for an extract run ahead is the wait for it; the run record (the
    morning view's duration of a stage-only dataset) takes the extract's own time."""
    _three_datasets(pipeline, monkeypatch)
    pipeline.source("CREATE OR REPLACE VIEW gis_ahead.a_slow AS SELECT t.* FROM gis_ahead.a t, (SELECT pg_sleep(0.3)) AS wait")
    pipeline.config("lni__a", (DAILY % "a_slow").replace("upload_to_carto: true", "upload_to_carto: false"))
    # b's load waits ~2.5 s for a lease another host holds, so a's extract (~1 s) is done before luigi asks for it
    pipeline.dest(sql.create_lease_table("public"))
    pipeline.dest("INSERT INTO databridge_luigi_leases VALUES ('public.b', 'lni__b', 'other', 'elsewhere', 1, 'elsewhere|x|1|1', "
                  "'b__shadow_other', now(), clock_timestamp() + interval '2.5 seconds')")

    assert pipeline.run(PublishAll()).ok

    done = [r for r in runs.read(open_store(pipeline.staging), "lni__a") if r.outcome == "done"]
    assert [r.step for r in done] == ["Extract"]
    assert done[0].seconds is not None and done[0].seconds >= 0.9, done[0]  # three queries of the view, 0.3 s each


def test_an_incremental_extract_is_never_run_ahead(pipeline, monkeypatch, caplog):
    """It reads the version its destination holds, on the connection the load running beside it would be using."""
    _three_datasets(pipeline, monkeypatch)
    pipeline.source("ALTER TABLE gis_ahead.b ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now() - interval '2 hours'")
    pipeline.config("lni__b", (DAILY % "b").rstrip(" ") + "    primary_key: [objectid]\n"
                    "    change_signal: {column: updated_at, settle_seconds: 60, incremental: true}\n")
    caplog.set_level(logging.INFO, logger="databridge_luigi")

    assert pipeline.run(PublishAll()).ok

    threads = _extract_threads(caplog)
    assert threads["lni__b"] == "MainThread"
    assert threads["lni__a"].startswith("extract-ahead") or threads["lni__c"].startswith("extract-ahead")
    for name in ("a", "b", "c"):
        assert pipeline.dest(f"SELECT count(*) FROM {name}")[0][0] == 200 + ord(name)
