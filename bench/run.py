#!/usr/bin/env python3
"""Benchmark: databridge-luigi against the floor and its peers, side by side on the same data, in one run.

    .venv/bin/python bench/run.py --quick            # 50k rows, 10 small datasets, one run each: 1–3 minutes
    .venv/bin/python bench/run.py                    # N = 100k and 1M, median of --repeats (3) runs each
    .venv/bin/python bench/run.py --rows 100000      # one size
    .venv/bin/python bench/run.py --with-5m          # add 5M rows
    .venv/bin/python bench/run.py --write-readme     # also write the table into bench/README.md

For each N it generates a source table in the local PostgreSQL (a point in EPSG:2272 and 12 columns of mixed
types, ~150 bytes a row) and measures, into the same destination database:

  floor        psql \\copy (SELECT … ST_AsEWKT(geom) …) TO STDOUT | psql \\copy dest FROM STDIN (no staging, no swap)
  floor+GiST   the same, then CREATE INDEX … USING gist (geom) and ANALYZE: what a usable table needs
  postgis      luigi … Publish --force, staging in S3 (moto server, on the same two cores), PostGIS destination;
               and the same with local-directory staging (the issue's own measure, "local staging unless said")
  carto        the same to the CARTO emulator (COPY API, cartodbfy, commit), staging in S3
  ogr2ogr      GDAL's ogr2ogr PG → PG with PG_USE_COPY=YES, -overwrite, GiST on the geometry (its default)
  sling        sling run, full-refresh (geometry arrives as hex EWKB text; sling makes no spatial index)
  sling+GiST   the same with post_sql: the column cast to geometry(Point,2272), a GiST index, ANALYZE
  dlt          dlt sql_table → postgres, write_disposition=replace (insert-from-staging), same rows (geometry as EWKT)
  no-op        PublishAll over 100 (--quick: 10) configured, already-published datasets (decides "nothing to do")
  many small   100 (--quick: 10) datasets of 10k rows, first publish: ours PublishAll with --workers 1 and 2 (S3 staging
               on moto, and local-directory staging),
               against a floor + GiST + ANALYZE shell loop and an ogr2ogr loop over the same tables

Each contestant runs --repeats times (interleaved with the others, each after a CHECKPOINT); the table shows
the median wall seconds, rows/s, ratio to the floor and the largest peak RSS of the measured process tree
(sampled every 20 ms from /proc, summed over the tree). Needs: the local PostgreSQL with PostGIS (as the
tests); for the peers `pip install -e '.[bench]'` (dlt, and sling's binary from the sling-linux-amd64
wheel) and `apt-get install gdal-bin` (ogr2ogr). A peer that is missing is a row with a note, not a failure.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import stat
import shutil
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import ADMIN_DSN, create_postgis_database, drop_database, ensure_role  # noqa: E402

BIN = Path(sys.executable).parent
COLUMNS = (
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
QUICK_DATASETS = 10  # --quick: datasets in the many-small and no-op rows (100 otherwise)
FLOOR_SELECT = ("SELECT id, name, category, amount, ratio, visits, active, opened, updated, notes, code, zip, "
                "ST_AsEWKT(geom) FROM bench.{table}")


@dataclass
class Result:
    name: str
    rows: int
    seconds: float | None
    peak_mb: float | None
    note: str = ""
    runs: int = 1


def combine(results: list[Result]) -> Result:
    """Repeated runs of one contestant: the median seconds and the largest peak RSS."""
    timed = [r for r in results if r.seconds is not None]
    if not timed:
        return results[0]
    return Result(timed[0].name, timed[0].rows, statistics.median(r.seconds for r in timed),
                  max(r.peak_mb or 0 for r in timed), timed[0].note, len(timed))


# --- measuring a process tree ------------------------------------------------------------------------------

def tree_rss_kb(root_pid: int) -> int:
    """Resident memory (KiB) of a process and all its descendants, from /proc (bench/row_path.py uses it too)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE") // 1024
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run_measured(command: list[str] | str, env: dict[str, str] | None = None, shell: bool = False) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MB of its whole process tree)."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, shell=shell, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_kb(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command!r} exited {process.returncode}: {stderr.decode(errors='replace')[-1500:]}")
    return elapsed, peak / 1024


# --- the contestants ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(args: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = process.stdout.readline().strip()  # the emulators print their URL first
    return process, url


class Bench:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.luigid: subprocess.Popen | None = None  # luigid_port() starts one when a contestant needs it
        self._luigid_port = 0
        self.src = create_postgis_database("dbl_bench_src")
        self.dest = create_postgis_database("dbl_bench_dest")
        self.carto_db = create_postgis_database("dbl_bench_carto")
        ensure_role("publicuser")
        ensure_role("tileuser")
        self._sql(self.src, "CREATE SCHEMA bench")
        port = free_port()
        self.moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.moto_url = f"http://127.0.0.1:{port}"
        # A non-organization account, as the City's phl.carto.com: tables in public, found by current_schema()
        self.carto, self.carto_url = start_service([sys.executable, "-m", "tests.emulators.carto", "--dsn", self.carto_db,
                                                     "--account", "bench:bench-master-key", "--non-organization", "bench",
                                                     "--port", str(free_port())])
        self._wait_for(self.moto_url)
        import boto3

        boto3.client("s3", endpoint_url=self.moto_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket="bench")

    @staticmethod
    def _wait_for(url: str) -> None:
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                return
            except Exception:
                time.sleep(0.1)

    @staticmethod
    def _sql(dsn: str, statement: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)

    def close(self) -> None:
        for process in (self.moto, self.carto, *([self.luigid] if self.luigid else [])):
            process.terminate()
            process.wait(timeout=20)
        for dsn in (self.src, self.dest, self.carto_db):
            drop_database(dsn)

    def make_table(self, rows: int) -> str:
        table = f"points_{rows}"
        self._sql(self.src, f"CREATE TABLE bench.{table} ({COLUMNS})")
        self._sql(self.src, GENERATE.format(table=table, rows=rows))
        self._sql(self.src, f"ANALYZE bench.{table}")
        # dlt reflects columns; give it the same rows with the geometry already as EWKT text, as ours stages it
        self._sql(self.src, f"CREATE VIEW bench.{table}_ewkt AS {FLOOR_SELECT.format(table=table).replace('ST_AsEWKT(geom)', 'ST_AsEWKT(geom) AS geom')}")
        return table

    def env(self, config_dir: Path, destination: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "DATABRIDGE_CONFIG_DIR": str(config_dir), "DATABRIDGE_STAGING": "s3://bench/staging",
            "AWS_ENDPOINT_URL": self.moto_url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
            "DATABRIDGE_CONN_DATABRIDGE": self.src, "DATABRIDGE_CONN_CARTO_PHL": destination,
        })
        return env

    def config(self, name: str, datasets: dict[str, str]) -> Path:
        root = self.workdir / name
        for dataset, table in datasets.items():
            dept, file = dataset.split("__")
            path = root / "databridge" / dept / f"{file}.yml"
            path.parent.mkdir(parents=True, exist_ok=True)
            # swap: a new table each run, as the floor makes one (the default for a republish, replace, rewrites the
            # live table in place, which bench/modes.py measures)
            path.write_text(f"schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: [publicuser]\nload_mode: swap\n"
                            f"source: {{schema: bench, table: {table}}}\ndestination: {{table: {table}}}\n")
        return root

    def settle(self) -> None:
        """Flush the previous contestant's writes (WAL, dirty buffers) so none pays for another's checkpoint."""
        self._sql(self.dest, "CHECKPOINT")

    # contestants

    def floor(self, table: str, rows: int, usable: bool = False) -> Result:
        self._sql(self.dest, f"DROP TABLE IF EXISTS floor_{table}; CREATE TABLE floor_{table} ({COLUMNS})")
        command = (f"psql '{self.src}' -qc \"\\copy ({FLOOR_SELECT.format(table=table)}) TO STDOUT\" | "
                   f"psql '{self.dest}' -qc \"\\copy floor_{table} FROM STDIN\"")
        if not usable:
            seconds, peak = run_measured(command, shell=True)
            return Result("floor (psql \\copy to psql \\copy)", rows, seconds, peak)
        # the same pipe, then what makes the table usable by a map or an app: a spatial index and statistics
        command += (f" && psql '{self.dest}' -qc 'CREATE INDEX ON floor_{table} USING gist (geom)' "
                    f"-c 'ANALYZE floor_{table}'")
        seconds, peak = run_measured(command, shell=True)
        return Result("floor + GiST + ANALYZE", rows, seconds, peak)

    def ogr2ogr(self, table: str, rows: int) -> Result:
        name = "ogr2ogr PG → PG (PG_USE_COPY, GiST)"
        binary = shutil.which("ogr2ogr")
        if binary is None:
            return Result(name, rows, None, None, "ogr2ogr not installed: apt-get install gdal-bin")
        env = dict(os.environ, PG_USE_COPY="YES")
        # GDAL hands the PG: string to libpq, which takes the same URL; the spatial index is built after the COPY
        command = [binary, "-f", "PostgreSQL", f"PG:{self.dest}", f"PG:{self.src}", f"bench.{table}", "-nln", f"ogr_{table}",
                   "-overwrite", "-lco", "GEOMETRY_NAME=geom", "-lco", "SPATIAL_INDEX=GIST"]
        seconds, peak = run_measured(command, env=env)
        return Result(name, rows, seconds, peak)

    def sling(self, table: str, rows: int, usable: bool = False) -> Result:
        name = "sling full-refresh" + (" + post_sql geometry, GiST, ANALYZE" if usable else " (geometry as text, no index)")
        binary = sling_binary()
        if binary is None:
            return Result(name, rows, None, None, "sling not installed: pip install -e '.[bench]' (sling-linux-amd64)")
        target = f"public.sling_{table}"
        command = [binary, "run", "--src-conn", "BENCH_SRC", "--src-stream", f"bench.{table}", "--tgt-conn", "BENCH_DEST",
                   "--tgt-object", target, "--mode", "full-refresh"]
        if usable:  # sling writes geometry as hex EWKB text; its post_sql makes it a real, indexed column
            command += ["--tgt-options", '{"post_sql": "ALTER TABLE %s ALTER geom TYPE geometry(Point, 2272) USING geom::geometry; '
                        'CREATE INDEX ON %s USING gist (geom); ANALYZE %s"}' % (target, target, target)]
        home = self.workdir / "sling_home"
        home.mkdir(exist_ok=True)
        # sling reads connections from environment variables holding URLs; it insists on a password (trust auth ignores it)
        env = dict(os.environ, SLING_HOME_DIR=str(home), SLING_DISABLE_TELEMETRY="true", DISABLE_TELEMETRY="true",
                   BENCH_SRC=with_password(self.src) + "?sslmode=disable", BENCH_DEST=with_password(self.dest) + "?sslmode=disable")
        seconds, peak = run_measured(command, env=env)
        return Result(name, rows, seconds, peak)

    def ours(self, table: str, rows: int, transport: str, local_staging: bool = False) -> Result:
        destination = self.dest if transport == "postgis" else self.carto_url.replace("http://", "carto+http://bench:bench-master-key@") + "/user/bench"
        config = self.config(f"cfg_{transport}_{table}", {f"bench__{table}": table})
        command = [str(BIN / "luigi"), "--module", "databridge_luigi", "Publish", "--dataset-id", f"bench__{table}", "--force", "--local-scheduler"]
        env = self.env(config, destination)
        if local_staging:  # a directory, as the table measures unless it says otherwise: no moto server on our cores
            env["DATABRIDGE_STAGING"] = str(self.workdir / "staging")
        seconds, peak = run_measured(command, env=env)
        return Result(f"ours, {transport} ({'local' if local_staging else 'S3'} staging)", rows, seconds, peak)

    def dlt(self, table: str, rows: int) -> Result:
        try:
            import dlt  # noqa: F401  (only: is the peer installed?)
        except ImportError:
            return Result("dlt sql_table → postgres (replace)", rows, None, None, "dlt not installed: pip install -e '.[bench]'")
        script = self.workdir / "dlt_run.py"
        script.write_text(
            "import sys, dlt\nfrom dlt.sources.sql_database import sql_table\n"
            "src, dest, table = sys.argv[1:4]\n"
            "pipeline = dlt.pipeline(pipeline_name='bench_' + table, destination=dlt.destinations.postgres(dest), "
            "dataset_name='dlt_bench', pipelines_dir=sys.argv[4])\n"
            "resource = sql_table(credentials=src.replace('postgresql://', 'postgresql+psycopg://'), schema='bench', table=table + '_ewkt', backend='sqlalchemy')\n"
            "info = pipeline.run(resource, write_disposition='replace')\n"
        )
        env = dict(os.environ, DESTINATION__POSTGRES__REPLACE_STRATEGY="insert-from-staging", RUNTIME__LOG_LEVEL="WARNING")
        # dlt insists on a password in its credentials; the local server's trust auth ignores it
        dest = with_password(self.dest)
        seconds, peak = run_measured([sys.executable, str(script), self.src, dest, table, str(self.workdir / "dlt")], env=env)
        return Result("dlt sql_table → postgres (replace)", rows, seconds, peak)

    def noop(self, datasets: int = 100) -> Result:
        self._sql(self.src, f"CREATE TABLE IF NOT EXISTS bench.tiny ({COLUMNS})")
        self._sql(self.src, GENERATE.format(table="tiny", rows=10))
        config = self.config("cfg_noop", {f"noop__t{i:03d}": "tiny" for i in range(datasets)})
        for path in config.rglob("*.yml"):  # each dataset its own destination table
            name = path.stem
            path.write_text(path.read_text().replace("destination: {table: tiny}", f"destination: {{table: {name}}}"))
        env = self.env(config, self.dest)
        run_measured([str(BIN / "luigi"), "--module", "databridge_luigi", "PublishAll", "--local-scheduler", "--workers", "2"], env=env)
        seconds, peak = run_measured([str(BIN / "luigi"), "--module", "databridge_luigi", "PublishAll", "--local-scheduler"], env=env)
        return Result(f"no-op PublishAll over {datasets} published datasets", datasets, seconds, peak)


    def many(self, datasets: int, rows: int, repeat: int) -> list[Result]:
        """Many small datasets, each published for the first time: per-dataset fixed cost decides here."""
        results = [self.many_ours(datasets, rows, f"many{repeat}", staging, workers)
                   for staging, workers in (("S3", 1), ("S3", 2), ("local", 1), ("local", 2))]
        results.append(self.many_ours(datasets, rows, f"many{repeat}", "local", 1, extract_ahead=False))
        return results + [self.many_floor(datasets, rows, f"floorm{repeat}"), self.many_ogr2ogr(datasets, rows, f"ogrm{repeat}")]

    def small_table(self, rows: int) -> str:
        table = f"points_{rows}"
        if not self._exists(self.src, f"bench.{table}"):
            self.make_table(rows)
        return table

    def slow_source(self, rows: int, seconds: float) -> str:
        """A view of the small table whose every query first waits ``seconds``: a source far away on the network
        (the warehouse in another data centre), which costs time but no CPU here."""
        table = self.small_table(rows)
        view = f"{table}_wait{round(seconds * 1000)}ms"
        self._sql(self.src, f"CREATE OR REPLACE VIEW bench.{view} AS SELECT t.* FROM bench.{table} t, "
                            f"(SELECT pg_sleep({seconds:g})) AS wait")
        return view

    def many_ours(self, datasets: int, rows: int, tag: str, staging: str, workers: int, extract_ahead: bool = True,
                  source: str | None = None) -> Result:
        """``PublishAll`` over ``datasets`` new datasets (tables ``<tag>…``), nothing staged yet: every one extracted and
        loaded. ``extract_ahead=False``: luigi.cfg ``[databridge] extract_ahead = false`` (one worker's extracts in turn).
        ``source``: read this table or view of schema bench instead of the small table (e.g. ``slow_source``)."""
        prefix = f"{tag}{staging.lower()}w{workers}{'' if extract_ahead else 'serial'}"
        env = self._many_env(datasets, rows, prefix, source)
        env["DATABRIDGE_STAGING"] = f"s3://bench/{prefix}" if staging == "S3" else str(self.workdir / prefix)
        if not extract_ahead:
            settings = self.workdir / "no_extract_ahead.cfg"
            settings.write_text("[databridge]\nextract_ahead = false\n")
            env["LUIGI_CONFIG_PATH"] = str(settings)
        self.settle()
        seconds, peak = run_measured([str(BIN / "luigi"), "--module", "databridge_luigi", "PublishAll", "--local-scheduler",
                                      "--workers", str(workers)], env=env)
        serial = "" if extract_ahead else ", no extract ahead"
        return Result(f"{datasets} datasets × {rows // 1000}k rows: ours PublishAll --workers {workers} ({staging} staging{serial})",
                      datasets, seconds, peak)

    def many_processes(self, datasets: int, rows: int, tag: str, processes: int, source: str | None = None) -> Result:
        """``processes`` luigi processes of one worker each on one luigid (luigi's own way to share work between
        workers; ``--no-lock``, as on as many machines), local staging: each keeps its sessions and extracts ahead.
        luigi exits 25 in a worker whose tasks another ran, so 0, 10 and 25 count as done; the markers are checked."""
        prefix = f"{tag}p{processes}"
        env = self._many_env(datasets, rows, prefix, source)
        env["DATABRIDGE_STAGING"] = str(self.workdir / prefix)
        luigi = shlex.join([str(BIN / "luigi"), "--module", "databridge_luigi", "PublishAll", "--scheduler-host", "127.0.0.1",
                            "--scheduler-port", str(self.luigid_port()), "--no-lock"])
        script = (f"pids=; for i in $(seq {processes}); do ({luigi}; case $? in 0|10|25) ;; *) exit 1 ;; esac) & pids=\"$pids $!\"; done; "
                  "rc=0; for pid in $pids; do wait $pid || rc=1; done; exit $rc")
        self.settle()
        seconds, peak = run_measured(["bash", "-c", script], env=env)
        with psycopg.connect(self.dest, autocommit=True) as conn:
            published = conn.execute("SELECT count(*) FROM databridge_luigi_publications WHERE dataset_id LIKE %s",
                                     (f"{prefix}__%",)).fetchone()[0]
        if published != datasets:
            raise RuntimeError(f"{processes} worker processes published {published} of {datasets} datasets")
        return Result(f"{datasets} datasets × {rows // 1000}k rows: ours PublishAll, {processes} processes × --workers 1 on one luigid "
                      "(local staging)", datasets, seconds, peak)

    def _many_env(self, datasets: int, rows: int, prefix: str, source: str | None) -> dict[str, str]:
        """A config of ``datasets`` datasets named ``<prefix>__tNNN``, each reading the small table (or ``source``)
        into its own destination table; the environment that runs it."""
        table = source or self.small_table(rows)
        config = self.config(f"cfg_{prefix}", {f"{prefix}__t{i:03d}": table for i in range(datasets)})
        for path in config.rglob("*.yml"):  # each dataset its own destination table
            path.write_text(path.read_text().replace(f"destination: {{table: {table}}}", f"destination: {{table: {prefix}_{path.stem}}}"))
        return self.env(config, self.dest)

    def luigid_port(self) -> int:
        """A luigid for this bench (started on first use, stopped by close())."""
        if self.luigid is None:
            state = self.workdir / "luigid"
            state.mkdir(exist_ok=True)
            self._luigid_port = free_port()
            self.luigid = subprocess.Popen([str(BIN / "luigid"), "--address", "127.0.0.1", "--port", str(self._luigid_port),
                                            "--state-path", str(state / "state.pickle"), "--logdir", str(state)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._wait_for(f"http://127.0.0.1:{self._luigid_port}/api/task_list?data=%7B%7D")
        return self._luigid_port

    def many_floor(self, datasets: int, rows: int, tag: str, source: str | None = None) -> Result:
        """The shell loop a data engineer would write: per dataset a psql pipe, then GiST and ANALYZE."""
        table = source or self.small_table(rows)
        script = self.workdir / f"{tag}_loop.sh"
        script.write_text("set -e\n" + "".join(
            f"psql '{self.src}' -qc \"\\copy ({FLOOR_SELECT.format(table=table)}) TO STDOUT\" | "
            f"psql '{self.dest}' -q -c 'CREATE TABLE {tag}_{i} ({COLUMNS})' -c \"\\copy {tag}_{i} FROM STDIN\" "
            f"-c 'CREATE INDEX ON {tag}_{i} USING gist (geom)' -c 'ANALYZE {tag}_{i}'\n" for i in range(datasets)))
        self.settle()
        seconds, peak = run_measured(["bash", str(script)])
        return Result(f"{datasets} datasets × {rows // 1000}k rows: floor + GiST + ANALYZE, shell loop", datasets, seconds, peak)

    def many_ogr2ogr(self, datasets: int, rows: int, tag: str) -> Result:
        table = self.small_table(rows)
        binary = shutil.which("ogr2ogr")
        name = f"{datasets} datasets × {rows // 1000}k rows: ogr2ogr loop (PG_USE_COPY, GiST)"
        if binary is None:
            return Result(name, datasets, None, None, "ogr2ogr not installed: apt-get install gdal-bin")
        script = self.workdir / f"{tag}_loop.sh"
        script.write_text("set -e\nexport PG_USE_COPY=YES\n" + "".join(
            f"'{binary}' -f PostgreSQL 'PG:{self.dest}' 'PG:{self.src}' bench.{table} -nln {tag}_{i} -overwrite "
            "-lco GEOMETRY_NAME=geom -lco SPATIAL_INDEX=GIST\n" for i in range(datasets)))
        self.settle()
        seconds, peak = run_measured(["bash", str(script)])
        return Result(name, datasets, seconds, peak)

    @staticmethod
    def _exists(dsn: str, name: str) -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def with_password(url: str) -> str:
    """dlt and sling insist on a password in a URL; the local server's trust auth ignores it."""
    return url.replace("postgresql://postgres@", "postgresql://postgres:unused@")


def sling_binary() -> str | None:
    """sling's Go binary as the sling-linux-amd64 wheel ships it (pip may drop its executable bit)."""
    try:
        import sling_linux_amd64
    except ImportError:
        return None
    binary = Path(sling_linux_amd64.SLING_BIN)
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(binary)


def render(results: list[Result]) -> str:
    floors = {r.rows: r.seconds for r in results if r.name.startswith("floor (") and r.seconds}
    lines = ["| contestant | rows (datasets) | seconds | rows/s | ratio to floor | peak RSS (MB, process tree) |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.seconds is None:
            lines.append(f"| {r.name} | {r.rows:,} | – | – | – | – ({r.note}) |")
            continue
        per_dataset = r.name.startswith("no-op") or " datasets × " in r.name
        ratio = f"{r.seconds / floors[r.rows]:.2f}" if r.rows in floors and not per_dataset else "–"
        rate = f"{r.rows / r.seconds:,.0f}" if not per_dataset else f"{r.seconds / r.rows * 1000:.0f} ms/dataset"
        lines.append(f"| {r.name} | {r.rows:,} | {r.seconds:.2f} | {rate} | {ratio} | {r.peak_mb:.0f} |")
    return "\n".join(lines)


def machine() -> str:
    mem_kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
    with psycopg.connect(ADMIN_DSN) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    import luigi

    from databridge_luigi import staging

    return (f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB RAM, Python {platform.python_version()}, "
            f"PostgreSQL {server}, luigi {luigi.__version__}, gzip by {staging.DEFLATE} level {staging.GZIP_LEVEL}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, help="comma-separated sizes (default 100000,1000000; --quick: 50000)")
    parser.add_argument("--with-5m", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="runs per contestant, the median is shown (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="50k rows, 10 small datasets, one run each: a smoke run of every contestant")
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--skip-many", action="store_true", help="leave out the many-small-datasets rows")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    rows_arg = args.rows or ("50000" if args.quick else "100000,1000000")
    sizes = [int(n) for n in rows_arg.split(",")] + ([5_000_000] if args.with_5m else [])
    repeats = args.repeats or (1 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="dbl-bench-"))
    bench = Bench(workdir)
    results: list[Result] = []
    contestants = [
        lambda t, n: bench.floor(t, n),
        lambda t, n: bench.floor(t, n, usable=True),
        lambda t, n: bench.ours(t, n, "postgis"),
        lambda t, n: bench.ours(t, n, "postgis", local_staging=True),
        lambda t, n: bench.ours(t, n, "carto"),
        lambda t, n: bench.ogr2ogr(t, n),
        lambda t, n: bench.sling(t, n),
        lambda t, n: bench.sling(t, n, usable=True),
    ] + ([] if args.skip_dlt else [lambda t, n: bench.dlt(t, n)])
    started = time.monotonic()
    try:
        for rows in sizes:
            table = bench.make_table(rows)
            runs: list[list[Result]] = [[] for _ in contestants]
            for _ in range(repeats):  # interleaved, so drift (autovacuum, page cache) spreads over everyone
                for index, contestant in enumerate(contestants):
                    bench.settle()
                    runs[index].append(contestant(table, rows))
            results += [combine(r) for r in runs]
            print(render(results), "\n", flush=True)
        if not args.skip_many:
            many: list[list[Result]] = []
            for repeat in range(repeats):
                for index, result in enumerate(bench.many(QUICK_DATASETS if args.quick else 100, 10_000, repeat)):
                    (many.append([result]) if repeat == 0 else many[index].append(result))
            results += [combine(r) for r in many]
        results.append(bench.noop(QUICK_DATASETS if args.quick else 100))
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    table = render(results)
    print(table)
    print(f"\nmachine: {machine()}; {repeats} run(s) per contestant, median shown; whole run {time.monotonic() - started:.0f} s")
    if args.write_readme:
        readme = ROOT / "bench" / "README.md"
        text = readme.read_text() if readme.exists() else ""
        marker, end = "<!-- results -->", "<!-- /results -->"
        head = text.split(marker)[0] if marker in text else text
        tail = text.split(end, 1)[1] if end in text else "\n"
        readme.write_text(f"{head}{marker}\nMeasured {time.strftime('%Y-%m-%d')} on {machine()}:\n\n{table}\n{end}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
