"""The daily loop as a user runs it (issue 12): the ``luigi`` command from any directory, a broken config
among good ones, and one-line errors. Real subprocesses, a real PostgreSQL destination, no luigi.cfg in
the working directory unless a test puts one there."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.sample_databridge import build as build_sample
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.test_batch_submit import batch_setup, sent, workspace  # noqa: F401  (fixtures)
from tests.test_carto_transport import carto_db, emu  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LUIGI = str(BIN / "luigi")
EXAMPLES = ROOT / "configs" / "examples"
OK_BODY = "upload_to_carto: true\ncarto_users: []\n"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRIDGE_", "LUIGI_"))}
    env.update(extra)
    return env


def luigi(cwd: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([LUIGI, "--module", "databridge_luigi", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture()
def demo(tmp_path):
    """The example configs against a sample SQLite source and a fresh PostGIS database, all absolute paths."""
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_loop")
    sample = build_sample(tmp_path / "databridge.sqlite", rows=50)
    env = clean_env(DATABRIDGE_CONFIG_DIR=str(EXAMPLES), DATABRIDGE_STAGING=str(tmp_path / "staging"),
                    DATABRIDGE_CONN_DATABRIDGE=f"sqlite:///{sample}", DATABRIDGE_CONN_CARTO_PHL=dest)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    yield env, elsewhere, dest
    drop_database(dest)


# --- 1. exit codes from any working directory --------------------------------------------------------------

def test_failures_exit_non_zero_outside_the_checkout(demo):
    env, elsewhere, _ = demo
    assert not (elsewhere / "luigi.cfg").exists()
    unknown = luigi(elsewhere, env, "Publish", "--dataset-id", "demo__violatons", "--local-scheduler")
    assert unknown.returncode == 35, unknown.stderr[-2000:]
    assert "did you mean 'demo__violations'" in unknown.stderr
    broken_source = dict(env, DATABRIDGE_CONN_DATABRIDGE=f"sqlite:///{elsewhere}/missing-dir/none.sqlite")
    extract = ("Extract", "--dataset-id", "demo__permit_types", "--version", "20261124T000000Z", "--local-scheduler")
    failed = luigi(elsewhere, broken_source, *extract)
    assert failed.returncode == 30, failed.stderr[-2000:]  # a failed Extract
    ok = luigi(elsewhere, env, *extract)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_a_configured_retcode_wins_over_the_package_default(demo, tmp_path):
    env, elsewhere, _ = demo
    cfg = tmp_path / "site.cfg"
    cfg.write_text("[retcode]\nscheduling_error = 7\n")
    result = luigi(elsewhere, dict(env, LUIGI_CONFIG_PATH=str(cfg)), "Publish", "--dataset-id", "demo__nope", "--local-scheduler")
    assert result.returncode == 7, result.stderr[-2000:]


def test_no_scheduler_fails_in_seconds_with_a_hint(demo):
    env, elsewhere, _ = demo
    with __import__("socket").socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = luigi(elsewhere, env, "Publish", "--dataset-id", "demo__violations", "--force",
                   "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 35, result.stderr[-2000:]
    assert elapsed < 15
    assert f"no luigi scheduler at http://127.0.0.1:{port}" in result.stderr
    assert "--local-scheduler" in result.stderr and "scripts/luigid.sh" in result.stderr
    assert len(result.stderr.splitlines()) <= 3, result.stderr
    assert "Traceback" not in result.stderr


# --- 2 and 5. a broken file among good ones; the morning view ----------------------------------------------

SCRIPT = str(BIN / "databridge-luigi")
MISSING_SOURCE = "schedule_interval: 0 6 * * *\nupload_to_carto: true\ncarto_users: []\nsource: {schema: main, table: no_such_table}\n"
BAD_CRON = "schedule_interval: 61 * * * *\nupload_to_carto: true\ncarto_users: []\n"


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def morning(demo, tmp_path):
    """The examples plus a dataset whose source table is missing and a file with a bad cron, after one
    PublishAll run with the local scheduler (as under cron): three published, one failed, one broken."""
    import shutil

    env, elsewhere, dest = demo
    configs = tmp_path / "cfg"
    shutil.copytree(EXAMPLES, configs)
    (configs / "databridge/demo/missing_source.yml").write_text(MISSING_SOURCE)
    (configs / "databridge/demo/bad_cron.yml").write_text(BAD_CRON)
    env = dict(env, DATABRIDGE_CONFIG_DIR=str(configs))
    run = luigi(elsewhere, env, "PublishAll", "--local-scheduler")
    return env, elsewhere, dest, configs, run


def test_publish_all_publishes_every_valid_dataset_despite_a_broken_file(morning):
    env, elsewhere, dest, configs, run = morning
    assert run.returncode == 30, run.stderr[-3000:]  # failed items: the missing source and the broken file
    import psycopg

    with psycopg.connect(dest) as conn:
        published = sorted(r[0] for r in conn.execute("SELECT dataset_id FROM databridge_luigi_publications"))
    assert published == ["demo__permit_types", "demo__violations", "demo__zoning_districts"]
    assert f"{configs}/databridge/demo/bad_cron.yml: schedule_interval: not a valid cron expression" in run.stderr
    assert "BrokenConfig(" in run.stderr  # a failed item of its own in luigi's summary


def test_status_shows_fresh_failing_and_broken_and_exits_non_zero(morning):
    import json

    env, elsewhere, dest, configs, run = morning
    result = cli(elsewhere, env, "status", "--json")
    assert result.returncode == 1, result.stderr
    rows = {r["dataset_id"]: r for r in json.loads(result.stdout)["datasets"]}
    assert {k: v["state"] for k, v in rows.items()} == {
        "demo__permit_types": "fresh", "demo__violations": "fresh", "demo__zoning_districts": "fresh",
        "demo__missing_source": "failing", "demo__bad_cron": "broken config"}
    violations = rows["demo__violations"]
    assert violations["rows"] == 50 and violations["changed"] is True and violations["last_version"] == violations["due_version"]
    assert violations["seconds"] is not None and violations["seconds"] > 0
    assert violations["next_due"] > violations["published_at"]
    failure = rows["demo__missing_source"]["last_failure"]
    assert failure["step"] == "Extract" and "no_such_table" in failure["error"] and "\n" not in failure["error"]
    assert "schedule_interval" in rows["demo__bad_cron"]["problem"]
    assert dest.rsplit("@", 1)[0] not in result.stdout  # no connection URL

    text = cli(elsewhere, env, "status")
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0].split()[:2] == ["DATASET", "STATE"]
    assert any(line.startswith("demo__missing_source") and " failing " in line and "Extract [" in line for line in lines)
    assert "5 dataset(s): 1 broken config, 1 failing, 3 fresh" in text.stdout
    assert max(len(line) for line in lines if not line.startswith("[")) < 160

    one = cli(elsewhere, env, "status", "demo__violations")
    assert one.returncode == 0 and "demo__violations" in one.stdout and "demo__missing_source" not in one.stdout


def test_history_lists_versions_and_failures(morning):
    env, elsewhere, dest, configs, run = morning
    forced = luigi(elsewhere, env, "Publish", "--dataset-id", "demo__violations", "--force", "--local-scheduler")
    assert forced.returncode == 0, forced.stderr[-2000:]
    result = cli(elsewhere, env, "history", "demo__violations")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "demo__violations: 2 run(s)"
    assert [line.split()[3] for line in lines[2:]] == ["published", "published"]
    assert all(" 50 " in line for line in lines[2:])
    failed = cli(elsewhere, env, "history", "demo__missing_source")
    assert failed.returncode == 0 and "failed at Extract" in failed.stdout and "no_such_table" in failed.stdout


# --- 3. a user's error is one or two lines ---------------------------------------------------------------

def assert_short(result: subprocess.CompletedProcess, *expected: str) -> None:
    """No traceback; each expected text on one line, right under luigi's own line about the task."""
    assert "Traceback" not in result.stderr and 'File "' not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    for text in expected:
        hits = [i for i, line in enumerate(lines) if text in line]
        assert hits, (text, result.stderr[-3000:])
        before = lines[hits[0] - 1]
        assert before.startswith(("WARNING: Will not run", "ERROR: [pid")) or text in before, before


def test_user_errors_are_two_lines_without_traceback(demo, tmp_path):
    env, elsewhere, _ = demo
    configs = tmp_path / "cfg"
    (configs / "databridge/demo").mkdir(parents=True)
    (configs / "databridge/demo/by_hand.yml").write_text("schedule_interval: false\n" + OK_BODY + "source: {schema: main, table: violations}\n")
    env = dict(env, DATABRIDGE_CONFIG_DIR=str(configs))
    unknown = luigi(elsewhere, env, "Publish", "--dataset-id", "demo__by_hnd", "--local-scheduler")
    assert unknown.returncode == 35
    assert_short(unknown, f"KeyError: no dataset 'demo__by_hnd' in {configs}; did you mean 'demo__by_hand'?")
    manual = luigi(elsewhere, env, "Publish", "--dataset-id", "demo__by_hand", "--local-scheduler")
    assert manual.returncode == 35
    assert_short(manual, "demo__by_hand is a manual dataset (schedule_interval: false); publish it with --force or --version")
    bad_version = luigi(elsewhere, env, "Publish", "--dataset-id", "demo__by_hand", "--version", "yesterday", "--local-scheduler")
    assert bad_version.returncode == 35
    assert_short(bad_version, "version must look like 20261124T110400Z, got 'yesterday'")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    staging = luigi(elsewhere, dict(env, DATABRIDGE_STAGING=str(blocker / "staging")), "Publish", "--dataset-id", "demo__by_hand",
                    "--force", "--local-scheduler")
    assert staging.returncode in (30, 35)
    assert_short(staging, f"Not a directory: '{blocker}/staging/demo__by_hand/")
    debug = luigi(elsewhere, dict(env, DATABRIDGE_DEBUG="1"), "Publish", "--dataset-id", "demo__by_hnd", "--local-scheduler")
    assert debug.returncode == 35 and "Traceback (most recent call last)" in debug.stderr


def test_user_names_are_redacted_alike_for_sources_and_destinations(demo):
    """A URL whose user name is its only credential has it masked wherever it shows, source or destination;
    a user with a password is shown, wherever it shows."""
    env, elsewhere, _ = demo
    extract = ("Extract", "--dataset-id", "demo__violations", "--version", "20261124T000000Z", "--local-scheduler")
    publish = ("Publish", "--dataset-id", "demo__violations", "--force", "--local-scheduler")
    for user, password, shown in (("tokenlike_user_4411", "", False), ("named_user_4412", ":pw-77x", True)):
        url = f"postgresql://{user}{password}@127.0.0.1:5432/postgres"
        source = luigi(elsewhere, dict(env, DATABRIDGE_CONN_DATABRIDGE=url), *extract)
        destination = luigi(elsewhere, dict(env, DATABRIDGE_CONN_CARTO_PHL=url), *publish)
        assert source.returncode == 30 and destination.returncode == 35
        for result in (source, destination):
            assert 'FATAL:  role "' in result.stderr, result.stderr[-2000:]
            assert (user in result.stderr) is shown, result.stderr[-2000:]
            assert "pw-77x" not in result.stderr


def test_a_destination_without_postgis_says_what_to_do(demo):
    import psycopg

    from tests.conftest import ADMIN_DSN, _dsn_for

    env, elsewhere, _ = demo
    name = f"dbl_nogis_{os.getpid()}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        no_gis = dict(env, DATABRIDGE_CONN_CARTO_PHL=_dsn_for(name))
        result = luigi(elsewhere, no_gis, "Publish", "--dataset-id", "demo__violations", "--local-scheduler")
        assert result.returncode == 30, result.stderr[-2000:]
        hint = "hint: the destination database has no PostGIS: CREATE EXTENSION postgis there"
        assert_short(result, hint)
        status = cli(elsewhere, no_gis, "status", "demo__violations")
        assert status.returncode == 1 and " failing " in status.stdout and hint in status.stdout, status.stdout
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_each_broken_file_is_one_slack_alert(demo, tmp_path):
    import shutil

    from tests.emulators.slack import SlackEmulator

    env, elsewhere, _ = demo
    configs = tmp_path / "cfg"
    shutil.copytree(EXAMPLES, configs)
    (configs / "databridge/demo/bad_cron.yml").write_text(BAD_CRON)
    (configs / "databridge/demo/typo.yml").write_text("schedule_intervall: 0 6 * * *\n" + OK_BODY)
    with SlackEmulator() as slack:
        slack.add_webhook("/services/T0/B0/loop")
        run = luigi(elsewhere, dict(env, DATABRIDGE_CONFIG_DIR=str(configs), DATABRIDGE_CONN_SLACK=f"{slack.url}/services/T0/B0/loop"),
                    "PublishAll", "--local-scheduler")
        assert run.returncode == 30, run.stderr[-2000:]
        texts = sorted(m["text"] for m in slack.messages)
    assert len(texts) == 2, texts
    assert "demo__bad_cron" in texts[0] and "bad_cron.yml: schedule_interval: not a valid cron expression" in texts[0]
    assert "demo__typo" in texts[1] and "typo.yml: schedule_intervall: unknown key" in texts[1]


def test_submit_sends_the_valid_datasets_and_names_the_broken_file(workspace, sent):  # noqa: F811
    from tests.test_batch_submit import submit

    broken = workspace["root"] / "configs/databridge/lni/broken.yml"
    broken.write_text(BAD_CRON)
    result = submit(workspace, "--all", "--no-wait")
    assert result.returncode == 1, result.stdout + result.stderr
    from databridge_luigi.batch import job_name

    assert sorted(body["jobName"] for body in sent) == sorted(job_name(i) for i in ("lni__permits", "lni__violations"))
    assert f"{broken}: schedule_interval: not a valid cron expression" in result.stderr
    named = submit(workspace, "lni__broken", "--no-wait")
    assert named.returncode == 2 and len(sent) == 2  # nothing more was submitted
    assert f"databridge-luigi submit: {broken}: schedule_interval: not a valid cron expression" in named.stderr


def test_status_reads_a_carto_destination(tmp_path, monkeypatch, postgis_dsn, emu):  # noqa: F811
    """The marker table read through CARTO's SQL API (the emulator, real PostGIS behind it): JSON rows,
    text timestamps."""
    from databridge_luigi import status
    from databridge_luigi.config import Registry
    from databridge_luigi.staging import open_store
    from databridge_luigi.tasks import PublishAll
    from tests.pipeline import Pipeline, make_points_table
    from tests.test_carto_transport import DAILY, at

    at(monkeypatch, "2026-11-24T12:00:00")
    pipeline = Pipeline(tmp_path, postgis_dsn, emu.connection_url("phl"), monkeypatch)
    make_points_table(pipeline, "gis_cartost", "violations", 30)
    pipeline.config("cartost__violations", DAILY)
    assert pipeline.run(PublishAll()).ok
    (row,) = status.collect(Registry(pipeline.config_dir), open_store(pipeline.staging))
    assert (row.dataset_id, row.state, row.last_version, row.rows) == ("cartost__violations", "fresh", "20261124T110400Z", 30)
    assert row.published_at and row.published_at.endswith("Z") and row.changed is True
    assert row.destination == "carto_phl:violations"
    assert "KEY" not in status.as_json([row])


def test_a_full_disk_names_the_file_and_leaves_no_temp_files(demo, tmp_path):
    """The worker may write at most 16 KiB per file (RLIMIT_FSIZE, as a full disk would stop it): the extract
    fails naming the staging file, and no hidden temp file is left in staging."""
    import resource
    import signal

    env, elsewhere, _ = demo
    staging = tmp_path / "small-disk"
    sample = build_sample(tmp_path / "big.sqlite", rows=2000)  # its staged CSV is well over the limit

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    result = subprocess.run([LUIGI, "--module", "databridge_luigi", "Extract", "--dataset-id", "demo__violations",
                             "--version", "20261124T000000Z", "--local-scheduler"], cwd=elsewhere,
                            env=dict(env, DATABRIDGE_STAGING=str(staging), DATABRIDGE_CONN_DATABRIDGE=f"sqlite:///{sample}"),
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=small_disk)
    assert result.returncode == 30, result.stderr[-3000:]
    assert_short(result, f"cannot write staging file {staging}/demo__violations/20261124T000000Z/")
    leftovers = [p for p in staging.rglob("*") if p.is_file() and p.name.startswith(".") and "_runs" not in p.parts]
    assert leftovers == []


def test_status_reads_luigid_task_history(demo, tmp_path):
    """A failure luigid recorded in its task history (scripts/luigid.sh turns it on) shows in status even
    when no run record could be written (here: removed), and a later success clears it."""
    import shutil
    import signal

    from tests.test_luigid import free_port, wait_until_ready

    env, elsewhere, _ = demo
    port, var = free_port(), tmp_path / "luigid"
    server = subprocess.Popen([str(ROOT / "scripts/luigid.sh")], env=dict(env, LUIGID_PORT=str(port), LUIGID_VAR_DIR=str(var)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(port, server)
        remote = ("--scheduler-host", "127.0.0.1", "--scheduler-port", str(port))
        broken = dict(env, DATABRIDGE_CONN_DATABRIDGE=f"sqlite:///{tmp_path}/no-such-dir/x.sqlite")
        assert luigi(elsewhere, broken, "Publish", "--dataset-id", "demo__violations", *remote).returncode == 30
        shutil.rmtree(Path(env["DATABRIDGE_STAGING"]) / "_runs")  # as if the record could not be written
        history = f"sqlite:///{var}/history.db"
        without = cli(elsewhere, env, "status", "demo__violations", "--json")
        assert json_rows(without)["demo__violations"]["state"] == "due"
        failing = cli(elsewhere, env, "status", "demo__violations", "--json", "--luigid-history", history)
        row = json_rows(failing)["demo__violations"]
        assert failing.returncode == 1 and row["state"] == "failing", failing.stdout
        assert row["last_failure"]["step"] == "Extract" and row["last_failure"]["version"] == row["due_version"]
        assert luigi(elsewhere, env, "Publish", "--dataset-id", "demo__violations", *remote).returncode == 0
        fresh = cli(elsewhere, env, "status", "demo__violations", "--json", "--luigid-history", history)
        assert fresh.returncode == 0 and json_rows(fresh)["demo__violations"]["state"] == "fresh"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


def json_rows(result: subprocess.CompletedProcess) -> dict[str, dict]:
    import json

    return {r["dataset_id"]: r for r in json.loads(result.stdout)["datasets"]}


def test_a_column_renamed_during_the_extract_names_dataset_and_says_what_to_do(tmp_path, postgis_dsn):
    """The source is a slow view: while the extract counts its rows, the view's column is renamed; the
    extract's COPY then names a column that is gone."""
    import psycopg

    from tests.conftest import create_postgis_database, drop_database

    dest = create_postgis_database("dbl_rename")
    configs = tmp_path / "cfg"
    (configs / "databridge/lk").mkdir(parents=True)
    (configs / "databridge/lk/renamed.yml").write_text("schedule_interval: false\nupload_to_carto: false\n")
    with psycopg.connect(postgis_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS gis_lk; DROP VIEW IF EXISTS gis_lk.renamed; "
                     "CREATE VIEW gis_lk.renamed AS SELECT g AS id, 'x' || g AS label "
                     "FROM generate_series(1, 10) g, LATERAL (SELECT pg_sleep(0.2)) s")
    env = clean_env(DATABRIDGE_CONFIG_DIR=str(configs), DATABRIDGE_STAGING=str(tmp_path / "staging"),
                    DATABRIDGE_CONN_DATABRIDGE=postgis_dsn, DATABRIDGE_CONN_CARTO_PHL=dest)
    try:
        worker = subprocess.Popen([LUIGI, "--module", "databridge_luigi", "Extract", "--dataset-id", "lk__renamed",
                                   "--version", "20261124T000000Z", "--local-scheduler"], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        with psycopg.connect(postgis_dsn, autocommit=True) as watch:
            while not watch.execute("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query ILIKE '%count%renamed%' "
                                    "AND pid <> pg_backend_pid()").fetchone():
                assert worker.poll() is None and time.monotonic() < deadline, "the extract never counted the rows"
                time.sleep(0.05)
            watch.execute("ALTER VIEW gis_lk.renamed RENAME COLUMN label TO title")
        stderr = worker.communicate(timeout=120)[1]
    finally:
        drop_database(dest)
    assert worker.returncode == 30, stderr[-3000:]
    result = subprocess.CompletedProcess([], 30, "", stderr)
    assert_short(result, "hint: a column was renamed or dropped while the dataset ran: check the source, then rerun")
