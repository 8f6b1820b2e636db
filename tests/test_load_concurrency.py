"""One loader per table and readers that never wait, tried with real processes as production has them.

Every loader here is the real ``luigi`` command in its own session (tests/killing.py), every reader and
blocker a real PostgreSQL session. The luigi configuration is the repository's plus a file named by
LUIGI_CONFIG_PATH with short lease and lock settings, so the tests take seconds, not minutes.
"""
from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.test_kill import dest_dsn, source_dsn  # noqa: F401  (fixtures: a source database per module, a destination per test)
from tests.killing import Activity, Worker, digest, make_source_table, markers, run_luigi, sql, tables_like, wait_for, write_config

V_A, V_B, V_C = "20240101T000000Z", "20240102T000000Z", "20240103T000000Z"


@dataclass
class Case:
    root: Path
    source_dsn: str
    dest_dsn: str
    env: dict[str, str]
    dataset_id: str
    table: str
    source_table: str
    runs: list[Worker] = field(default_factory=list)

    def start(self, *args: str) -> Worker:
        worker = Worker(self.env, *args, log_path=self.root / f"run{len(self.runs) + 1}.log")
        self.runs.append(worker)
        return worker

    def publish(self, version: str, *extra: str) -> Worker:
        return self.start("Publish", "--dataset-id", self.dataset_id, "--version", version, *extra)

    def run(self, *args: str) -> tuple[int, str]:
        return run_luigi(self.env, *args, log_path=self.root / f"sync{uuid.uuid4().hex[:6]}.log")

    def stage(self, version: str, rows: int, generation: int, payload_md5s: int = 1) -> tuple[int, str]:
        """Make the source's generation and stage it as ``version`` (no load)."""
        make_source_table(self.source_dsn, self.source_table, rows, generation, payload_md5s)
        code, out = self.run("Extract", "--dataset-id", self.dataset_id, "--version", version)
        assert code == 0, out[-3000:]
        return digest(self.source_dsn, self.source_table)

    def live(self) -> tuple[int, str]:
        return digest(self.dest_dsn, self.table)

    def shadows(self) -> list[str]:
        return tables_like(self.dest_dsn, f"{self.table}\\_\\_shadow%")

    def leases(self) -> list[tuple]:
        return sql(self.dest_dsn, "SELECT run_id FROM databridge_luigi_leases")


def setup_case(tmp_path: Path, source_dsn: str, dest_dsn: str, mode: str = "replace", rows: int = 300,
               lease_seconds: float = 30, lock_timeout: float = 1.0, payload_md5s: int = 1) -> Case:
    suffix = uuid.uuid4().hex[:8]
    cfg = tmp_path / "luigi-test.cfg"
    cfg.write_text(textwrap.dedent(f"""\
        [databridge]
        lease_seconds = {lease_seconds}
        lease_wait_seconds = 60
        lock_timeout_seconds = {lock_timeout}
        lock_wait_seconds = 60
        """))
    case = Case(tmp_path, source_dsn, dest_dsn, dict(
        os.environ, DATABRIDGE_CONFIG_DIR=str(tmp_path / "configs"), DATABRIDGE_STAGING=str(tmp_path / "staging"),
        DATABRIDGE_CONN_DATABRIDGE=source_dsn, DATABRIDGE_CONN_CARTO_PHL=dest_dsn, LUIGI_CONFIG_PATH=str(cfg)),
        dataset_id=f"conc__t_{suffix}", table=f"t_{suffix}", source_table=f"src_{suffix}")
    write_config(tmp_path / "configs", case.dataset_id, f"""\
        schedule_interval: false
        upload_to_carto: true
        carto_users: []
        source: {{schema: public, table: {case.source_table}}}
        load_mode: {mode}
        """)
    case.stage(V_A, rows, generation=1, payload_md5s=payload_md5s)
    code, out = case.run("Publish", "--dataset-id", case.dataset_id, "--version", V_A)
    assert code == 0, out[-3000:]
    return case


def waiting_on_lock(activity: Activity, table: str, starts: str) -> list[tuple]:
    return [r for r in activity.find("%", wait_event_type="Lock") if r[1].startswith(starts) and table in r[1]]


def test_second_loader_waits_for_the_first_then_its_own_guard_refuses(tmp_path, source_dsn, dest_dsn):
    """Two loads of one table at once (different versions, so luigi's own pid lock does not stop them). The
    first is held in its commit by a SHARE lock; the second must wait for the lease instead of sharing a
    shadow; when the first commits, the second builds its own shadow and its row-count guard refuses it
    (10 rows instead of 300) — with the live table truly unchanged and the marker telling the truth."""
    case = setup_case(tmp_path, source_dsn, dest_dsn)
    b = case.stage(V_B, 300, generation=2)
    case.stage(V_C, 10, generation=3)
    blocker = psycopg.connect(dest_dsn)
    activity = Activity(dest_dsn)
    try:
        blocker.execute(f'LOCK TABLE public."{case.table}" IN SHARE MODE')
        first = case.publish(V_B)
        wait_for("the first loader waiting in its commit", lambda: waiting_on_lock(activity, case.table, "WITH deleted AS"), first)
        second = case.publish(V_C)
        wait_for("the second loader waiting for the lease", lambda: "waiting up to" in second.output(), second)
        assert len(case.shadows()) == 1, "the second loader must not build a shadow while the first holds the lease"
        blocker.rollback()
        assert first.wait(120) == 0, first.output()[-3000:]
        assert second.wait(120) != 0, second.output()[-3000:]
    finally:
        blocker.close()
        activity.close()
    assert f"{case.dataset_id}: waiting up to 60s for another load of public.{case.table} to finish (run" in second.output()
    assert f"row count would change from 300 to 10" in second.output()
    assert "blocked by pid" in first.output()
    assert case.live() == b
    assert [m[0] for m in markers(dest_dsn, case.dataset_id)] == [V_A, V_B]
    assert case.shadows() == [] and case.leases() == []


def test_a_loader_that_lost_its_lease_cannot_commit(tmp_path, source_dsn, dest_dsn):
    """A loader paused mid-COPY (SIGSTOP: a frozen VM, a stalled container) outlives its 2 s lease; a second
    run takes the lease over and publishes. When the first resumes, the fence in its commit refuses it."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=150_000, lease_seconds=2, payload_md5s=2)
    case.stage(V_B, 150_000, generation=2, payload_md5s=2)
    c = case.stage(V_C, 150_000, generation=3, payload_md5s=2)
    activity = Activity(dest_dsn)
    first = case.publish(V_B)
    try:
        wait_for("the first loader's COPY", lambda: activity.find("COPY %__shadow%FROM STDIN%"), first)
        os.killpg(first.pid, signal.SIGSTOP)
        time.sleep(3)  # past the lease
        code, out = case.run("Publish", "--dataset-id", case.dataset_id, "--version", V_C)
        assert code == 0, out[-3000:]
        assert "took over the expired lease" in out
        os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(120) != 0, first.output()[-3000:]
    finally:
        activity.close()
        if first.alive():  # never leave a stopped worker behind when an assertion above failed
            os.killpg(first.pid, signal.SIGCONT)
            first.kill()
    assert "no longer holds the lease" in first.output()
    assert case.live() == c
    assert [m[0] for m in markers(dest_dsn, case.dataset_id)] == [V_A, V_C]
    wait_for("the paused loader's shadow to be gone", lambda: case.shadows() == [], deadline=30)
    assert case.leases() == []


def test_rerun_after_a_killed_loader_takes_its_lease_at_once(tmp_path, source_dsn, dest_dsn):
    """SIGKILL leaves the lease row behind; on the same machine the next run sees its holder is dead and
    takes over without waiting out the (here 300 s) lease, dropping the dead run's shadow."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=150_000, lease_seconds=300, payload_md5s=2)
    b = case.stage(V_B, 150_000, generation=2, payload_md5s=2)
    activity = Activity(dest_dsn)
    try:
        first = case.publish(V_B)
        found = wait_for("the loader's COPY", lambda: activity.find("COPY %__shadow%FROM STDIN%"), first)
        first.kill()
        activity.wait_gone([row[0] for row in found])
    finally:
        activity.close()
    assert len(case.leases()) == 1
    started = time.monotonic()
    code, out = case.run("Publish", "--dataset-id", case.dataset_id, "--version", V_B)
    assert code == 0, out[-3000:]
    assert time.monotonic() - started < 60
    assert "is a process of this machine that no longer exists; taking over" in out
    assert case.live() == b and case.shadows() == [] and case.leases() == []


class Reader(threading.Thread):
    """An app querying the live table over and over; records the longest any one query waited."""

    def __init__(self, dsn: str, table: str):
        super().__init__(daemon=True)
        self.dsn, self.table = dsn, table
        self.stop = threading.Event()
        self.longest = 0.0
        self.queries = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute(f'SELECT count(*) FROM public."{self.table}"').fetchone()
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.longest = max(self.longest, time.monotonic() - started)
                self.queries += 1
                time.sleep(0.02)


@pytest.mark.parametrize("mode", ["swap", "replace"])
def test_readers_never_wait_longer_than_the_lock_timeout(tmp_path, source_dsn, dest_dsn, mode):
    """An analyst's open transaction holds the live table (ACCESS SHARE, as DBeaver does) while an app reads
    it continuously. A swap's DROP must queue behind the analyst; under the lock policy it gives up every
    1 s (the lock_timeout), so the app never waits longer than that, and the publish goes through once the
    analyst is done. Replace in place does not conflict with readers at all."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, mode=mode, rows=2000)
    b = case.stage(V_B, 2000, generation=2)
    analyst = psycopg.connect(dest_dsn)
    reader = Reader(dest_dsn, case.table)
    try:
        analyst.execute(f'SELECT count(*) FROM public."{case.table}"').fetchone()  # now idle in transaction
        analyst_pid = analyst.info.backend_pid
        reader.start()
        loader = case.publish(V_B)
        if mode == "swap":
            wait_for("the loader naming its blocker", lambda: f"blocked by pid {analyst_pid}" in loader.output(), loader)
            time.sleep(3)  # several lock timeouts while the app keeps reading
            assert loader.alive()
            analyst.rollback()
        assert loader.wait(120) == 0, loader.output()[-3000:]
        if mode == "replace":
            assert analyst.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # still open: never in the way
    finally:
        reader.stop.set()
        reader.join(10)
        analyst.close()
    assert reader.errors == [] and reader.queries > 20
    limit = 1.0 + 1.0  # the lock_timeout, plus scheduling slack on a busy 2-core machine
    assert reader.longest < (limit if mode == "swap" else 1.0), f"a reader waited {reader.longest:.2f}s"
    assert case.live() == b


def test_sigterm_during_copy_cancels_it_on_the_server(tmp_path, source_dsn, dest_dsn):
    """SIGTERM (how Batch and systemd stop a worker) mid-COPY: the COPY is cancelled on the server at once
    (not left running until PostgreSQL notices a dead socket), the shadow dropped, the lease released."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=150_000, payload_md5s=2)
    before = case.live()
    case.stage(V_B, 150_000, generation=2, payload_md5s=2)
    activity = Activity(dest_dsn)
    try:
        loader = case.publish(V_B)
        copying = wait_for("the COPY", lambda: activity.find("COPY %__shadow%FROM STDIN%"), loader)
        os.kill(loader.pid, signal.SIGTERM)
        loader.wait(30)
        still = activity.conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (copying[0][0],)).fetchall()
        assert still == [], "the COPY is still running on the server after the worker stopped"
    finally:
        activity.close()
    assert "stopped by SIGTERM" in loader.output()
    assert case.live() == before and case.shadows() == [] and case.leases() == []
    assert [m[0] for m in markers(dest_dsn, case.dataset_id)] == [V_A]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_while_the_commit_waits_stops_the_task(tmp_path, source_dsn, dest_dsn, workers):
    """SIGTERM while the commit waits for a lock; with --workers 2 the task runs in a child process, which
    must stop too when its parent dies (PR_SET_PDEATHSIG)."""
    case = setup_case(tmp_path, source_dsn, dest_dsn)
    before = case.live()
    case.stage(V_B, 300, generation=2)
    blocker = psycopg.connect(dest_dsn)
    activity = Activity(dest_dsn)
    try:
        blocker.execute(f'LOCK TABLE public."{case.table}" IN SHARE MODE')
        loader = case.publish(V_B, "--workers", workers)
        wait_for("the commit waiting", lambda: waiting_on_lock(activity, case.table, "WITH deleted AS"), loader)
        os.kill(loader.pid, signal.SIGTERM)
        loader.proc.wait(30)
        wait_for("every process of the worker to end", lambda: not _group_alive(loader.pid), deadline=30)
        wait_for("the lease to be released", lambda: case.leases() == [], deadline=30)
        blocker.rollback()
    finally:
        blocker.close()
        activity.close()
    assert case.live() == before and case.shadows() == []
    assert [m[0] for m in markers(dest_dsn, case.dataset_id)] == [V_A]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_terminate_blockers_policy_ends_the_blocking_session_after_the_deadline(tmp_path, source_dsn, dest_dsn):
    """Off by default; on for this destination it terminates what still blocks the commit at the deadline."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, mode="swap")
    cfg = Path(case.env["LUIGI_CONFIG_PATH"])
    cfg.write_text(cfg.read_text().replace("lock_wait_seconds = 60", "lock_wait_seconds = 3\nterminate_blockers = carto_phl"))
    b = case.stage(V_B, 300, generation=2)
    analyst = psycopg.connect(dest_dsn, application_name="DBeaver 24.1")
    try:
        analyst.execute(f'SELECT count(*) FROM public."{case.table}"').fetchone()
        loader = case.publish(V_B)
        assert loader.wait(120) == 0, loader.output()[-3000:]
        with pytest.raises(psycopg.OperationalError):
            analyst.execute("SELECT 1")
    finally:
        analyst.close()
    assert "terminating blocking session pid" in loader.output() and "application DBeaver 24.1" in loader.output()
    assert case.live() == b


def test_luigid_restarted_mid_load_hands_the_load_to_a_second_worker_which_waits_and_finds_it_done(tmp_path, source_dsn, dest_dsn):
    """luigid dies while worker 1 loads (its commit held by a lock) and comes back with no state; worker 2 is
    given the same Load. The lease makes worker 2 wait; when worker 1 commits, worker 2 finds the version
    published and does nothing: one load, one marker."""
    import subprocess
    import sys

    from tests.test_luigid import free_port, wait_until_ready

    case = setup_case(tmp_path, source_dsn, dest_dsn)
    b = case.stage(V_B, 300, generation=2)
    with open(case.env["LUIGI_CONFIG_PATH"], "a") as cfg:
        cfg.write("[core]\nrpc-retry-wait = 1\nrpc-retry-attempts = 30\n")  # reconnect to the new luigid in seconds
    luigid_bin = str(Path(sys.executable).with_name("luigid"))
    luigi_bin = str(Path(sys.executable).with_name("luigi"))
    port = free_port()

    def start_luigid(state: str) -> subprocess.Popen:
        process = subprocess.Popen([luigid_bin, "--address", "127.0.0.1", "--port", str(port), "--state-path", str(tmp_path / state),
                                    "--logdir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_ready(port, process)
        return process

    def worker(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        # --no-lock: worker 2 stands for another machine (a Batch job), where luigi's pid lock cannot see worker 1.
        process = subprocess.Popen([luigi_bin, "--module", "databridge_luigi", "Publish", "--dataset-id", case.dataset_id, "--version", V_B,
                                    "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--no-lock"], env=case.env,
                                   stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        return process, log

    scheduler = start_luigid("state1.pickle")
    blocker = psycopg.connect(dest_dsn)
    activity = Activity(dest_dsn)
    try:
        blocker.execute(f'LOCK TABLE public."{case.table}" IN SHARE MODE')
        first, first_log = worker("worker1")
        wait_for("worker 1 in its commit", lambda: waiting_on_lock(activity, case.table, "WITH deleted AS"))
        scheduler.kill()
        scheduler.wait(10)
        scheduler = start_luigid("state2.pickle")  # a new luigid: it knows nothing of worker 1's task
        second, second_log = worker("worker2")
        wait_for("worker 2 waiting for the lease", lambda: "waiting up to" in second_log.read_text(errors="replace"))
        blocker.rollback()
        # Worker 1's Load succeeds; its Publish wrapper now belongs to worker 2 in the new luigid, which luigi
        # reports as "not granted run permission" (exit 25, not_run) — luigi's own view of a restarted luigid.
        assert first.wait(120) in (0, 25), first_log.read_text(errors="replace")[-3000:]
        assert second.wait(120) == 0, second_log.read_text(errors="replace")[-3000:]
    finally:
        blocker.close()
        activity.close()
        scheduler.terminate()
        scheduler.wait(20)
    outputs = first_log.read_text(errors="replace") + second_log.read_text(errors="replace")
    assert outputs.count(f"{case.dataset_id}: published") == 1
    assert "is already published to" in second_log.read_text(errors="replace")
    assert case.live() == b
    assert [m[0] for m in markers(dest_dsn, case.dataset_id)] == [V_A, V_B]


def test_two_loaders_started_together_take_turns(tmp_path, source_dsn, dest_dsn):
    """No lock in the way: two loads of one table (versions B and C) started at the same moment. One holds the
    lease while the other waits; both publish, one after the other, and the live table is the content of the
    version whose marker is last — never a mix, never a marker for data that is not live."""
    case = setup_case(tmp_path, source_dsn, dest_dsn, rows=100_000, payload_md5s=2)
    digests = {V_B: case.stage(V_B, 100_000, generation=2, payload_md5s=2),
               V_C: case.stage(V_C, 100_000, generation=3, payload_md5s=2)}
    b, c = case.publish(V_B), case.publish(V_C)
    assert b.wait(180) == 0, b.output()[-3000:]
    assert c.wait(180) == 0, c.output()[-3000:]
    assert "waiting up to" in b.output() + c.output(), "one loader must have waited for the other's lease"
    versions = [m[0] for m in markers(dest_dsn, case.dataset_id)]
    assert versions[0] == V_A and sorted(versions[1:]) == [V_B, V_C]
    assert case.live() == digests[versions[-1]]
    assert case.shadows() == [] and case.leases() == []
