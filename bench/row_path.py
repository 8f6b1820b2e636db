#!/usr/bin/env python3
"""The row path against the COPY path (issue 15, items 1–2): the same table published from PostgreSQL (COPY),
SQLite and MySQL/MariaDB (the row path: DBAPI batches → vectorised conversion → CSV), side by side in one run.

    .venv/bin/python bench/row_path.py                          # 1M rows
    .venv/bin/python bench/row_path.py --rows 1000000,5000000   # memory: peak RSS at 5M against 1M
    .venv/bin/python bench/row_path.py --sources sqlite --profile /tmp/p.html   # pyinstrument profile of one publish

Each contestant is ``luigi … Publish --force --local-scheduler`` in a child process, staging in a local
directory, PostGIS destination; wall seconds and peak RSS of the process tree (sampled every 20 ms from /proc).
The table is bench/run.py's (12 columns of mixed types and a point in EPSG:2272), generated in PostgreSQL and
copied to a SQLite file and to a MariaDB database (``DATABRIDGE_BENCH_MYSQL``, default
``mysql+pymysql://root@127.0.0.1:3306``) with the geometry as WKT text. A measurement, not a test.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import create_postgis_database, drop_database, ensure_role  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from run import run_measured as measured_run  # noqa: E402  (bench/run.py: wall time and process-tree memory)

BIN = Path(sys.executable).parent
MYSQL = os.environ.get("DATABRIDGE_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306")
PG_COLUMNS = (
    "id bigint, name text, category text, amount numeric(12,2), ratio double precision, visits integer, "
    "active boolean, opened date, updated timestamp, notes text, code text, zip text, geom geometry(Point, 2272)"
)
GENERATE = """
INSERT INTO bench.{table}
SELECT g, 'Name ' || g, (ARRAY['permit','violation','license','appeal'])[1 + g % 4], (g % 100000) / 100.0,
       (g % 997) / 997.0, g % 5000, g % 3 = 0, date '2020-01-01' + (g % 1500), timestamp '2024-01-01' + g * interval '37 seconds',
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || md5(g::text) END, 'C' || (g % 97), '191' || lpad((g % 60)::text, 2, '0'),
       ST_SetSRID(ST_MakePoint(2660000 + (g % 70000), 210000 + (g % 100000)), 2272)
FROM generate_series(1, {rows}) g
"""
EXPORT = ("SELECT id, name, category, amount, ratio, visits, active::int, opened, updated, notes, code, zip, ST_AsText(geom) "
          "FROM bench.{table}")
SQLITE_DDL = ("CREATE TABLE {table} (id INTEGER, name TEXT, category TEXT, amount NUMERIC, ratio REAL, visits INTEGER, "
              "active BOOLEAN, opened DATE, updated TIMESTAMP, notes TEXT, code TEXT, zip TEXT, geom TEXT)")
MYSQL_DDL = ("CREATE TABLE {table} (id BIGINT, name TEXT, category VARCHAR(20), amount DECIMAL(12,2), ratio DOUBLE, visits INT, "
             "active BOOLEAN, opened DATE, updated DATETIME, notes TEXT, code VARCHAR(10), zip VARCHAR(10), geom TEXT)")


def _server_cpu() -> float:
    """CPU seconds used so far by the MariaDB server (one long-lived process; PostgreSQL's backends come and go)."""
    try:
        pid = subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True, text=True).stdout.split()[0]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, OSError, ValueError):
        return 0.0


CPU: list[tuple[float, float]] = []  # (our process tree's CPU seconds, MariaDB's) per run_measured call


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """bench/run.py's measurement (wall seconds, peak RSS of the process tree), plus the CPU seconds of our
    process tree and of MariaDB, appended to CPU."""
    import resource

    before, server = resource.getrusage(resource.RUSAGE_CHILDREN), _server_cpu()
    elapsed, peak_mb = measured_run(command, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, _server_cpu() - server))
    return elapsed, peak_mb


class Sources:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.row_path = "fast"
        self.pg = create_postgis_database("dbl_rowbench_src")
        self.dest = create_postgis_database("dbl_rowbench_dest")
        ensure_role("publicuser")
        with psycopg.connect(self.pg, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA bench")
        self.sqlite = workdir / "source.sqlite"
        self.mysql_db = f"dbl_rowbench_{os.getpid()}"
        import pymysql

        self._my = pymysql.connect(host="127.0.0.1", user="root", local_infile=True, autocommit=True)
        self._my.cursor().execute(f"CREATE DATABASE {self.mysql_db}")

    def close(self) -> None:
        self._my.cursor().execute(f"DROP DATABASE IF EXISTS {self.mysql_db}")
        self._my.close()
        drop_database(self.pg)
        drop_database(self.dest)

    def make(self, rows: int, kinds: list[str]) -> str:
        table = f"points_{rows}"
        with psycopg.connect(self.pg, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE bench.{table} ({PG_COLUMNS})")
            conn.execute(GENERATE.format(table=table, rows=rows))
            conn.execute(f"ANALYZE bench.{table}")
            if "sqlite" in kinds or "mysql" in kinds:
                tsv = self.workdir / f"{table}.tsv"
                with open(tsv, "wb") as out, conn.cursor().copy(f"COPY ({EXPORT.format(table=table)}) TO STDOUT") as copy:
                    for chunk in copy:
                        out.write(chunk)
        if "sqlite" in kinds:
            db = sqlite3.connect(self.sqlite)
            db.execute(SQLITE_DDL.format(table=table))
            with open(tsv, encoding="utf-8") as data:
                reader = csv.reader(data, delimiter="\t", quoting=csv.QUOTE_NONE)
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * 13)})",
                               ([None if v == "\\N" else v for v in row] for row in reader))
            db.execute(f"UPDATE {table} SET id = CAST(id AS INTEGER), visits = CAST(visits AS INTEGER), active = CAST(active AS INTEGER), "
                       "ratio = CAST(ratio AS REAL), amount = CAST(amount AS REAL)")
            db.commit()
            db.close()
        if "mysql" in kinds:
            cursor = self._my.cursor()
            cursor.execute(f"USE {self.mysql_db}")
            cursor.execute(MYSQL_DDL.format(table=table))
            cursor.execute(f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE {table} FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\'")
        return table

    def publish(self, kind: str, table: str, profile: str | None = None) -> tuple[float, float]:
        config = self.workdir / f"cfg_{kind}_{table}"
        path = config / "databridge" / "bench" / f"{kind}_{table}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = {"postgres": "bench", "sqlite": "main", "mysql": self.mysql_db}[kind]
        geometry = "" if kind == "postgres" else "geometry: {column: geom, srid: 2272}\n"
        # swap: every repeat builds a new table (a republish's default, replace, rewrites the live table in place)
        path.write_text(f"schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: [publicuser]\nload_mode: swap\n"
                        f"source: {{schema: {schema}, table: {table}}}\ndestination: {{table: {kind}_{table}}}\n{geometry}")
        url = {"postgres": self.pg, "sqlite": f"sqlite:///{self.sqlite}", "mysql": f"{MYSQL}/{self.mysql_db}"}[kind]
        env = dict(os.environ, DATABRIDGE_CONFIG_DIR=str(config), DATABRIDGE_STAGING=str(self.workdir / "staging"), DATABRIDGE_ROW_PATH=self.row_path,
                   DATABRIDGE_CONN_DATABRIDGE=url, DATABRIDGE_CONN_CARTO_PHL=self.dest)
        luigi = [str(BIN / "luigi"), "--module", "databridge_luigi", "Publish", "--dataset-id", f"bench__{kind}_{table}", "--force", "--local-scheduler"]
        if profile:
            luigi = [sys.executable, "-m", "pyinstrument", "-o", profile, "-r", "html" if profile.endswith(".html") else "text", *luigi[0:1], *luigi[1:]]
        with psycopg.connect(self.dest, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        return run_measured(luigi, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000")
    parser.add_argument("--sources", default="postgres,sqlite,mysql")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contestant (the median is reported)")
    parser.add_argument("--profile", help="write a pyinstrument profile of the (single) contestant's publish here")
    parser.add_argument("--row-path", choices=["fast", "arrow", "reference"], default="fast",
                        help="DATABRIDGE_ROW_PATH for the row-path sources (reference = per value, as before vectorising)")
    args = parser.parse_args()
    kinds = args.sources.split(",")
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the databases when stopped
    workdir = Path(tempfile.mkdtemp(prefix="dbl-rowbench-"))
    sources = Sources(workdir)
    sources.row_path = args.row_path
    results = []
    try:
        for rows in [int(n) for n in args.rows.split(",")]:
            table = sources.make(rows, kinds)
            runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
            for _ in range(args.repeat):  # contestants interleaved, so a busy spell on the machine hits them alike
                for kind in kinds:
                    runs[kind].append(sources.publish(kind, table, args.profile))
                    print(f"  {kind} {rows:,}: {runs[kind][-1][0]:.2f} s, {runs[kind][-1][1]:.0f} MB, CPU ours {CPU[-1][0]:.2f} s, "
                          f"MariaDB {CPU[-1][1]:.2f} s, load {os.getloadavg()[0]:.1f}", flush=True)
            for kind in kinds:
                seconds = statistics.median(r[0] for r in runs[kind])
                peak = max(r[1] for r in runs[kind])
                results.append((kind, rows, seconds, peak, [round(r[0], 2) for r in runs[kind]]))
                print(f"{kind:9s} {rows:>9,} rows  {seconds:7.2f} s  peak RSS {peak:6.0f} MB  runs {results[-1][4]}", flush=True)
    finally:
        sources.close()
        shutil.rmtree(workdir, ignore_errors=True)
    copy = {rows: s for kind, rows, s, _, _ in results if kind == "postgres"}
    print("\n| source | rows | seconds | × COPY path | peak RSS (MB) |\n|---|---:|---:|---:|---:|")
    for kind, rows, seconds, peak, _ in results:
        ratio = f"{seconds / copy[rows]:.2f}" if rows in copy else "–"
        print(f"| {kind} | {rows:,} | {seconds:.2f} | {ratio} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
