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
