#!/usr/bin/env python3
"""Wall time and machine-wide CPU seconds per contestant: where a publish's time goes on a 2-core machine.

    .venv/bin/python bench/cpu.py                      # 1M rows, 3 runs each, interleaved
    .venv/bin/python bench/cpu.py --rows 100000 --repeats 1
    .venv/bin/python bench/cpu.py --many 100           # 100 datasets of 10k rows: the shell loop against PublishAll
    .venv/bin/python bench/cpu.py --many 40 --slow-source 0.2   # the same from a source 200 ms away per query

Runs floor, floor + GiST + ANALYZE and ours (PostGIS, S3 staging on moto and local-directory staging) from
bench/run.py on the same generated table, each after a CHECKPOINT, and reads the machine's busy CPU seconds from
/proc/stat around each run: the source and destination servers, moto, psql and our processes together. A
contestant whose CPU ÷ cores is close to its wall time kept every core busy; overlapping its phases could not
make it faster. A measurement, not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench_run  # noqa: E402  (bench/run.py: the Bench and its contestants)

TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; idle and iowait excluded)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


Contestant = Callable[[int], bench_run.Result]  # called with the repeat's number


def one_table_contestants(bench: bench_run.Bench, rows: int) -> dict[str, Contestant]:
    table = bench.make_table(rows)
    return {
        "floor": lambda _: bench.floor(table, rows),
        "floor + GiST + ANALYZE": lambda _: bench.floor(table, rows, usable=True),
        "ours, postgis (S3 staging)": lambda _: bench.ours(table, rows, "postgis"),
        "ours, postgis (local staging)": lambda _: bench.ours(table, rows, "postgis", local_staging=True),
    }


def many_contestants(bench: bench_run.Bench, datasets: int, wait: float = 0.0) -> dict[str, Contestant]:
    """Each repeat publishes new tables (tags carry the repeat's number): every run is a first publish. ``wait``:
    read a view that waits that long per query (``Bench.slow_source``) instead of the table."""
    source = bench.slow_source(10_000, wait) if wait else None
    return {
        "floor + GiST + ANALYZE": lambda r: bench.many_floor(datasets, 10_000, f"cpufloor{r}", source),
        "ours, PublishAll --workers 1 (local staging)": lambda r: bench.many_ours(datasets, 10_000, f"cpu{r}", "local", 1, source=source),
        "ours, PublishAll --workers 1, no extract ahead": lambda r: bench.many_ours(datasets, 10_000, f"cpu{r}", "local", 1,
                                                                                      extract_ahead=False, source=source),
        "ours, PublishAll --workers 2 (local staging)": lambda r: bench.many_ours(datasets, 10_000, f"cpu{r}", "local", 2, source=source),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--many", type=int, default=0, help="instead: this many datasets of 10k rows (per-dataset fixed cost)")
    parser.add_argument("--slow-source", type=float, default=0.0, metavar="SECONDS",
                        help="with --many: each source query first waits this long (a warehouse far away on the network)")
    args = parser.parse_args()
    bench = bench_run.Bench(Path(tempfile.mkdtemp(prefix="dbl-cpu-")))
    try:
        contestants = many_contestants(bench, args.many, args.slow_source) if args.many else one_table_contestants(bench, args.rows)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contestants}
        for repeat in range(args.repeats):
            for name, contestant in contestants.items():
                bench.settle()
                before = busy_seconds()
                result = contestant(repeat)
                runs[name].append((result.seconds or 0.0, busy_seconds() - before))
        cores = os.cpu_count() or 1
        yardstick = statistics.median(wall for wall, _ in runs["floor + GiST + ANALYZE"])
        per = f" ÷ {args.many} datasets (ms)" if args.many else ""
        scale = 1000 / args.many if args.many else 1.0
        print(f"| contestant | wall{per} (median) | × floor + GiST | machine CPU{per} | CPU ÷ {cores} cores |\n|---|---:|---:|---:|---:|")
        for name, measured in runs.items():
            wall, cpu = statistics.median(w for w, _ in measured), statistics.median(c for _, c in measured)
            print(f"| {name} | {wall * scale:.2f} | {wall / yardstick:.2f} | {cpu * scale:.2f} | {cpu * scale / cores:.2f} |")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
