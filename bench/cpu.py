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

With ``--many`` two more columns say where a contestant's machine CPU goes: the new database sessions it opened per
dataset (``pg_stat_database.sessions`` of the source and destination databases: each new session is a server
process with cold catalog caches, and a PostGIS library load once it touches a geometry) and the CPU of the
server's ended sessions (the postmaster's reaped children, read from /proc; "-" when the server is not local).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench_run  # noqa: E402  (bench/run.py: the Bench and its contestants)

TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; idle and iowait excluded)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


Contestant = Callable[[int], bench_run.Result]  # called with the repeat's number


def sessions_opened(bench: bench_run.Bench) -> int:
    """Sessions ever opened in the bench's source and destination databases (PostgreSQL 14+)."""
    with bench_run.psycopg.connect(bench.dest, autocommit=True) as conn:
        return int(conn.execute("SELECT sum(sessions) FROM pg_stat_database WHERE datname = ANY(%s)",
                                ([_database(bench.src), _database(bench.dest)],)).fetchone()[0])


def _database(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def postmaster_pid(bench: bench_run.Bench) -> int | None:
    """The destination server's postmaster, when it runs on this machine and its data directory is readable."""
    try:
        with bench_run.psycopg.connect(bench.dest, autocommit=True) as conn:
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        return int(Path(data_directory, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError, bench_run.psycopg.Error):
        return None


def server_seconds(postmaster: int | None) -> float | None:
    """CPU seconds of the server's ended sessions: its postmaster's reaped children (cutime + cstime)."""
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / TICKS
    except (OSError, ValueError, IndexError):
        return None


def measure(bench: bench_run.Bench, contestant: Contestant, repeat: int,
            postmaster: int | None) -> tuple[float, float, int, float | None]:
    """Wall seconds, machine CPU seconds, sessions opened and the server's CPU seconds of one run."""
    bench.settle()
    sessions, server, before = sessions_opened(bench), server_seconds(postmaster), busy_seconds()
    result = contestant(repeat)
    busy = busy_seconds() - before
    time.sleep(0.5)  # the run's sessions end as its processes exit; let the postmaster reap them
    after = server_seconds(postmaster)
    return (result.seconds or 0.0, busy, sessions_opened(bench) - sessions - 1,  # -1: sessions_opened's own
            None if server is None or after is None else after - server)


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
        "ours, 1 process × --workers 1 on one luigid": lambda r: bench.many_processes(datasets, 10_000, f"cpu{r}", 1, source=source),
        "ours, 2 processes × --workers 1 on one luigid": lambda r: bench.many_processes(datasets, 10_000, f"cpu{r}", 2, source=source),
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
        runs: dict[str, list[tuple[float, float, int, float | None]]] = {name: [] for name in contestants}
        postmaster = postmaster_pid(bench)
        for repeat in range(args.repeats):
            for name, contestant in contestants.items():
                runs[name].append(measure(bench, contestant, repeat, postmaster))
        print(table(runs, args.many))
    finally:
        bench.close()
    return 0


def table(runs: dict[str, list[tuple[float, float, int, float | None]]], many: int) -> str:
    """The markdown table of medians; with ``many``, per dataset and with the sessions and server CPU columns."""
    cores = os.cpu_count() or 1
    yardstick = statistics.median(run[0] for run in runs["floor + GiST + ANALYZE"])
    per = f" ÷ {many} datasets (ms)" if many else ""
    scale = 1000 / many if many else 1.0
    extra = (" new sessions per dataset | server CPU per dataset (ms) |", "---:|---:|") if many else ("", "")
    lines = [f"| contestant | wall{per} (median) | × floor + GiST | machine CPU{per} | CPU ÷ {cores} cores |{extra[0]}",
             f"|---|---:|---:|---:|---:|{extra[1]}"]
    for name, measured in runs.items():
        wall, cpu = statistics.median(run[0] for run in measured), statistics.median(run[1] for run in measured)
        line = f"| {name} | {wall * scale:.2f} | {wall / yardstick:.2f} | {cpu * scale:.2f} | {cpu * scale / cores:.2f} |"
        if many:
            servers = [run[3] for run in measured if run[3] is not None]
            server = f"{statistics.median(servers) * scale:.0f}" if servers else "-"
            line += f" {statistics.median(run[2] for run in measured) / many:.2f} | {server} |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
