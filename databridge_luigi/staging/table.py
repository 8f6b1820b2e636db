"""The staged-table format: one version of one dataset is a manifest naming a gzip CSV and a table schema.

``<root>/<dataset_id>/<version>/data-<run>.csv.gz``, ``schema-<run>.json`` and ``manifest.json``. The CSV has
a header, every text value quoted, NULL as an empty unquoted field, UTF-8. The manifest (rows, sha256 of the
CSV, columns, source facts, the change signal, the run that staged it and the keys it describes) is written
last and exclusively: it is the completion flag, and once it exists nothing changes what it describes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ..schema import TableSchema
from . import tuning
from .errors import AlreadyStaged, StagingError
from .pipes import _Inflater, _Stage, _zlib
from .stores import Store, WriteStream

# The legacy names (manifests without data/schema keys) and the manifest's own name.
DATA, SCHEMA, MANIFEST = "data.csv.gz", "schema.json", "manifest.json"

log = logging.getLogger("databridge_luigi.staging")

# How many earlier versions (newest first) are tried when looking for the previous staged version; a version
# folder without a manifest is a killed or failed extract.
PREVIOUS_VERSIONS_TRIED = 5


def new_run_id() -> str:
    """A run-unique id for the objects one extract writes."""
    return uuid.uuid4().hex[:16]


def this_process() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class Manifest:
    dataset_id: str
    version: str
    rows: int
    sha256: str  # of the uncompressed CSV: the fingerprint the load compares with the live table's
    csv_bytes: int
    gzip_bytes: int
    columns: list[str]
    created_at: str
    source: dict[str, Any] = field(default_factory=dict)
    format: str = "csv+gzip;header;utf-8"
    # Keys relative to the store's root. Empty in manifests written before run-unique keys: then the data is
    # data.csv.gz and the schema schema.json in the version's own folder.
    data_key: str = ""
    schema_key: str = ""
    run_id: str = ""
    staged_by: str = ""  # host and pid of the run that wrote this manifest
    change_signal: dict[str, Any] | None = None  # read from the source before its data was extracted
    unchanged_from: str | None = None  # the version whose data this one names (the source had not changed)
    # An incremental extract: only the rows changed since ``base_version`` (column, newest, settle_seconds,
    # base_version); a load merges them and needs that version published first. None: every row.
    delta: dict[str, Any] | None = None

    def dumps(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, where: str) -> "Manifest":
        try:
            values = json.loads(data)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in known})  # a newer writer's extra fields are kept out
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise StagingError(f"corrupt manifest {where}: {exc}") from None

    @property
    def extracted_version(self) -> str:
        """The version whose extract produced this data."""
        return self.unchanged_from or self.version


class StagedTable:
    """One version of one dataset in staging. ``run_id`` names the objects this instance writes;
    ``change_signal`` and ``delta`` (set before writing) go into the manifest."""

    def __init__(self, store: Store, dataset_id: str, version: str):
        self.store, self.dataset_id, self.version = store, dataset_id, version
        self.prefix = f"{dataset_id}/{version}"
        self.run_id = new_run_id()
        self.change_signal: dict[str, Any] | None = None
        self.delta: dict[str, Any] | None = None
        self._manifest: Manifest | None = None  # immutable once it exists, so it is read once
        self._schema: TableSchema | None = None  # likewise: the manifest names a run-unique schema object

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def describe(self) -> str:
        return self.store.describe(self.prefix)

    def exists(self) -> bool:
        if self._manifest is not None:
            return True
        data = self.store.read_bytes(self.key(MANIFEST))
        if data is None:
            return False
        try:  # kept, so that asking for the manifest next costs no second read
            self._manifest = Manifest.loads(data, self.store.describe(self.key(MANIFEST)))
        except (StagingError, ValueError):
            pass  # it exists; manifest() reports what is wrong with it
        return True

    def manifest(self) -> Manifest:
        if self._manifest is None:
            data = self.store.read_bytes(self.key(MANIFEST))
            if data is None:
                raise StagingError(f"{self.store.describe(self.key(MANIFEST))} does not exist: the extract has not finished")
            self._manifest = Manifest.loads(data, self.store.describe(self.key(MANIFEST)))
        return self._manifest

    def data_key(self) -> str:
        """The data object the manifest names (``data.csv.gz`` for manifests that name none)."""
        return self.manifest().data_key or self.key(DATA)

    def schema_key(self) -> str:
        return self.manifest().schema_key or self.key(SCHEMA)

    def schema(self) -> TableSchema:
        if self._schema is None:
            key = self.schema_key()
            data = self.store.read_bytes(key)
            if data is None:
                raise StagingError(f"missing table schema {self.store.describe(key)}")
            self._schema = TableSchema.loads(data.decode("utf-8"))
        return self._schema

    @contextmanager
    def open_gzip(self) -> Iterator[IO[bytes]]:
        """The staged CSV as gzip bytes, streamed (for transports that send gzip as is)."""
        stream = self.store.open_read(self.data_key())
        try:
            yield stream
        finally:
            stream.close()

    @contextmanager
    def open_csv(self) -> Iterator[IO[bytes]]:
        """The staged CSV, decompressed while it streams: a reader thread downloads and gunzips up to
        QUEUE_BLOCKS blocks ahead of the consumer, so the network and zlib overlap with what the consumer
        does (a COPY into the destination)."""
        with self.open_gzip() as raw:
            inflater = _Inflater(raw, self.store.describe(self.data_key()))
            try:
                yield io.BufferedReader(inflater, tuning.BLOCK_SIZE)
            finally:
                inflater.close()

    def row_ending_at_line(self, line: int) -> int | None:
        """The data row (1-based; the header is row 0) whose CSV record ends on physical line ``line`` or runs
        through it — how PostgreSQL's COPY errors number a row: by lines, counting the newlines inside quoted
        values. Reads the CSV up to that line (an error path only); None past the end."""
        import csv

        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a polygon's EWKT is often over the 128 KiB default
        with self.open_csv() as data:
            reader = csv.reader(io.TextIOWrapper(data, encoding="utf-8", newline=""))
            for record, _ in enumerate(reader):
                if reader.line_num >= line:
                    return record
        return None

    @contextmanager
    def writer(self) -> Iterator["StagedTableWriter"]:
        """Write data, then ``finish(schema, source_facts)`` writes schema and manifest; any exception
        before that discards the data so nothing half-written is ever visible."""
        stream = self.store.open_write(self.key(f"data-{self.run_id}.csv.gz"))
        writer = StagedTableWriter(self, stream)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        if not writer.finished:
            writer.abort()
            raise StagingError(f"writer for {self.describe()} closed without finish()")

    def previous(self) -> "StagedTable | None":
        """The newest earlier version of this dataset that has a manifest (tries PREVIOUS_VERSIONS_TRIED)."""
        earlier = [v for v in self.store.list_folders(self.dataset_id) if v < self.version]
        for version in sorted(earlier, reverse=True)[:PREVIOUS_VERSIONS_TRIED]:
            table = StagedTable(self.store, self.dataset_id, version)
            if table.exists():
                return table
        return None

    def record_unchanged(self, previous: "StagedTable", signal: dict[str, Any], created_at: str) -> Manifest:
        """Stage this version as the previous version's data (the source has not changed): a manifest that
        names the previous data and schema objects and carries ``unchanged_from`` and the new signal. If another
        run staged this version first, its manifest is returned."""
        before = previous.manifest()
        manifest = dataclasses.replace(
            before, version=self.version, created_at=created_at, data_key=previous.data_key(),
            schema_key=previous.schema_key(), run_id=self.run_id, staged_by=this_process(), change_signal=signal,
            unchanged_from=before.extracted_version,
        )
        try:
            self.store.create_exclusive(self.key(MANIFEST), manifest.dumps())
        except AlreadyStaged:
            return self.manifest_of_winner()
        self._manifest = manifest
        return manifest

    def manifest_of_winner(self) -> Manifest:
        """After losing the race for this version's manifest: the manifest that won, logged quietly."""
        self._manifest = self._schema = None
        winner = self.manifest()
        log.info("%s: version %s already staged by run %s (%s); this run (%s) stops", self.dataset_id, self.version,
                 winner.run_id or "?", winner.staged_by or "an earlier release", self.run_id)
        return winner


class StagedTableWriter:
    """CSV (header, every text value quoted, NULL as an empty unquoted field) → gzip → store, counting rows
    and hashing the CSV as it goes. The caller's bytes are gathered into BLOCK_SIZE blocks; a compressor
    thread hashes and gzips each block and writes it to the store stream (whose S3 parts go up from a thread
    of their own), so the caller's thread only copies bytes."""

    def __init__(self, table: StagedTable, stream: WriteStream):
        self.table, self._stream = table, stream
        self._config = tuning
        self._sha = hashlib.sha256()
        self.csv_bytes = 0
        self.gzip_bytes = 0
        self.rows = 0
        self._gzip = _zlib.compressobj(self._config.GZIP_LEVEL, _zlib.DEFLATED, 31)  # wbits 31: a gzip member
        self._pending = bytearray()
        self._compressor = _Stage(f"gzip {table.describe()}", self._compress, self._config.QUEUE_BLOCKS)
        self.columns: list[str] = []
        self.finished = False
        self.data_key = table.key(f"data-{table.run_id}.csv.gz")
        self.schema_key = table.key(f"schema-{table.run_id}.json")

    def write_header(self, names: Sequence[str]) -> None:
        self.columns = list(names)
        self._write(_csv_line(names).encode("utf-8"))

    def write_rows(self, rows: Iterable[Sequence[str | None]]) -> None:
        """Rows of text values (None = NULL); call repeatedly with batches."""
        lines = [_csv_line(row) for row in rows]
        self.rows += len(lines)
        if lines:
            self._write("".join(lines).encode("utf-8"))

    def write_csv(self, chunk: bytes | bytearray | memoryview) -> None:
        """Raw CSV bytes from a source that produces CSV itself (PostgreSQL COPY); the caller sets ``rows``.
        Any size: the writer gathers blocks itself (and copies what it keeps)."""
        self._write(chunk)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self.csv_bytes += len(data)
        block_size = self._config.BLOCK_SIZE
        if not self._pending and len(data) >= block_size:  # a whole block already: one copy, straight over
            self._compressor.put(bytes(data))
            return
        self._pending += data
        if len(self._pending) >= block_size:
            self._hand_off()

    def _hand_off(self) -> None:
        block, self._pending = bytes(self._pending), bytearray()
        self._compressor.put(block)

    def _compress(self, block: bytes) -> None:  # the compressor thread; hashlib and zlib release the GIL
        self._sha.update(block)
        self._emit(self._gzip.compress(block))

    def _emit(self, data: bytes) -> None:
        if data:
            self._stream.write(data)
            self.gzip_bytes += len(data)

    def finish(self, schema: TableSchema, source: dict[str, Any], created_at: str) -> Manifest:
        """Commit the data and the schema, then create the manifest. If another run's manifest for this version
        exists, this run's objects are deleted and the other manifest is returned (``table.run_id`` differs
        from its ``run_id``): the version is staged, by someone else."""
        store = self.table.store
        if self._pending:
            self._hand_off()
        self._compressor.close()  # every block hashed, compressed and handed to the store; raises a stage's error
        self._emit(self._gzip.flush())
        self._stream.commit()
        try:
            schema_stream = store.open_write(self.schema_key)
            schema_stream.write(schema.dumps().encode("utf-8"))
            schema_stream.commit()
        except BaseException:
            self.finished = True  # the data stream is committed: what is left to undo is this run's objects
            self._remove_own_objects()
            raise
        manifest = Manifest(
            dataset_id=self.table.dataset_id,
            version=self.table.version,
            rows=self.rows,
            sha256=self._sha.hexdigest(),
            csv_bytes=self.csv_bytes,
            gzip_bytes=self.gzip_bytes,
            columns=schema.names,
            created_at=created_at,
            source=source,
            data_key=self.data_key,
            schema_key=self.schema_key,
            run_id=self.table.run_id,
            staged_by=this_process(),
            change_signal=self.table.change_signal,
            delta=self.table.delta,
        )
        self.finished = True
        try:
            store.create_exclusive(self.table.key(MANIFEST), manifest.dumps())
        except AlreadyStaged:
            winner = self._existing_manifest()
            if winner is not None and winner.run_id == self.table.run_id:  # our PUT went through; its reply was lost
                return winner
            self._remove_own_objects()
            return self.table.manifest_of_winner()
        except BaseException:
            # The PUT's outcome is unknown: if the manifest exists it may name our objects, so they stay.
            if (existing := self._existing_manifest()) is not None and existing.run_id == self.table.run_id:
                return existing
            if existing is not None:
                self._remove_own_objects()
            raise
        self.table._manifest, self.table._schema = manifest, schema
        return manifest

    def _existing_manifest(self) -> Manifest | None:
        self.table._manifest = self.table._schema = None
        try:
            return self.table.manifest()
        except Exception:
            return None

    def _remove_own_objects(self) -> None:
        for key in (self.data_key, self.schema_key):
            try:
                self.table.store.delete(key)
            except Exception as exc:  # an orphan no manifest names is harmless; say so and go on
                log.warning("%s: could not remove %s (no manifest names it): %s", self.table.dataset_id,
                            self.table.store.describe(key), exc)

    def abort(self) -> None:
        """Stop the compressor (queued blocks are dropped, the gzip trailer is never written) and abort the
        store stream, which stops its uploader before aborting the upload: a failed upload is sent nothing more."""
        self._pending = bytearray()
        try:
            self._compressor.cancel()
        finally:
            self._stream.abort()


def _csv_line(values: Sequence[str | None]) -> str:
    """One CSV line as PostgreSQL's COPY reads it: every value quoted, NULL as an unquoted empty field.
    (The csv module cannot tell NULL from '' here: it writes None as "" when quoting non-numerics.)"""
    return ",".join("" if v is None else '"' + v.replace('"', '""') + '"' for v in values) + "\n"
