"""The row path's conversion: a batch of DBAPI rows → staged CSV bytes.

Per value (``values.converter_for``) this is the reference; ``BatchConverter`` is the same conversion done a
column at a time, vectorised with pyarrow where the column's values allow it, and falling back to the per-value
converters for a batch where they do not (so every refusal still names dataset, row and column, and the text
is the same either way — ``tests/test_row_path.py`` compares both on the bad-data corpus).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from ...staging import _csv_line
from ..values import ConversionStats, Converter, converter_for
from .base import ExtractError, SourceColumn


def row_path() -> str:
    """``DATABRIDGE_ROW_PATH``: ``fast`` (default: SQLite's Arrow batches from ADBC, MySQL's server-written CSV),
    ``arrow`` (DBAPI rows vectorised: sqlite3 without ADBC, PyMySQL without the server's CSV) or ``reference``
    (per value, as before vectorising) — for comparisons and profiles; the output is the same."""
    return os.environ.get("DATABRIDGE_ROW_PATH", "fast")


class BatchConverter:
    def __init__(self, dataset_id: str, columns: Sequence[SourceColumn], zone: ZoneInfo, stats: ConversionStats, vectorised: bool = True):
        self.dataset_id, self.columns, self.stats = dataset_id, list(columns), stats
        self.converters: list[Converter] = [
            converter_for(c.type, zone=ZoneInfo(c.timezone) if c.timezone else zone, srid=c.srid, stats=stats) for c in columns
        ]
        self.vectorised = None
        if vectorised and row_path() != "reference":
            try:
                from .arrow import ArrowBatch

                self.vectorised = ArrowBatch(self.columns, zone, stats)
            except ImportError:  # pyarrow missing: the per-value path, same output
                self.vectorised = None

    def convert(self, batch: Sequence[Sequence[Any]], offset: int) -> bytes:
        if self.vectorised is not None:
            data = self.vectorised.convert(batch)
            if data is not None:
                return data
        return self.convert_rows(batch, offset)

    def convert_rows(self, batch: Sequence[Sequence[Any]], offset: int) -> bytes:
        """Per value: the reference conversion, and the one that names a failing row and column."""
        converters = self.converters
        lines = []
        for index, row in enumerate(batch):
            try:
                lines.append(_csv_line([convert(value) for convert, value in zip(converters, row)]))
            except (ValueError, TypeError, ArithmeticError) as exc:
                column = self._failing_column(row)
                raise ExtractError(f"{self.dataset_id}: row {offset + index + 1}, column {column}: {exc}") from None
        return "".join(lines).encode("utf-8")

    def _failing_column(self, row: Sequence[Any]) -> str:
        for convert, value, column in zip(self.converters, row, self.columns):
            try:
                convert(value)
            except (ValueError, TypeError, ArithmeticError):
                return column.name
        return "?"
