"""Staged tables: ``<root>/<dataset_id>/<version>/{data.csv.gz, schema.json, manifest.json}`` on S3 or disk.

The manifest is written last and is the completion flag: a staged table without one does not exist, so a
killed extract never counts. Keys are run-scoped (the version is in the key) and the manifest is created
exclusively, never overwritten. Data streams through in bounded memory: rows → CSV → gzip → S3 multipart
parts (or a temp file renamed into place on disk).

Three stages overlap, each handing fixed-size blocks to the next through a bounded queue: the caller's thread
produces CSV (a PostgreSQL COPY read, or converted rows), a compressor thread hashes and gzips it, and on S3 an
uploader thread sends the multipart parts, so the source is never kept waiting on compression or the network.
Memory stays bounded whatever the table's size (about QUEUE_BLOCKS × BLOCK_SIZE + (QUEUE_PARTS + 2) × PART_SIZE).
An error in a thread is raised in the caller at its next write or at commit; an abort stops the threads before
the multipart upload is aborted, so nothing is sent afterwards. Reading runs the other way: a reader thread
downloads and decompresses ahead of the consumer (``open_csv``), one bounded buffer ahead.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from .connections import redact
from .schema import TableSchema

log = logging.getLogger(__name__)

DATA, SCHEMA, MANIFEST = "data.csv.gz", "schema.json", "manifest.json"
try:  # ISA-L's deflate/inflate (the ``isal`` wheel): ~4x zlib's speed at level 1, with a better ratio
    from isal import isal_zlib as _zlib

    DEFLATE = "isal"
    _ZLIB_ERRORS: tuple[type[Exception], ...] = (zlib.error, _zlib.error)
except ImportError:  # pragma: no cover - the standard library's zlib, same format
    _zlib = zlib  # type: ignore[no-redef]
    DEFLATE = "zlib"
    _ZLIB_ERRORS = (zlib.error,)
# Chosen by measurement (bench/README.md "Profile", 163 MB of bench CSV, one core): zlib level 1 takes 1.25 s
# for 2.79x (3: 1.58 s, 2.88x; 6: 3.02 s, 3.13x); ISA-L level 1 takes 0.30 s for 3.02x (3: 0.43 s, 3.09x).
# Compression runs beside the source read on a 2-core machine, so its CPU time is what counts.
GZIP_LEVEL = 1
PART_SIZE = 8 * 1024 * 1024
BLOCK_SIZE = 1024 * 1024  # CSV bytes handed to the compressor (and decompressed bytes handed to a reader) at a time
QUEUE_BLOCKS = 4  # blocks waiting for the compressor / produced ahead of a reader
QUEUE_PARTS = 2  # full parts waiting for the uploader
READ_CHUNK = 256 * 1024  # compressed bytes read from the store at a time


class StagingError(RuntimeError):
    """A staging object that is missing, corrupt or already exists."""


class AlreadyStaged(StagingError):
    """The manifest for this version exists: another run finished it first."""


# --- background stages --------------------------------------------------------------------------------------

_DONE = object()


class _Stage:
    """One daemon thread that handles queued items in order. The queue is bounded, so a fast producer waits
    for the thread instead of buffering without limit. After an error (or ``cancel``) the thread handles
    nothing more but keeps draining the queue, so a producer can never block on a dead consumer; the error
    is raised in the producer at its next ``put`` or at ``close``."""

    def __init__(self, name: str, handle: Any, maxsize: int):
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._cancelled = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self.error is not None or self._cancelled:
                continue
            try:
                self._handle(item)
            except BaseException as exc:  # noqa: BLE001 — re-raised in the producer
                self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: Any) -> None:
        self.raise_error()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until everything queued is handled; raise the thread's error, if any."""
        self._queue.put(_DONE)
        self._thread.join()
        self.raise_error()

    def cancel(self) -> None:
        """Drop what is queued, wait for the item in hand (bounded by the store's timeouts)."""
        self._cancelled = True
        self._queue.put(_DONE)
        self._thread.join()


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
    """Uploads parts as they fill, from an uploader thread, so the writer never waits on S3 while a part is
    in flight; memory is bounded by the queue (QUEUE_PARTS parts waiting, one in flight, one filling). Abort
    stops the uploader first, then aborts the upload, which leaves nothing behind (an unfinished multipart
    upload is invisible to readers, and none is left over)."""

    def __init__(self, client: Any, bucket: str, key: str, where: str):
        self.client, self.bucket, self.key, self.where = client, bucket, key, where
        self._part_size = PART_SIZE
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._queued = 0
        self._upload_id: str | None = None
        self._uploader: _Stage | None = None

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            self._queue_part(self._part_size)
        return len(data)

    def _queue_part(self, size: int) -> None:
        if self._uploader is None:
            self._uploader = _Stage(f"s3-upload {self.key}", self._upload_part, QUEUE_PARTS)
        self._queued += 1
        part = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._uploader.put((self._queued, part))

    def _upload_part(self, item: tuple[int, bytes]) -> None:
        number, body = item
        with _naming_errors(self.where):
            if self._upload_id is None:
                self._upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
            reply = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body)
        self._parts.append({"ETag": reply["ETag"], "PartNumber": number})

    def commit(self) -> None:
        if self._uploader is None:  # small object: one PUT
            with _naming_errors(self.where):
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._queue_part(len(self._buffer))
        self._uploader.close()
        with _naming_errors(self.where):
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._uploader is not None:
            self._uploader.cancel()  # nothing is sent after this returns
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
        # A boto3 client takes ~10 ms of CPU to build and a run asks for the store many times (every
        # completion check): one per process, root and AWS environment. Never shared across a fork, whose
        # child would reuse the parent's pooled sockets.
        settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "DATABRIDGE_S3_"))))
        cache_key = (os.getpid(), root, settings)
        with _STORES_LOCK:
            store = _STORES.get(cache_key)
            if store is None:
                bucket, _, prefix = root[len("s3://"):].partition("/")
                store = _STORES[cache_key] = S3Store(bucket, prefix)
        return store
    return LocalStore(root)


_STORES: dict[tuple[Any, ...], S3Store] = {}
_STORES_LOCK = threading.Lock()


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
        """The staged CSV, decompressed while it streams: a reader thread downloads and gunzips up to
        QUEUE_BLOCKS blocks ahead of the consumer, so the network and zlib overlap with what the consumer
        does (a COPY into the destination)."""
        with self.open_gzip() as raw:
            inflater = _Inflater(raw, self.store.describe(self.key(DATA)))
            try:
                yield io.BufferedReader(inflater, BLOCK_SIZE)
            finally:
                inflater.close()

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
    and hashing the CSV as it goes. The caller's bytes are gathered into BLOCK_SIZE blocks; a compressor
    thread hashes and gzips each block and writes it to the store stream (whose S3 parts go up from a thread
    of their own), so the caller's thread only copies bytes."""

    def __init__(self, table: StagedTable, stream: WriteStream):
        self.table, self._stream = table, stream
        self._sha = hashlib.sha256()
        self.csv_bytes = 0
        self.gzip_bytes = 0
        self.rows = 0
        self._gzip = _zlib.compressobj(GZIP_LEVEL, _zlib.DEFLATED, 31)  # wbits 31: a gzip member (header, CRC-32, size)
        self._pending = bytearray()
        self._compressor = _Stage(f"gzip {table.describe()}", self._compress, QUEUE_BLOCKS)
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

    def write_csv(self, chunk: bytes | bytearray | memoryview) -> None:
        """Raw CSV bytes from a source that produces CSV itself (PostgreSQL COPY); the caller sets ``rows``.
        Any size: the writer gathers blocks itself (and copies what it keeps)."""
        self._write(chunk)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self.csv_bytes += len(data)
        if not self._pending and len(data) >= BLOCK_SIZE:  # a whole block already: one copy, straight over
            self._compressor.put(bytes(data))
            return
        self._pending += data
        if len(self._pending) >= BLOCK_SIZE:
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
        if self._pending:
            self._hand_off()
        self._compressor.close()  # every block hashed, compressed and handed to the store; raises a stage's error
        self._emit(self._gzip.flush())
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
            gzip_bytes=self.gzip_bytes,
            columns=schema.names,
            created_at=created_at,
            source=source,
        )
        self.table.store.create_exclusive(self.table.key(MANIFEST), manifest.dumps())
        self.finished = True
        return manifest

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


class _Inflater(io.RawIOBase):
    """gzip bytes from ``raw`` → decompressed bytes, produced by a reader thread into a bounded queue (at most
    QUEUE_BLOCKS blocks of BLOCK_SIZE ahead, whatever the compression ratio). Concatenated gzip members are
    read as one stream, as ``gzip`` does; the CRC-32 and length of each member are checked by zlib, and a
    stream that ends inside a member is an error. The thread's errors are raised in the reader; ``close``
    stops the thread."""

    def __init__(self, raw: IO[bytes], where: str):
        super().__init__()
        self._raw, self._where = raw, where
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_BLOCKS)
        self._stop = threading.Event()
        self._block = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(target=self._run, name=f"gunzip {where}", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            inflate = _zlib.decompressobj(31)
            data, started = b"", False
            while not self._stop.is_set():
                if not data:
                    data = self._raw.read(READ_CHUNK)
                    if not data:
                        break
                    started = True
                if inflate.eof:  # the next member of a concatenated gzip stream
                    inflate = _zlib.decompressobj(31)
                out = inflate.decompress(data, BLOCK_SIZE)
                data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
                if out and not self._put(out):
                    return
            if started and not inflate.eof and not self._stop.is_set():
                raise StagingError(f"{self._where} is truncated: the gzip stream ends inside a member")
        except BaseException as exc:  # noqa: BLE001 — raised in the reader
            if isinstance(exc, _ZLIB_ERRORS):
                exc = StagingError(f"corrupt gzip in {self._where}: {exc}")
            self._put(exc)
            return
        self._put(_DONE)

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        while not self._block:
            if self._ended:
                return 0
            item = self._queue.get()
            if item is _DONE:
                self._ended = True
                return 0
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            self._block = memoryview(item)
        n = min(len(buffer), len(self._block))
        buffer[:n] = self._block[:n]
        self._block = self._block[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()  # a read in progress returns or times out (the store's read timeout)
        super().close()
