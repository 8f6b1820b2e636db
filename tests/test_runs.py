"""Run records (databridge_luigi/runs.py) are pruned: a dataset keeps its newest ``KEEP``, in a directory and in
S3 (moto's server over HTTP)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import boto3
import pytest

from databridge_luigi import runs
from databridge_luigi.staging import LocalStore, S3Store

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _record(store, dataset_id: str, minute: int, outcome: str = "failed") -> str:
    at = (START + timedelta(minutes=minute)).isoformat(timespec="seconds")
    key = runs.record(store, runs.RunRecord(dataset_id=dataset_id, step="Load", version="v", outcome=outcome, at=at))
    assert key is not None
    return key


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    monkeypatch.setattr(runs, "_pruned_at", {})


def test_a_finished_run_keeps_the_newest_records_and_deletes_the_older(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "KEEP", 20)
    store = LocalStore(tmp_path)
    written = [_record(store, "lni__a", minute) for minute in range(30)]  # failed runs prune nothing
    other = _record(store, "lni__b", 0)
    assert len(store.list_prefix("_runs/lni__a/")) == 30

    newest = _record(store, "lni__a", 30, outcome="done")

    assert store.list_prefix("_runs/lni__a/") == sorted(written[11:] + [newest])
    assert [r.outcome for r in runs.read(store, "lni__a", limit=2)] == ["done", "failed"]
    assert store.list_prefix("_runs/lni__b/") == [other]  # another dataset's records are its own


def test_a_process_prunes_a_dataset_at_most_once_an_hour(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "KEEP", 5)
    store = LocalStore(tmp_path)
    for minute in range(5):
        _record(store, "lni__a", minute)
    _record(store, "lni__a", 5, outcome="done")
    assert len(store.list_prefix("_runs/lni__a/")) == 5
    for minute in range(6, 9):
        _record(store, "lni__a", minute, outcome="done")
    assert len(store.list_prefix("_runs/lni__a/")) == 8  # within the hour: no second listing

    monkeypatch.setattr(runs, "_pruned_at", {"lni__a": runs.time.monotonic() - runs.PRUNE_EVERY_SECONDS})
    _record(store, "lni__a", 9, outcome="done")
    assert len(store.list_prefix("_runs/lni__a/")) == 5


def test_pruning_in_s3(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket="runs-prune")
    store = S3Store("runs-prune", "staging", client=client)
    keys = [_record(store, "lni__a", minute) for minute in range(8)]

    assert runs.prune(store, "lni__a", keep=3) == 5

    assert store.list_prefix("_runs/lni__a/") == keys[5:]
    assert [r.at for r in runs.read(store, "lni__a")] == [(START + timedelta(minutes=m)).isoformat(timespec="seconds") for m in (7, 6, 5)]


def test_a_store_that_cannot_list_never_fails_the_run(tmp_path, caplog):
    class NoListing(LocalStore):
        def list_prefix(self, prefix: str) -> list[str]:
            raise PermissionError("s3:ListBucket denied")

    key = _record(NoListing(tmp_path), "lni__a", 0, outcome="done")

    assert (tmp_path / key).exists()
    assert "lni__a: old run records not pruned: PermissionError: s3:ListBucket denied" in caplog.text
