"""The demo path: configs/examples from the bundled SQLite sample into PostGIS, as scripts/demo.sh runs it."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

import databridge_luigi.schedule as schedule
from databridge_luigi.tasks import PublishAll
from scripts.sample_databridge import build as build_sample
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def demo(tmp_path, monkeypatch):
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_demo")
    sample = build_sample(tmp_path / "databridge.sqlite")
    pipeline = Pipeline(tmp_path, f"sqlite:///{sample}", dest, monkeypatch)
    monkeypatch.setenv("DATABRIDGE_CONFIG_DIR", str(ROOT / "configs" / "examples"))
    monkeypatch.setattr(schedule, "utc_now", lambda: datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    yield pipeline, sample
    drop_database(dest)


def test_examples_publish_from_the_sample_and_match_it(demo):
    pipeline, sample = demo
    run = pipeline.run(PublishAll())
    assert run.ok, run.summary
    source = sqlite3.connect(sample)
    for table in ("violations", "zoning_districts", "permit_types"):
        assert pipeline.dest(f"SELECT count(*) FROM {table}")[0][0] == source.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    # NULLs stay NULL and empty strings stay empty on the Python row path.
    nulls, empties = source.execute("SELECT sum(notes IS NULL), sum(notes = '') FROM violations").fetchone()
    assert pipeline.dest("SELECT count(*) FILTER (WHERE notes IS NULL), count(*) FILTER (WHERE notes = '') FROM violations")[0] == (nulls, empties)
    assert pipeline.dest("SELECT notes FROM violations WHERE notes LIKE '%中文%' LIMIT 1")[0][0] == "中文注释"
    assert pipeline.dest("SELECT DISTINCT GeometryType(shape) FROM zoning_districts ORDER BY 1") == [("MULTIPOLYGON",), ("POLYGON",)]
    assert pipeline.dest("SELECT fine_amount::text FROM violations WHERE objectid = 1")[0][0] == str(source.execute("SELECT fine_amount FROM violations WHERE objectid = 1").fetchone()[0])
    assert pipeline.run(PublishAll()).did_nothing
