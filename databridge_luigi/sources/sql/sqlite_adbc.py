"""SQLite rows as Arrow record batches straight from the ADBC SQLite driver (``adbc-driver-sqlite``): no Python
object per value — sqlite3 builds a tuple and a str/int/float for every cell, 13M objects per 1M rows of the
benchmark table — and the batch is written by the row path's Arrow conversion (``ArrowBatch.convert_arrays``).

SQLite is dynamically typed and ADBC fixes each column's Arrow type from the first batch: a later value of
another storage class either fails the stream ("expected INT64 but got DOUBLE") or is converted silently (an
integer in a double column becomes 3.0, a float in a text column SQLite's 15-digit text). The SELECT is shaped
so that neither can change a staged byte:

* a first row of typed constants (``''``, ``0``, ``0.0``; dropped) fixes each column's type even where the
  first batch holds only NULLs (ADBC would infer int64, and fail at the first text);
* a number column comes twice, its integers apart (``CASE WHEN typeof(c) = 'integer'``) and as it is (double):
  ``str(int)`` is not ``repr(float(int))`` (``1`` against ``1.0``);
* one flag per row is set when a text column holds a float (text, dates, timestamps, geometry, json);
* the Arrow conversion takes a column only in the type its kind expects (string, int64, int64 + double) and
  checks UTF-8 (ADBC passes TEXT bytes and BLOBs through as they are).

A batch that fails any of this — a flagged row, a column inferred otherwise, text that is not UTF-8, a value
the Arrow conversion does not reproduce exactly — or any driver error (a later value of another class) hands
the extract to the DBAPI path (sqlite3 → ``BatchConverter``: the vectorised conversion and the per-value
reference) from that batch's first row on, so the staged bytes and every refusal (dataset, row, column) are
the reference's. The DBAPI path reads on with the same SELECT and ``OFFSET`` (one table scan, same order).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

from .base import BATCH_ROWS, SourceColumn

if TYPE_CHECKING:
    from ...staging import StagedTableWriter
    from .base import Adapter, Progress
    from .rows import BatchConverter

log = logging.getLogger("databridge_luigi.sources.sql")

_INTEGER_KINDS = ("integer", "boolean")


def database_uri(adapter: "Adapter") -> str | None:
    """A read-only SQLite URI for the adapter's database file, or None where ADBC cannot open the same one (an
    in-memory database, a URL with options such as ``?uri=true``)."""
    url = adapter.engine.url
    database = url.database
    if not database or database == ":memory:" or url.query or database.startswith("file:"):
        return None
    return "file:" + url_quote(os.path.abspath(database)) + "?mode=ro"


def select_sql(adapter: "Adapter", columns: Sequence[SourceColumn]) -> tuple[str, list[str]]:
    """(the typed SELECT over the adapter's own, the kind of each selected value column)."""
    inner = adapter.select_sql(columns)
    head = "SELECT " + ", ".join(c.expression for c in columns)
    if not inner.startswith(head):
        raise ValueError("the adapter's SELECT has a form the ADBC path does not know")
    aliased = "SELECT " + ", ".join(f'{c.expression} AS "c{i}"' for i, c in enumerate(columns)) + inner[len(head):]
    values, firsts, checks, kinds = [], [], [], []
    for i, column in enumerate(columns):
        name = f'"c{i}"'
        if column.type == "number":  # the integers apart: str(int) is not repr(float(int))
            values += [f"CASE WHEN typeof({name}) = 'integer' THEN {name} END", name]
            firsts += ["0", "0.0"]
            kinds += ["number.i", "number.r"]
        elif column.type in _INTEGER_KINDS:
            values.append(name)
            firsts.append("0")
            kinds.append(column.type)
        else:
            values.append(name)
            firsts.append("''")
            kinds.append(column.type)
            checks.append(f"typeof({name}) = 'real'")  # ADBC would write SQLite's 15-digit text, not repr
    first = "SELECT " + ", ".join(f'{v} AS "v{i}"' for i, v in enumerate(firsts)) + ', 0 AS "other"'
    rest = "SELECT " + ", ".join(values) + ", " + (" OR ".join(checks) or "0") + f" FROM ({aliased})"
    return f"{first} UNION ALL {rest}", kinds


def stream(adapter: "Adapter", columns: Sequence[SourceColumn], writer: "StagedTableWriter", converter: "BatchConverter",
           progress: "Progress") -> tuple[int, bool]:
    """Stream what ADBC can into ``writer`` (header already written): (rows written, whether that was all of
    them). Not all of them: the caller reads on from that row with the DBAPI path."""
    arrow = converter.vectorised
    uri = database_uri(adapter)
    if arrow is None or uri is None:
        return 0, False
    try:
        import adbc_driver_sqlite.dbapi as adbc_sqlite
    except ImportError:  # not installed: the DBAPI path, same bytes
        return 0, False
    try:
        sql, kinds = select_sql(adapter, columns)
    except ValueError as exc:
        log.info("%s: rows through sqlite3 (%s)", adapter.dataset.id, exc)
        return 0, False
    try:
        connection = adbc_sqlite.connect(uri)
    except Exception as exc:  # noqa: BLE001 — sqlite3 opens it, or reports why not in its own words
        return _hand_over(adapter, 0, f"ADBC could not open the database: {exc}")
    total = 0
    try:
        cursor = connection.cursor()
        try:
            try:
                cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
                cursor.execute(sql)
                reader = cursor.fetch_record_batch()
            except Exception as exc:  # noqa: BLE001 — sqlite3 runs the plain SELECT, and reports a real error its way
                return _hand_over(adapter, 0, f"ADBC: {exc}")
            first = True
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return total, True
                except Exception as exc:  # noqa: BLE001 — a class the first batch did not show, a driver error
                    return _hand_over(adapter, total, f"ADBC: {exc}")
                if first:
                    batch, first = batch.slice(1), False  # the row of typed constants
                if batch.num_rows == 0:
                    continue
                data = _convert(batch, kinds, arrow)
                if data is None:
                    return _hand_over(adapter, total, "a value the Arrow conversion does not take as it is")
                writer.write_csv(data)
                total += batch.num_rows
                writer.rows += batch.num_rows
                progress(total)
        finally:
            cursor.close()
    finally:
        connection.close()


def _convert(batch: Any, kinds: list[str], arrow: Any) -> bytes | None:
    import pyarrow.compute as pc

    flags = batch.column(batch.num_columns - 1)
    if flags.null_count or pc.any(pc.not_equal(flags, 0)).as_py():
        return None
    arrays: list[Any] = []
    index = 0
    while index < len(kinds):
        column = batch.column(index)
        if kinds[index] == "number.i":
            arrays.append((column, batch.column(index + 1)))
            index += 2
            continue
        arrays.append(column)
        index += 1
    return arrow.convert_arrays(arrays)


def _hand_over(adapter: "Adapter", rows: int, why: str) -> tuple[int, bool]:
    log.info("%s: rows from %d on through sqlite3 and the row path's checks (%s)", adapter.dataset.id, rows + 1, why.splitlines()[0][:200])
    adapter.facts["row_reader"] = f"adbc to row {rows}, then sqlite3" if rows else "sqlite3"
    return rows, False
