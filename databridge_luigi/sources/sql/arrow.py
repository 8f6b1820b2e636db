"""Vectorised row-path conversion with pyarrow: a DBAPI batch is turned into columns, each column into text with
Arrow compute (or one C-level pass of Python where Arrow's text differs from the reference, e.g. float repr),
and the batch is written by Arrow's CSV writer with ``quoting_style="all_valid"`` — every value quoted, NULL an
unquoted empty field — which is byte for byte what ``staging._csv_line`` writes.

The reference is the per-value conversion in ``values.py``. A column takes a fast path only when its values
are of the types that path reproduces exactly (checked per batch: ``set(map(type, column))``), and a parsed
value is formatted back and compared with its source text where parsing could be looser than the reference
(dates, timestamps). Anything else converts that column per value; any error falls back to the reference for
the whole batch, which names the first failing row and column exactly as before.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from ...geometry import ewkt_type
from ..values import ConversionStats, Converter, _localize, converter_for, offset_text
from .base import SourceColumn

_WRITE = pa_csv.WriteOptions(include_header=False, quoting_style="all_valid", batch_size=1 << 16)
_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_EPOCH = datetime(1970, 1, 1)
_HOUR_US = 3_600_000_000
_TEXT_KINDS = {"string", "object", "array", "date", "datetime", "geometry"}
_SHIFT_US = 62_135_596_800_000_000  # 0001-01-01 to 1970-01-01 in microseconds (a whole number of hours)


class _Slow(Exception):
    """This batch needs the per-row reference conversion."""


class _Rows:
    """Stands in for a batch's Python values where the fast paths need only its length (Arrow input)."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


def _calendar_ok(text: pa.Array, parsed: pa.Array) -> bool:
    """strptime rolls 2024-02-30 over into March: the parsed day, month and hour must be the ones written."""
    if len(text) != len(parsed) or pc.any(pc.is_null(parsed)).as_py():
        return False
    same = pc.and_(
        pc.equal(pc.day(parsed), pc.utf8_slice_codeunits(text, 8, 10).cast(pa.int64())),
        pc.equal(pc.month(parsed), pc.utf8_slice_codeunits(text, 5, 7).cast(pa.int64())))
    if len(text) and len(text[0].as_py() or "") > 10:
        same = pc.and_(same, pc.equal(pc.hour(parsed), pc.utf8_slice_codeunits(text, 11, 13).cast(pa.int64())))
        same = pc.and_(same, pc.equal(pc.minute(parsed), pc.utf8_slice_codeunits(text, 14, 16).cast(pa.int64())))
        same = pc.and_(same, pc.equal(pc.second(parsed), pc.utf8_slice_codeunits(text, 17, 19).cast(pa.int64())))
    return bool(pc.all(same).as_py())


class ArrowBatch:
    def __init__(self, columns: Sequence[SourceColumn], zone: ZoneInfo, stats: ConversionStats):
        self.columns, self.stats = list(columns), stats
        self.scratch = ConversionStats()
        self.zones = [ZoneInfo(c.timezone) if c.timezone else zone for c in columns]
        self.converters: list[Converter] = [
            converter_for(c.type, zone=z, srid=c.srid, stats=self.scratch) for c, z in zip(columns, self.zones)
        ]
        self._offsets: dict[tuple[str, int], str | None] = {}  # (zone, local hour) → offset text, None if it changes within

    def convert(self, batch: Sequence[Sequence[Any]]) -> bytes | None:
        """CSV bytes for the batch, or None: convert it with the reference (it may hold a value to refuse)."""
        self.scratch.nul_bytes_removed, self.scratch.geometry_types = 0, set()
        try:
            columns = list(zip(*batch))
            arrays = [self._column(i, values) for i, values in enumerate(columns)]
        except Exception:  # noqa: BLE001 — the reference conversion decides, and names the row and column
            return None
        return self._csv(arrays)

    def convert_arrays(self, arrays: Sequence[pa.Array | tuple[pa.Array, pa.Array]]) -> bytes | None:
        """CSV bytes for a batch that a driver handed over as Arrow columns (``sqlite_adbc``), or None: read the
        batch with the DBAPI path instead. Each column arrives in one Arrow type whatever its source values were:
        ``string`` for the text kinds (bytes as the source holds them, UTF-8 checked here), ``int64`` for integer
        and boolean columns, and for number columns a pair (int64, double), one of them set per row — so an
        integer stays ``str(int)`` and a float ``repr(float)``, as the reference writes them."""
        self.scratch.nul_bytes_removed, self.scratch.geometry_types = 0, set()
        try:
            out_arrays = [self._arrow_column(i, array) for i, array in enumerate(arrays)]
        except Exception:  # noqa: BLE001 — the DBAPI path decides, and names the row and column
            return None
        if any(a is None for a in out_arrays):
            return None
        return self._csv(out_arrays)

    def _csv(self, arrays: Sequence[pa.Array]) -> bytes:
        """A converted batch's CSV bytes; only now do its statistics count (a batch handed back counts none)."""
        self.stats.nul_bytes_removed += self.scratch.nul_bytes_removed
        self.stats.geometry_types |= self.scratch.geometry_types
        out = io.BytesIO()
        pa_csv.write_csv(pa.Table.from_arrays(list(arrays), names=[f"c{i}" for i in range(len(arrays))]), out, _WRITE)
        return out.getvalue()

    def _arrow_column(self, index: int, array: pa.Array | tuple[pa.Array, pa.Array]) -> pa.Array | None:
        kind = self.columns[index].type
        if isinstance(array, tuple):
            integers, floats = array
            if kind != "number" or not pa.types.is_int64(integers.type) or not pa.types.is_float64(floats.type):
                return None
            return pc.coalesce(integers.cast(pa.string()), self._float_text(floats))
        rows = _Rows(len(array))
        self._text = None
        if pa.types.is_string(array.type):
            array.validate(full=True)  # not UTF-8 raises: the DBAPI path's reference refuses it by row and column
            self._text = array
            fast = {"string": self._string, "object": self._string, "array": self._string, "datetime": self._datetime,
                    "date": self._date, "geometry": self._geometry}.get(kind)
            result = fast(index, rows, {str}) if fast is not None else None
            if result is not None:
                return result
            convert = self.converters[index]  # per value on str (time of day, odd spellings); raises on a bad one
            return pa.array([convert(v) for v in array.to_pylist()], pa.string())
        if pa.types.is_int64(array.type) and kind in ("integer", "number"):
            return array.cast(pa.string())
        if pa.types.is_int64(array.type) and kind == "boolean":
            valid = pc.drop_null(array)
            if len(valid) and not pc.all(pc.is_in(valid, pa.array([0, 1], pa.int64()))).as_py():
                return None  # 2 in a boolean column: refused by the reference, naming the row
            return pc.if_else(pc.equal(array, 1), "true", "false")
        return None

    @staticmethod
    def _float_text(floats: pa.Array) -> pa.Array:
        """Python's ``repr`` of each double, vectorised. Arrow's text has the same shortest round-trip digits but
        other notation rules (``1`` for 1.0, ``0.00001``, ``1.234567890123456e+14``): where Python writes fixed
        notation (0 and 1e-4 ≤ |x| < 1e16) and Arrow did too, Arrow's text is taken (``.0`` added to a whole
        number); the rest — exponents, ±Infinity — is written by ``repr`` value by value."""
        text = floats.cast(pa.string())
        magnitude = pc.abs(floats)
        fixed = pc.or_(pc.equal(magnitude, 0), pc.and_(pc.greater_equal(magnitude, 1e-4), pc.less(magnitude, 1e16)))
        whole = pc.match_substring_regex(text, r"^-?\d+$")
        same = pc.and_(fixed, pc.or_(whole, pc.match_substring_regex(text, r"^-?\d+\.\d+$")))
        result = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
        other = pc.invert(pc.fill_null(same, True))
        if pc.any(other).as_py():
            values = pc.filter(floats, other).to_pylist()
            result = pc.replace_with_mask(result, other, pa.array([_SPECIAL_FLOATS.get(repr(v), repr(v)) for v in values], pa.string()))
        return result

    # --- one column -----------------------------------------------------------------------------------------
    def _column(self, index: int, values: tuple[Any, ...]) -> pa.Array:
        kind = self.columns[index].type
        types = set(map(type, values))
        types.discard(type(None))
        self._text = None
        if types == {bytes} and kind in _TEXT_KINDS:  # SQLite hands TEXT over as bytes: decoded (and checked) in C
            self._text = pa.array(values, pa.binary()).cast(pa.string())  # invalid UTF-8 raises: the reference names it
            types = {str}
        fast = {
            "string": self._string, "integer": self._integer, "number": self._number, "boolean": self._boolean,
            "datetime": self._datetime, "date": self._date, "geometry": self._geometry, "object": self._string, "array": self._string,
        }.get(kind)
        if fast is not None:
            result = fast(index, values, types)
            if result is not None:
                return result
        convert = self.converters[index]  # per value; raises on a value to refuse (the caller falls back)
        return pa.array([convert(v) for v in values], pa.string())

    def _strings(self, values: tuple[Any, ...]) -> pa.Array:
        return self._text if self._text is not None else pa.array(values, pa.string())

    def _string(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        if not types <= {str}:
            return None
        array = self._strings(values)
        nuls = pc.sum(pc.count_substring(array, "\x00")).as_py() or 0
        if nuls:
            self.scratch.nul_bytes_removed += nuls
            array = pc.replace_substring(array, "\x00", "")
        return array

    def _integer(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        if not types <= {int}:
            return None
        try:
            return pa.array(values, pa.int64()).cast(pa.string())
        except (pa.ArrowInvalid, OverflowError):  # beyond 64 bits: str(int) per value
            return None

    def _number(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        if types <= {int}:
            return self._integer(index, values, types)
        if not types <= {float, int}:
            return None
        if types == {float}:  # Arrow's text where it is repr's, repr for the rest (exponents, ±Infinity)
            return self._float_text(pa.array(values, pa.float64()))
        texts = [None if v is None else repr(v) if type(v) is float else str(v) for v in values]
        array = pa.array(texts, pa.string())
        if pc.any(pc.is_in(array, pa.array(list(_SPECIAL_FLOATS)))).as_py():
            array = pa.array([_SPECIAL_FLOATS.get(t, t) if t is not None else None for t in texts], pa.string())
        return array

    def _boolean(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        if types <= {bool}:
            flags = pa.array(values, pa.bool_())
        elif types <= {int, bool}:
            numbers = pa.array(values, pa.int64())
            if not pc.all(pc.is_in(pc.drop_null(numbers), pa.array([0, 1]))).as_py() and len(pc.drop_null(numbers)):
                return None  # 2 in a boolean column: the reference refuses it by row and column
            flags = pc.equal(numbers, 1)
        else:
            return None
        return pc.if_else(flags, "true", "false")

    def _date(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        if types <= {str}:
            text = self._strings(values)
            valid = pc.drop_null(text)
            if not pc.all(pc.match_substring_regex(valid, r"^\d{4}-\d\d-\d\d$")).as_py():
                return None  # other spellings (a time of day, BC, infinity, basic format): the reference decides
            if not _calendar_ok(valid, pc.strptime(valid, format="%Y-%m-%d", unit="s", error_is_null=True)):
                return None  # not a calendar date: refused by the reference, naming the row
            return text
        if types and all(t is type(values[0]) or t.__name__ == "date" for t in types) and types <= {__import__("datetime").date}:
            array = pa.array(values, pa.date32())
            if pc.min(pc.year(array)).as_py() is not None and pc.min(pc.year(array)).as_py() < 1000:
                return None
            return array.cast(pa.string())
        return None

    def _datetime(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        seconds = None
        if types <= {str}:
            text = self._strings(values)
            valid = pc.drop_null(text)
            if not pc.all(pc.match_substring_regex(valid, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")).as_py():
                return None  # fractions, 'T', offsets, other spellings: the reference parses them
            stamps = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
            if not _calendar_ok(valid, pc.drop_null(stamps)) or pc.any(pc.and_(pc.is_valid(text), pc.is_null(stamps))).as_py():
                return None
            seconds = pc.utf8_replace_slice(text, 10, 11, "T")  # the same wall-clock text, ISO-8601 'T'
        elif types <= {datetime}:
            if any(v.tzinfo is not None for v in values if v is not None):
                return None
            stamps = pa.array(values, pa.timestamp("us"))
        else:
            return None
        micros = stamps.cast(pa.int64())
        if len(pc.drop_null(micros)) == 0:
            return pa.nulls(len(values), pa.string())
        low, high = pc.min_max(micros).values()
        if low.as_py() < -62_135_596_800_000_000 + 2 * 86_400_000_000 or high.as_py() > 253_402_214_400_000_000:
            return None  # within a day of year 1 or 9999: the reference handles the edges
        zone = self.zones[index]
        shifted = pc.add(micros, _SHIFT_US)  # ≥ 0 from year 1 on: integer division is floor division, exactly
        hours = pc.subtract(pc.divide(shifted, _HOUR_US), _SHIFT_US // _HOUR_US)
        unique = pc.unique(pc.drop_null(hours)).to_pylist()
        table: dict[int, str] = {}
        for hour in unique:
            text = self._hour_offset(zone, hour)
            if text is None:
                return None  # a DST change (or an LMT one) inside this hour: per value
            table[hour] = text
        keys = pa.array(list(table), pa.int64())
        offsets = pc.take(pa.array(list(table.values()), pa.string()), pc.index_in(hours, keys))
        fraction_us = pc.subtract(shifted, pc.multiply(pc.divide(shifted, 1_000_000), 1_000_000))  # floor, also before 1970
        if seconds is None:
            whole = pc.subtract(micros, fraction_us).cast(pa.timestamp("us")).cast(pa.timestamp("s"))  # exact: no rounding
            seconds = pc.strftime(whole, format="%Y-%m-%dT%H:%M:%S")
        if pc.any(pc.not_equal(fraction_us, 0)).as_py():
            digits = pc.utf8_lpad(fraction_us.cast(pa.string()), width=6, padding="0")
            fraction = pc.if_else(pc.equal(fraction_us, 0), "", pc.binary_join_element_wise(".", digits, ""))
            return pc.binary_join_element_wise(seconds, fraction, offsets, "")
        return pc.binary_join_element_wise(seconds, offsets, "")

    def _hour_offset(self, zone: ZoneInfo, hour: int) -> str | None:
        key = (zone.key, hour)
        if key not in self._offsets:
            start = _EPOCH + timedelta(hours=hour)
            first = _localize(start, zone).utcoffset()
            last = _localize(start + timedelta(minutes=59, seconds=59, microseconds=999_999), zone).utcoffset()
            self._offsets[key] = offset_text(first) if first == last else None  # type: ignore[arg-type]
        return self._offsets[key]

    def _geometry(self, index: int, values: tuple[Any, ...], types: set[type]) -> pa.Array | None:
        srid = self.columns[index].srid
        if not types <= {str} or srid is None:
            return None
        text = pc.utf8_trim_whitespace(self._strings(values))
        upper = pc.utf8_upper(text)
        valid = pc.drop_null(upper)
        if len(valid) == 0:
            return pa.nulls(len(values), pa.string())
        if (pc.any(pc.starts_with(valid, "SRID=")).as_py() or pc.any(pc.ends_with(valid, "EMPTY")).as_py()
                or pc.any(pc.equal(valid, "")).as_py() or pc.any(pc.match_substring(valid, "#")).as_py()):
            return None  # prefixed, empty or Esri NaN text: the reference normalizes those
        # The geometry type of each shape from its keyword and the number of ordinates of its first coordinate.
        parts = pc.extract_regex(pc.utf8_slice_codeunits(valid, 0, 160), r"^(?P<k>[A-Z]+\s*(?:ZM|Z|M)?)\s*\(+\s*(?P<c>[^,()]*)")
        # Trimmed first: Arrow's split keeps an empty piece for a trailing space ("1 2 ," would count three).
        ordinates = pc.list_value_length(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(parts.field("c"))))
        keys = pc.binary_join_element_wise(parts.field("k"), ordinates.cast(pa.string()), "|")
        if pc.any(pc.is_null(keys)).as_py():
            return None  # not WKT: the reference refuses it
        for signature in pc.unique(keys).to_pylist():
            keyword, count = signature.rsplit("|", 1)
            self.scratch.geometry_types.add(ewkt_type(f"{keyword} ({' '.join(['0'] * int(count))})"))
        return pc.binary_join_element_wise(f"SRID={int(srid)};", text, "")
