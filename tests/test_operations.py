"""Operations: Slack failure alerts (real luigi, Slack emulator), the cron wrapper and luigid.sh (real processes)."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

import databridge_luigi.schedule as schedule
from databridge_luigi.tasks import Extract
from tests.emulators.slack import SlackEmulator
from tests.pipeline import Pipeline, make_points_table
from tests.test_luigid import wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
SECRET = "xoxSECRETslacktoken9931"
MISSING = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: []
    source: {table: no_such_table}
    """
DAILY = """\
    schedule_interval: 4 11 * * *
    upload_to_carto: true
    carto_users: []
    """


@pytest.fixture()
def slack():
    with SlackEmulator() as emulator:
        emulator.add_webhook(f"/services/T0/B0/{SECRET}")
        emulator.url_with_secret = f"{emulator.url}/services/T0/B0/{SECRET}"  # type: ignore[attr-defined]
        yield emulator


def fail_one(pipeline: Pipeline, monkeypatch, webhook: str):
    monkeypatch.setenv("DATABRIDGE_CONN_SLACK", webhook)
    monkeypatch.setattr(schedule, "utc_now", lambda: datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    pipeline.config("ops__broken", MISSING)
    started = time.monotonic()
    run = pipeline.run(Extract(dataset_id="ops__broken", version="20261124T110400Z"))
    return run, time.monotonic() - started


def test_failure_posts_one_redacted_message(pipeline, monkeypatch, slack):
    monkeypatch.setenv("DATABRIDGE_LOG_URL", "https://logs.example/{dataset_id}/{version}/{step}")
    run, _ = fail_one(pipeline, monkeypatch, slack.url_with_secret)
    assert not run.ok
    assert len(slack.messages) == 1, slack.messages
    message = slack.messages[0]
    assert message["username"] == "databridge-luigi"
    text = message["text"]
    assert "ops__broken" in text and "Extract" in text and "20261124T110400Z" in text
    assert "no_such_table" in text  # the error summary
    assert "https://logs.example/ops__broken/20261124T110400Z/Extract" in text
    assert SECRET not in json.dumps(message)
    assert pipeline.source_dsn not in text and pipeline.dest_dsn not in text


def test_slack_429_is_retried_after_retry_after(pipeline, monkeypatch, slack):
    slack.inject("rate_limit", retry_after=1)
    run, elapsed = fail_one(pipeline, monkeypatch, slack.url_with_secret)
    assert not run.ok
    assert len(slack.messages) == 1
    assert len(slack.requests_to("/services/T0/B0/")) == 2
    assert elapsed >= 1.0


@pytest.mark.parametrize("outage", ["http_500", "stopped"])
def test_slack_outage_never_changes_or_hangs_the_task(pipeline, monkeypatch, slack, outage, caplog):
    if outage == "http_500":
        slack.set_error("rollup_error", path=f"/services/T0/B0/{SECRET}")
    else:
        slack.stop()
    caplog.set_level(logging.WARNING, logger="databridge_luigi.notify")
    run, elapsed = fail_one(pipeline, monkeypatch, slack.url_with_secret)
    assert not run.ok and "failed" in run.summary
    assert elapsed < 15
    assert slack.messages == []
    assert any("Slack alert not sent" in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text


def test_webhook_is_not_looked_up_at_import(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRIDGE_")}
    code = (
        "import databridge_luigi.connections as c\n"
        "calls = []\n"
        "real = c.resolve\n"
        "c.resolve = lambda name: calls.append(name) or real(name)\n"
        "import databridge_luigi, databridge_luigi.notify as n, databridge_luigi.tasks\n"
        "assert calls == [], calls\n"
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "class T:\n"
        "    dataset_id, version, task_id = 'a__b', 'v', 'Extract_x'\n"
        "    def get_task_family(self): return 'Extract'\n"
        "n.on_failure(T(), RuntimeError('boom')); n.on_failure(T(), RuntimeError('boom'))\n"
        "assert calls == ['slack', 'slack'], calls\n"
        "print('OK')\n"
    )
    done = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
    assert done.stderr.count("Slack alerts are off") == 1, done.stderr


# --- the cron wrapper --------------------------------------------------------------------------------------

def cron_env(pipeline: Pipeline, tmp_path: Path, webhook: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATABRIDGE_CONFIG_DIR": str(pipeline.config_dir), "DATABRIDGE_STAGING": pipeline.staging,
        "DATABRIDGE_CONN_DATABRIDGE": pipeline.source_dsn, "DATABRIDGE_CONN_CARTO_PHL": pipeline.dest_dsn,
        "DATABRIDGE_CONN_SLACK": webhook,
        "CRON_PUBLISH_LOCK": str(tmp_path / "run/cron.lock"), "CRON_PUBLISH_LOG_DIR": str(tmp_path / "log/cron"),
    })
    return env


def cron(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts/cron-publish.sh"), "--local-scheduler", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_cron_second_instance_exits_already_running(pipeline, tmp_path, slack):
    env = cron_env(pipeline, tmp_path, slack.url_with_secret)
    lock = Path(env["CRON_PUBLISH_LOCK"])
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first instance
        done = cron(env)
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stdout
    assert not Path(env["CRON_PUBLISH_LOG_DIR"]).exists() or not any(Path(env["CRON_PUBLISH_LOG_DIR"]).iterdir())


def test_cron_failure_exits_nonzero_with_one_slack_summary(pipeline, tmp_path, slack):
    make_points_table(pipeline, "gis_ops", "good", 20)
    pipeline.config("ops__good", DAILY)
    pipeline.config("ops__broken", MISSING)
    pipeline.config("ops__alsobroken", MISSING)
    env = cron_env(pipeline, tmp_path, slack.url_with_secret)
    done = cron(env)
    assert done.returncode == 30, done.stdout + done.stderr
    assert len(slack.messages) == 1, slack.messages
    text = slack.messages[0]["text"]
    assert "exit 30" in text and "ops__broken" in text and "ops__alsobroken" in text and "ops__good" not in text
    assert SECRET not in text and pipeline.source_dsn not in text
    logs = list(Path(env["CRON_PUBLISH_LOG_DIR"]).glob("*.log"))
    assert len(logs) == 1 and "Luigi Execution Summary" in logs[0].read_text()
    assert str(logs[0]) in done.stderr


def test_cron_success_exits_zero_and_keeps_a_log(pipeline, tmp_path, slack):
    make_points_table(pipeline, "gis_ops", "good", 20)
    pipeline.config("ops__good", DAILY)
    env = cron_env(pipeline, tmp_path, slack.url_with_secret)
    done = cron(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout
    logs = list(Path(env["CRON_PUBLISH_LOG_DIR"]).glob("*.log"))
    assert len(logs) == 1 and logs[0].name.endswith("Z.log")
    assert "# exit 0" in logs[0].read_text()
    assert slack.messages == []


def test_cron_line_with_an_env_file_and_no_environment(pipeline, tmp_path, slack):
    """The README's crontab line: cron gives the job no environment (``env -i``); the env file brings the
    settings. The failure is on the status page the wrapper writes, and ``status`` says so the next morning."""
    make_points_table(pipeline, "gis_ops", "good", 20)
    pipeline.config("ops__good", DAILY)
    pipeline.config("ops__broken", MISSING)
    settings = cron_env(pipeline, tmp_path, slack.url_with_secret)
    env_file = tmp_path / "databridge-luigi.env"
    env_file.write_text("# /etc/databridge-luigi.env\n" + "".join(
        f"{k}='{v}'\n" for k, v in settings.items() if k.startswith(("DATABRIDGE_", "CRON_PUBLISH_"))))
    page = tmp_path / "www" / "index.html"
    done = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", f"CRON_PUBLISH_ENV_FILE={env_file}",
                           f"CRON_PUBLISH_STATUS_PAGE={page}", str(ROOT / "scripts/cron-publish.sh"), "--local-scheduler"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 30, done.stdout + done.stderr
    (log,) = Path(settings["CRON_PUBLISH_LOG_DIR"]).glob("*.log")
    html = page.read_text()
    assert 'data-state="fresh"' in html and 'data-state="failing"' in html and "no_such_table" in html
    assert SECRET not in html and pipeline.source_dsn not in html
    # the next morning, without luigid: the run record names the step, the error and this run's log
    status = subprocess.run([str(ROOT / ".venv/bin/databridge-luigi"), "status", "--json"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=dict(settings, PATH="/usr/bin:/bin"))
    assert status.returncode == 1, status.stderr
    rows = {r["dataset_id"]: r for r in json.loads(status.stdout)["datasets"]}
    assert rows["ops__good"]["state"] == "fresh" and rows["ops__broken"]["state"] == "failing"
    assert rows["ops__broken"]["last_failure"]["step"] == "Extract"
    assert rows["ops__broken"]["last_failure"]["log_url"] == str(log)


def test_cron_env_file_missing_is_one_line(tmp_path):
    done = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", f"CRON_PUBLISH_ENV_FILE={tmp_path}/nope.env",
                           str(ROOT / "scripts/cron-publish.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"cron-publish: CRON_PUBLISH_ENV_FILE={tmp_path}/nope.env is not a readable file"


def test_cron_success_summary_when_asked(pipeline, tmp_path, slack):
    make_points_table(pipeline, "gis_ops", "good", 20)
    make_points_table(pipeline, "gis_ops", "other", 30)
    pipeline.config("ops__good", DAILY)
    pipeline.config("ops__other", DAILY)
    env = dict(cron_env(pipeline, tmp_path, slack.url_with_secret), CRON_PUBLISH_SLACK_SUCCESS="on")
    assert cron(env).returncode == 0
    assert len(slack.messages) == 1
    text = slack.messages[0]["text"]
    assert "cron run ok" in text and "2 dataset(s)" in text
    assert "ops__good: published 20 rows to carto_phl:public.good (swap: 20 inserted" in text and "ops__other: published 30 rows" in text
    assert cron(env).returncode == 0  # the rerun has nothing to do, and says so
    assert len(slack.messages) == 2 and slack.messages[1]["text"].endswith(": nothing to do")


# --- luigid.sh ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_luigid_script_serves_on_loopback_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = dict(os.environ, LUIGID_PORT=str(port), LUIGID_VAR_DIR=str(tmp_path / "luigid"))
    proc = subprocess.Popen([str(ROOT / "scripts/luigid.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready(port, proc)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and "0.0.0.0" not in listening.split(":")[0]
        cfg = (tmp_path / "luigid/luigid.cfg").read_text()
        assert "record_task_history = true" in cfg and "sqlite:///" in cfg
        assert (tmp_path / "luigid/history.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) is not None
    # The log file the script names is the one luigid writes.
    first_line = proc.stdout.readline()
    named = first_line.split(" log ", 1)[1].split()[0]
    assert named == str(tmp_path / "luigid/luigi-server.log"), first_line
    assert Path(named).stat().st_size > 0
    assert (tmp_path / "luigid/state.pickle").exists()
