"""The vectorised row path (sources/sql/arrow.py) against the per-value reference (sources/values.py): for every
schema type, batches of awkward values give the same CSV bytes, the same NUL count and geometry types — or the
batch is handed to the reference (which refuses a bad value by row and column). No database needed for those;
the SQLite ones at the end extract a real SQLite file three ways — Arrow batches from ADBC (sqlite_adbc.py),
sqlite3 rows vectorised, per value — and compare the staged bytes and refusals, batch boundaries included."""
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


def test_float_text_from_arrow_is_python_repr():
    """Doubles an Arrow batch holds (ADBC) are written as Python's repr without a Python float each."""
    import pyarrow as pa

    from databridge_luigi.sources.sql.arrow import ArrowBatch

    rng = random.Random(3)
    floats = ([rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(50000)] + [rng.randint(-10**6, 10**6) / 100 for _ in range(20000)]
              + [0.0, -0.0, 1.0, 100.0, 1e15, 1e16, 9999999999999998.0, 1e-4, 9.999999999999999e-05, 5e-324, 1e300, -1e-300,
                 2.0**53, 2.0**53 + 2, 123456789012345.6, float("inf"), float("-inf"), None])
    expected = [None if v is None else {"inf": "Infinity", "-inf": "-Infinity"}.get(repr(v), repr(v)) for v in floats]
    assert ArrowBatch._float_text(pa.array(floats, pa.float64())).to_pylist() == expected


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
    # A space before the first comma or parenthesis is not a third ordinate (the type is linestring, not linestringz).
    assert_same("geometry", ["LINESTRING ( 1 2 , 3 4 )", "POINT ( 1 2 )"], srid=2272)


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


# --- SQLite through ADBC (sources/sql/sqlite_adbc.py) against sqlite3 + the vectorised path and the reference ---

PATHS = {"adbc": "fast", "vectorised": "arrow", "reference": "reference"}
THINGS = ("CREATE TABLE geometry_columns (f_table_name TEXT, f_geometry_column TEXT, geometry_type TEXT, srid INTEGER);"
          "INSERT INTO geometry_columns VALUES ('things', 'shape', 'GEOMETRY', 2272);"
          "CREATE TABLE things (id INTEGER, note TEXT, amount NUMERIC, ratio REAL, qty INTEGER, flag BOOLEAN, day DATE, "
          "seen TIMESTAMP, at TIME, shape TEXT, loose)")


def clean_rows(count: int = 40) -> list[tuple]:
    """Clean values that SQLite stores in mixed classes: integers and floats in one NUMERIC column, a text column
    NULL throughout the first batch, a number column NULL throughout the first batch, then floats."""
    base = datetime(2024, 3, 10, 0, 30)
    return [(i, None if i < 9 else f"note {i} é\x00" if i % 5 == 0 else f"note {i}", i if i % 3 == 0 else i / 8,
             None if i < 9 else i / 3, 2**62 + i, i % 2, f"2024-01-{1 + i % 28:02d}", (base + timedelta(minutes=11 * i)).isoformat(sep=" "),
             "12:00:00", f"POINT ({2690000 + i} {230000 + i / 7})", f"loose {i}" if i % 2 else None)
            for i in range(count)]


def clean_rows_with(index: int, column: str, value: object) -> list[tuple]:
    """The clean rows with one value of row ``index`` (0-based) replaced."""
    names = ["id", "note", "amount", "ratio", "qty", "flag", "day", "seen", "at", "shape", "loose"]
    rows = clean_rows()
    rows[index] = tuple(value if name == column else v for name, v in zip(names, rows[index]))
    return rows


def extract_with(tmp_path, monkeypatch, rows: list[tuple], path: str, batch: int = 7):
    """(staged CSV bytes or the refusal's text, manifest) of the SQLite table ``things`` holding ``rows``."""
    import sqlite3

    from databridge_luigi.config import load_datasets
    from databridge_luigi.sources import extract
    from databridge_luigi.sources.sql import base, generic, sqlite_adbc
    from databridge_luigi.staging import LocalStore, StagedTable

    source = tmp_path / "things.sqlite"
    if not source.exists():
        db = sqlite3.connect(source)
        db.executescript(THINGS)
        db.executemany(f"INSERT INTO things VALUES ({', '.join('?' * 11)})", rows)
        db.commit()
        db.close()
    config = tmp_path / "configs" / "databridge" / "bad" / "things.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("schedule_interval: 0 1 * * *\nupload_to_carto: false\nallow_empty: true\nsource: {schema: main}\n")
    datasets, problems = load_datasets(tmp_path / "configs")
    assert not problems
    for module in (base, generic, sqlite_adbc):  # batches of 7 rows: every batch boundary case in 40 rows
        monkeypatch.setattr(module, "BATCH_ROWS", batch)
    monkeypatch.setenv("DATABRIDGE_ROW_PATH", PATHS[path])
    staged = StagedTable(LocalStore(tmp_path / f"staging-{path}"), datasets[0].id, "v1")
    try:
        manifest = extract(datasets[0], f"sqlite:///{source}", staged)
    except ExtractError as exc:
        return str(exc), None
    with staged.open_csv() as data:
        return data.read(), manifest


def all_paths(tmp_path, monkeypatch, rows: list[tuple]) -> dict[str, tuple]:
    return {path: extract_with(tmp_path, monkeypatch, rows, path) for path in PATHS}


def test_clean_sqlite_data_takes_the_adbc_path_with_the_reference_bytes(tmp_path, monkeypatch):
    pytest.importorskip("adbc_driver_sqlite")
    results = all_paths(tmp_path, monkeypatch, clean_rows())
    data, manifest = results["adbc"]
    assert isinstance(data, bytes) and data.count(b"\n") == 41
    assert manifest.source["row_reader"] == "adbc"  # not silently handed to sqlite3
    assert data == results["vectorised"][0] == results["reference"][0]
    assert manifest.source["nul_bytes_removed"] == results["reference"][1].source["nul_bytes_removed"] == 6
    for stamp in (b"01:58:00-05:00", b"02:09:00-05:00", b"03:04:00-04:00"):  # before, in (PostgreSQL's rule) and after the gap
        assert b'"2024-03-10T' + stamp + b'"' in data
    assert b',"0",' in data and b',"0.125",' in data  # NUMERIC: an integer stays 0, a float keeps repr


@pytest.mark.parametrize(("column", "value", "taken"), [
    ("loose", 10**30 / 3, "sqlite3"),                # a float in a text column: SQLite's text would not be repr
    ("amount", "Infinity", "sqlite3"),               # text in a number column (ADBC: expected DOUBLE)
    ("flag", "true", "sqlite3"),                     # text in a boolean column (ADBC: expected INT64)
    ("note", 2.5, "adbc"),                           # TEXT affinity stores it as the text '2.5'
    ("note", "café".encode(), "adbc"),               # a BLOB of UTF-8 in a text column: the same text
    ("loose", 7, "adbc"),                            # an integer in a text column reads the same as text
    ("seen", "2024-07-01T12:00:00.123456+02:00", "adbc"),  # another spelling: per value, still on the Arrow batch
])
def test_values_of_another_class_in_a_later_batch_give_the_reference_bytes(tmp_path, monkeypatch, column, value, taken):
    pytest.importorskip("adbc_driver_sqlite")
    results = all_paths(tmp_path, monkeypatch, clean_rows_with(23, column, value))
    assert isinstance(results["reference"][0], bytes)
    assert results["adbc"][0] == results["vectorised"][0] == results["reference"][0]
    reader = results["adbc"][1].source["row_reader"]
    assert reader == ("adbc" if taken == "adbc" else "adbc to row 20, then sqlite3")  # its batch starts at row 21 (7, with the typed first row: 6 + 7 + 7)


@pytest.mark.parametrize(("column", "bad", "reason"), [
    ("amount", "n/a", "not a number: 'n/a'"),
    ("qty", 1.5, "not an integer: 1.5"),
    ("flag", 2, "not a boolean: 2"),
    ("day", "2024-02-30", "not an ISO-8601 date: '2024-02-30'"),
    ("seen", "yesterday", "not an ISO-8601 timestamp"),
    ("at", "25:61", "not an ISO-8601 time"),
    ("note", b"caf\xe9", "not valid UTF-8"),
    ("shape", "SRID=4326;POINT (-75.1 39.9)", "SRID 4326 but the column is declared SRID 2272"),
])
def test_a_value_to_refuse_in_a_later_batch_is_refused_alike_naming_row_and_column(tmp_path, monkeypatch, column, bad, reason):
    pytest.importorskip("adbc_driver_sqlite")
    results = all_paths(tmp_path, monkeypatch, clean_rows_with(30, column, bad))
    message = results["reference"][0]
    assert isinstance(message, str) and f"bad__things: row 31, column {column}: " in message and reason in message
    assert results["adbc"][0] == results["vectorised"][0] == message


def test_invalid_utf8_stored_as_text_is_refused_by_row_and_column_on_every_path(tmp_path, monkeypatch):
    """SQLite TEXT that is not UTF-8 (ADBC passes the bytes through as a string): refused, never staged."""
    pytest.importorskip("adbc_driver_sqlite")
    import sqlite3

    rows = clean_rows()
    extract_with(tmp_path, monkeypatch, rows, "reference")  # creates the file
    db = sqlite3.connect(tmp_path / "things.sqlite")
    db.execute("UPDATE things SET note = CAST(X'6361669320E9' AS TEXT) WHERE id = 25")
    db.commit()
    db.close()
    results = all_paths(tmp_path, monkeypatch, rows)
    message = results["reference"][0]
    assert isinstance(message, str) and "bad__things: row 26, column note: text is not valid UTF-8 (byte 0x93" in message
    assert results["adbc"][0] == results["vectorised"][0] == message
