"""One loader per destination table: a lease row in the destination itself.

Luigi's resources and luigid keep one worker pool from loading a table twice, but not two schedulers, a
restarted luigid or a hand-run ``--local-scheduler``; CARTO has no persistent session, so an advisory lock
cannot serve either. The lease is a row in ``databridge_luigi_leases`` (owner run id, host, pid, the run's
shadow table, expiry), taken with one atomic ``INSERT … ON CONFLICT … WHERE expired``, renewed by a thread
while the load runs, and checked again — *fenced* — inside the commit transaction: a loader whose lease
expired (a paused VM, a lost connection) cannot commit. Only an expired lease's shadow is ever dropped.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import sql

log = logging.getLogger(__name__)


class SqlRunner(Protocol):
    def query(self, statement: str) -> list[dict[str, Any]]: ...


class LeaseHeld(RuntimeError):
    """Another run holds the table's lease and did not release it within the wait."""


@dataclass(frozen=True)
class Holder:
    run_id: str
    host: str
    pid: int
    since: str
    until: str
    identity: str = ""
    shadow: str = ""

    def __str__(self) -> str:
        return f"run {self.run_id[:12]}, host {self.host} pid {self.pid}, since {self.since} UTC, lease until {self.until} UTC"


def new_run_id() -> str:
    return uuid.uuid4().hex


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), or None when there is no such process:
    with the pid it names one process for good, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def process_identity(pid: int | None = None) -> str:
    """``<hostname>|<pid namespace>|<pid>|<start ticks>``: enough to tell, on the same machine, that a lease's
    holder is dead — and never to mistake another container's (or a reused pid's) process for it."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}|{_pid_namespace()}|{pid}|{_process_start(pid) or '-'}"


def holder_is_dead_here(identity: str) -> bool:
    """True only when the holder ran on this host, in this pid namespace, and that process no longer exists."""
    try:
        host, namespace, pid, started = identity.split("|")
    except ValueError:
        return False
    if host != socket.gethostname() or namespace != _pid_namespace() or namespace == "-" or started == "-":
        return False
    return _process_start(int(pid)) != started


class Lease:
    """The lease on ``schema.table`` for one run. ``acquire`` → (renewed in the background) → ``release``."""

    def __init__(self, runner: SqlRunner, schema: str, table: str, dataset_id: str, run_id: str, shadow: str,
                 seconds: float = 120.0, dedicated: bool = False):
        """``dedicated``: ``runner`` is a connection of the lease's own, whose session settings it may set."""
        self.dedicated = dedicated
        self.runner, self.schema, self.table, self.dataset_id = runner, schema, table, dataset_id
        self.run_id, self.shadow, self.seconds = run_id, shadow, seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def _key(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def _lease_table(self) -> str:
        return sql.qualified(self.schema, sql.LEASE_TABLE)

    # --- taking it ------------------------------------------------------------------------------------

    def acquire(self, wait_seconds: float, waiting: Callable[[Holder], None] = lambda holder: None) -> str | None:
        """Take the lease, waiting up to ``wait_seconds`` for a live holder to finish. Returns the shadow of an
        expired holder (a dead run's leftover, for the caller to drop), or None."""
        self.runner.query(sql.create_lease_table(self.schema))
        # A holder inside its commit keeps the lease row locked (the fence); wait for it in short, bounded steps.
        if self.dedicated:
            self.runner.query("SET lock_timeout = '2s'")
        deadline = time.monotonic() + wait_seconds
        delay, logged = 0.5, ""
        while True:
            previous = self.holder()
            try:
                taken = bool(self.runner.query(self._take_statement(previous.run_id if previous else None)))
            except Exception as exc:
                if "lock timeout" not in str(exc):
                    raise
                taken = False
            if taken:
                if previous is None:
                    return None
                log.warning("%s: took over the expired lease of %s on %s; its shadow %s will be dropped",
                            self.dataset_id, previous, self._key, previous.shadow)
                return previous.shadow
            holder = self.holder()
            if holder is None:  # released in the meantime: try again at once
                continue
            if holder_is_dead_here(holder.identity):
                log.warning("%s: the lease holder on %s (%s) is a process of this machine that no longer exists; taking over",
                            self.dataset_id, self._key, holder)
                self._expire(holder.run_id)
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(f"{self.dataset_id}: another load of {self.dataset_id} is running ({holder}) on "
                                f"{self._key}; gave up after waiting {wait_seconds:.0f}s")
            if holder.run_id != logged:
                log.info("%s: waiting up to %.0fs for another load of %s to finish (%s)", self.dataset_id, wait_seconds, self._key, holder)
                logged = holder.run_id
            waiting(holder)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)

    def _take_statement(self, previous_run: str | None) -> str:
        """Insert our lease row, or replace the row of ``previous_run`` if (and only if) it has expired: a
        holder that renewed, or another run that took over first, makes it take nothing."""
        lease = self._lease_table
        values = ", ".join([sql.literal(self._key), sql.literal(self.dataset_id), sql.literal(self.run_id),
                            sql.literal(socket.gethostname()[:200]), sql.literal(os.getpid()), sql.literal(process_identity()),
                            sql.literal(self.shadow)])
        expected = f"l.run_id = {sql.literal(previous_run)}" if previous_run else "false"
        return (
            f"INSERT INTO {lease} AS l (table_name, dataset_id, run_id, host, pid, identity, shadow, acquired_at, expires_at) "
            f"VALUES ({values}, clock_timestamp(), clock_timestamp() + {self._interval()}) "
            "ON CONFLICT (table_name) DO UPDATE SET dataset_id = EXCLUDED.dataset_id, run_id = EXCLUDED.run_id, "
            "host = EXCLUDED.host, pid = EXCLUDED.pid, identity = EXCLUDED.identity, shadow = EXCLUDED.shadow, "
            f"acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at WHERE l.expires_at < clock_timestamp() AND {expected} "
            "RETURNING l.run_id"
        )

    def _expire(self, run_id: str) -> None:
        self.runner.query(f"UPDATE {self._lease_table} SET expires_at = clock_timestamp() - interval '1 second' "
                          f"WHERE table_name = {sql.literal(self._key)} AND run_id = {sql.literal(run_id)}")

    def holder(self) -> Holder | None:
        rows = self.runner.query(
            f"SELECT run_id, host, pid, identity, shadow, to_char(acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS since, "
            f"to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS until FROM {self._lease_table} "
            f"WHERE table_name = {sql.literal(self._key)}")
        if not rows:
            return None
        row = rows[0]
        return Holder(str(row["run_id"]), str(row["host"]), int(row["pid"]), str(row["since"]), str(row["until"]), str(row["identity"]), str(row["shadow"]))

    # --- keeping it -----------------------------------------------------------------------------------

    def _interval(self) -> str:
        return f"interval '{float(self.seconds):.3f} seconds'"

    def renew(self) -> bool:
        rows = self.runner.query(
            f"UPDATE {self._lease_table} SET expires_at = clock_timestamp() + {self._interval()} "
            f"WHERE table_name = {sql.literal(self._key)} AND run_id = {sql.literal(self.run_id)} "
            "AND expires_at > clock_timestamp() RETURNING run_id")
        return bool(rows)

    def keep_renewed(self) -> None:
        """Renew every third of the lease period on a thread (with its own connection: the loader's may be
        busy in a long COPY). A renewal that finds the lease gone sets ``lost``; the fence then refuses."""
        def loop() -> None:
            while not self._stop.wait(self.seconds / 3):
                try:
                    if not self.renew():
                        self.lost.set()
                        log.error("%s: lost the lease on %s (expired or taken over); this run will not commit", self.dataset_id, self._key)
                        return
                except Exception as exc:  # a passing connection error: the next tick tries again; the fence decides
                    log.warning("%s: could not renew the lease on %s: %s", self.dataset_id, self._key, exc)

        self._renewer = threading.Thread(target=loop, name=f"lease-{self.table}", daemon=True)
        self._renewer.start()

    def fence(self) -> str:
        """The commit transaction's first statement: extend the lease if it is still ours, else abort the
        transaction. The row lock it takes keeps a would-be successor waiting until this commit ends."""
        message = f"databridge-luigi: run {self.run_id[:12]} no longer holds the lease on {self._key}; not committing"
        return (
            f"DO $fence$ BEGIN UPDATE {self._lease_table} SET expires_at = clock_timestamp() + {self._interval()} "
            f"WHERE table_name = {sql.literal(self._key)} AND run_id = {sql.literal(self.run_id)} "
            f"AND expires_at > clock_timestamp(); IF NOT FOUND THEN RAISE EXCEPTION {sql.literal(message)}; END IF; END $fence$"
        )

    # --- giving it back -------------------------------------------------------------------------------

    def stop_renewing(self) -> None:
        """After the commit: the lease has done its work (and a long commit may have outlived its expiry while
        its fence held the row; a renewal then would wrongly report it lost)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)

    def release(self) -> None:
        self.stop_renewing()
        try:
            self.runner.query(f"DELETE FROM {self._lease_table} WHERE table_name = {sql.literal(self._key)} "
                              f"AND run_id = {sql.literal(self.run_id)}")
        except Exception as exc:  # it expires by itself; the load's own outcome matters more
            log.warning("%s: could not release the lease on %s (it expires in %.0fs): %s", self.dataset_id, self._key, self.seconds, exc)
