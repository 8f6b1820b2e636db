"""SIGKILL of a real luigi worker at every phase of a publish.

The promise: whenever a worker dies, the live table is either the old one or the complete new one; no
completion marker claims a version the live table does not hold; a partially written staging object never
counts as staged; and the next run converges with exactly one load.

How: a manual dataset is published at version A by the real ``luigi`` command (a subprocess in its own
session). The source changes to generation B, a worker starts publishing version B, and the test watches
until the chosen phase is visibly under way — the source's ``COPY (SELECT …)`` and bytes in a staging temp
file, an unfinished S3 multipart upload in moto, the destination's ``COPY … __shadow FROM STDIN``, the swap
transaction blocked on a lock the test holds on the live table, a ``CREATE INDEX`` — then SIGKILLs the
worker's process group. The live table's row-by-row digest, the marker table and staging are checked, then
the same ``--version B`` is run again: it must exit 0, load exactly once (one "published" line, one marker
row for B, rewritten) and leave the digest of source generation B, no shadow table and every index.
"""
from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import create_postgis_database, drop_database
from tests.killing import (Activity, Worker, digest, indexes, make_source_table, markers, run_luigi, sql, table_exists,
                           tables_like, wait_for, write_config)

VERSION_A = "20240101T000000Z"
VERSION_B = "20240102T000000Z"
ROWS = 200_000


@pytest.fixture(scope="module")
def source_dsn() -> Iterator[str]:
    """One source database for the module; each test uses its own table in it."""
    dsn = create_postgis_database("dbl_kill_src")
    yield dsn
    drop_database(dsn)


@dataclass
class Case:
    root: Path
    source_dsn: str
    dest_dsn: str
    env: dict[str, str]
    dataset_id: str
    table: str
    source_table: str
    runs: int = 0

    def luigi(self, *args: str) -> tuple[int, str]:
        self.runs += 1
        return run_luigi(self.env, *args, log_path=self.root / f"run{self.runs}.log")

    def publish(self, version: str) -> tuple[int, str]:
        return self.luigi("Publish", "--dataset-id", self.dataset_id, "--version", version)

    def start(self, version: str) -> Worker:
        self.runs += 1
        return Worker(self.env, "Publish", "--dataset-id", self.dataset_id, "--version", version,
                      log_path=self.root / f"run{self.runs}.log")

    def staged_manifest(self, version: str) -> dict | None:
        path = Path(self.env["DATABRIDGE_STAGING"]) / self.dataset_id / version / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None


def setup_case(tmp_path: Path, source_dsn: str, dest_dsn: str, rows: int = ROWS, indexes_: list[str] | None = None,
               staging: str | None = None, extra_env: dict[str, str] | None = None, payload_md5s: int = 1,
               load_mode: str = "replace") -> Case:
    suffix = uuid.uuid4().hex[:8]
    table = f"t_{suffix}"
    case = Case(
        root=tmp_path, source_dsn=source_dsn, dest_dsn=dest_dsn, dataset_id=f"kill__{table}", table=table,
        source_table=f"src_{suffix}",
        env=dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"),
                 DATABRIDGE_STAGING=staging or str(tmp_path / "staging"),
                 DATABRIDGE_CONN_DATABRIDGE=source_dsn, DATABRIDGE_CONN_CARTO_PHL=dest_dsn, **(extra_env or {})),
    )
    index_list = ", ".join(indexes_ or [])
    write_config(tmp_path / "configs", case.dataset_id, f"""\
        schedule_interval: false
        upload_to_carto: true
        carto_users: []
        source: {{schema: public, table: {case.source_table}}}
        indexes: [{index_list}]
        load_mode: {load_mode}
        """)
    make_source_table(source_dsn, case.source_table, rows, generation=1, payload_md5s=payload_md5s)
    code, out = case.publish(VERSION_A)
    assert code == 0, out[-4000:]
    assert digest(dest_dsn, table) == digest(source_dsn, case.source_table)
    make_source_table(source_dsn, case.source_table, rows, generation=2, payload_md5s=payload_md5s)
    return case


@pytest.fixture()
def dest_dsn() -> Iterator[str]:
    dsn = create_postgis_database("dbl_kill_dest")
    yield dsn
    drop_database(dsn)


def old_digest(case: Case) -> tuple[int, str]:
    return digest(case.dest_dsn, case.table)


def assert_consistent_after_kill(case: Case, before: tuple[int, str], expect_new: bool = False) -> None:
    """Live table = old or complete new content, and the markers agree with what is live."""
    assert table_exists(case.dest_dsn, case.table), "the live table is gone after the kill"
    live = digest(case.dest_dsn, case.table)
    new = digest(case.source_dsn, case.source_table)
    assert live in (before, new), "the live table is neither the old nor the complete new content"
    if expect_new:
        assert live == new, "the kill came after the swap, so the new table must be live"
    else:
        assert live == before, "the kill came before the swap, so the old table must be live"
    versions = [m[0] for m in markers(case.dest_dsn, case.dataset_id)]
    assert versions == ([VERSION_A, VERSION_B] if live == new else [VERSION_A]), versions
    # The latest marker's fingerprint is the sha256 of the staged data the live table was built from.
    latest = markers(case.dest_dsn, case.dataset_id)[-1]
    manifest = case.staged_manifest(latest[0])
    if manifest is not None:  # local staging
        assert latest[1] == manifest["sha256"] and latest[2] == manifest["rows"] == live[0]


def assert_converges(case: Case, expect_extract: bool | None = None, expect_load: bool = True) -> str:
    """Rerun the same version: exit 0, exactly one load, new content, one marker row, no shadow, every index."""
    code, out = case.publish(VERSION_B)
    assert code == 0, out[-4000:]
    if expect_extract is not None:
        assert (f"{case.dataset_id}: extracted" in out) == expect_extract, out[-4000:]
    assert out.count(f"{case.dataset_id}: published") == (1 if expect_load else 0), out[-4000:]
    assert digest(case.dest_dsn, case.table) == digest(case.source_dsn, case.source_table)
    rows = markers(case.dest_dsn, case.dataset_id)
    assert [m[0] for m in rows] == [VERSION_A, VERSION_B]
    assert rows[-1][3] is True, "version B must be a rewrite of the table"
    assert tables_like(case.dest_dsn, "%shadow%") == []
    # A third run has nothing to do.
    code, again = case.publish(VERSION_B)
    assert code == 0 and "Did not run any tasks" in again and f"{case.dataset_id}: published" not in again
    return out


def kill_when_active(case: Case, dsn: str, what: str, query_like: str) -> None:
    """Start the worker for VERSION_B and SIGKILL it once ``query_like`` runs on ``dsn``; wait until the
    server has ended the worker's statement."""
    activity = Activity(dsn)
    try:
        worker = case.start(VERSION_B)
        found = wait_for(what, lambda: activity.find(query_like), worker)
        worker.kill()
        activity.wait_gone([row[0] for row in found])
    finally:
        activity.close()


def test_kill_during_extract_with_partial_local_staging(tmp_path, source_dsn, dest_dsn):
    """Local staging: the source's COPY (SELECT) is running and the staging temp file already holds data
    bytes, no manifest. The rerun must extract again and publish exactly once."""
    case = setup_case(tmp_path, source_dsn, dest_dsn)
    before = old_digest(case)
    staging_dir = Path(case.env["DATABRIDGE_STAGING"]) / case.dataset_id / VERSION_B
    source = Activity(source_dsn)
    try:
        worker = case.start(VERSION_B)

        def extracting_with_bytes():
            if not source.find("COPY (SELECT%"):
                return False
            partial = [p for p in staging_dir.glob(".data*.csv.gz.*") if p.stat().st_size > 0] if staging_dir.is_dir() else []
            return partial

        partial = wait_for("the source COPY with data bytes in a staging temp file", extracting_with_bytes, worker)
        worker.kill()
    finally:
        source.close()
    assert partial and not (staging_dir / "manifest.json").exists()
    assert not list(staging_dir.glob("data*.csv.gz")), "a half-written data file is visible under its final name"
    assert_consistent_after_kill(case, before)
    assert_converges(case, expect_extract=True)


def test_sigterm_during_the_source_copy_cancels_it_on_the_server(tmp_path, source_dsn, dest_dsn):
    """SIGTERM (how Batch and systemd stop a worker) while the source's COPY runs: the statement is cancelled on
    the source at once, not left running until the server next writes to the closed socket, and nothing is staged."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=1000)
    before = old_digest(case)
    # The COPY, and only the COPY (the row count runs before it), waits 120 s at its first row.
    sql(source_dsn, "CREATE OR REPLACE FUNCTION public.wait_in_copy() RETURNS boolean LANGUAGE plpgsql VOLATILE AS "
                    "$$BEGIN IF current_query() LIKE 'COPY%' THEN PERFORM pg_sleep(120); END IF; RETURN true; END$$")
    sql(source_dsn, f"CREATE VIEW public.{case.source_table}_slow AS SELECT * FROM public.{case.source_table} WHERE public.wait_in_copy()")
    config = next((tmp_path / "configs").rglob(f"{case.table}.yml"))
    config.write_text(config.read_text().replace(f"table: {case.source_table}}}", f"table: {case.source_table}_slow}}"))
    source = Activity(source_dsn)
    try:
        worker = case.start(VERSION_B)
        copying = wait_for("the source's COPY", lambda: source.find("COPY (SELECT%_slow%"), worker)
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(30) != 0
        wait_for("the source's COPY to stop", lambda: not source.conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (copying[0][0],)).fetchone(), deadline=5)
    finally:
        source.conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%_slow%' "
                            "AND pid <> pg_backend_pid()")
        source.close()
    assert "stopped by SIGTERM" in worker.output()
    assert case.staged_manifest(VERSION_B) is None
    assert old_digest(case) == before and [m[0] for m in markers(dest_dsn, case.dataset_id)] == [VERSION_A]


def test_kill_mid_multipart_upload_to_s3(tmp_path, source_dsn, dest_dsn, moto_server):
    """S3 staging (moto): a multipart upload has at least one part and is unfinished when the worker dies.
    Nothing is visible under the data key, there is no manifest, and the rerun extracts again."""
    import boto3

    aws = {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    # ~32 random hex chars x 4 per row keep gzip near 2:1.
    # Enough data for several 8 MiB parts: parts go up from a background thread, so with only two the upload
    # could complete between the check and the kill.
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=400_000, staging=f"s3://{bucket}/stage", extra_env=aws, payload_md5s=4)
    before = old_digest(case)
    prefix = f"stage/{case.dataset_id}/{VERSION_B}/"
    worker = case.start(VERSION_B)

    def part_uploaded():
        for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
            if s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts"):
                return upload
        return None

    upload = wait_for("an S3 multipart upload with an uploaded part", part_uploaded, worker, interval=0.02)
    worker.kill()
    assert upload["Key"].startswith(prefix + "data-") and upload["Key"].endswith(".csv.gz")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert prefix + "manifest.json" not in keys and not any(k.endswith(".csv.gz") for k in keys), keys
    assert_consistent_after_kill(case, before)
    assert_converges(case, expect_extract=True)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert prefix + "manifest.json" in keys


def test_kill_during_copy_into_shadow(tmp_path, source_dsn, dest_dsn):
    """The destination shows ``COPY … __shadow … FROM STDIN``: the COPY transaction dies with the client; the
    rerun reuses the complete staged version (no second extract) and loads once."""
    case = setup_case(tmp_path, source_dsn, dest_dsn)
    before = old_digest(case)
    kill_when_active(case, dest_dsn, "COPY into the shadow table", "COPY %__shadow%FROM STDIN%")
    assert case.staged_manifest(VERSION_B) is not None
    assert_consistent_after_kill(case, before)
    assert_converges(case, expect_extract=False)


@pytest.mark.parametrize("lock_mode, load_mode, waiting_statement", [
    ("ACCESS SHARE", "swap", "DROP TABLE"),                  # a reader's lock blocks the swap's DROP TABLE
    ("SHARE", "replace", "WITH deleted AS (DELETE"),         # a SHARE lock blocks the in-place DELETE + INSERT
    ("ACCESS EXCLUSIVE", "replace", "SELECT count(*)"),      # blocks the drift count itself, after the COPY
])
def test_kill_between_count_check_and_commit(tmp_path, source_dsn, dest_dsn, lock_mode, load_mode, waiting_statement):
    """The test holds a lock on the live table that the load has to wait for; the worker is killed while
    waiting (inside the commit transaction, before its commit, for the first two), then the lock is released:
    the server finishes the waiting statement, finds the client gone and rolls back."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=20_000, load_mode=load_mode)
    before = old_digest(case)
    holder = psycopg.connect(dest_dsn)
    dest = Activity(dest_dsn)
    try:
        holder.execute(f'LOCK TABLE public."{case.table}" IN {lock_mode} MODE')
        worker = case.start(VERSION_B)
        waiting = wait_for("the worker waiting on the live table's lock",
                           lambda: dest.find("%", wait_event_type="Lock"), worker, interval=0.02)
        statement = waiting[0][1]
        assert statement.startswith(waiting_statement) and case.table in statement, statement
        assert tables_like(dest_dsn, f"{case.table}\\_\\_shadow\\_%"), "the run's shadow should exist while it waits"
        worker.kill()
        holder.rollback()
        dest.wait_gone([row[0] for row in waiting])
    finally:
        holder.close()
        dest.close()
    assert_consistent_after_kill(case, before)
    assert_converges(case, expect_extract=False)


def test_kill_during_index_creation(tmp_path, source_dsn, dest_dsn):
    """While ``CREATE INDEX`` runs — on the shadow, before the swap (indexes are built before the table goes
    live): the old table stays live with its indexes and no new marker; the rerun loads once and leaves
    every configured index (and the geometry's GiST index) on the new table."""
    configured = ["code", "payload", "code+payload"]
    case = setup_case(tmp_path, source_dsn, dest_dsn, indexes_=configured, load_mode="swap")
    expected_indexes = {f"{case.table}_{c.replace('+', '_')}" for c in configured} | {f"{case.table}_shape"}
    assert expected_indexes <= indexes(dest_dsn, case.table)
    before = old_digest(case)
    kill_when_active(case, dest_dsn, "CREATE INDEX on the shadow table", "CREATE INDEX%__shadow%")
    assert_consistent_after_kill(case, before, expect_new=False)
    assert expected_indexes <= indexes(dest_dsn, case.table), "the old live table lost its indexes"
    assert_converges(case, expect_extract=False, expect_load=True)
    missing = expected_indexes - indexes(dest_dsn, case.table)
    assert not missing, f"the published table lacks configured indexes {sorted(missing)}"
