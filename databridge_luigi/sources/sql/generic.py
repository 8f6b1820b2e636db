"""Databases without a dialect path of their own (SQLite, …): SQLAlchemy reflection; geometry from the
dataset's ``geometry`` block or an OGC ``geometry_columns`` table; rows through the vectorised row path —
SQLite's as Arrow batches from ADBC (``sqlite_adbc``) where it can, sqlite3 from the first batch it cannot."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ...staging import StagedTableWriter
from ..values import ConversionStats
from .base import BATCH_ROWS, Adapter, Progress, SourceColumn


class GenericAdapter(Adapter):
    def open_cursor(self, raw: Any) -> Any:
        cursor = super().open_cursor(raw)
        connection = getattr(cursor, "connection", None)
        if self.engine.dialect.name == "sqlite" and connection is not None:
            # sqlite3 raises on TEXT that is not UTF-8, naming neither row nor dataset; TEXT comes over as bytes,
            # decoded a column at a time by the row path (pyarrow checks UTF-8 in C; a Python text_factory cost a
            # quarter of the extract) and refused with dataset, row and column by the reference where it is not UTF-8.
            connection.text_factory = bytes
        return cursor

    def stream(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, stats: ConversionStats, progress: Progress) -> int:
        from .rows import BatchConverter, row_path

        if self.engine.dialect.name != "sqlite" or row_path() != "fast":
            return super().stream(columns, writer, stats, progress)
        from . import sqlite_adbc

        writer.write_header([c.name for c in columns])
        converter = BatchConverter(self.dataset.id, columns, self.zone, stats)
        done, finished = sqlite_adbc.stream(self, columns, writer, converter, progress)
        if finished:
            self.facts.setdefault("row_reader", "adbc")
            return done
        self.facts.setdefault("row_reader", "sqlite3")  # ADBC missing, or an in-memory database / a URL with options
        return self._stream_from(columns, writer, converter, progress, done)

    def _stream_from(self, columns: Sequence[SourceColumn], writer: StagedTableWriter, converter: Any, progress: Progress, start: int) -> int:
        """The DBAPI row path (``Adapter.stream_rows``) from row ``start`` on: the same SELECT, whose order is
        the ADBC statement's (one table scan either way), rows before ``start`` skipped by SQLite."""
        select = self.select_sql(columns) + (f" LIMIT -1 OFFSET {int(start)}" if start else "")
        return self.stream_rows(select, writer, converter, progress, start)

    def column_type(self, column: dict[str, Any]) -> tuple[str, str | None]:
        """(schema type, time zone override) of a reflected column."""
        return generic_type(column["type"]), None

    def columns(self) -> list[SourceColumn]:
        inspector = sa.inspect(self.engine)
        reflected = inspector.get_columns(self.dataset.source_table, schema=self.dataset.source_schema)
        geometry = self._geometry_column(inspector)
        out = []
        for col in reflected:
            name = col["name"]
            required = not col.get("nullable", True)
            if geometry and name.lower() == geometry[0]:
                out.append(SourceColumn(name, name.lower(), "geometry", required, geometry[1], self.geometry_expression(name)))
            else:
                kind, zone = self.column_type(col)
                out.append(SourceColumn(name, name.lower(), kind, required, None, self.q(name), timezone=zone))
        return out

    def geometry_expression(self, name: str) -> str:
        return self.q(name)

    def _geometry_column(self, inspector: Any) -> tuple[str, int | None] | None:
        if self.dataset.geometry_column:
            return self.dataset.geometry_column, self.dataset.geometry_srid
        if "geometry_columns" not in inspector.get_table_names(schema=self.dataset.source_schema):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT f_geometry_column, srid FROM geometry_columns WHERE lower(f_table_name) = :t"),
                {"t": self.dataset.source_table.lower()},
            ).first()
        return (str(row[0]).lower(), self.dataset.geometry_srid or int(row[1])) if row else None


def generic_type(column_type: Any) -> str:
    if isinstance(column_type, sa.Boolean):
        return "boolean"
    if isinstance(column_type, sa.Integer):
        return "integer"
    if isinstance(column_type, (sa.Numeric, sa.Float)):
        return "integer" if getattr(column_type, "scale", None) == 0 and not isinstance(column_type, sa.Float) else "number"
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, sa.Time):
        return "time"
    if isinstance(column_type, sa.JSON):
        return "object"
    return "string"


__all__ = ["GenericAdapter", "generic_type", "BATCH_ROWS"]
