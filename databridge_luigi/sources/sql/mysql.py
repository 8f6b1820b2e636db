"""MySQL and MariaDB (``mysql+pymysql://user:pw@host:3306/db``; the dataset's ``source.schema`` is the
database). Identifiers are quoted the dialect's way (backticks), so no ``ANSI_QUOTES`` session is needed.

Streaming: PyMySQL's default cursor reads a whole result into memory before the first row is returned; the
extract uses its unbuffered ``SSCursor`` and reads BATCH_ROWS at a time, so memory is one batch whatever the
table's size. (Other statements run on connections of their own: an unbuffered result holds its connection
until it is read to the end.)

Speed: PyMySQL is pure Python and parses every field of every row (~25 µs a row of 13 columns here), so the
server writes the CSV: each row comes back as one text field — ``CONCAT_WS(',', …)`` of per-column expressions
that quote text (doubling ``"``), write NULL as an empty unquoted field, booleans as ``true``/``false``,
DECIMAL/integers/doubles as the server's exact text (shortest round-trip digits for doubles), dates ISO and
DATETIME/TIME as the server's own text with ``T`` for the space (six fraction digits, none when they are zero:
``DATE_FORMAT`` cost twice as much), naive DATETIMEs with their UTC offset in the dataset's zone by PostgreSQL's
rule (``values.local_breakpoints`` turned into a ``CASE`` over the column's range; no time zone tables needed on
the server). Even one field a row costs PyMySQL ~2.6 µs (a packet object, a decoded ``str``, a tuple), so the
lines are sliced out of its socket buffer packet by packet (``mysql_lines``, ~1 µs a row; anything unusual —
an error, the end of the rows, a packet not yet wholly read — goes through PyMySQL's own reader). Python only
joins lines, removes NUL bytes (counted) and checks UTF-8. Values the reference conversion would refuse (a 2 in
a boolean, zero dates, times outside 0–24 h) are looked for first and refused by row and column. Tables with
columns the server cannot write as text exactly (BLOB/BINARY/BIT, spatial types, a configured WKT geometry with
SRID prefixes or EMPTY shapes, anything unknown) take the vectorised row path instead (``rows.py``): same
output, slower.

The look before the CSV is the costly part for a WKT column (~2 s of the server's CPU per 1M rows: nine tests
and a type signature per value, each string function ~0.05–0.1 s; none is evaluated twice). The tests are split
over two scans that run at once on two connections — the server gives each a core — and their ``COUNT(*)`` is
the count before the extract; the types, needed only for the schema, are read on a second connection while the
CSV streams (a failed stream cancels that scan with ``KILL QUERY``). Per 1M rows of bench/row_path.py's table:
our CPU 3.3–4.9 → 1.7–2.0 s, the extract 8.3–9.8 → 4.8–5.2 s (bench/README.md, "Row path", 2026-12-06).

Types: ``BOOLEAN`` is ``tinyint(1)`` in MySQL and is published as boolean (a value other than 0/1 in such a
column is refused naming row and column); ``TIMESTAMP`` columns are read in a UTC session and published as
those instants; ``DATETIME`` is naive and localized to the dataset's ``timezone`` like any naive timestamp.
"""
from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ...geometry import ewkt_type
from ...staging import StagedTableWriter
from ..values import ConversionStats, local_breakpoints, offset_text
from .base import BATCH_ROWS, ExtractError, Progress, SourceColumn
from .generic import GenericAdapter, generic_type

MYSQL_TIMEOUT_ERRORS = (1969, 3024)  # MariaDB max_statement_time exceeded; MySQL max_execution_time exceeded


class MySQLAdapter(GenericAdapter):
    dialect = "mysql"

    def on_connect(self, dbapi_connection: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET time_zone = '+00:00'")  # TIMESTAMP values arrive as UTC
            if self.timeout:
                server = getattr(dbapi_connection, "get_server_info", lambda: "")() or ""
                if "mariadb" in server.lower():
                    cursor.execute(f"SET SESSION max_statement_time = {float(self.timeout):.3f}")
                else:
                    cursor.execute(f"SET SESSION max_execution_time = {int(self.timeout * 1000)}")
        finally:
            cursor.close()

    def is_timeout(self, error: BaseException) -> bool:
        args = getattr(error, "args", ())
        return bool(args) and args[0] in MYSQL_TIMEOUT_ERRORS

    def column_type(self, column: dict[str, Any]) -> tuple[str, str | None]:
        kind = column["type"]
        if isinstance(kind, mysql.TINYINT) and getattr(kind, "display_width", None) == 1:
            return "boolean", None
        if isinstance(kind, sa.TIMESTAMP):
            return "datetime", "UTC"
        if isinstance(kind, mysql.YEAR):
            return "integer", None
        if isinstance(kind, sa.types.NullType):  # SQLAlchemy does not know it: MySQL's spatial types among others
            return "unsupported", None
        return generic_type(kind), None

    def open_cursor(self, raw: Any) -> Any:
        import pymysql.cursors

        cursor = raw.driver_connection.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows as they are fetched
        cursor.arraysize = BATCH_ROWS
        return cursor

    # --- the server writes the CSV ------------------------------------------------------------------------------
    def _kinds(self) -> dict[str, Any]:
        if not hasattr(self, "_reflected"):
            inspector = sa.inspect(self.engine)
            self._reflected = {c["name"]: c["type"] for c in inspector.get_columns(self.dataset.source_table, schema=self.dataset.source_schema)}
        return self._reflected

    def _server_csv_ok(self, columns: Sequence[SourceColumn]) -> bool:
        kinds = self._kinds()
        for column in columns:
            kind = kinds.get(column.source_name)
            if column.type == "geometry":
                if not isinstance(kind, (sa.String, sa.Text)):
                    return False
                continue
            if isinstance(kind, (sa.LargeBinary, sa.types._Binary, mysql.BIT)) or getattr(kind, "collation", None) == "binary":
                return False
            if column.type not in ("string", "integer", "number", "boolean", "date", "datetime", "time", "object"):
                return False
            if column.type == "string" and not isinstance(kind, (sa.String, sa.Text, sa.Enum, mysql.SET, sa.JSON)):
                return False
        return True

    def check(self, columns: Sequence[SourceColumn]) -> None:
        """Before the server writes the CSV, look for the values the reference conversion refuses, and name them."""
        from .rows import row_path

        for column in columns:
            if column.type == "unsupported":
                raise ExtractError(
                    f"{self.dataset.id}: column {column.name} of {self.table_label} has a type this source cannot publish "
                    f"(MySQL's spatial types, for one: there is no MySQL geometry path yet); leave it out with exclude_fields "
                    f"in {self.dataset.path}, or publish a view that converts it (e.g. ST_AsText) with geometry: {{column, srid}}"
                )
        self._server = row_path() == "fast" and self._server_csv_ok(columns)
        if not self._server:
            return
        kinds = self._kinds()
        tests = []  # (column, condition, message): a count over the table; message None: a geometry the server does not write
        beside = set()  # the tests counted in the second scan
        for column in columns:
            c, kind = self.q(column.source_name), kinds.get(column.source_name)
            if column.type == "boolean":
                tests.append((column, f"({c} IS NOT NULL AND {c} NOT IN (0, 1))", "not a boolean: {}"))
            elif column.type in ("date", "datetime") and not isinstance(kind, sa.TIMESTAMP):
                tests.append((column, f"({c} IS NOT NULL AND (MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0))", "not an ISO-8601 date: {!r}" if column.type == "date"
                              else "not an ISO-8601 timestamp (years 1-9999): {!r}"))
            elif column.type == "time":
                tests.append((column, f"({c} IS NOT NULL AND ({c} < '00:00:00' OR {c} >= '24:00:00'))", "not an ISO-8601 time: {!r}"))
            elif column.type == "geometry":
                first, second = self._geometry_tests(c)
                tests += [(column, first, None), (column, second, None)]
                beside.add(len(tests) - 1)
        # What the CSV needs to know first: the problems (counted), each naive DATETIME's range (for its offset CASE)
        # and the row count before the extract (count() returns it once instead of scanning again). One scan answers
        # it all; with a geometry column, whose tests cost ~1 s of the server's CPU per 1M rows, two scans share the
        # work on two connections at once (the server runs each on a core of its own). Its types are read while the
        # CSV streams (stream()). Only a table with a problem pays another scan.
        scans: list[list[tuple[Any, str, int]]] = [[("count", "COUNT(*)", 1)], []]  # (key, select list, values) per scan
        for index, (column, condition, message) in enumerate(tests):
            scans[1 if index in beside else 0].append((index, f"SUM({condition})", 1))
        for column in columns:
            c, kind = self.q(column.source_name), kinds.get(column.source_name)
            if column.type == "datetime" and not isinstance(kind, sa.TIMESTAMP):
                scans[0].append((("range", column.source_name), f"MIN({c}), MAX({c})", 2))
        found = self._scan_all([scan for scan in scans if scan])
        self._counted = int(found["count"][0])
        self._ranges: dict[str, tuple[Any, Any]] = {key[1]: tuple(value) for key, value in found.items() if isinstance(key, tuple) and key[0] == "range"}
        counts = [found[index][0] for index in range(len(tests))]
        for (column, condition, message), count in zip(tests, counts):
            if not count:
                continue
            if message is None:  # a geometry the server cannot write as EWKT: the row path normalizes or refuses it
                self._server = False
                continue
            bad = self._first_row(f"SELECT {condition}, CAST({self.q(column.source_name)} AS CHAR) FROM {self.from_clause()}")
            value: Any = bad[1]
            if column.type == "boolean":
                value = int(value) if str(value).lstrip("-").isdigit() else value
            raise ExtractError(f"{self.dataset.id}: row {bad[0]}, column {column.name}: {message.format(value)}")

    @staticmethod
    def _geometry_tests(c: str) -> tuple[str, str]:
        """True for a WKT value the server does not write (either half): only plain WKT with single spaces is (its
        type is read from keyword and spaces). Every call costs ~0.1 s per 1M rows, so none is spent twice: a value
        with no ``(`` covers blank ones, and once ``c = TRIM(c)`` holds (no leading space) LEFT(c) is LEFT(TRIM(c))."""
        return (f"({c} IS NOT NULL AND ({c} <> TRIM({c}) OR LOCATE('(', {c}) = 0 OR UPPER(LEFT({c}, 5)) = 'SRID=' "
                f"OR {c} LIKE '%%#%%'))",
                f"({c} IS NOT NULL AND (UPPER(TRIM({c})) LIKE '%%EMPTY' OR {c} LIKE '%%  %%' OR {c} LIKE '%%\t%%' OR {c} LIKE '%%\n%%' OR {c} LIKE '%%\r%%'))")

    def _scan_all(self, scans: list[list[tuple[Any, str, int]]]) -> dict[Any, list[Any]]:
        """Run each scan (one SELECT of aggregates over the table) on a connection of its own, all at once;
        the values by key. A failure in any (a statement timeout) is raised once all have ended."""
        from concurrent.futures import ThreadPoolExecutor

        scan = self._scan
        if len(scans) == 1:
            return scan(scans[0])
        with ThreadPoolExecutor(len(scans) - 1) as pool:
            others = [pool.submit(scan, parts) for parts in scans[1:]]
            try:
                found = scan(scans[0])
            finally:
                for future in others:  # each ends by itself (a scan, bounded by the dataset's statement timeout)
                    future.exception()
        for future in others:
            found.update(future.result())
        return found

    def _scan(self, parts: list[tuple[Any, str, int]], running: list[int] | None = None) -> dict[Any, list[Any]]:
        """One SELECT of aggregates over the table (its server thread id appended to ``running`` while it runs)."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION group_concat_max_len = 1048576")
            if running is not None:
                running.append(conn.connection.dbapi_connection.thread_id())
            row = list(conn.exec_driver_sql(f"SELECT {', '.join(sql for _, sql, _ in parts)} FROM {self.from_clause()}").first())
        out = {}
        for key, _, width in parts:
            out[key], row = row[:width], row[width:]
        return out

    @staticmethod
    def _signature(c: str) -> str:
        """A WKT value's keyword as written and the number of ordinates of its first coordinate (``POINT Z |3``;
        _wkt_types trims and upper-cases the few distinct keywords). Only read when no value failed
        _geometry_tests, so there is a ``(`` and no leading space: TRIM(c) would change nothing here."""
        first = f"TRIM(SUBSTRING_INDEX(SUBSTRING_INDEX(SUBSTRING_INDEX({c}, ',', 1), ')', 1), '(', -1))"
        return f"CONCAT(SUBSTRING_INDEX({c}, '(', 1), '|', LENGTH({first}) - LENGTH(REPLACE({first}, ' ', '')) + 1)"

    def count(self) -> int:
        """The count before the extract comes from check()'s scan (once); the one after is counted anew."""
        counted, self._counted = getattr(self, "_counted", None), None
        return counted if counted is not None and not self.row_filter else super().count()

    def _first_row(self, sql: str) -> tuple[int, Any]:
        """(row number in scan order, value) of the first row whose first column is true; read row by row, as the
        extract reads them (a window function's numbering is not reliable once the optimizer pushes filters down)."""
        raw = self.engine.raw_connection()
        try:
            cursor = self.open_cursor(raw)
            try:
                cursor.execute(sql)
                number = 0
                while batch := cursor.fetchmany(BATCH_ROWS):
                    for flag, value in batch:
                        number += 1
                        if flag:
                            return number, value
            finally:
                cursor.close()
        finally:
            raw.close()
        return 0, None

    def _field(self, column: SourceColumn, conn: sa.Connection) -> str:
        c, kind = self.q(column.source_name), self._kinds().get(column.source_name)
        quoted = lambda text: f"CONCAT('\"', {text}, '\"')"  # noqa: E731
        if column.type == "boolean":
            return f"CASE WHEN {c} IS NULL THEN '' WHEN {c} = 1 THEN '\"true\"' ELSE '\"false\"' END"
        if column.type == "geometry":
            return f"IF({c} IS NULL, '', CONCAT('\"SRID={int(column.srid or 0)};', REPLACE({c}, '\"', '\"\"'), '\"'))"
        if column.type == "datetime":
            stamp = self._fraction(f"REPLACE({c}, ' ', 'T')", c, 19, kind)
            return f"IF({c} IS NULL, '', {quoted(f'CONCAT({stamp}, {self._offset_sql(column, c, conn, kind)})')})"
        if column.type == "time":
            return f"IF({c} IS NULL, '', {quoted(self._fraction(f'CAST({c} AS CHAR)', c, 8, kind))})"
        if column.type in ("integer", "number", "date"):
            return f"IF({c} IS NULL, '', {quoted(c)})"
        return f"IF({c} IS NULL, '', {quoted(f'REPLACE({c}, {chr(39)}{chr(34)}{chr(39)}, {chr(39)}{chr(34)}{chr(34)}{chr(39)})')})"

    @staticmethod
    def _fraction(text: str, c: str, width: int, kind: Any) -> str:
        """The server's text of a DATETIME/TIME (``width`` characters, then as many fraction digits as the column
        declares) as the reference writes it: six fraction digits, none when they are all zero. A column without
        fractions needs no more (DATE_FORMAT and MICROSECOND cost twice as much)."""
        if not getattr(kind, "fsp", None):
            return text
        return f"IF(MICROSECOND({c}) = 0, LEFT({text}, {width}), RPAD({text}, {width + 7}, '0'))"

    def _offset_sql(self, column: SourceColumn, c: str, conn: sa.Connection, kind: Any) -> str:
        if isinstance(kind, sa.TIMESTAMP):
            return "'+00:00'"  # read in a UTC session
        zone = ZoneInfo(column.timezone) if column.timezone else self.zone
        low, high = getattr(self, "_ranges", {}).get(column.source_name) or conn.exec_driver_sql(f"SELECT MIN({c}), MAX({c}) FROM {self.from_clause()}").first()
        if low is None:
            return "''"
        low, high = (v if isinstance(v, datetime) else datetime(v.year, v.month, v.day) for v in (low, high))
        first, changes = local_breakpoints(zone, low, high)
        branches = " ".join(f"WHEN {c} >= '{at.isoformat(sep=' ')}' THEN '{offset_text(offset)}'" for at, offset in reversed(changes))
        return f"CASE {branches} ELSE '{offset_text(first)}' END" if branches else f"'{offset_text(first)}'"

    def stream(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        if not getattr(self, "_server", False):
            return super().stream(columns, writer, stats, progress)
        with self.engine.connect() as conn:
            fields = [self._field(column, conn) for column in columns]
        sql = f"SELECT CONCAT_WS(',', {', '.join(fields)}) FROM {self.from_clause()}"
        writer.write_header([c.name for c in columns])
        geometry = next((c for c in columns if c.type == "geometry"), None)
        if geometry is None:
            return self._stream_csv(sql, writer, stats, progress)
        # The geometry's types (~1 s of the server's CPU per 1M rows) are read on a second connection while the
        # CSV streams: the stream keeps one of the server's cores busy, our process half of the other.
        from concurrent.futures import ThreadPoolExecutor

        running: list[int] = []
        key = ("types", geometry.source_name)
        select = [(key, f"GROUP_CONCAT(DISTINCT {self._signature(self.q(geometry.source_name))} SEPARATOR ';')", 1)]
        with ThreadPoolExecutor(1) as pool:
            types = pool.submit(self._scan, select, running)
            try:
                total = self._stream_csv(sql, writer, stats, progress)
            except BaseException:
                self._kill(running)  # the extract failed: the types are not needed
                types.exception()
                raise
            self._types = {geometry.source_name: types.result()[key][0]}
        stats.geometry_types |= self._wkt_types(geometry)
        return total

    def _kill(self, running: list[int]) -> None:
        """Cancel the statements running on these server threads (what has ended already is left alone)."""
        try:
            with self.engine.connect() as conn:
                for thread in running:
                    try:
                        conn.exec_driver_sql(f"KILL QUERY {int(thread)}")
                    except sa.exc.DBAPIError:  # ended, or no right to: it ends by itself (the statement timeout)
                        pass
        except sa.exc.DBAPIError:
            pass

    def _stream_csv(self, sql: str, writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        raw = self.engine.raw_connection()
        try:
            cursor = self.open_cursor(raw)
            try:
                cursor.execute(sql)
                total = 0
                for batch, data in self._batches(cursor):
                    if b"\x00" in data:  # PostgreSQL text cannot hold NUL: removed and counted
                        stats.nul_bytes_removed += data.count(b"\x00")
                        data = data.replace(b"\x00", b"")
                    writer.write_csv(data)
                    total += batch
                    writer.rows += batch
                    progress(total)
            finally:
                cursor.close()
        finally:
            raw.close()
        return total

    def _batches(self, cursor: Any) -> Iterator[tuple[int, bytes]]:
        """(rows, their CSV lines as UTF-8 bytes) per BATCH_ROWS rows of the one-column result."""
        from .mysql_lines import lines, single_column_encoding

        encoding = single_column_encoding(cursor)
        if encoding is None:  # not what the packet reader reads (a binary result): PyMySQL's rows
            while batch := cursor.fetchmany(BATCH_ROWS):
                yield len(batch), "\n".join([row[0] for row in batch] + [""]).encode("utf-8")
            return
        utf8 = codecs.lookup(encoding).name == "utf-8"
        done = 0
        for batch in lines(cursor, BATCH_ROWS):
            if None in batch:  # CONCAT_WS gives NULL (with a warning) only for a line over max_allowed_packet
                raise ExtractError(f"{self.dataset.id}: row {done + batch.index(None) + 1}: the server could not write the row's CSV "
                                   f"line (longer than max_allowed_packet?); raise max_allowed_packet on the server")
            batch.append(b"")
            data = b"\n".join(batch)  # type: ignore[arg-type]
            if not utf8:
                data = data.decode(encoding).encode("utf-8")
            elif not data.isascii():
                data.decode("utf-8")  # strict, as PyMySQL decodes each value: not UTF-8 is an error, never passed on
            done += len(batch) - 1
            yield len(batch) - 1, data

    def _wkt_types(self, column: SourceColumn) -> set[str]:
        """Geometry types of a WKT text column from the signatures stream() collected (check() let through only
        single-spaced plain WKT, whose keyword and first coordinate say its type)."""
        signatures = (getattr(self, "_types", {}).get(column.source_name) or "").split(";")
        types = set()
        for signature in filter(None, signatures):
            keyword, count = signature.rsplit("|", 1)
            types.add(ewkt_type(f"{keyword.strip(' ').upper()} ({' '.join(['0'] * int(count))})"))
        return types
