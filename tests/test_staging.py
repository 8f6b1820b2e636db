"""Staged tables on disk and on S3 (moto's server over HTTP): manifest last, nothing half-written visible."""
from __future__ import annotations

import os

import boto3
import pytest

from databridge_luigi import staging
from databridge_luigi.schema import Column, TableSchema
from databridge_luigi.staging import AlreadyStaged, LocalStore, S3Store, StagedTable, StagingError

SCHEMA = TableSchema((Column("id", "integer"), Column("name", "string")))


def write(table: StagedTable, rows: list[list[str | None]]):
    with table.writer() as writer:
        writer.write_header(["id", "name"])
        writer.write_rows(rows)
        return writer.finish(SCHEMA, {"test": True}, "2026-11-24T00:00:00+00:00")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path)
    request.getfixturevalue("aws")
    client = boto3.client("s3")
    bucket = f"staging-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, "databridge/staging", client=client)


def test_write_then_read(store):
    table = StagedTable(store, "lni__violations", "20261124T110400Z")
    assert not table.exists()
    manifest = write(table, [["1", "a,b"], ["2", None], ["3", "multi\nline ü"]])
    assert table.exists() and manifest.rows == 3
    assert table.manifest() == manifest
    assert table.schema() == SCHEMA
    with table.open_csv() as data:
        assert data.read().decode() == '"id","name"\n"1","a,b"\n"2",\n"3","multi\nline ü"\n'
    assert sorted(k.rsplit("/", 1)[1] for k in store.list_prefix("lni__violations/")) == ["data.csv.gz", "manifest.json", "schema.json"]


def test_a_failed_write_leaves_nothing(store):
    table = StagedTable(store, "lni__violations", "v1")
    with pytest.raises(RuntimeError):
        with table.writer() as writer:
            writer.write_header(["id", "name"])
            writer.write_rows([["1", "x"]])
            raise RuntimeError("source died")
    assert not table.exists()
    assert store.list_prefix("lni__violations/") == []


def test_manifest_is_never_overwritten(store):
    table = StagedTable(store, "lni__violations", "v1")
    write(table, [["1", "x"]])
    with pytest.raises(AlreadyStaged):
        write(table, [["2", "y"]])
    assert table.manifest().rows == 1


def test_identical_data_has_identical_fingerprint(store):
    first = write(StagedTable(store, "d", "v1"), [["1", "x"]])
    second = write(StagedTable(store, "d", "v2"), [["1", "x"]])
    third = write(StagedTable(store, "d", "v3"), [["1", "y"]])
    assert first.sha256 == second.sha256 != third.sha256


def test_large_object_goes_up_in_parts_and_streams_back(aws, monkeypatch):
    monkeypatch.setattr(staging, "PART_SIZE", 5 * 1024 * 1024)  # S3's minimum part size
    client = boto3.client("s3")
    client.create_bucket(Bucket="big")
    table = StagedTable(S3Store("big", client=client), "d", "v")
    rows = ([str(i), os.urandom(48).hex()] for i in range(200_000))  # ~20 MB of incompressible CSV
    with table.writer() as writer:
        writer.write_header(["id", "name"])
        writer.write_rows(rows)
        writer.finish(SCHEMA, {}, "now")
    head = client.head_object(Bucket="big", Key="d/v/data.csv.gz")
    assert "-" in head["ETag"]  # a multipart ETag: the object was uploaded in parts, never whole
    with table.open_csv() as data:
        count = sum(1 for _ in data) - 1
    assert count == 200_000


def test_missing_or_corrupt_objects_give_clear_errors(tmp_path):
    table = StagedTable(LocalStore(tmp_path), "d", "v")
    with pytest.raises(StagingError, match="extract has not finished"):
        table.manifest()
    (tmp_path / "d" / "v").mkdir(parents=True)
    (tmp_path / "d" / "v" / "manifest.json").write_text("{not json")
    with pytest.raises(StagingError, match="corrupt manifest"):
        table.manifest()
