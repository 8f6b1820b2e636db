"""Luigi targets: a staged table (its manifest) and a published table (its marker row)."""
from __future__ import annotations

import logging

import luigi

from .config import Dataset
from .connections import is_credentials_rejected, retry_if_rotated
from .publish import transports
from .publish import sql
from .publish.catalog import push_tried_here
from .publish.protocol import Loader
from .staging import StagedTable

log = logging.getLogger(__name__)


class StagedTableTarget(luigi.Target):
    """Exists when the version's manifest exists (it is written last)."""

    def __init__(self, staged: StagedTable):
        self.staged = staged

    def exists(self) -> bool:
        return self.staged.exists()

    def __repr__(self) -> str:
        return f"StagedTableTarget({self.staged.describe()})"


class PublishedVersions:
    """Snapshot of every published (dataset, version) per destination: one query answers every target of
    that destination, which keeps a no-op PublishAll fast. Only positive answers are trusted from the
    snapshot; anything else is asked directly, so a version published after the snapshot is still seen."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._failures: dict[tuple[str, str], Exception] = {}

    def contains(self, connection: str, schema: str, dataset_id: str, version: str) -> bool:
        key = (connection, schema)
        if key in self._failures:  # one unreachable destination costs its retries once per snapshot, not per task
            raise self._failures[key]
        if key not in self._snapshots:
            try:
                self._snapshots[key] = self._load(connection, schema)
            except Exception as exc:
                if not is_credentials_rejected(exc):  # rejected credentials may be re-read and retried
                    self._failures[key] = exc
                raise
        return (dataset_id, version) in self._snapshots[key]

    def _load(self, connection: str, schema: str) -> set[tuple[str, str]]:
        transport = transports.get(connection)
        present = transport.query(sql.table_exists(schema, sql.MARKER_TABLE))[0]["present"]
        if not present:
            return set()
        return {(row["dataset_id"], row["version"]) for row in transport.query(sql.all_markers(schema))}

    def add(self, connection: str, schema: str, dataset_id: str, version: str) -> None:
        """A version this process has just seen committed (its marker is in the load's commit)."""
        snapshot = self._snapshots.get((connection, schema))
        if snapshot is not None:
            snapshot.add((dataset_id, version))

    def clear(self) -> None:
        self._snapshots.clear()
        self._failures.clear()


published_versions = PublishedVersions()


class PublishedTableTarget(luigi.Target):
    """Exists when the destination's marker table records this dataset version and the table is there."""

    def __init__(self, dataset: Dataset, version: str):
        self.dataset, self.version = dataset, version

    def loader(self) -> Loader:
        return Loader(self.dataset, transports.get(self.dataset.dest_conn))

    def exists(self) -> bool:
        conn = self.dataset.dest_conn
        return retry_if_rotated(conn, self._exists, on_failure=lambda: transports.discard(conn))

    def _exists(self) -> bool:
        loader = self.loader()
        if published_versions.contains(self.dataset.dest_conn, loader.schema, self.dataset.id, self.version):
            return True
        return loader.is_published(self.version, pending_push_ok=push_tried_here(self.dataset.id, self.version))

    def record_published(self) -> None:
        """The load in this process committed the version's marker (or found it): the completion check luigi runs
        after the task needs no second query."""
        published_versions.add(self.dataset.dest_conn, self.loader().schema, self.dataset.id, self.version)

    def __repr__(self) -> str:
        return f"PublishedTableTarget({self.dataset.dest_conn}:{self.dataset.dest_table}@{self.version})"
