"""Two extracts of one version at once, as real processes: staged versions are immutable.

Two ``luigi --module databridge_luigi …`` processes (their arguments differ, so luigi's pid lock does not
stop them) are started against one version while the test holds an ACCESS EXCLUSIVE lock on the source
table; both are seen waiting on it, then the lock is released, so both extract at the same moment. Exactly
one manifest is created; it names the winner's data, whose sha256 matches; the loser says "already staged by
run …", exits 0 without a traceback, and its own data and schema objects are gone. Local directory and S3
(moto's server)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest

from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.killing import LUIGI, ROOT, make_source_table, sql, write_config

VERSION = "20261124T110400Z"
ROWS = 60_000


@pytest.fixture()
def dest_dsn():
    dsn = create_postgis_database("dbl_race_dest")
    yield dsn
    drop_database(dsn)


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([LUIGI, "--module", "databridge_luigi", *args, "--local-scheduler", "--no-lock"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _race(source_dsn: str, table: str, env: dict[str, str], commands: list[list[str]]) -> list[tuple[int, str]]:
    """Start every command while the source table is locked; release it once all of them wait on it."""
    with psycopg.connect(source_dsn) as holder:
        holder.execute(f"LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE")
        workers = [_start(env, *command) for command in commands]
        try:
            deadline = time.monotonic() + 60
            while True:
                waiting = sql(source_dsn, "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                              (f"public.{table}",))[0][0]
                if waiting >= len(commands):
                    break
                assert all(w.poll() is None for w in workers), [w.communicate()[0][-3000:] for w in workers]
                assert time.monotonic() < deadline, "the workers never reached the source"
                time.sleep(0.05)
        except BaseException:
            for worker in workers:
                worker.kill()
            raise
        holder.rollback()  # both go now
    return [(w.wait(timeout=300), w.communicate()[0]) for w in workers]


def _setup(tmp_path: Path, source_dsn: str, dest_dsn: str, staging: str, extra_env: dict[str, str] | None = None):
    suffix = uuid.uuid4().hex[:8]
    dataset_id, table = f"race__t_{suffix}", f"src_{suffix}"
    write_config(tmp_path / "configs", dataset_id, f"""\
        schedule_interval: false
        upload_to_carto: true
        carto_users: []
        source: {{schema: public, table: {table}}}
        """)
    make_source_table(source_dsn, table, ROWS, generation=1)
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=staging,
               DATABRIDGE_CONN_DATABRIDGE=source_dsn, DATABRIDGE_CONN_CARTO_PHL=dest_dsn, **(extra_env or {}))
    return dataset_id, table, env


def _check(results: list[tuple[int, str]], manifest: dict, objects: list[str], data: bytes, dataset_id: str) -> None:
    outputs = [out for _, out in results]
    assert [code for code, _ in results] == [0, 0], [out[-4000:] for out in outputs]
    for out in outputs:
        assert "Traceback" not in out and "ERROR" not in out, out[-4000:]
        assert "This progress looks :)" in out, out[-4000:]  # luigi's summary: nothing failed
    losers = [out for out in outputs if f"already staged by run {manifest['run_id']}" in out]
    assert len(losers) == 1, [out[-3000:] for out in outputs]
    assert "; this run (" in losers[0], losers[0][-3000:]  # it extracted too, and lost at the manifest
    run = manifest["run_id"]
    prefix = f"{dataset_id}/{VERSION}/"
    assert sorted(objects) == sorted([prefix + f"data-{run}.csv.gz", prefix + "manifest.json", prefix + f"schema-{run}.json"]), objects
    assert manifest["data_key"] == prefix + f"data-{run}.csv.gz"
    csv = gzip.decompress(data)
    assert hashlib.sha256(csv).hexdigest() == manifest["sha256"] and csv.count(b"\n") == ROWS + 1 == manifest["rows"] + 1


def test_two_extract_processes_of_one_version_on_disk(tmp_path, postgis_dsn, dest_dsn):
    staging = tmp_path / "staging"
    dataset_id, table, env = _setup(tmp_path, postgis_dsn, dest_dsn, str(staging))
    results = _race(postgis_dsn, table, env, [["Extract", "--dataset-id", dataset_id, "--version", VERSION],
                                              ["Extract", "--dataset-id", dataset_id, "--version", VERSION, "--workers", "1"]])
    folder = staging / dataset_id / VERSION
    manifest = json.loads((folder / "manifest.json").read_text())
    objects = [str(p.relative_to(staging)) for p in folder.iterdir()]  # temp files (dot files) included: none left
    _check(results, manifest, objects, (staging / manifest["data_key"]).read_bytes(), dataset_id)


def test_two_publish_processes_of_one_version_on_s3(tmp_path, postgis_dsn, dest_dsn, moto_server):
    """Two whole publishes of one version with S3 staging: one extract wins, both processes succeed, and the
    live table holds the staged data under one marker."""
    ensure_role("publicuser")
    aws = {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = f"race-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    dataset_id, table, env = _setup(tmp_path, postgis_dsn, dest_dsn, f"s3://{bucket}/stage", aws)
    results = _race(postgis_dsn, table, env, [["Publish", "--dataset-id", dataset_id, "--version", VERSION],
                                              ["Publish", "--dataset-id", dataset_id, "--version", VERSION, "--workers", "1"]])
    prefix = f"stage/{dataset_id}/{VERSION}/"
    objects = [o["Key"][len("stage/"):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    data = s3.get_object(Bucket=bucket, Key="stage/" + manifest["data_key"])["Body"].read()
    _check(results, manifest, objects, data, dataset_id)
    dest_table = dataset_id.split("__")[1]
    assert sql(dest_dsn, f"SELECT count(*) FROM public.{dest_table}")[0][0] == ROWS
    markers = sql(dest_dsn, "SELECT version, fingerprint FROM databridge_luigi_publications WHERE dataset_id = %s", (dataset_id,))
    assert markers == [(VERSION, manifest["sha256"])]
