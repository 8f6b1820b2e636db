"""The destination PostgreSQL restarts while a load is copying into the shadow table.

The promise: the worker fails loudly (non-zero exit, an error naming the dataset), the live table is exactly
the old one, no marker claims the new version, and the next run publishes the new version with exactly one
load and one marker row.

How: a PRIVATE throwaway cluster (initdb as the postgres user into a temp dir, its own port and socket
directory) is the PostGIS destination, so the machine's shared server is never touched; the shared server is
only the source. Version A is published by the real ``luigi`` command, the source changes, and a worker
publishing version B is watched until the private cluster's pg_stat_activity shows ``COPY … __shadow … FROM
STDIN``; then the cluster is stopped (``immediate``: a crash and recovery; ``fast``: backends terminated by
the administrator) and started again. The cluster is stopped and removed in the fixture's finalizer even
when the test fails.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import create_postgis_database, drop_database
from tests.killing import (Activity, Worker, digest, make_source_table, markers, run_luigi, sql, tables_like,
                           wait_for, write_config)

VERSION_A = "20240101T000000Z"
VERSION_B = "20240102T000000Z"
ROWS = 200_000


def _bindir() -> Path:
    candidates = []
    try:
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if directory and (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    pytest.fail(f"cannot create a private PostgreSQL cluster: no initdb/pg_ctl in {candidates} (install the PostgreSQL server binaries)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="dbl_pgcluster_"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.root = os.geteuid() == 0
        if self.root:  # the server refuses to run as root: run it as postgres, who must own the directory
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / tool), *args]
        if self.root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            log = (self.dir / "server.log").read_text(errors="replace")[-3000:] if (self.dir / "server.log").exists() else ""
            pytest.fail(f"private cluster: {tool} {' '.join(args)} failed ({result.returncode}): {result.stderr}\n{log}")
        return result

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast", check: bool = True) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=check)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_postgis_database(self) -> str:
        name = f"dbl_restart_{uuid.uuid4().hex[:8]}"
        sql(self.dsn(), f"CREATE DATABASE {name}")
        sql(self.dsn(name), "CREATE EXTENSION postgis")
        return self.dsn(name)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def cluster() -> Iterator[PrivateCluster]:
    private = PrivateCluster()
    try:
        private.start()
        yield private
    finally:
        private.remove()


@pytest.fixture()
def source_dsn() -> Iterator[str]:
    dsn = create_postgis_database("dbl_restart_src")
    yield dsn
    drop_database(dsn)


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_destination_restart_during_copy(tmp_path, cluster, source_dsn, mode):
    dest_dsn = cluster.create_postgis_database()
    dataset_id, table, source_table = "restart__parcels", "parcels", "src_parcels"
    write_config(tmp_path / "configs", dataset_id, f"""\
        schedule_interval: false
        upload_to_carto: true
        carto_users: []
        source: {{schema: public, table: {source_table}}}
        """)
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=str(tmp_path / "staging"),
               DATABRIDGE_CONN_DATABRIDGE=source_dsn, DATABRIDGE_CONN_CARTO_PHL=dest_dsn)

    def publish(version: str, log: str) -> tuple[int, str]:
        return run_luigi(env, "Publish", "--dataset-id", dataset_id, "--version", version, log_path=tmp_path / log)

    make_source_table(source_dsn, source_table, ROWS, generation=1)
    code, out = publish(VERSION_A, "a.log")
    assert code == 0, out[-4000:]
    before = digest(dest_dsn, table)
    assert before == digest(source_dsn, source_table)
    make_source_table(source_dsn, source_table, ROWS, generation=2)

    worker = Worker(env, "Publish", "--dataset-id", dataset_id, "--version", VERSION_B, log_path=tmp_path / "b.log")
    activity = Activity(dest_dsn)
    try:
        wait_for("COPY into the shadow table on the private cluster", lambda: activity.find("COPY %__shadow%FROM STDIN%"), worker)
    finally:
        activity.close()
    stopped = time.monotonic()
    cluster.stop(mode)
    cluster.start()
    try:
        code = worker.wait(timeout=120)
    finally:
        if worker.alive():
            worker.kill()
    out = worker.output()
    assert code == 30, f"exit {code} (expected 30, a task failed); output:\n{out[-4000:]}"
    # A clear error: the worker's failure report names the Load of this dataset, and the error under it names
    # the destination connection and the statement that broke (COPY into the shadow).
    failed = [line for line in out.splitlines() if " failed " in line and f"Load(dataset_id={dataset_id}, version={VERSION_B}" in line]
    assert failed, out[-4000:]
    report = out[out.index(failed[0]):]
    error = next((line for line in report.splitlines() if line.startswith(("databridge_luigi.", "LoadError:"))), "")
    assert "destination 'carto_phl'" in error, report[-4000:]
    assert 'COPY "public"."parcels__shadow_' in report, report[-4000:]
    assert time.monotonic() - stopped < 120

    assert digest(dest_dsn, table) == before, "the live table changed although the load failed"
    assert [m[0] for m in markers(dest_dsn, dataset_id)] == [VERSION_A]
    with psycopg.connect(dest_dsn) as conn:  # the server is healthy again
        assert conn.execute("SELECT postgis_version() IS NOT NULL").fetchone()[0]

    code, out = publish(VERSION_B, "b2.log")
    assert code == 0, out[-4000:]
    assert out.count(f"{dataset_id}: published") == 1, out[-4000:]
    assert f"{dataset_id}: extracted" not in out, "the staged version B was complete; no second extract expected"
    assert digest(dest_dsn, table) == digest(source_dsn, source_table)
    rows = markers(dest_dsn, dataset_id)
    assert [m[0] for m in rows] == [VERSION_A, VERSION_B] and rows[-1][3] is True
    assert tables_like(dest_dsn, "%shadow%") == []
