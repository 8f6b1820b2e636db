"""Helpers for fault-injection tests: a real ``luigi`` worker as a subprocess in its own session, phase
detection by polling PostgreSQL's pg_stat_activity (or staging), SIGKILL of the whole process group, and
table digests that compare source and destination row by row."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
LUIGI = str(Path(sys.executable).with_name("luigi"))
MARKER = "databridge_luigi_publications"
PHASE_DEADLINE = 60.0


def sql(dsn: str, statement: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?")[0]


def write_config(config_dir: Path, dataset_id: str, text: str) -> None:
    dept, table = dataset_id.split("__")
    path = config_dir / "databridge" / dept / f"{table}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def make_source_table(source_dsn: str, table: str, rows: int, generation: int, payload_md5s: int = 1) -> None:
    """(Re)create ``public.<table>``: ``rows`` points; ``generation`` changes every text value (same row count),
    so two generations publish different content. ``payload_md5s`` md5 strings per row make the CSV large
    and hard to compress when a test needs many staged bytes."""
    payload = " || ".join(f"md5(g::text || '-{generation}-{i}')" for i in range(payload_md5s))
    sql(source_dsn, f"DROP TABLE IF EXISTS public.{table}")
    sql(source_dsn, f"CREATE TABLE public.{table} (objectid integer PRIMARY KEY, code text, payload text, "
                    f"shape geometry(Point, 2272))")
    sql(source_dsn, f"INSERT INTO public.{table} SELECT g, 'G{generation}-' || (g % 97), {payload}, "
                    f"ST_SetSRID(ST_MakePoint(2690000 + g, 230000 + g * {generation}), 2272) "
                    f"FROM generate_series(1, {rows}) g")
    sql(source_dsn, f"ANALYZE public.{table}")


DIGEST = ("SELECT count(*), md5(string_agg(concat_ws('|', objectid, code, payload, ST_AsEWKT(shape)), "
          "E'\\n' ORDER BY objectid)) FROM {table}")


def digest(dsn: str, table: str) -> tuple[int, str]:
    """(rows, md5 over every value) of a table in the source or destination: comparable across both."""
    return sql(dsn, DIGEST.format(table=f'public."{table}"'))[0]


def table_exists(dsn: str, table: str) -> bool:
    return sql(dsn, "SELECT to_regclass(%s) IS NOT NULL", (f'public."{table}"',))[0][0]


def markers(dsn: str, dataset_id: str) -> list[tuple]:
    if not table_exists(dsn, MARKER):
        return []
    return sql(dsn, f"SELECT version, fingerprint, row_count, rewritten FROM {MARKER} WHERE dataset_id = %s "
                    "ORDER BY published_at, version", (dataset_id,))


def indexes(dsn: str, table: str) -> set[str]:
    return {r[0] for r in sql(dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s", (table,))}


def tables_like(dsn: str, pattern: str) -> list[str]:
    return [r[0] for r in sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE %s", (pattern,))]


class Worker:
    """``luigi --module databridge_luigi <args> --local-scheduler`` in a new session (its own process group).
    With one worker and the local scheduler luigi runs tasks in this very process, so killing the group
    kills the code doing the work."""

    def __init__(self, env: dict[str, str], *args: str, log_path: Path):
        self.args, self.log_path = args, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([LUIGI, "--module", "databridge_luigi", *args, "--local-scheduler"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the luigi script is the python process doing the work)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._log.close()
        return code


def run_luigi(env: dict[str, str], *args: str, log_path: Path, timeout: float = 300) -> tuple[int, str]:
    worker = Worker(env, *args, log_path=log_path)
    code = worker.wait(timeout)
    return code, worker.output()


def wait_for(what: str, condition: Callable[[], Any], worker: Worker | None = None, deadline: float = PHASE_DEADLINE,
             interval: float = 0.005) -> Any:
    """Poll ``condition`` until it returns something truthy; fail clearly if the worker exits first or the
    deadline passes (the phase never appeared)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        if worker is not None and not worker.alive():
            raise AssertionError(f"the worker exited (code {worker.proc.returncode}) before {what} was seen; output:\n"
                                 + worker.output()[-4000:])
        time.sleep(interval)
    if worker is not None:
        worker.kill()
    raise AssertionError(f"{what} never appeared within {deadline:.0f}s" + (f"; worker output:\n{worker.output()[-4000:]}" if worker else ""))


class Activity:
    """One open connection that polls pg_stat_activity of one database (a fresh connection per poll would be
    too slow to catch short phases)."""

    def __init__(self, dsn: str):
        self.database = dbname(dsn)
        self.conn = psycopg.connect(dsn, autocommit=True)

    def find(self, query_like: str, state: str = "active", wait_event_type: str | None = None) -> list[tuple]:
        statement = ("SELECT pid, query, wait_event_type, wait_event FROM pg_stat_activity WHERE datname = %s "
                     "AND pid <> pg_backend_pid() AND query LIKE %s AND state = %s")
        params: list[Any] = [self.database, query_like, state]
        if wait_event_type is not None:
            statement += " AND wait_event_type = %s"
            params.append(wait_event_type)
        return self.conn.execute(statement, params).fetchall()

    def backends(self, application_name: str | None = None) -> list[tuple]:
        statement = "SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        params: list[Any] = [self.database]
        if application_name:
            statement += " AND application_name = %s"
            params.append(application_name)
        return self.conn.execute(statement, params).fetchall()

    def wait_gone(self, pids: list[int], deadline: float = PHASE_DEADLINE) -> None:
        """Wait until the killed worker's server backends have ended (they notice the dead client only when
        they next talk to it, e.g. after a lock wait or a CREATE INDEX finishes)."""
        wait_for(f"the end of backends {pids}", lambda: not self.conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone(), deadline=deadline, interval=0.05)

    def close(self) -> None:
        self.conn.close()
