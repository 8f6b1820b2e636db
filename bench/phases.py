#!/usr/bin/env python3
"""Where the time of one PostGIS publish goes: wall time per phase of Extract and Load.

    .venv/bin/python bench/phases.py                 # 1M rows, S3 staging on moto's server, as bench/run.py
    .venv/bin/python bench/phases.py --rows 100000 --runs 3

Sets up what bench/run.py does (source table, destination, moto), then runs ``Publish --force`` in a child
process whose phases are wrapped in wall-clock timers (the source queries, the COPY read, the writer's
hand-offs — time the COPY read waited on the compressor —, the uploader's parts, the commit; on the load
side every statement, the COPY and the swap). Threads' timers overlap the main thread's: phases do not add
up to the total. For a sampling profile of the same run, see bench/README.md ("Profile": py-spy).
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(dataset_id: str) -> None:
    sys.path.insert(0, str(ROOT))
    timers: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - started
                calls[name] += 1
        return wrapper

    import luigi

    from databridge_luigi import staging
    from databridge_luigi.publish import postgis, protocol
    from databridge_luigi.sources import sql

    for method in ("columns", "check", "count", "geometry_types", "stream"):
        setattr(sql.PostgresAdapter, method, timed(f"extract: {method}", getattr(sql.PostgresAdapter, method)))
    staging.StagedTableWriter.write_csv = timed("extract:   writer hand-off (COPY read waits)", staging.StagedTableWriter.write_csv)
    staging.StagedTableWriter._compress = timed("extract:   [compressor thread] sha256 + gzip", staging.StagedTableWriter._compress)
    staging._S3MultipartWrite._upload_part = timed("extract:   [uploader thread] S3 upload_part", staging._S3MultipartWrite._upload_part)
    staging.StagedTableWriter.finish = timed("extract: finish (last part, complete upload, schema, manifest)", staging.StagedTableWriter.finish)
    query = postgis.PostgisTransport.query

    def timed_query(self, statement):  # type: ignore[no-untyped-def]
        words = statement.split()
        name = " ".join(words[:2]) if words[0] in ("CREATE", "DROP") else words[0]
        if "count(" in statement:
            name = "SELECT count(*)"
        return timed(f"load: {name}", query)(self, statement)

    postgis.PostgisTransport.query = timed_query
    postgis.PostgisTransport.copy_in = timed("load: COPY FROM STDIN (S3 → gunzip → COPY)", postgis.PostgisTransport.copy_in)
    postgis.PostgisTransport.transaction = timed("load: swap transaction", postgis.PostgisTransport.transaction)
    protocol.Loader.load = timed("load: total", protocol.Loader.load)
    started = time.perf_counter()
    luigi.run(["--module", "databridge_luigi", "Publish", "--dataset-id", dataset_id, "--force", "--local-scheduler", "--log-level", "WARNING"])
    print(f"{time.perf_counter() - started:7.2f} s  in-process total (luigi scheduling, Extract, Load)")
    for name, seconds in sorted(timers.items()):
        print(f"{seconds:7.2f} s  {name}" + (f"  (×{calls[name]})" if calls[name] > 1 else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2, help="the first run warms caches; every run is printed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.run import Bench

    workdir = Path(tempfile.mkdtemp(prefix="dbl-phases-"))
    bench = Bench(workdir)
    try:
        table = bench.make_table(args.rows)
        config = bench.config(f"cfg_phases_{table}", {f"bench__{table}": table})
        for run in range(1, args.runs + 1):
            print(f"--- run {run}, {args.rows:,} rows", flush=True)
            started = time.monotonic()
            subprocess.run([sys.executable, __file__, "--child", f"bench__{table}"], env=bench.env(config, bench.dest), cwd=ROOT, check=True)
            print(f"{time.monotonic() - started:7.2f} s  wall, process start to exit", flush=True)
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
