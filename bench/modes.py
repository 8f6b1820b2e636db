#!/usr/bin/env python3
"""Benchmark: the load modes side by side — swap, replace in place, merge by key — on one table with 1% of
its rows changed, while an app reads the live table continuously.

    .venv/bin/python bench/modes.py                 # 1M rows
    .venv/bin/python bench/modes.py --rows 100000   # quicker

For each mode: publish version A (a first publish), change 1% of the source (0.6% updated, 0.2% deleted,
0.2% new), stage version B (not timed), then time the load of B (``luigi … Publish --version B``) while a
reader thread runs ``SELECT … WHERE id = …`` (indexed, as an app's lookups are) on the live table every 10 ms. Reported: the load's wall
seconds, rows written to the live table (inserted + updated + deleted, from the marker), the live table's
size afterwards (heap + indexes + TOAST, dead rows included), and the longest any reader query took.
Same source table and same bench.run table shape as bench/run.py; local-directory staging.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from tests.conftest import create_postgis_database, drop_database  # noqa: E402

import run as shapes  # noqa: E402  (bench/run.py: the table's columns and generator)

LUIGI = str(Path(sys.executable).with_name("luigi"))
V_A, V_B = "20260101T000000Z", "20260102T000000Z"


def sql(dsn: str, statement: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


class Reader(threading.Thread):
    def __init__(self, dsn: str, table: str, rows: int):
        super().__init__(daemon=True)
        self.dsn, self.table, self.rows = dsn, table, rows
        self.stop = threading.Event()
        self.longest, self.queries = 0.0, 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(f"SELECT * FROM public.{self.table} WHERE id = %s", (random.randint(1, self.rows),)).fetchall()
                self.longest = max(self.longest, time.monotonic() - started)
                self.queries += 1
                time.sleep(0.01)


def luigi(env: dict[str, str], *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([LUIGI, "--module", "databridge_luigi", *args, "--local-scheduler"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"luigi {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.monotonic() - started


def measure(mode: str, rows: int, source: str, dest: str, work: Path) -> dict[str, object]:
    table = f"modes_{mode}"
    dataset = f"bench__{table}"
    config = work / "configs" / "databridge" / "bench" / f"{table}.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(textwrap.dedent(f"""\
        schedule_interval: false
        upload_to_carto: true
        carto_users: []
        indexes: [id]
        source: {{schema: bench, table: {table}}}
        load_mode: {mode}
        {"primary_key: [id]" if mode == "merge" else ""}
        """))
    env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(work / "configs"), DATABRIDGE_STAGING=str(work / "staging"),
               DATABRIDGE_CONN_DATABRIDGE=source, DATABRIDGE_CONN_CARTO_PHL=dest)
    sql(source, f"DROP TABLE IF EXISTS bench.{table}")
    sql(source, f"CREATE TABLE bench.{table} ({shapes.COLUMNS})")
    sql(source, shapes.GENERATE.format(table=table, rows=rows))
    luigi(env, "Publish", "--dataset-id", dataset, "--version", V_A)
    changed = max(1, rows // 100)
    sql(source, f"UPDATE bench.{table} SET name = 'changed ' || id WHERE id % 1000 < 6")
    sql(source, f"DELETE FROM bench.{table} WHERE id % 1000 BETWEEN 6 AND 7")
    sql(source, f"INSERT INTO bench.{table} SELECT id + {rows * 10}, name, category, amount, ratio, visits, active, opened, updated, "
                f"notes, code, zip, geom FROM bench.{table} WHERE id % 1000 BETWEEN 8 AND 9")
    luigi(env, "Extract", "--dataset-id", dataset, "--version", V_B)
    sql(dest, "CHECKPOINT")
    reader = Reader(dest, table, rows)
    reader.start()
    seconds = luigi(env, "Publish", "--dataset-id", dataset, "--version", V_B)
    reader.stop.set()
    reader.join(10)
    counts = sql(dest, f"SELECT inserted, updated, deleted FROM databridge_luigi_publications WHERE dataset_id = '{dataset}' AND version = '{V_B}'")[0]
    size = sql(dest, f"SELECT pg_total_relation_size('public.{table}')")[0][0]
    return {"mode": mode, "seconds": seconds, "written": sum(c or 0 for c in counts), "changed": changed,
            "size_mb": size / 1e6, "reader_max_ms": reader.longest * 1000, "reader_queries": reader.queries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--modes", default="swap,replace,merge")
    args = parser.parse_args()
    source, dest = create_postgis_database("dbl_bench_modes_src"), create_postgis_database("dbl_bench_modes_dest")
    try:
        sql(source, "CREATE SCHEMA bench")
        with tempfile.TemporaryDirectory(prefix="dbl-modes-") as work:
            results = [measure(mode, args.rows, source, dest, Path(work)) for mode in args.modes.split(",")]
    finally:
        drop_database(source)
        drop_database(dest)
    print(f"\n{args.rows:,} rows, 1% changed (0.6% updated, 0.2% deleted, 0.2% new); load of version B only; "
          f"{os.cpu_count()} cores\n")
    print("| mode | load seconds | rows written | table size after | longest reader query | reader queries |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['seconds']:.2f} | {r['written']:,} | {r['size_mb']:.0f} MB | {r['reader_max_ms']:.0f} ms | {r['reader_queries']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
