"""One CSV, COPYed FROM STDIN over several connections at once.

A destination's COPY of the staged CSV is CPU-bound in its backend (text and EWKT parsing: ~2.2 s per 1M bench
rows); two backends parse two halves in parallel (measured with psql: 1.24–1.42 s against 2.27–2.64 s for the
halves one after the other). The caller's thread decompresses and cuts the CSV into record-aligned blocks; one
thread per connection takes whichever block is next from one bounded queue and writes it to its COPY, after
the header line (each COPY statement says HEADER true). Memory is the queue and one block being cut, whatever
the row count.

All or nothing: each stream's COPY runs in a transaction of its own that commits only once every stream's COPY
has succeeded (a barrier); if any stream fails, every stream stops (none waits forever on the queue) and rolls
back, and the first error is raised in the caller.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any

import psycopg

# Read at run time (tests use tiny blocks to put records across block boundaries).
BLOCK_SIZE = 1024 * 1024  # CSV bytes cut per block: big enough that per-block Python costs nothing
QUEUE_BLOCKS = 4  # blocks waiting for a free stream
# A record (one row, newlines inside quoted values included) longer than this is not cut into blocks: memory
# would follow the record, so the caller COPYs on one connection instead (PostgreSQL allows 1 GB values).
MAX_RECORD = 64 * 1024 * 1024
POLL = 0.1  # seconds between looks at the stop flag while waiting on the queue

QUOTE, NEWLINE = b'"', b"\n"


class RecordTooLong(Exception):
    """One CSV record is longer than MAX_RECORD."""


class _Stopped(Exception):
    """Another stream or the reader failed: this stream stops (and rolls back) quietly."""


def _last_record_end(buf: bytearray, start: int, quotes_before_start: int) -> int:
    """The index just after the last newline of ``buf[start:]`` that ends a record, or -1.

    ``buf`` begins at a record start and no record ends inside ``buf[:start]``, which holds
    ``quotes_before_start`` quote characters. A newline ends a record when the quotes before it are balanced
    (an even count: a doubled quote inside a quoted value counts twice). Counting is bytes.count, in C; the
    walk back from the end jumps from quote to quote, so a quoted value full of newlines costs one step."""
    end = len(buf)
    quotes = quotes_before_start + buf.count(QUOTE, start, end)  # quotes in buf[:end]
    while True:
        newline = buf.rfind(NEWLINE, start, end)
        if newline < 0:
            return -1
        quotes -= buf.count(QUOTE, newline, end)  # now: quotes in buf[:newline]
        if quotes % 2 == 0:
            return newline + 1
        # Inside a quoted value: every newline back to its last quote is inside it too.
        end = buf.rfind(QUOTE, start, newline)
        if end < 0:
            return -1
        quotes -= 1  # the one quote in buf[end:newline]


def record_blocks(data: IO[bytes], block_size: int, max_record: int = MAX_RECORD) -> Iterator[bytes]:
    """The CSV in ``data`` as blocks of whole records, each about ``block_size`` bytes (at least one record);
    joined they are exactly ``data``."""
    buf = bytearray()  # starts at a record start
    scanned = quotes = 0  # no record ends in buf[:scanned], which holds `quotes` quotes
    while chunk := data.read(block_size):
        buf += chunk
        cut = _last_record_end(buf, scanned, quotes)
        if cut > 0:
            yield bytes(buf[:cut])
            del buf[:cut]
            scanned, quotes = 0, 0
        if len(buf) > max_record:
            raise RecordTooLong(f"a CSV record is longer than {max_record} bytes")
        quotes += buf.count(QUOTE, scanned)
        scanned = len(buf)
    if buf:
        yield bytes(buf)  # the last record, without a final newline


def header_and_blocks(data: IO[bytes], block_size: int, max_record: int = MAX_RECORD) -> tuple[bytes, Iterator[bytes]]:
    """The header record (every stream's COPY needs it) and the blocks of data records after it."""
    blocks = record_blocks(data, block_size, max_record)
    first = next(blocks, b"")
    # The first block holds the header and whole records after it: split off the first record.
    position = 0
    while True:
        newline = first.find(NEWLINE, position)
        if newline < 0:
            header, rest = first, b""
            break
        if first.count(QUOTE, 0, newline) % 2 == 0:
            header, rest = first[:newline + 1], first[newline + 1:]
            break
        position = newline + 1

    def after_header() -> Iterator[bytes]:
        if rest:
            yield rest
        yield from blocks

    return header, after_header()


class _Streams:
    """What the reader and the stream threads share: the block queue, the stop flag, the first error."""

    def __init__(self, count: int, queue_blocks: int):
        self.blocks: queue.Queue[bytes | None] = queue.Queue(queue_blocks)
        self.stop = threading.Event()
        self.started = threading.Barrier(count + 1)  # every COPY has begun (and the reader): blocks go to all from the start
        self.barrier = threading.Barrier(count)  # every COPY succeeded: commit
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.stop.set()
        self.started.abort()
        self.barrier.abort()

    def put(self, block: bytes | None) -> bool:
        while not self.stop.is_set():
            try:
                self.blocks.put(block, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def wait_started(self) -> None:
        try:
            self.started.wait()
        except threading.BrokenBarrierError:
            raise _Stopped from None

    def get(self) -> bytes | None:
        while not self.stop.is_set():
            try:
                return self.blocks.get(timeout=POLL)
            except queue.Empty:
                continue
        raise _Stopped


def _stream(conn: psycopg.Connection[Any], statement: bytes, header: bytes, streams: _Streams, rows: list[int], index: int) -> None:
    """One connection's COPY: the header, then blocks until the end mark; commits when every stream succeeded."""
    try:
        with conn.transaction(), conn.cursor() as cursor:
            with cursor.copy(statement) as copy:
                copy.write(header)
                streams.wait_started()
                while (block := streams.get()) is not None:
                    copy.write(block)
            rows[index] = cursor.rowcount
            try:
                streams.barrier.wait()
            except threading.BrokenBarrierError:
                raise psycopg.Rollback from None  # another stream failed: this one's rows go too
    except _Stopped:
        streams.barrier.abort()
    except BaseException as exc:  # noqa: BLE001 — raised in the caller
        if streams.stop.is_set():
            return  # stopped by another failure (the COPY was aborted or cancelled): not the error to report
        streams.fail(exc)


def copy_parallel(connections: Sequence[psycopg.Connection[Any]], statement: bytes, data: IO[bytes]) -> list[int]:
    """COPY the CSV in ``data`` (with its header) through ``statement`` on every connection at once; return
    each stream's row count. Raises the first error of any stream or of reading (RecordTooLong included),
    after every stream has stopped and rolled back."""
    streams = _Streams(len(connections), QUEUE_BLOCKS)
    rows = [0] * len(connections)
    threads: list[threading.Thread] = []
    try:
        header, blocks = header_and_blocks(data, BLOCK_SIZE, MAX_RECORD)
        threads = [threading.Thread(target=_stream, args=(conn, statement, header, streams, rows, i), name=f"COPY stream {i + 1}", daemon=True)
                   for i, conn in enumerate(connections)]
        for thread in threads:
            thread.start()
        try:
            streams.wait_started()
            for block in blocks:
                if not streams.put(block):
                    break
            else:
                for _ in threads:
                    streams.put(None)  # one end mark per stream
        except _Stopped:
            pass  # a stream failed before it began: its error is raised below
        for thread in threads:
            thread.join()
    except BaseException as exc:
        # Reading failed, or the caller is being stopped (SIGTERM raises in this thread): the streams abort
        # their COPYs (CopyFail) within POLL seconds and roll back.
        streams.fail(exc)
        if not isinstance(exc, Exception):  # an interruption: the server must not run on after we are gone
            for conn in connections:
                try:
                    conn.cancel_safe(timeout=5)
                except Exception:  # noqa: BLE001 — best effort; the streams abort their COPYs anyway
                    pass
        for thread in threads:
            thread.join(30)
        raise
    if streams.errors:
        raise streams.errors[0]
    return rows
