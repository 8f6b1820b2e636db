"""Every value of a tricky source table survives extract → staging → load unchanged."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

import databridge_luigi.schedule as schedule
from databridge_luigi.tasks import PublishAll
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.pipeline import Pipeline

TRICKY_TEXT = [
    'plain', '', 'comma, inside', 'quote " inside', "single ' quote", 'new\nline', 'carriage\rreturn\r\n',
    'backslash \\ and \\N', 'emoji 🚲🏙️', 'right-to-left עברית العربية', 'accents café Peña', '  padded  ',
    'NULL', 'x' * 100_000,
]


@pytest.fixture()
def pipeline(tmp_path, monkeypatch, postgis_dsn):
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_dest")
    monkeypatch.setattr(schedule, "utc_now", lambda: datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    yield Pipeline(tmp_path, postgis_dsn, dest, monkeypatch)
    drop_database(dest)


def test_every_value_round_trips(pipeline):
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_qa")
    pipeline.source("DROP TABLE IF EXISTS gis_qa.tricky")
    pipeline.source(
        'CREATE TABLE gis_qa.tricky (id integer, "MixedCase" text, note text, big numeric, tiny numeric, dbl double precision, '
        "flag boolean, day date, naive timestamp, aware timestamptz, doc jsonb, shape geometry(Geometry, 2272))"
    )
    rows = []
    for i, text in enumerate(TRICKY_TEXT):
        rows.append((i, text.upper() if text else None, text))
    for i, upper, text in rows:
        pipeline.source(
            "INSERT INTO gis_qa.tricky VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "ST_GeomFromEWKT(%s))",
            (
                i, upper, text, "123456789012345678901234567890.123456789012345678", "0.000000000000000000000001",
                1 / 3 + i, i % 2 == 0, f"18{50 + i}-02-0{1 + i % 9}",
                # Across the 2024 DST changes in America/New_York, including the ambiguous 01:30 in November.
                ["2024-03-10 01:59:59", "2024-03-10 03:00:00", "2024-11-03 01:30:00", "1899-12-31 23:59:59"][i % 4],
                "2024-07-01 12:00:00+00", '{"a": [1, 2, "ü"], "b": null}',
                ["SRID=2272;POINT(2690000.123456 230000.654321)", "SRID=2272;MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))",
                 "SRID=2272;POLYGON((0 0,2 0,2 2,0 0))", "SRID=2272;LINESTRING(0 0,1 1)"][i % 4],
            ),
        )
    pipeline.source("INSERT INTO gis_qa.tricky (id) VALUES (999)")  # a row of NULLs
    pipeline.config("qa__tricky", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\n")

    assert pipeline.run(PublishAll()).ok

    src = pipeline.source(
        'SELECT id, "MixedCase", note, big::text, tiny::text, dbl, flag, day, '
        "naive AT TIME ZONE 'America/New_York', aware, doc, ST_AsEWKT(shape) FROM gis_qa.tricky ORDER BY id"
    )
    dst = pipeline.dest(
        "SELECT id, mixedcase, note, big::text, tiny::text, dbl::float8, flag, day, naive, aware, doc::jsonb, ST_AsEWKT(shape) "
        "FROM tricky ORDER BY id"
    )
    assert len(src) == len(TRICKY_TEXT) + 1
    for expected, actual in zip(src, dst):
        assert actual == expected
    column_type = pipeline.dest("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'tricky'::regclass AND attname = 'shape'")
    assert column_type == [("geometry(Geometry,2272)",)]
