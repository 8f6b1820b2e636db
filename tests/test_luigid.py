"""A real luigid: what the visualiser shows after a publish (status messages, progress, no secrets)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.test_luigi_cli import SECRET, env, luigi  # noqa: F401  (the env fixture builds sample + destination)

LUIGID = str(Path(sys.executable).with_name("luigid"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def luigid(tmp_path):
    port = free_port()
    process = subprocess.Popen([LUIGID, "--address", "127.0.0.1", "--port", str(port), "--state-path", str(tmp_path / "state.pickle"),
                                "--logdir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(port, process)
    yield port
    process.terminate()
    process.wait(timeout=20)


def ready(port: int) -> bool:
    """luigid answers a read-only API call with HTTP 200 (``/api/ping`` without a worker id answers 500)."""
    query = urllib.parse.urlencode({"data": json.dumps({"status": "RUNNING", "upstream_status": "", "search": ""})})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?{query}", timeout=1) as reply:
            return reply.status == 200 and "response" in json.load(reply)
    except OSError:
        return False


def wait_until_ready(port: int, process: subprocess.Popen | None = None, seconds: float = 20) -> float:
    """Wait until luigid on ``port`` is ready; fail (not carry on) when it is not. Returns the seconds waited."""
    started = time.monotonic()
    while not ready(port):
        assert process is None or process.poll() is None, f"luigid exited with {process.returncode}"
        assert time.monotonic() - started < seconds, f"luigid on port {port} not ready after {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_readiness_probe_gets_200_quickly(tmp_path):
    """The probe is something luigid answers with 200, so a fixture waits for start-up, not for a deadline."""
    port = free_port()
    process = subprocess.Popen([LUIGID, "--address", "127.0.0.1", "--port", str(port), "--state-path", str(tmp_path / "s.pickle"),
                                "--logdir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert not ready(port)  # nothing listens yet (or not ready): the probe says no
        assert wait_until_ready(port, process) < 10
        with pytest.raises(urllib.error.HTTPError) as old_probe:  # what the fixtures used to poll
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping?data={{}}", timeout=2)
        assert old_probe.value.code == 500
    finally:
        process.terminate()
        process.wait(timeout=20)


def api(port: int, method: str, **data) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{method}?{query}", timeout=10) as reply:
        return json.load(reply)["response"]


def test_luigid_shows_status_and_progress_without_secrets(env, luigid):
    result = luigi(env, "PublishAll", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid))
    assert result.returncode == 0, result.stderr[-2000:]
    done = api(luigid, "task_list", status="DONE", upstream_status="", search="")
    loads = {tid: t for tid, t in done.items() if t["name"] == "Load"}
    extracts = {tid: t for tid, t in done.items() if t["name"] == "Extract"}
    assert len(loads) == 3 and len(extracts) == 3
    for task in loads.values():  # status messages carry the dataset id: luigid lists tasks, not datasets
        dataset_id = task["params"]["dataset_id"]
        assert task["status_message"].startswith(f"{dataset_id}: published ") and " rows to carto_phl:public." in task["status_message"]
        assert task["progress_percentage"] == 100
    for task in extracts.values():
        assert task["status_message"].startswith(f"{task['params']['dataset_id']}: staged ") and task["progress_percentage"] == 100
    assert SECRET not in json.dumps(done)


def test_a_failed_task_shows_its_one_line_error(env, luigid, tmp_path):
    """The failed task's status message is its error (not its last progress message), and the error text
    luigid stores starts with that line."""
    broken = dict(env, DATABRIDGE_CONN_DATABRIDGE=f"sqlite:///{tmp_path}/no-such-dir/x.sqlite")
    result = luigi(broken, "Publish", "--dataset-id", "demo__violations", "--force", "--scheduler-host", "127.0.0.1",
                   "--scheduler-port", str(luigid))
    assert result.returncode == 30, result.stderr[-2000:]
    failed = api(luigid, "task_list", status="FAILED", upstream_status="", search="")
    (task_id, task), = failed.items()
    assert task["name"] == "Extract"
    message = task["status_message"]
    assert message.startswith("demo__violations: Extract failed: ") and "\n" not in message, message
    assert "unable to open database file" in message or "x.sqlite" in message, message
    error = json.loads(api(luigid, "fetch_error", task_id=task_id)["error"])  # luigid keeps it JSON-encoded
    assert error.startswith(message + "\n")
    assert message.count("demo__violations") == 1
    assert "Traceback" in error  # the details are still there, under the line


@pytest.mark.parametrize("extra, expected", [
    ({"AWS_BATCH_JOB_ID": "job-0123abcd", "AWS_REGION": "us-east-2"},  # the job page links its CloudWatch log stream
     "https://us-east-2.console.aws.amazon.com/batch/home?region=us-east-2#jobs/detail/job-0123abcd"),
    ({"DATABRIDGE_LOG_URL": "https://logs.example.org/{dataset_id}/{step}/{version}"},
     "https://logs.example.org/lk__held/Extract/20261124T000000Z"),
])
def test_running_task_shows_its_log_as_tracking_url(tmp_path, luigid, postgis_dsn, extra, expected):
    """luigid shows a tracking URL only while a task runs, so the test holds the source table locked and
    looks at the RUNNING Extract; and the phase it waits in."""
    import os

    import psycopg

    from tests.conftest import create_postgis_database, drop_database

    dest = create_postgis_database("dbl_track")
    config = tmp_path / "configs" / "databridge" / "lk" / "held.yml"
    config.parent.mkdir(parents=True)
    config.write_text("schedule_interval: false\nupload_to_carto: true\ncarto_users: []\n")
    with psycopg.connect(postgis_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS gis_lk; DROP TABLE IF EXISTS gis_lk.held; "
                     "CREATE TABLE gis_lk.held AS SELECT g AS id FROM generate_series(1, 10) g")
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=str(tmp_path / "staging"),
               DATABRIDGE_CONN_DATABRIDGE=postgis_dsn, DATABRIDGE_CONN_CARTO_PHL=dest, **extra)
    lock = psycopg.connect(postgis_dsn)
    try:
        lock.execute("LOCK TABLE gis_lk.held IN ACCESS EXCLUSIVE MODE")
        worker = subprocess.Popen([str(Path(LUIGID).with_name("luigi")), "--module", "databridge_luigi", "Publish",
                                   "--dataset-id", "lk__held", "--version", "20261124T000000Z", "--scheduler-host",
                                   "127.0.0.1", "--scheduler-port", str(luigid)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline, running = time.monotonic() + 60, {}
        while time.monotonic() < deadline and not any(t.get("tracking_url") for t in running.values()):
            running = api(luigid, "task_list", status="RUNNING", upstream_status="", search="")
            time.sleep(0.2)
        assert [t["tracking_url"] for t in running.values() if t["name"] == "Extract"] == [expected]
        # The phase it is stuck in shows too, once the task's quiet first second is over (status_line.py).
        deadline, shown = time.monotonic() + 10, []
        while time.monotonic() < deadline and not shown:
            running = api(luigid, "task_list", status="RUNNING", upstream_status="", search="")
            shown = [t["status_message"] for t in running.values() if t["name"] == "Extract" and t.get("status_message")]
            time.sleep(0.2)
        assert shown == ["lk__held: extracting from databridge"]
    finally:
        lock.rollback()  # releases the lock: the worker finishes
        lock.close()
    try:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()[-2000:]
    finally:
        drop_database(dest)
