"""The bounded background stages a staged table streams through.

Three stages overlap when a table is written, each handing fixed-size blocks to the next through a bounded
queue: the caller's thread produces CSV (a PostgreSQL COPY read, or converted rows), a compressor thread
hashes and gzips it, and on S3 an uploader thread sends the multipart parts, so the source is never kept
waiting on compression or the network. Memory stays bounded whatever the table's size (about
QUEUE_BLOCKS × BLOCK_SIZE + (QUEUE_PARTS + 2) × PART_SIZE). An error in a thread is raised in the caller at
its next write or at commit; an abort stops the threads before the multipart upload is aborted, so nothing
is sent afterwards. Reading runs the other way: a reader thread downloads and decompresses ahead of the
consumer (``_Inflater``), one bounded buffer ahead.
"""
from __future__ import annotations

import io
import queue
import threading
import zlib
from typing import IO, Any

from . import tuning

try:  # ISA-L's deflate/inflate (the ``isal`` wheel): ~4x zlib's speed at level 1, with a better ratio
    from isal import isal_zlib as _zlib

    DEFLATE = "isal"
    _ZLIB_ERRORS: tuple[type[Exception], ...] = (zlib.error, _zlib.error)
except ImportError:  # pragma: no cover - the standard library's zlib, same format
    _zlib = zlib  # type: ignore[no-redef]
    DEFLATE = "zlib"
    _ZLIB_ERRORS = (zlib.error,)

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


class _Inflater(io.RawIOBase):
    """gzip bytes from ``raw`` → decompressed bytes, produced by a reader thread into a bounded queue (at most
    QUEUE_BLOCKS blocks of BLOCK_SIZE ahead, whatever the compression ratio). Concatenated gzip members are
    read as one stream, as ``gzip`` does; the CRC-32 and length of each member are checked by zlib, and a
    stream that ends inside a member is an error. The thread's errors are raised in the reader; ``close``
    stops the thread."""

    def __init__(self, raw: IO[bytes], where: str):
        super().__init__()
        self._raw, self._where = raw, where
        self._queue: queue.Queue[Any] = queue.Queue(tuning.QUEUE_BLOCKS)
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
        config = tuning
        try:
            inflate = _zlib.decompressobj(31)
            data, started = b"", False
            while not self._stop.is_set():
                if not data:
                    data = self._raw.read(config.READ_CHUNK)
                    if not data:
                        break
                    started = True
                if inflate.eof:  # the next member of a concatenated gzip stream
                    inflate = _zlib.decompressobj(31)
                out = inflate.decompress(data, config.BLOCK_SIZE)
                data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
                if out and not self._put(out):
                    return
            if started and not inflate.eof and not self._stop.is_set():
                raise config.StagingError(f"{self._where} is truncated: the gzip stream ends inside a member")
        except BaseException as exc:  # noqa: BLE001 — raised in the reader
            if isinstance(exc, _ZLIB_ERRORS):
                exc = config.StagingError(f"corrupt gzip in {self._where}: {exc}")
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
