#!/usr/bin/env python3
"""Benchmark: what a daily run costs when little or nothing changed, against the floor, in one run.

    .venv/bin/python bench/daily.py                    # 1M rows, 3 repeats
    .venv/bin/python bench/daily.py --rows 100000 --repeats 1

The yardstick is the floor + GiST + ANALYZE of bench/run.py: a full rewrite of the table from the source,
which is what a scheduled job without change detection pays every day. Ours publishes one dataset (merge by
``id``, S3 staging on moto's server, PostGIS destination, change detection on as by default) at version A
(not timed), then, in each repeat, times a whole ``luigi … Publish --version <new>`` (scheduling, change
signal, extract and staging if needed, load, commit) for:

* **nothing changed**: the source's change signal proves the table unchanged, so nothing is extracted and
  the load records the version without rewriting the table;
* **nothing changed, signal off** (``change_signal: false``): extract and stage everything, then the
  load finds the staged sha256 equal to the live table's and records the version without rewriting it;
* **1% changed, merge**: 0.6% of rows updated, 0.2% deleted, 0.2% new in the source (updated and new rows
  stamped in ``updated``), then extract, stage, COPY into a shadow and merge 1% into the live table;
* **1% changed, merge, incremental** (``change_signal: {column: updated, incremental: true}``, an index on
  ``updated`` as an application's updated_at column has): the same change, but only the rows stamped since the
  published version are extracted, staged, copied and merged, and the source's key set (the ``id`` column
  alone) is staged and copied beside them so the merge deletes the rows gone from the source.

Contestants are interleaved per repeat; the table shows the median wall seconds and the ratio to the floor.
A measurement, not a test: nothing asserts on these numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import run as bench_run  # noqa: E402  (bench/run.py: the table, the floor, moto, the sampler)

LUIGI = str(bench_run.BIN / "luigi")


def config(root: Path, name: str, table: str, extra: str = "") -> str:
    path = root / "databridge" / "daily" / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: []\nindexes: [id]\n"
                    f"load_mode: merge\nprimary_key: [id]\nsource: {{schema: bench, table: {table}}}\n"
                    f"destination: {{table: {name}}}\n{extra}")
    return f"daily__{name}"


def publish(env: dict[str, str], dataset: str, version: str) -> float:
    started = time.monotonic()
    done = subprocess.run([LUIGI, "--module", "databridge_luigi", "Publish", "--dataset-id", dataset, "--version", version,
                           "--local-scheduler"], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"Publish {dataset} {version} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def change_one_percent(bench: bench_run.Bench, table: str, rows: int, repeat: int) -> None:
    """0.6% updated, 0.2% deleted, 0.2% new — different rows each repeat."""
    base = (repeat * 10) % 1000
    stamp = "now() AT TIME ZONE 'America/New_York'"  # ``updated`` is a naive timestamp in the dataset's zone
    bench._sql(bench.src, f"UPDATE bench.{table} SET name = 'changed {repeat} ' || id, updated = {stamp} "
                          f"WHERE id % 1000 BETWEEN {base} AND {base + 5}")
    bench._sql(bench.src, f"DELETE FROM bench.{table} WHERE id % 1000 BETWEEN {base + 6} AND {base + 7}")
    bench._sql(bench.src, f"INSERT INTO bench.{table} SELECT id + {rows * 10 * (repeat + 1)}, name, category, amount, ratio, visits, "
                          f"active, opened, {stamp}, notes, code, zip, geom FROM bench.{table} WHERE id % 1000 BETWEEN {base + 8} AND {base + 9} "
                          f"AND id <= {rows}")
    bench._sql(bench.src, f"ANALYZE bench.{table}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dbl-daily-"))
    bench = bench_run.Bench(work)
    seconds: dict[str, list[float]] = {}
    started = time.monotonic()
    try:
        table = bench.make_table(args.rows)
        bench._sql(bench.src, f"ALTER TABLE bench.{table} ADD PRIMARY KEY (id)")
        root = work / "configs"
        signal = config(root, "with_signal", table)
        no_signal = config(root, "without_signal", table, "change_signal: false\n")
        bench._sql(bench.src, f"CREATE INDEX ON bench.{table} (updated)")
        incremental = config(root, "incremental", table, "change_signal: {column: updated, settle_seconds: 60, incremental: true}\n")
        env = bench.env(root, bench.dest)
        for dataset in (signal, no_signal, incremental):
            publish(env, dataset, "20260101T000000Z")
        for repeat in range(args.repeats):
            day = f"202601{repeat + 2:02d}T000000Z"
            bench.settle()
            seconds.setdefault("ours, nothing changed (change signal)", []).append(publish(env, signal, day))
            bench.settle()
            seconds.setdefault("ours, nothing changed, change_signal: false (extract, compare sha256)", []).append(publish(env, no_signal, day))
            change_one_percent(bench, table, args.rows, repeat)
            bench.settle()
            seconds.setdefault("ours, 1% changed, merge (extract, stage, shadow COPY, merge)", []).append(
                publish(env, signal, day.replace("T00", "T12")))
            publish(env, no_signal, day.replace("T00", "T12"))  # not timed: brings its live table up to the source
            bench.settle()
            seconds.setdefault("ours, 1% changed, merge, incremental (rows stamped since the published version, and the key set)", []).append(
                publish(env, incremental, day.replace("T00", "T12")))
            bench.settle()
            seconds.setdefault("floor + GiST + ANALYZE (a full rewrite)", []).append(bench.floor(table, args.rows, usable=True).seconds or 0.0)
    finally:
        bench.close()
    floor = statistics.median(seconds.pop("floor + GiST + ANALYZE (a full rewrite)"))
    print(f"\n{args.rows:,} rows; median of {args.repeats}; whole run {time.monotonic() - started:.0f} s; {os.cpu_count()} cores\n")
    print("| daily run | seconds | ratio to floor + GiST |")
    print("|---|---:|---:|")
    print(f"| floor + GiST + ANALYZE (a full rewrite) | {floor:.2f} | 1.00 |")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / floor:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
