"""MySQL and MariaDB (``mysql+pymysql://user:pw@host:3306/db``; the dataset's ``source.schema`` is the
database). Identifiers are quoted the dialect's way (backticks), so no ``ANSI_QUOTES`` session is needed.

Streaming: PyMySQL's default cursor reads a whole result into memory before the first row is returned; the
extract uses its unbuffered ``SSCursor`` and fetches BATCH_ROWS at a time, so memory is one batch whatever the
table's size. (The row counts before and after run on connections of their own: an unbuffered result holds
its connection until it is read to the end.)

Speed: PyMySQL is pure Python and parses every field of every row (~25 µs a row of 13 columns here), so the
server writes the CSV: each row comes back as one text field — ``CONCAT_WS(',', …)`` of per-column expressions
that quote text (doubling ``"``), write NULL as an empty unquoted field, booleans as ``true``/``false``,
DECIMAL/integers/doubles as the server's exact text (shortest round-trip digits for doubles), dates ISO and naive
DATETIMEs with their UTC offset in the dataset's zone by PostgreSQL's rule (``values.local_breakpoints`` turned
into a ``CASE`` over the column's range; no time zone tables needed on the server). Python only joins lines,
removes NUL bytes (counted) and checks UTF-8. Values the reference conversion would refuse (a 2 in a boolean,
zero dates, times outside 0–24 h) are looked for first and refused by row and column. Tables with columns the
server cannot write as text exactly (BLOB/BINARY/BIT, spatial types, a configured WKT geometry with SRID prefixes
or EMPTY shapes, anything unknown) take the vectorised row path instead (``rows.py``): same output, slower.

Types: ``BOOLEAN`` is ``tinyint(1)`` in MySQL and is published as boolean (a value other than 0/1 in such a
column is refused naming row and column); ``TIMESTAMP`` columns are read in a UTC session and published as
those instants; ``DATETIME`` is naive and localized to the dataset's ``timezone`` like any naive timestamp.
"""
from __future__ import annotations

from collections.abc import Sequence
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
        tests = []
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
                g = f"TRIM({c})"
                # Only plain WKT with single spaces is written by the server (its type is read from keyword and spaces).
                tests.append((column, f"({c} IS NOT NULL AND ({c} <> {g} OR {g} = '' OR UPPER(LEFT({g}, 5)) = 'SRID=' OR UPPER({g}) LIKE '%%EMPTY' "
                                      f"OR {c} LIKE '%%#%%' OR {c} LIKE '%%  %%' OR {c} LIKE '%%\t%%' OR {c} LIKE '%%\n%%' OR {c} LIKE '%%\r%%' "
                                      f"OR LOCATE('(', {c}) = 0))", None))
        # One scan answers everything the CSV needs to know first: the problems (counted), each naive DATETIME's range
        # (for its offset CASE) and the geometry column's types. Only a table with a problem pays a second scan.
        extras = []
        for column in columns:
            c, kind = self.q(column.source_name), kinds.get(column.source_name)
            if column.type == "datetime" and not isinstance(kind, sa.TIMESTAMP):
                extras.append((column, "range", f"MIN({c}), MAX({c})"))
            elif column.type == "geometry":
                extras.append((column, "types", f"GROUP_CONCAT(DISTINCT {self._signature(c)} SEPARATOR ';')"))
        selects = [f"SUM({condition})" for _, condition, _ in tests] + [sql for _, _, sql in extras]
        if not selects:
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION group_concat_max_len = 1048576")
            found = list(conn.exec_driver_sql(f"SELECT {', '.join(selects)} FROM {self.from_clause()}").first())
        counts, rest = found[:len(tests)], found[len(tests):]
        self._ranges: dict[str, tuple[Any, Any]] = {}
        self._types: dict[str, str | None] = {}
        for column, what, _ in extras:
            if what == "range":
                self._ranges[column.source_name] = (rest.pop(0), rest.pop(0))
            else:
                self._types[column.source_name] = rest.pop(0)
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
    def _signature(c: str) -> str:
        """A WKT value's keyword and the number of ordinates of its first coordinate (``POINT Z|3``)."""
        g = f"TRIM({c})"
        first = f"TRIM(SUBSTRING_INDEX(SUBSTRING_INDEX(SUBSTRING_INDEX({g}, ',', 1), ')', 1), '(', -1))"
        return f"CONCAT(UPPER(TRIM(SUBSTRING_INDEX({g}, '(', 1))), '|', LENGTH({first}) - LENGTH(REPLACE({first}, ' ', '')) + 1)"

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
            stamp = (f"CONCAT(DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s'), IF(MICROSECOND({c}) = 0, '', CONCAT('.', LPAD(MICROSECOND({c}), 6, '0'))))")
            return f"IF({c} IS NULL, '', {quoted(f'CONCAT({stamp}, {self._offset_sql(column, c, conn, kind)})')})"
        if column.type == "time":
            text = f"CONCAT(TIME_FORMAT({c}, '%H:%i:%s'), IF(MICROSECOND({c}) = 0, '', CONCAT('.', LPAD(MICROSECOND({c}), 6, '0'))))"
            return f"IF({c} IS NULL, '', {quoted(text)})"
        if column.type in ("integer", "number", "date"):
            return f"IF({c} IS NULL, '', {quoted(c)})"
        return f"IF({c} IS NULL, '', {quoted(f'REPLACE({c}, {chr(39)}{chr(34)}{chr(39)}, {chr(39)}{chr(34)}{chr(34)}{chr(39)})')})"

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
        raw = self.engine.raw_connection()
        try:
            cursor = self.open_cursor(raw)
            try:
                cursor.execute(sql)
                total = 0
                while batch := cursor.fetchmany(BATCH_ROWS):
                    lines = [row[0] for row in batch]
                    lines.append("")
                    data = "\n".join(lines)
                    if "\x00" in data:  # PostgreSQL text cannot hold NUL: removed and counted
                        stats.nul_bytes_removed += data.count("\x00")
                        data = data.replace("\x00", "")
                    writer.write_csv(data.encode("utf-8"))
                    total += len(batch)
                    writer.rows += len(batch)
                    progress(total)
            finally:
                cursor.close()
        finally:
            raw.close()
        if geometry is not None:
            stats.geometry_types |= self._wkt_types(geometry)
        return total

    def _wkt_types(self, column: SourceColumn) -> set[str]:
        """Geometry types of a WKT text column from the signatures check() collected (check() let through only
        single-spaced plain WKT, whose keyword and first coordinate say its type)."""
        signatures = (getattr(self, "_types", {}).get(column.source_name) or "").split(";")
        types = set()
        for signature in filter(None, signatures):
            keyword, count = signature.rsplit("|", 1)
            types.add(ewkt_type(f"{keyword} ({' '.join(['0'] * int(count))})"))
        return types
