#!/usr/bin/env python3
"""Benchmark: what change detection saves — PublishAll over many published datasets at a new version.

    .venv/bin/python bench/change_detection.py                      # 100 datasets x 100k rows
    .venv/bin/python bench/change_detection.py --datasets 20 --rows 20000   # a smoke run
    .venv/bin/python bench/change_detection.py --no-baseline        # without the (long) change_signal: false run

While others edit the tree, run it from a snapshot (``git archive HEAD | tar -x -C DIR`` and ``PYTHONPATH=DIR``):
the signal covers the extract's code, so an edit under sources/ between two runs makes every dataset extract.

It builds ``--datasets`` source tables of ``--rows`` rows each in a fresh database on the local PostgreSQL (as
the tests do), configures one dataset per table with ``schedule_interval: '* * * * *'`` (a new version every
minute), publishes them all once into a fresh PostGIS database with local staging, then measures one
``luigi --module databridge_luigi PublishAll --local-scheduler`` per new version:

  unchanged              nothing changed in any source table
  5 changed              one row updated in each of 5 tables
  unchanged, no signal   the same as "unchanged" with change_signal: false (every table extracted; each load
                         then finds the sha256 of the live table and records the version without rewriting)

and prints wall seconds, peak RSS and the rows extracted (summed from the new version's manifests: a manifest
with ``unchanged_from`` extracted nothing). Each run starts at a minute boundary, after a CHECKPOINT, once no
transaction older than the newest source write is open on the server (until then a signal is unsettled).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.run import run_measured  # noqa: E402
from tests.conftest import create_postgis_database, drop_database, ensure_role  # noqa: E402

BIN = Path(sys.executable).parent


def sql(dsn: str, statement: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def make_sources(dsn: str, datasets: int, rows: int) -> None:
    sql(dsn, "CREATE SCHEMA bench_chg")
    sql(dsn, "CREATE TABLE bench_chg.t000 (objectid integer PRIMARY KEY, address text, code text, opened timestamp, "
             "fine numeric(12,2), shape geometry(Point, 2272))")
    sql(dsn, f"INSERT INTO bench_chg.t000 SELECT g, g || ' Market St', 'C' || (g % 7), "
             f"timestamp '2024-03-09 20:00' + g * interval '7 minutes', g * 1.25, "
             f"ST_SetSRID(ST_MakePoint(2690000 + g, 230000 + g), 2272) FROM generate_series(1, {rows}) g")
    for i in range(1, datasets):
        sql(dsn, f"CREATE TABLE bench_chg.t{i:03d} AS TABLE bench_chg.t000")
    sql(dsn, "VACUUM ANALYZE")


def write_configs(config_dir: Path, datasets: int, extra: str = "") -> None:
    for i in range(datasets):
        path = config_dir / "databridge" / "bench" / f"t{i:03d}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("schedule_interval: '* * * * *'\nupload_to_carto: true\ncarto_users: []\n"
                        f"source: {{schema: bench_chg, table: t{i:03d}}}\n{extra}")


def settle(dsn: str, config_dir: Path, timeout: float = 300) -> None:
    """Wait until every dataset's change signal is settled (no older transaction of the source database open)."""
    from databridge_luigi.change import read_signal
    from databridge_luigi.config import load_datasets

    datasets, _ = load_datasets(config_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(read_signal(d, dsn)["settled"] for d in datasets):
            return
        time.sleep(0.5)
    print("warning: a transaction stayed open on the source database; some signals are unsettled", file=sys.stderr)


def next_minute() -> str:
    """Sleep to the next minute boundary (+1 s); return the version the datasets are then due at."""
    now = time.time()
    time.sleep(60 - now % 60 + 1)
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M00Z")


def extracted(staging: Path, version: str) -> tuple[int, int]:
    """(datasets extracted, rows extracted) at ``version``."""
    manifests = [json.loads(p.read_text()) for p in staging.glob(f"*/{version}/manifest.json")]
    fresh = [m for m in manifests if not m.get("unchanged_from")]
    return len(fresh), sum(m["rows"] for m in fresh)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true", help="skip the change_signal: false run (every table extracted)")
    args = parser.parse_args()

    ensure_role("publicuser")
    source, dest = create_postgis_database("bench_chg_src"), create_postgis_database("bench_chg_dest")
    work = Path(tempfile.mkdtemp(prefix="bench-change-"))
    staging, config_dir = work / "staging", work / "configs"
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(config_dir), DATABRIDGE_STAGING=str(staging),
               DATABRIDGE_CONN_DATABRIDGE=source, DATABRIDGE_CONN_CARTO_PHL=dest)
    command = [str(BIN / "luigi"), "--module", "databridge_luigi", "PublishAll", "--local-scheduler", "--workers", str(args.workers)]
    results: list[tuple[str, float, float, int, int, str]] = []
    try:
        started = time.monotonic()
        make_sources(source, args.datasets, args.rows)
        write_configs(config_dir, args.datasets)
        print(f"built {args.datasets} tables of {args.rows} rows in {time.monotonic() - started:.0f}s", file=sys.stderr)
        version = next_minute()
        seconds, peak = run_measured(command, env=env)
        results.append(("first publish", seconds, peak, *extracted(staging, version), version))

        def measure(label: str) -> None:
            if label != 'nothing changed, change_signal: false':
                settle(source, config_dir)
            sql(source, "CHECKPOINT")
            sql(dest, "CHECKPOINT")
            version = next_minute()
            load = os.getloadavg()[0]
            seconds, peak = run_measured(command, env=env)
            results.append((label, seconds, peak, *extracted(staging, version), f"{version} (load {load:.1f})"))
            print(results[-1], file=sys.stderr)

        measure("nothing changed")
        for i in range(min(args.changed, args.datasets)):
            sql(source, f"UPDATE bench_chg.t{i:03d} SET code = 'changed' WHERE objectid = 1")
        measure(f"{args.changed} changed (one row each)")
        if not args.no_baseline:
            write_configs(config_dir, args.datasets, "change_signal: false\n")
            measure("nothing changed, change_signal: false")
    finally:
        drop_database(source)
        drop_database(dest)
        subprocess.run(["rm", "-rf", str(work)], check=False)

    print(f"\nPublishAll over {args.datasets} published datasets of {args.rows:,} rows, --workers {args.workers}, local "
          f"staging, PostGIS destination ({platform.node()}, {os.cpu_count()} cores)\n")
    print("| new version | seconds | peak RSS MB | datasets extracted | rows extracted | version |")
    print("|---|---:|---:|---:|---:|---|")
    for label, seconds, peak, count, rows, version in results:
        print(f"| {label} | {seconds:.1f} | {peak:.0f} | {count} | {rows:,} | {version} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
