"""MySQL and MariaDB (``mysql+pymysql://user:pw@host:3306/db``; the dataset's ``source.schema`` is the
database). Identifiers are quoted the dialect's way (backticks), so no ``ANSI_QUOTES`` session is needed.

Streaming: PyMySQL's default cursor reads a whole result into memory before the first row is returned; the
extract uses its unbuffered ``SSCursor`` and fetches BATCH_ROWS at a time, so memory is one batch whatever the
table's size. (The row counts before and after run on connections of their own: an unbuffered result holds
its connection until it is read to the end.)

Types: ``BOOLEAN`` is ``tinyint(1)`` in MySQL and is published as boolean (a value other than 0/1 in such a
column is refused naming row and column); ``TIMESTAMP`` columns are read in a UTC session and published as
those instants; ``DATETIME`` is naive and localized to the dataset's ``timezone`` like any naive timestamp.
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from .base import BATCH_ROWS
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
        return generic_type(kind), None

    def open_cursor(self, raw: Any) -> Any:
        import pymysql.cursors

        cursor = raw.driver_connection.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows as they are fetched
        cursor.arraysize = BATCH_ROWS
        return cursor
