"""Staged tables: ``<root>/<dataset_id>/<version>/{data.csv.gz, schema.json, manifest.json}`` on S3 or disk.

The manifest is written last and is the completion flag: a staged table without one does not exist, so a
killed extract never counts. Keys are run-scoped (the version is in the key) and the manifest is created
exclusively, never overwritten. Data streams through in bounded memory: rows → CSV → gzip → S3 multipart
parts (or a temp file renamed into place on disk).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from .connections import redact
from .schema import TableSchema

log = logging.getLogger(__name__)

DATA, SCHEMA, MANIFEST = "data.csv.gz", "schema.json", "manifest.json"
GZIP_LEVEL = 1  # measured in bench/: level 1 keeps gzip off the critical path at ~3x compression
PART_SIZE = 8 * 1024 * 1024


class StagingError(RuntimeError):
    """A staging object that is missing, corrupt or already exists."""


class AlreadyStaged(StagingError):
    """The manifest for this version exists: another run finished it first."""


# --- stores ------------------------------------------------------------------------------------------------

class Store(Protocol):
    def describe(self, key: str) -> str: ...
    def open_write(self, key: str) -> "WriteStream": ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def create_exclusive(self, key: str, data: bytes) -> None: ...
    def read_bytes(self, key: str) -> bytes | None: ...
    def list_prefix(self, prefix: str) -> list[str]: ...


class WriteStream(Protocol):
    def write(self, data: bytes) -> int: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class LocalStore:
    """A directory; writes go to a temp file renamed into place, so a reader never sees half a file."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def open_write(self, key: str) -> "_LocalWrite":
        return _LocalWrite(self.root / key)

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return open(self.root / key, "rb")
        except FileNotFoundError:
            raise StagingError(f"missing staging file {self.describe(key)}") from None

    def create_exclusive(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # atomic and fails if the manifest exists
        except FileExistsError:
            raise AlreadyStaged(f"{self.describe(key)} already exists") from None
        finally:
            tmp.unlink()

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def list_prefix(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))


class _LocalWrite:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._file.name, self.path)

    def abort(self) -> None:
        self._file.close()
        Path(self._file.name).unlink(missing_ok=True)


class S3Store:
    """``s3://bucket/prefix`` through boto3 (``AWS_ENDPOINT_URL`` is honoured by boto3 itself)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None):
        import boto3

        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Standard retry mode (backoff with jitter on 5xx, SlowDown, resets); AWS_MAX_ATTEMPTS still applies.
        # A finite read timeout, so a stalled S3 connection fails the task instead of hanging the worker.
        config = Config(retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard")}, connect_timeout=10,
                        read_timeout=float(os.environ.get("DATABRIDGE_S3_READ_TIMEOUT", "60")))
        self.client = client or boto3.client("s3", config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def open_write(self, key: str) -> "_S3MultipartWrite":
        return _S3MultipartWrite(self.client, self.bucket, self._key(key), self.describe(key))

    def open_read(self, key: str) -> IO[bytes]:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            raise StagingError(f"cannot read {self.describe(key)}: {exc.response['Error'].get('Code')}") from None

    def create_exclusive(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response["Error"].get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise AlreadyStaged(f"{self.describe(key)} already exists") from None
            raise _write_error(self.describe(key), exc) from None
        except BotoCoreError as exc:
            raise _write_error(self.describe(key), exc) from None

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response["Error"].get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def list_prefix(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys += [o["Key"][len(self._key("")):] for o in page.get("Contents", [])]
        return sorted(keys)


class _S3MultipartWrite:
    """Uploads parts as they fill, so an object of any size needs one part of memory; abort on failure
    leaves nothing behind (an unfinished multipart upload is invisible to readers)."""

    def __init__(self, client: Any, bucket: str, key: str, where: str):
        self.client, self.bucket, self.key, self.where = client, bucket, key, where
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= PART_SIZE:
            self._flush_part()
        return len(data)

    def _flush_part(self) -> None:
        with _naming_errors(self.where):
            self._upload_part()

    def _upload_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self._parts) + 1
        reply = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer))
        self._parts.append({"ETag": reply["ETag"], "PartNumber": number})
        self._buffer.clear()

    def commit(self) -> None:
        if self._upload_id is None:  # small object: one PUT
            with _naming_errors(self.where):
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._flush_part()
        with _naming_errors(self.where):
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})

    def abort(self) -> None:
        if self._upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            except Exception:  # best effort; a lifecycle rule reaps stragglers
                log.warning("could not abort multipart upload of s3://%s/%s", self.bucket, self.key)


def _write_error(where: str, exc: Exception) -> StagingError:
    from botocore.exceptions import ClientError

    reason = exc.response["Error"].get("Code", "Error") if isinstance(exc, ClientError) else type(exc).__name__
    return StagingError(f"cannot write {where}: {reason} ({redact(str(exc))[:200]})")


@contextmanager
def _naming_errors(where: str) -> Iterator[None]:
    """botocore's errors name the operation, not the object; ours name the s3:// key."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise _write_error(where, exc) from None


def open_store(root: str | None = None) -> Store:
    """``DATABRIDGE_STAGING`` (or ``root``): ``s3://bucket/prefix`` or a directory (default ./var/staging)."""
    root = root or os.environ.get("DATABRIDGE_STAGING") or "var/staging"
    if root.startswith("s3://"):
        bucket, _, prefix = root[len("s3://"):].partition("/")
        return S3Store(bucket, prefix)
    return LocalStore(root)


# --- staged tables -----------------------------------------------------------------------------------------

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

    def dumps(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, where: str) -> "Manifest":
        try:
            return cls(**json.loads(data))
        except (json.JSONDecodeError, TypeError) as exc:
            raise StagingError(f"corrupt manifest {where}: {exc}") from None


class StagedTable:
    """One version of one dataset in staging."""

    def __init__(self, store: Store, dataset_id: str, version: str):
        self.store, self.dataset_id, self.version = store, dataset_id, version
        self.prefix = f"{dataset_id}/{version}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def describe(self) -> str:
        return self.store.describe(self.prefix)

    def exists(self) -> bool:
        return self.store.read_bytes(self.key(MANIFEST)) is not None

    def manifest(self) -> Manifest:
        data = self.store.read_bytes(self.key(MANIFEST))
        if data is None:
            raise StagingError(f"{self.store.describe(self.key(MANIFEST))} does not exist: the extract has not finished")
        return Manifest.loads(data, self.store.describe(self.key(MANIFEST)))

    def schema(self) -> TableSchema:
        data = self.store.read_bytes(self.key(SCHEMA))
        if data is None:
            raise StagingError(f"missing table schema {self.store.describe(self.key(SCHEMA))}")
        return TableSchema.loads(data.decode("utf-8"))

    @contextmanager
    def open_gzip(self) -> Iterator[IO[bytes]]:
        """The staged CSV as gzip bytes, streamed (for transports that send gzip as is)."""
        stream = self.store.open_read(self.key(DATA))
        try:
            yield stream
        finally:
            stream.close()

    @contextmanager
    def open_csv(self) -> Iterator[IO[bytes]]:
        """The staged CSV, decompressed while it streams."""
        with self.open_gzip() as raw, gzip.GzipFile(fileobj=raw, mode="rb") as data:
            yield data  # type: ignore[misc]

    @contextmanager
    def writer(self) -> Iterator["StagedTableWriter"]:
        """Write data, then ``finish(schema, source_facts)`` writes schema and manifest; any exception
        before that discards the data so nothing half-written is ever visible."""
        stream = self.store.open_write(self.key(DATA))
        writer = StagedTableWriter(self, stream)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        if not writer.finished:
            writer.abort()
            raise StagingError(f"writer for {self.describe()} closed without finish()")


class StagedTableWriter:
    """CSV (header, every text value quoted, NULL as an empty unquoted field) → gzip → store, counting rows
    and hashing the CSV as it goes."""

    def __init__(self, table: StagedTable, stream: WriteStream):
        self.table, self._stream = table, stream
        self._sha = hashlib.sha256()
        self.csv_bytes = 0
        self.rows = 0
        self._counter = _CountingWriter(stream)
        self._gzip = gzip.GzipFile(fileobj=self._counter, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
        self.columns: list[str] = []
        self.finished = False

    def write_header(self, names: Sequence[str]) -> None:
        self.columns = list(names)
        self._write(_csv_line(names).encode("utf-8"))

    def write_rows(self, rows: Iterable[Sequence[str | None]]) -> None:
        """Rows of text values (None = NULL); call repeatedly with batches."""
        lines = [_csv_line(row) for row in rows]
        self.rows += len(lines)
        if lines:
            self._write("".join(lines).encode("utf-8"))

    def write_csv(self, chunk: bytes) -> None:
        """Raw CSV bytes from a source that produces CSV itself (PostgreSQL COPY); the caller sets ``rows``."""
        self._write(chunk)

    def _write(self, data: bytes) -> None:
        self._sha.update(data)
        self.csv_bytes += len(data)
        self._gzip.write(data)

    def finish(self, schema: TableSchema, source: dict[str, Any], created_at: str) -> Manifest:
        self._gzip.close()
        self._stream.commit()
        schema_stream = self.table.store.open_write(self.table.key(SCHEMA))
        schema_stream.write(schema.dumps().encode("utf-8"))
        schema_stream.commit()
        manifest = Manifest(
            dataset_id=self.table.dataset_id,
            version=self.table.version,
            rows=self.rows,
            sha256=self._sha.hexdigest(),
            csv_bytes=self.csv_bytes,
            gzip_bytes=self._counter.written,
            columns=schema.names,
            created_at=created_at,
            source=source,
        )
        self.table.store.create_exclusive(self.table.key(MANIFEST), manifest.dumps())
        self.finished = True
        return manifest

    def abort(self) -> None:
        self._counter.discard = True
        try:
            self._gzip.close()
        finally:
            self._stream.abort()


def _csv_line(values: Sequence[str | None]) -> str:
    """One CSV line as PostgreSQL's COPY reads it: every value quoted, NULL as an unquoted empty field.
    (The csv module cannot tell NULL from '' here: it writes None as "" when quoting non-numerics.)"""
    return ",".join("" if v is None else '"' + v.replace('"', '""') + '"' for v in values) + "\n"


class _CountingWriter(io.RawIOBase):
    def __init__(self, stream: WriteStream):
        self.stream, self.written = stream, 0
        self.discard = False  # set on abort: the gzip trailer must not reach (and re-send) a failed upload

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if not self.discard:
            self.stream.write(bytes(data))
            self.written += len(data)
        return len(data)

