"""A real luigid: what the visualiser shows after a publish (status messages, progress, no secrets)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
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
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping?data={{}}", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield port
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
    for task in loads.values():
        assert task["status_message"].startswith("published ") and " rows to carto_phl:public." in task["status_message"]
        assert task["progress_percentage"] == 100
    for task in extracts.values():
        assert task["status_message"].startswith("staged ") and task["progress_percentage"] == 100
    assert SECRET not in json.dumps(done)
