"""Python values → CSV text for staging, one converter per schema type (shared by every source).

Conventions: UTF-8 text with NUL bytes removed (and counted); bytes that are not UTF-8 refused (never guessed
as latin-1); naive timestamps localized to the dataset's time zone as PostgreSQL does (gap: offset before the
change, ambiguous: standard time) and written ISO-8601 with offset; numbers at full precision, NaN and
±Infinity kept; JSON for objects and arrays; EWKT for geometry; None for NULL. A value that the destination
would not accept as its column type (text in a number column, 2 in a boolean) is refused here, where the
source can name its row and column, instead of failing the load.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
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


def _decode(value: bytes) -> str:
    """Bytes from a driver (a SQLite BLOB or undecodable TEXT, an Oracle RAW): UTF-8 or refused. Guessing a
    legacy encoding (latin-1, cp1252) would publish text that differs from the source without anyone knowing."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = value[exc.start:exc.start + 1].hex()
        raise StagingValueError(
            f"text is not valid UTF-8 (byte 0x{bad} at offset {exc.start} of {len(value)}: {value[max(0, exc.start - 20):exc.start + 20]!r}); "
            "fix the source value or convert the column to text in the source"
        ) from None


def _text(value: Any, stats: ConversionStats) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = _decode(bytes(value))
    elif hasattr(value, "read"):  # an Oracle LOB locator
        value = value.read()
        return _text(value, stats)
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:  # PostgreSQL text cannot hold NUL: removed and counted (manifest nul_bytes_removed)
        stats.nul_bytes_removed += text.count("\x00")
        text = text.replace("\x00", "")
    return text


def _special_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"  # numeric holds ±Infinity (PostgreSQL 14+)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _special_float(value)
    if isinstance(value, Decimal):
        if value.is_finite():
            return format(value, "f")
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    text = str(value).strip()  # a number stored as text (SQLite's loose typing): must parse, or the load would fail
    try:
        parsed = Decimal(text)
    except ArithmeticError:
        raise StagingValueError(f"not a number: {text[:60]!r}") from None
    return _number(parsed)


def _integer(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return str(int(value))
    if isinstance(value, str):
        try:
            return str(int(value.strip()))
        except ValueError:
            pass
    raise StagingValueError(f"not an integer: {value!r:.60}")


_TRUE = {"t", "true", "y", "yes", "on", "1"}
_FALSE = {"f", "false", "n", "no", "off", "0"}


def _boolean(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)) and value in (0, 1):
        return "true" if value == 1 else "false"
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return "true" if value.strip().lower() in _TRUE else "false"
    raise StagingValueError(f"not a boolean: {value!r:.60}")


def _localize(value: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time in ``zone``, read the way PostgreSQL reads ``timestamp AT TIME ZONE``: a time in
    a spring-forward gap takes the offset before the change, an ambiguous fall-back time the offset after it
    (standard time). Every source (COPY in PostgreSQL, rows in Python) so gives the same instant."""
    later = value.replace(tzinfo=zone, fold=1)
    if later.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) == value:
        return later  # ordinary, or ambiguous: the second occurrence (standard time), as PostgreSQL does
    return value.replace(tzinfo=zone, fold=0)  # in the gap: the offset in force before it, as PostgreSQL does


def offset_text(offset: timedelta) -> str:
    """``+HH:MM`` (``+HH:MM:SS`` for the odd LMT offset), as ``datetime.isoformat`` writes it."""
    return datetime(2000, 1, 1, tzinfo=timezone(offset)).isoformat()[19:]


def local_breakpoints(zone: ZoneInfo, low: datetime, high: datetime) -> tuple[timedelta, list[tuple[datetime, timedelta]]]:
    """How ``_localize`` reads naive times between ``low`` and ``high`` in ``zone``, as data: the offset before the
    first change, and each change as (naive local time from which the new offset applies, new offset). A change
    at UTC instant T to offset b applies from local T + b: a time in a spring gap keeps the earlier offset, an
    ambiguous autumn time takes the later (standard) one — PostgreSQL's rule. Lets a database apply the rule."""
    start = (low - timedelta(days=2)).replace(tzinfo=timezone.utc) if low.year > 1 else datetime(1, 1, 3, tzinfo=timezone.utc)
    end = (high + timedelta(days=2)).replace(tzinfo=timezone.utc) if high.year < 9999 else datetime(9999, 12, 29, tzinfo=timezone.utc)
    first = start.astimezone(zone).utcoffset()
    assert first is not None
    changes: list[tuple[datetime, timedelta]] = []
    current, moment, step = first, start, timedelta(hours=6)
    while moment < end:
        following = min(moment + step, end)
        offset = following.astimezone(zone).utcoffset()
        if offset != current:
            lo, hi = moment, following  # the change happens in (lo, hi]: bisect to the second
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == current:
                    lo = mid
                else:
                    hi = mid
            hi = hi.replace(microsecond=0) if hi.astimezone(zone).utcoffset() != current else hi
            new = hi.astimezone(zone).utcoffset()
            assert new is not None
            changes.append(((hi + new).replace(tzinfo=None), new))
            current = new
        moment = following
    return first, changes


def _datetime(zone: ZoneInfo) -> Converter:
    def convert(value: Any) -> str:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = _localize(value, zone)
            return value.isoformat()
        if isinstance(value, date):
            return _localize(datetime(value.year, value.month, value.day), zone).isoformat()
        # Text timestamps (SQLite stores them as text): parse, so naive ones are localized like any other.
        text = str(value).strip()
        if text.lower() in ("infinity", "-infinity"):
            return text.lower()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise StagingValueError(f"not an ISO-8601 timestamp (years 1-9999): {text[:60]!r}") from None
        return convert(parsed)

    return convert


_BC_DATE = re.compile(r"^(\d{4,})-(\d\d)-(\d\d) BC$")


def _date(value: Any) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()  # dates as text (SQLite): checked here, where the row and column are known
    if text.lower() in ("infinity", "-infinity"):
        return text.lower()
    bc = _BC_DATE.match(text)
    try:
        date.fromisoformat(f"2000-{bc.group(2)}-{bc.group(3)}" if bc else text)
        return text
    except ValueError:
        pass
    try:  # a date stored with a time of day (SQLite): midnight is the date; any other time would be lost
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise StagingValueError(f"not an ISO-8601 date: {text[:60]!r}") from None
    if moment.time() != time(0) or moment.tzinfo is not None:
        raise StagingValueError(f"a date column holds a time of day: {text[:60]!r}")
    return moment.date().isoformat()


def _time(value: Any) -> str:
    if isinstance(value, timedelta):  # MySQL TIME through PyMySQL: a duration, which may be negative or over 24 h
        if timedelta(0) <= value < timedelta(days=1):
            return (datetime.min + value).time().isoformat()
        seconds = int(value.total_seconds())
        text = f"{'-' if seconds < 0 else ''}{abs(seconds) // 3600:02d}:{abs(seconds) % 3600 // 60:02d}:{abs(seconds) % 60:02d}"
        raise StagingValueError(f"not an ISO-8601 time (a time of day, 00:00 to 24:00): {text!r}")
    if isinstance(value, (datetime, time)):
        return value.isoformat() if isinstance(value, time) else value.time().isoformat()
    text = str(value).strip()
    try:
        time.fromisoformat(text)
    except ValueError:
        raise StagingValueError(f"not an ISO-8601 time: {text[:60]!r}") from None
    return text


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
    elif column_type == "integer":
        inner = _integer
    elif column_type == "number":
        inner = _number
    elif column_type == "boolean":
        inner = _boolean
    elif column_type == "datetime":
        inner = _datetime(zone)
    elif column_type == "date":
        inner = _date
    elif column_type == "time":
        inner = _time
    elif column_type in ("object", "array"):
        inner = _json
    else:
        inner = lambda value: _text(value, stats)  # noqa: E731

    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):  # undecodable text from a driver: UTF-8 or refused
            value = _decode(bytes(value))
        return inner(value)

    return convert
