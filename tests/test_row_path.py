"""The vectorised row path (sources/sql/arrow.py) against the per-value reference (sources/values.py): for every
schema type, batches of awkward values give the same CSV bytes, the same NUL count and geometry types — or the
batch is handed to the reference (which refuses a bad value by row and column). No database needed."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from databridge_luigi.sources.sql.base import ExtractError, SourceColumn
from databridge_luigi.sources.sql.rows import BatchConverter
from databridge_luigi.sources.values import ConversionStats, _localize, local_breakpoints

ZONE = ZoneInfo("America/New_York")


def both(kind: str, values: list, srid: int | None = None, zone: str | None = None):
    """(vectorised bytes or None, reference bytes, vectorised stats, reference stats) for one column."""
    column = [SourceColumn("c", "c", kind, srid=srid, timezone=zone)]
    fast_stats, ref_stats = ConversionStats(), ConversionStats()
    fast = BatchConverter("ds", column, ZONE, fast_stats)
    assert fast.vectorised is not None
    reference = BatchConverter("ds", column, ZONE, ref_stats, vectorised=False)
    batch = [(v,) for v in values]
    try:
        expected = reference.convert_rows(batch, 0)
    except ExtractError:
        expected = None  # a value the reference refuses: the fast path must hand the batch over
    return fast.vectorised.convert(batch), expected, fast_stats, ref_stats


def assert_same(kind: str, values: list, srid: int | None = None, fast_expected: bool = True, zone: str | None = None):
    fast, ref, fast_stats, ref_stats = both(kind, values, srid, zone)
    if fast_expected:
        assert fast is not None, f"{kind}: the fast path gave up"
    if ref is None:
        assert fast is None
    if fast is not None:
        assert fast == ref
        assert (fast_stats.nul_bytes_removed, fast_stats.geometry_types) == (ref_stats.nul_bytes_removed, ref_stats.geometry_types)


def test_text_integers_floats_booleans():
    assert_same("string", ["a", "", None, 'q"uote', "new\nline\r\n", "nul\x00here\x00", "é🚲", "x" * 100_000])
    assert_same("integer", [0, -1, 2**63 - 1, -2**63, None])
    assert_same("integer", [2**64, 1], fast_expected=False)  # beyond 64 bits: the reference writes it
    rng = random.Random(7)
    floats = [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(5000)] + [0.0, -0.0, 2.0, 1e16, 1e300, 5e-324,
                                                                                       float("nan"), float("inf"), float("-inf"), None]
    assert_same("number", floats)
    assert_same("number", [1, 2.5, None, 10**30])
    assert_same("boolean", [True, False, None])
    assert_same("boolean", [1, 0, None, 1])


def test_dates_and_timestamps_across_dst_lmt_and_odd_years():
    assert_same("date", ["2024-01-02", "0001-01-01", "9999-12-31", None, "1900-02-28"])
    assert_same("date", ["2024-02-30"], fast_expected=False)  # Arrow's strptime would roll it into March
    assert_same("date", ["2024-1-2", "0044-03-15 BC", "20240102"], fast_expected=False)
    assert_same("date", [date(2024, 1, 2), date(1500, 6, 1), None])
    rng = random.Random(11)
    start = datetime(1850, 1, 1)
    stamps = [start + timedelta(seconds=rng.randint(0, 200 * 365 * 86400), microseconds=rng.choice([0, 0, 1, 500000, 999999]))
              for _ in range(20000)]
    # Every DST change of 2024 and the 1883 LMT change, minute by minute either side.
    first, changes = local_breakpoints(ZONE, datetime(1883, 1, 1), datetime(2025, 1, 1))
    for at, _ in changes[:2] + changes[-4:]:
        stamps += [at + timedelta(minutes=m, seconds=s) for m in range(-90, 91, 7) for s in (0, 59)]
    stamps.append(None)
    assert_same("datetime", stamps)  # datetime objects (Oracle, PyMySQL)
    texts = [None if s is None else s.replace(microsecond=0).isoformat(sep=" ") for s in stamps]
    assert_same("datetime", texts)  # text (SQLite)
    assert_same("datetime", ["2024-02-30 10:00:00"], fast_expected=False)
    assert_same("datetime", [datetime(2024, 7, 1, 12), None], zone="UTC")
    for text in (t for t in texts[:500] if t):  # and the reference is PostgreSQL's rule
        naive = datetime.fromisoformat(text)
        assert _localize(naive, ZONE).utcoffset() == ZONE.utcoffset(naive) or naive.hour in (1, 2)


def test_geometry_text():
    shapes = ["POINT (1 2)", "POINT(2660001 210001)", "POLYGON ((0 0, 1 0, 1 1, 0 0))", "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)))",
              "POINT Z (1 2 3)", "POINT (1 2 3)", "POINTM (1 2 3)", "POINT ZM (1 2 3 4)", " LINESTRING (0 0, 1 1) ", None]
    assert_same("geometry", shapes, srid=2272)
    assert_same("geometry", ["SRID=2272;POINT (1 2)", "POINT EMPTY", "POINT ZM (1 2 3 1.#QNAN000)"], srid=2272, fast_expected=False)


def test_text_handed_over_as_bytes_is_decoded_or_refused():
    """SQLite's TEXT arrives as bytes (text_factory=bytes): decoded a column at a time, or refused by the reference."""
    assert_same("string", [b"caf\xc3\xa9", b"", None, b'q"uote\x00'])
    assert_same("datetime", [b"2024-03-10 02:30:00", b"2024-11-03 01:30:00", None])
    assert_same("date", [b"2024-01-02", None])
    assert_same("geometry", [b"POINT (1 2)", None], srid=2272)
    assert_same("string", [b"caf\xe9"], fast_expected=False)  # latin-1: refused by the reference


def test_a_bad_value_falls_back_and_is_named_by_row_and_column():
    column = [SourceColumn("a", "a", "integer"), SourceColumn("b", "b", "number")]
    converter = BatchConverter("ds", column, ZONE, ConversionStats())
    with pytest.raises(ExtractError, match=r"ds: row 13, column b: not a number: 'n/a'"):
        converter.convert([(i, 1.5) for i in range(2)] + [(2, "n/a")], 10)
