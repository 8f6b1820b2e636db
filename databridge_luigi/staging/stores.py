"""Where staged bytes live: a directory or an S3 prefix.

A store writes an object whole or not at all (a temp file renamed into place; an S3 multipart upload that is
completed or aborted), creates an object exclusively (the manifest: a hard link on disk, ``IfNoneMatch`` on
S3), reads, deletes and lists. It knows nothing of the staged-table format.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from ..connections import redact
from . import tuning
from .errors import AlreadyStaged, StagingError
from .pipes import _Stage

log = logging.getLogger("databridge_luigi.staging")


class Store(Protocol):
    def describe(self, key: str) -> str: ...
    def open_write(self, key: str) -> "WriteStream": ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def create_exclusive(self, key: str, data: bytes) -> None: ...
    def read_bytes(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list_prefix(self, prefix: str) -> list[str]: ...
    def list_folders(self, prefix: str) -> list[str]: ...


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
        try:
            tmp.write_bytes(data)
            os.link(tmp, path)  # atomic and fails if the manifest exists
        except FileExistsError:
            raise AlreadyStaged(f"{self.describe(key)} already exists") from None
        except OSError as exc:  # e.g. a full disk: name the file; the temp file never stays behind
            raise StagingError(f"cannot write staging file {self.describe(key)}: {exc.strerror or exc} [Errno {exc.errno}]") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def list_prefix(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def list_folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under ``prefix`` (a dataset's versions)."""
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


class _LocalWrite:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:  # e.g. a full disk: name the file (abort removes the temp file)
            raise StagingError(f"cannot write staging file {self.path}: {exc.strerror or exc} [Errno {exc.errno}]") from exc

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._file.name, self.path)
        except OSError as exc:
            self.abort()
            raise StagingError(f"cannot write staging file {self.path}: {exc.strerror or exc} [Errno {exc.errno}]") from exc

    def abort(self) -> None:
        try:
            self._file.close()  # flushes what is buffered: on a full disk that fails too
        except OSError:
            pass
        finally:
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

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response["Error"].get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        with _naming_errors(self.describe(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_prefix(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys += [o["Key"][len(self._key("")):] for o in page.get("Contents", [])]
        return sorted(keys)

    def list_folders(self, prefix: str) -> list[str]:
        """The names directly under ``prefix`` (a dataset's versions): one entry per version, not per object."""
        base = self._key(prefix.rstrip("/") + "/")
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            names += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)


class _S3MultipartWrite:
    """Uploads parts as they fill, from an uploader thread, so the writer never waits on S3 while a part is
    in flight; memory is bounded by the queue (QUEUE_PARTS parts waiting, one in flight, one filling). Abort
    stops the uploader first, then aborts the upload, which leaves nothing behind (an unfinished multipart
    upload is invisible to readers, and none is left over)."""

    def __init__(self, client: Any, bucket: str, key: str, where: str):
        self.client, self.bucket, self.key, self.where = client, bucket, key, where
        self._part_size = tuning.PART_SIZE
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
            self._uploader = _Stage(f"s3-upload {self.key}", self._upload_part, tuning.QUEUE_PARTS)
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
    """``DATABRIDGE_STAGING`` (or ``root``): ``s3://bucket/prefix`` or a directory (default ./var/staging).

    One store per process, root and AWS environment: a boto3 client takes ~10 ms of CPU to build and a run asks
    for the store many times (every completion check), and callers may keep what they learn per store (the
    staged tables in ``tasks``). Never shared across a fork, whose child would reuse the parent's pooled sockets."""
    root = root or os.environ.get("DATABRIDGE_STAGING") or "var/staging"
    settings_key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "DATABRIDGE_S3_"))))
    cache_key = (os.getpid(), root, settings_key)
    with _STORES_LOCK:
        store = _STORES.get(cache_key)
        if store is None:
            if root.startswith("s3://"):
                bucket, _, prefix = root[len("s3://"):].partition("/")
                store = S3Store(bucket, prefix)
            else:
                store = LocalStore(root)
            _STORES[cache_key] = store
    return store


_STORES: dict[tuple[Any, ...], Store] = {}
_STORES_LOCK = threading.Lock()
