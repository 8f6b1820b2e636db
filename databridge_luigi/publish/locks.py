"""Lock-aware commits: a publish never makes readers of the live table wait longer than a short lock_timeout.

A statement that needs a lock someone else holds queues for it, and while it queues every later reader of
the table queues behind it — an analyst's idle DBeaver transaction would stall the public endpoint. So each
commit runs with ``SET LOCAL lock_timeout`` (a few seconds), and a commit that hits it is rolled back, the
blocking sessions are named (log and luigid), and it is tried again with backoff until a deadline. An
optional per-destination policy terminates the blockers once the deadline has passed.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import sql

log = logging.getLogger(__name__)

LOCK_TIMEOUT_TEXT = "lock timeout"  # PostgreSQL: "canceling statement due to lock timeout" (SQLSTATE 55P03)


class SqlTransport(Protocol):
    def query(self, statement: str) -> list[dict[str, Any]]: ...
    def transaction(self, statements: list[str]) -> None: ...


@dataclass(frozen=True)
class LockPolicy:
    lock_timeout: float = 3.0  # seconds any one statement may wait for a lock (and so hold readers up)
    deadline: float = 600.0  # seconds of retrying before giving up (or terminating the blockers)
    terminate_blockers: bool = False

    def set_local(self) -> str:
        return f"SET LOCAL lock_timeout = '{max(1, int(self.lock_timeout * 1000))}ms'"


class LockWaitExceeded(RuntimeError):
    """The commit kept timing out on locks held by other sessions until the deadline."""


def is_lock_timeout(exc: BaseException) -> bool:
    return LOCK_TIMEOUT_TEXT in str(exc)


def describe_blockers(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no lock holder visible to this role"
    return "; ".join(f"pid {r['pid']} ({r.get('user') or '?'}, application {r.get('application') or '-'!s}, "
                     f"{r.get('state') or '?'} since {r.get('since') or '?'} UTC, holds {r.get('mode')})" for r in rows)


def commit_with_retry(transport: SqlTransport, statements: list[str], policy: LockPolicy, locked: list[tuple[str, str]],
                      what: str, status: Callable[[str], None] = lambda message: None) -> None:
    """Run ``statements`` as one transaction with ``lock_timeout`` set; retry lock timeouts with backoff up to
    the policy's deadline, naming the sessions that hold locks on the ``locked`` (schema, table) pairs."""
    started = time.monotonic()
    delay, attempt, terminated = 0.5, 0, False
    while True:
        attempt += 1
        try:
            transport.transaction([policy.set_local(), *statements])
            if attempt > 1:
                log.info("%s: committed on attempt %d after waiting %.1fs for locks", what, attempt, time.monotonic() - started)
            return
        except Exception as exc:
            if not is_lock_timeout(exc):
                raise
        blockers = _blockers(transport, locked)
        waited = time.monotonic() - started
        if waited >= policy.deadline:
            if policy.terminate_blockers and not terminated and blockers:
                _terminate(transport, blockers, what)
                terminated = True
                continue
            raise LockWaitExceeded(f"{what}: gave up after {waited:.0f}s and {attempt} attempts; the live table is locked by "
                                   f"{describe_blockers(blockers)} — end those sessions (or set terminate_blockers for this destination)")
        message = f"{what}: waiting for a lock (attempt {attempt}, {waited:.0f}s): blocked by {describe_blockers(blockers)}"
        log.warning("%s", message)
        status(message)
        time.sleep(min(delay, max(0.0, policy.deadline - waited)))
        delay = min(delay * 2, 15.0)


def _blockers(transport: SqlTransport, locked: list[tuple[str, str]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for schema, table in locked:
        try:
            rows += transport.query(sql.lock_holders(schema, table))
        except Exception as exc:  # naming the blockers is a courtesy; never let it hide the real state
            log.warning("could not list the sessions locking %s.%s: %s", schema, table, exc)
    unique = {r["pid"]: r for r in rows}
    return list(unique.values())


def _terminate(transport: SqlTransport, blockers: list[dict[str, Any]], what: str) -> None:
    for blocker in blockers:
        log.warning("%s: terminating blocking session %s (terminate_blockers is on)", what, describe_blockers([blocker]))
        try:
            transport.query(sql.terminate_backend(int(blocker["pid"])))
        except Exception as exc:
            log.warning("%s: could not terminate pid %s: %s", what, blocker["pid"], exc)
