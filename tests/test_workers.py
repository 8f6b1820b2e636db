"""Three worker processes, one real luigid, twelve datasets: every dataset is published exactly once."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.test_luigid import LUIGID, api, luigid  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
LUIGI = str(Path(LUIGID).with_name("luigi"))


def test_three_workers_share_twelve_datasets(tmp_path, luigid, postgis_dsn):  # noqa: F811
    """Three cron wrappers standing for three machines (each its own lock and log; ``--no-lock``, since luigi's
    pid lock would otherwise stop two of them at once on this one machine) on one luigid. Each source is a view
    that waits 0.1 s per query, so no worker can take every dataset before the others start. Every dataset is
    published exactly once; every wrapper exits 0 — a worker whose tasks others ran exits luigi's 25 ("not
    granted run permission"), which the wrapper answers with ``databridge-luigi plan --check``."""
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_workers")
    try:
        with psycopg.connect(postgis_dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS gis_ops")
            for i in range(12):
                conn.execute(f"DROP VIEW IF EXISTS gis_ops.t{i:02d}; DROP TABLE IF EXISTS gis_ops.t{i:02d}_rows")
                conn.execute(f"CREATE TABLE gis_ops.t{i:02d}_rows AS SELECT g AS id, 'row ' || g AS name FROM generate_series(1, {100 + i}) g")
                conn.execute(f"CREATE VIEW gis_ops.t{i:02d} AS SELECT r.* FROM gis_ops.t{i:02d}_rows r, (SELECT pg_sleep(0.1)) AS wait")
        for i in range(12):
            path = tmp_path / "configs" / "databridge" / "ops" / f"t{i:02d}.yml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("schedule_interval: 0 * * * *\nupload_to_carto: true\ncarto_users: [publicuser]\n")
        env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=str(tmp_path / "staging"),
                   DATABRIDGE_CONN_DATABRIDGE=postgis_dsn, DATABRIDGE_CONN_CARTO_PHL=dest, CRON_PUBLISH_STATUS_PAGE="off")
        env.pop("DATABRIDGE_CONN_SLACK", None)
        machines = [tmp_path / f"machine{m}" for m in range(3)]
        workers = [subprocess.Popen([str(ROOT / "scripts" / "cron-publish.sh"), "--scheduler-host", "127.0.0.1",
                                     "--scheduler-port", str(luigid), "--no-lock"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env=dict(env, CRON_PUBLISH_LOCK=str(machine / "lock"), CRON_PUBLISH_LOG_DIR=str(machine / "log")))
                   for machine in machines]
        outcomes = [(w.wait(timeout=240), w.stdout.read() + w.stderr.read()) for w in workers]
        logs = [next((machine / "log").glob("*.log")).read_text() for machine in machines]
        for (code, output), log in zip(outcomes, logs):
            assert code == 0, output + log[-3000:]
            assert output.startswith("cron-publish: ok") or "already running (benign" in output, output
        loaders = [log.count("running   Load(") for log in logs]
        assert sum(loaders) == 12 and sum(1 for n in loaders if n) >= 2, loaders  # the work was shared
        with psycopg.connect(dest) as conn:
            markers = conn.execute("SELECT dataset_id, count(*) FROM databridge_luigi_publications GROUP BY 1 ORDER BY 1").fetchall()
            assert markers == [(f"ops__t{i:02d}", 1) for i in range(12)]
            for i in range(12):
                assert conn.execute(f"SELECT count(*) FROM t{i:02d}").fetchone()[0] == 100 + i
        done = api(luigid, "task_list", status="DONE", upstream_status="", search="")
        assert sum(1 for t in done.values() if t["name"] == "Load") == 12
        # PublishAll requires each dataset's Load itself: no Publish wrapper per dataset (with several worker
        # processes, each would be a forked process and a destination connection of its own).
        assert {t["name"] for t in done.values()} <= {"PublishAll", "Load", "Extract"}
        assert api(luigid, "task_list", status="FAILED", upstream_status="", search="") == {}
    finally:
        drop_database(dest)


def test_a_run_right_after_another_is_not_refused_by_luigid(tmp_path, luigid, postgis_dsn):  # noqa: F811
    """Two PublishAll runs a few seconds apart on one luigid, the second with a new dataset due, then two forced
    Publish runs of one dataset. luigid ignores a
    claim that a task is pending for 10 s after it was done ([scheduler] stable_done_cooldown_secs): under one
    task id for every run, the second run published its dataset and then exited 25, "PublishAll() was not
    granted run permission" (a false alarm in the cron wrapper). Each run's PublishAll is now its own task."""
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_back_to_back")
    try:
        with psycopg.connect(postgis_dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS gis_b2b")
            for name in ("first", "second"):
                conn.execute(f"DROP TABLE IF EXISTS gis_b2b.{name}")
                conn.execute(f"CREATE TABLE gis_b2b.{name} AS SELECT g AS id FROM generate_series(1, 10) g")
        env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=str(tmp_path / "staging"),
                   DATABRIDGE_CONN_DATABRIDGE=postgis_dsn, DATABRIDGE_CONN_CARTO_PHL=dest)
        command = [LUIGI, "--module", "databridge_luigi", "PublishAll", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid)]
        runs = []
        for name in ("first", "second"):
            path = tmp_path / "configs" / "databridge" / "b2b" / f"{name}.yml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("schedule_interval: 0 * * * *\nupload_to_carto: true\ncarto_users: [publicuser]\n")
            run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            runs.append(run)
            assert run.returncode == 0, run.stderr[-2000:]
        assert "was not granted run permission" not in runs[1].stderr
        with psycopg.connect(dest) as conn:
            assert conn.execute("SELECT count(*) FROM second").fetchone()[0] == 10
        done = api(luigid, "task_list", status="DONE", upstream_status="", search="PublishAll")
        assert len(done) == 2, done  # one PublishAll per run, each named by its start and a random suffix
        # The same for one dataset republished now, twice in a row (each --force is a new version).
        for _ in range(2):
            forced = subprocess.run([LUIGI, "--module", "databridge_luigi", "Publish", "--dataset-id", "b2b__first", "--force",
                                     "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid)],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert forced.returncode == 0, forced.stderr[-2000:]
        with psycopg.connect(dest) as conn:
            assert conn.execute("SELECT count(*) FROM databridge_luigi_publications WHERE dataset_id = 'b2b__first'").fetchone()[0] == 3
    finally:
        drop_database(dest)


def test_the_scheduling_process_imports_the_drivers_of_an_extract_it_will_run(tmp_path):
    """With --workers N luigi forks a process per task: the drivers must already be imported in the process that
    forks, or every task process imports SQLAlchemy again (~0.4 s of CPU each). An extract already staged
    (complete) imports nothing: a no-op run stays fast."""
    path = tmp_path / "configs" / "databridge" / "ops" / "t.yml"
    path.parent.mkdir(parents=True)
    path.write_text("schedule_interval: 0 * * * *\nupload_to_carto: true\ncarto_users: []\n")
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=str(tmp_path / "staging"))
    probe = ("import sys\nfrom databridge_luigi.tasks import Extract\n"
             "before = 'sqlalchemy' in sys.modules\n"
             "pending = not Extract(dataset_id='ops__t', version='20261201T000000Z').complete()\n"
             "print(before, pending, 'sqlalchemy.dialects.postgresql.psycopg' in sys.modules)\n"
             "print(Extract(dataset_id='ops__typo', version='20261201T000000Z').complete())\n")  # run() names the typo
    out = subprocess.run([str(Path(LUIGID).with_name("python")), "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "True", "False"], out.stderr[-2000:]
