"""Staged tables on disk and on S3 (moto's server over HTTP): manifest last, nothing half-written visible."""
from __future__ import annotations

import hashlib
import json
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
    run = table.run_id
    assert manifest.run_id == run and manifest.data_key == f"lni__violations/20261124T110400Z/data-{run}.csv.gz"
    assert sorted(k.rsplit("/", 1)[1] for k in store.list_prefix("lni__violations/")) == [f"data-{run}.csv.gz", "manifest.json", f"schema-{run}.json"]


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
        store.create_exclusive(table.key("manifest.json"), b"{}")
    assert table.manifest().rows == 1


def test_a_second_extract_of_a_version_stops_quietly_and_changes_nothing(store, caplog):
    """The loser of two extracts of one version gets the winner's manifest, its own objects are removed, and the
    winner's data still matches its manifest (the data is under run-unique keys the manifest names)."""
    first, second = StagedTable(store, "lni__violations", "v1"), StagedTable(store, "lni__violations", "v1")
    with second.writer() as late:  # started first, finishes last
        late.write_header(["id", "name"])
        late.write_rows([["2", "y"], ["3", "z"]])
        winner = write(first, [["1", "x"]])
        with caplog.at_level("INFO", logger="databridge_luigi.staging"):
            got = late.finish(SCHEMA, {}, "now")
    assert got == winner and got.run_id == first.run_id != second.run_id
    assert f"already staged by run {first.run_id}" in caplog.text
    assert sorted(store.list_prefix("lni__violations/")) == sorted([winner.data_key, winner.schema_key, "lni__violations/v1/manifest.json"])
    fresh = StagedTable(store, "lni__violations", "v1")
    with fresh.open_csv() as data:
        body = data.read()
    assert hashlib.sha256(body).hexdigest() == fresh.manifest().sha256 and body.endswith(b'"1","x"\n')


def test_manifests_without_keys_still_read_data_csv_gz(store):
    """A version staged before run-unique keys (no data_key/schema_key) reads data.csv.gz and schema.json."""
    table = StagedTable(store, "d", "old")
    manifest = write(table, [["1", "x"]])
    legacy = json.loads(manifest.dumps())
    for name in ("data_key", "schema_key", "run_id", "staged_by", "change_signal", "unchanged_from"):
        legacy.pop(name)
    moved = StagedTable(store, "d", "older")
    for source, target in ((manifest.data_key, "d/older/data.csv.gz"), (manifest.schema_key, "d/older/schema.json")):
        stream = store.open_write(target)
        stream.write(store.read_bytes(source))
        stream.commit()
    store.create_exclusive("d/older/manifest.json", json.dumps({**legacy, "version": "older", "future_field": 1}).encode())
    assert moved.manifest().data_key == "" and moved.data_key() == "d/older/data.csv.gz"
    assert moved.schema() == SCHEMA
    with moved.open_csv() as data:
        assert data.read() == b'"id","name"\n"1","x"\n'


def test_an_unchanged_version_names_the_previous_data(store):
    first = StagedTable(store, "d", "20261124T000000Z")
    extracted = write(first, [["1", "x"]])
    later = StagedTable(store, "d", "20261125T000000Z")
    assert later.previous().version == "20261124T000000Z"
    recorded = later.record_unchanged(later.previous(), {"kind": "test"}, "now")
    assert recorded.unchanged_from == "20261124T000000Z" and recorded.data_key == extracted.data_key
    assert recorded.sha256 == extracted.sha256 and recorded.change_signal == {"kind": "test"}
    third = StagedTable(store, "d", "20261126T000000Z")
    assert third.record_unchanged(third.previous(), {"kind": "test"}, "now").unchanged_from == "20261124T000000Z"
    with StagedTable(store, "d", "20261126T000000Z").open_csv() as data:
        assert data.read() == b'"id","name"\n"1","x"\n'
    assert store.exists(extracted.data_key) and not store.exists("d/20261126T000000Z/data.csv.gz")
    again = StagedTable(store, "d", "20261126T000000Z")
    assert again.record_unchanged(later, {"kind": "other"}, "now").run_id == third.run_id  # the first manifest stays


def test_identical_data_has_identical_fingerprint(store):
    first = write(StagedTable(store, "d", "v1"), [["1", "x"]])
    second = write(StagedTable(store, "d", "v2"), [["1", "x"]])
    third = write(StagedTable(store, "d", "v3"), [["1", "y"]])
    assert first.sha256 == second.sha256 != third.sha256


def test_large_object_goes_up_in_parts_and_streams_back(aws, monkeypatch):
    monkeypatch.setattr(staging.tuning, "PART_SIZE", 5 * 1024 * 1024)  # S3's minimum part size
    client = boto3.client("s3")
    client.create_bucket(Bucket="big")
    table = StagedTable(S3Store("big", client=client), "d", "v")
    rows = ([str(i), os.urandom(48).hex()] for i in range(200_000))  # ~20 MB of incompressible CSV
    with table.writer() as writer:
        writer.write_header(["id", "name"])
        writer.write_rows(rows)
        writer.finish(SCHEMA, {}, "now")
    head = client.head_object(Bucket="big", Key=table.data_key())
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


def test_a_manifest_found_by_exists_is_not_read_again(tmp_path):
    """Finding an earlier version (exists) and then reading its manifest is one GET, not two: on S3 every read
    is a round trip, and change detection does both for every dataset of a daily run. A corrupt manifest still
    exists, and manifest() still names what is wrong with it."""
    reads: list[str] = []

    class CountingStore(LocalStore):
        def read_bytes(self, key: str) -> bytes | None:
            reads.append(key)
            return super().read_bytes(key)

    store = CountingStore(tmp_path)
    write(StagedTable(store, "d", "v1"), [["1", "a"]])
    reads.clear()
    previous = StagedTable(store, "d", "v2").previous()
    assert previous is not None and previous.version == "v1"
    assert previous.manifest().rows == 1 and previous.manifest().version == "v1"
    assert reads == ["d/v1/manifest.json"]
    (tmp_path / "d" / "v3").mkdir()
    (tmp_path / "d" / "v3" / "manifest.json").write_text("{not json")
    corrupt = StagedTable(store, "d", "v3")
    assert corrupt.exists()
    with pytest.raises(StagingError, match="corrupt manifest"):
        corrupt.manifest()


def test_the_row_a_copy_error_line_falls_in_counts_records_not_lines(tmp_path):
    """PostgreSQL's COPY errors number physical lines; a quoted value with newlines spans several."""
    staged = StagedTable(LocalStore(tmp_path), "t__lines", "v1")
    with staged.writer() as writer:
        writer.write_header(["id", "note"])
        writer.write_rows([["1", "one line"], ["2", "two\nlines"], ["3", 'a "quoted"\nvalue\nof three'], ["4", "x" * 200_000]])
        writer.finish(TableSchema((Column("id", "integer"), Column("note", "text"))), {}, "2026-11-24T00:00:00+00:00")
    # line 1 header; row 1 line 2; row 2 lines 3-4; row 3 lines 5-7; row 4 line 8 (a value over csv's default limit)
    assert [staged.row_ending_at_line(n) for n in range(2, 10)] == [1, 2, 2, 3, 3, 3, 4, None]
