"""Python values → CSV text for staging, one converter per schema type (shared by every source).

Conventions: UTF-8 text with NUL bytes removed (and counted); naive timestamps localized to the dataset's
time zone and written ISO-8601 with offset; numbers at full precision; JSON for objects and arrays; EWKT for
geometry; None for NULL.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..geometry import ewkt_type, to_ewkt

Converter = Callable[[Any], "str | None"]


class StagingValueError(ValueError):
    """A value that cannot be staged; the source adds dataset, row and column."""


@dataclass
class ConversionStats:
    nul_bytes_removed: int = 0
    geometry_types: set[str] = field(default_factory=set)


def _text(value: Any, stats: ConversionStats) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")  # the old Oracle extract wrote latin-1; keep such bytes readable
    elif hasattr(value, "read"):  # an Oracle LOB locator
        value = value.read()
        return _text(value, stats)
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        stats.nul_bytes_removed += text.count("\x00")
        text = text.replace("\x00", "")
    return text


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            raise StagingValueError(f"{value} cannot be stored in a numeric column")
        return repr(value)
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else "NaN"
    return str(value)


def _boolean(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "true" if value else "false"


def _datetime(zone: ZoneInfo) -> Converter:
    def convert(value: Any) -> str:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=zone)
            return value.isoformat()
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=zone).isoformat()
        # Text timestamps (SQLite stores them as text): parse, so naive ones are localized like any other.
        return convert(datetime.fromisoformat(str(value).strip()))

    return convert


def _date(value: Any) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value)


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def converter_for(column_type: str, *, zone: ZoneInfo, srid: int | None, stats: ConversionStats) -> Converter:
    """A function turning one source value of ``column_type`` into staged text (None stays None)."""
    if column_type in ("geometry", "geom"):
        def geometry(value: Any) -> str | None:
            ewkt = to_ewkt(_text(value, stats), srid)
            if ewkt is not None:
                stats.geometry_types.add(ewkt_type(ewkt))
            return ewkt
        inner: Converter = geometry
    elif column_type in ("integer", "number"):
        inner = _number
    elif column_type == "boolean":
        inner = _boolean
    elif column_type == "datetime":
        inner = _datetime(zone)
    elif column_type in ("date", "time"):
        inner = _date
    elif column_type in ("object", "array"):
        inner = _json
    else:
        inner = lambda value: _text(value, stats)  # noqa: E731

    def convert(value: Any) -> str | None:
        return None if value is None else inner(value)

    return convert
