"""The commands a user types, as subprocesses: luigi's exit codes from luigi.cfg, and no secret in output."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.sample_databridge import build as build_sample
from tests.conftest import create_postgis_database, drop_database, ensure_role

ROOT = Path(__file__).resolve().parents[1]
LUIGI = str(Path(sys.executable).with_name("luigi"))
SECRET = "Zq9-distinctive-password-7731"


@pytest.fixture()
def env(tmp_path):
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_cli")
    # A login role with a distinctive password, so any leak of it is detectable.
    from tests.conftest import ADMIN_DSN
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS dbl_loader; CREATE ROLE dbl_loader LOGIN SUPERUSER PASSWORD '{SECRET}'")
    sample = build_sample(tmp_path / "databridge.sqlite", rows=200)
    values = dict(os.environ)
    values.update({
        "DATABRIDGE_CONFIG_DIR": str(ROOT / "configs" / "examples"),
        "DATABRIDGE_STAGING": str(tmp_path / "staging"),
        "DATABRIDGE_CONN_DATABRIDGE": f"sqlite:///{sample}",
        "DATABRIDGE_CONN_CARTO_PHL": dest.replace("postgresql://postgres@", f"postgresql://dbl_loader:{SECRET}@"),
    })
    yield values
    drop_database(dest)


def luigi(env, *args):
    return subprocess.run([LUIGI, "--module", "databridge_luigi", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_publish_all_twice_then_force_one(env):
    first = luigi(env, "PublishAll", "--local-scheduler")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "published 200 rows" in first.stderr
    second = luigi(env, "PublishAll", "--local-scheduler")
    assert second.returncode == 0
    assert "nothing to do" in second.stderr and "Did not run any tasks" in second.stderr
    forced = luigi(env, "Publish", "--dataset-id", "demo__violations", "--force", "--local-scheduler")
    assert forced.returncode == 0 and "published 200 rows" in forced.stderr
    for result in (first, second, forced):
        assert SECRET not in result.stdout + result.stderr


def test_failures_exit_non_zero_without_leaking(env):
    # Trust auth accepts any password here, so break connections by their port; the URLs keep the secret.
    unreachable = f"postgresql://dbl_loader:{SECRET}@127.0.0.1:1/nowhere"
    source_down = luigi(dict(env, DATABRIDGE_CONN_DATABRIDGE=unreachable), "Publish", "--dataset-id", "demo__permit_types", "--force", "--local-scheduler")
    assert source_down.returncode == 30, source_down.stderr[-2000:]  # [retcode] task_failed: Extract.run failed
    assert "demo__permit_types: source databridge:" in source_down.stderr
    dest_down = luigi(dict(env, DATABRIDGE_CONN_CARTO_PHL=unreachable), "Publish", "--dataset-id", "demo__permit_types", "--force", "--local-scheduler")
    assert dest_down.returncode == 35  # [retcode] scheduling_error: the completion check could not reach the destination
    assert "cannot connect to destination 'carto_phl'" in dest_down.stderr
    unknown = luigi(env, "Publish", "--dataset-id", "demo__nope", "--local-scheduler")
    assert unknown.returncode == 35
    assert "no dataset 'demo__nope'" in unknown.stderr
    for result in (source_down, dest_down, unknown):
        assert SECRET not in result.stdout + result.stderr
