"""Read a one-column MySQL result (the server-written CSV lines) as raw bytes, without PyMySQL's per-row work.

PyMySQL's unbuffered cursor builds, for every row, a packet object, a decoded ``str`` and a tuple (~2.6 µs a
row: 2.6 s of our CPU per 1M rows). A row of a one-column text result is one protocol packet — a 3-byte
length, a sequence number, a length-encoded string — so ``lines`` reads the packets that are complete in
PyMySQL's own socket buffer (``peek``: nothing is read that the connection would not read next) and slices
the line bytes out, ~1 µs a row. Everything else — a packet not yet wholly buffered, the end-of-rows packet,
an error packet (a statement timeout), a NULL, a row of 16 MiB or more split over packets, a sequence number
out of step — goes through PyMySQL's ``_read_packet``, so errors, timeouts and a lost connection are raised
exactly as the cursor raises them, and the connection is left at a packet boundary whatever happens (closing
the cursor then drains the rest as usual).
"""
from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

MAX_PACKET = 0xFFFFFF  # a packet this long continues in the next one (a row of 16 MiB or more)


# PyMySQL internals the reader relies on (PyMySQL 1.1–1.2). A release without one of them gets PyMySQL's own
# rows instead: slower, never wrong.
_CONNECTION_PARTS = ("_rfile", "_sock", "_next_seq_id", "_read_packet", "_current_timeout", "_read_timeout", "_force_close")


def single_column_encoding(cursor: Any) -> str | None:
    """The encoding PyMySQL would decode the result's one column with (None: bytes, not one column, or a PyMySQL
    whose internals this reader does not know)."""
    result = getattr(cursor, "_result", None)
    converters = getattr(result, "converters", None)
    if not result or not getattr(result, "unbuffered_active", False) or not converters or len(converters) != 1:
        return None
    connection = getattr(cursor, "connection", None)
    if not all(hasattr(connection, part) for part in _CONNECTION_PARTS) or not hasattr(connection._rfile, "peek") \
            or not hasattr(result, "_check_packet_is_eof"):
        return None
    return converters[0][0]


def lines(cursor: Any, batch_rows: int) -> Iterator[list[bytes | None]]:
    """The rows of an executed unbuffered (``SSCursor``) one-column result, as lists of at most ``batch_rows``
    raw values (bytes in the connection's encoding; None for NULL)."""
    conn, result = cursor.connection, cursor._result
    if conn._current_timeout != conn._read_timeout:  # as _read_packet does before reading
        conn._sock.settimeout(conn._read_timeout)
        conn._current_timeout = conn._read_timeout
    rfile = conn._rfile
    batch: list[bytes | None] = []
    while result.unbuffered_active:
        buffered = _peek(conn, rfile)
        size, pos, seq = len(buffered), 0, conn._next_seq_id
        while pos + 5 <= size:
            length = buffered[pos] | (buffered[pos + 1] << 8) | (buffered[pos + 2] << 16)
            end = pos + 4 + length
            if end > size or buffered[pos + 3] != seq or length == MAX_PACKET:
                break
            first = buffered[pos + 4]  # the value's length-encoded length, which must fill the packet
            if first < 0xFB and first == length - 1:  # up to 250 bytes
                start = pos + 5
            elif first == 0xFC and length > 3 and buffered[pos + 5] | (buffered[pos + 6] << 8) == length - 3:
                start = pos + 7
            elif first == 0xFD and length > 4 and buffered[pos + 5] | (buffered[pos + 6] << 8) | (buffered[pos + 7] << 16) == length - 4:
                start = pos + 8
            else:  # NULL, an 8-byte length, the end-of-rows or an error packet: PyMySQL's path below
                break
            batch.append(buffered[start:end])
            seq = (seq + 1) & 0xFF
            pos = end
        if pos:
            rfile.read(pos)  # consume exactly the packets sliced out above
            conn._next_seq_id = seq
        else:
            packet = conn._read_packet()  # raises the server's error (a timeout among them) as the cursor would
            if result._check_packet_is_eof(packet):
                result.unbuffered_active = False
                result.connection = None
                result.rows = None
                break
            batch.append(packet.read_length_coded_string())
        if len(batch) >= batch_rows:
            yield batch[:batch_rows]
            batch = batch[batch_rows:]
    while batch:
        yield batch[:batch_rows]
        batch = batch[batch_rows:]


def _peek(conn: Any, rfile: Any) -> bytes:
    """The bytes buffered already (one socket read if none are), a failed read handled as PyMySQL's _read_bytes
    handles it: the connection closed, OperationalError "Lost connection"."""
    from pymysql import err
    from pymysql.constants import CR

    while True:
        try:
            return rfile.peek(1)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            conn._force_close()
            raise err.OperationalError(CR.CR_SERVER_LOST, f"Lost connection to MySQL server during query ({exc})") from None
        except BaseException:
            conn._force_close()
            raise
