"""Extract ahead: with one worker, the next due extract runs on a thread while this process loads.

luigi's single worker runs a dataset's extract, then its load, then the next dataset's extract — while the
destination builds an index and ANALYZEs, the worker only waits. A shell loop of ``psql | psql`` overlaps its
two halves; ``--workers N`` overlaps tasks by forking a process (and new connections) per task. This is the
one-process counterpart: when a load starts, the next extract that this process found due is started on a
thread, and when luigi then runs that extract it takes the result (or the error) of the run already made.

Rules that keep it the same extract:
- only extracts whose completion was checked (and found missing) in this process are run ahead, one at a time,
  and only from the process that checked them — never in a task process that luigi forked;
- two extracts never run at once in a process: an extract luigi runs itself first waits for one running ahead;
- a thread runs nothing but the extract: it never touches the destination the main thread is loading (the
  caller does not register incremental extracts, which read their destination's version);
- the thread is a daemon: a worker stopped mid-way does not wait for it (a staged version becomes visible only
  when complete, so an extract cut short leaves nothing behind that a later run would take).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

Work = Callable[[], Any]


class ExtractAhead:
    """Extracts due in this process, keyed by luigi task id: each run once, ahead or in place."""

    def __init__(self) -> None:
        self._start_empty()
        # A task process luigi forks (--workers N) starts empty: the parent's list and threads are not its own.
        os.register_at_fork(after_in_child=self._start_empty)

    def _start_empty(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[str, tuple[str, Work]] = {}  # task id → (label for the log, the extract); insertion order
        self._ahead: dict[str, Future[Any]] = {}  # task id → its run ahead, until luigi's run of it takes it
        self._running: Future[Any] | None = None  # the run ahead still going on, if any

    def due(self, key: str, label: str, work: Work) -> None:
        """``key``'s extract is to run in this luigi run (its completion check found it missing)."""
        with self._lock:
            if key not in self._ahead:
                self._due[key] = (label, work)

    def start_next(self, while_doing: str) -> str | None:
        """Start the first due extract on a thread, unless one is running already; returns its label."""
        with self._lock:
            if (self._running is not None and not self._running.done()) or not self._due:
                return None
            key = next(iter(self._due))
            label, work = self._due.pop(key)
            run: Future[Any] = Future()
            self._ahead[key] = self._running = run
        log.info("%s: extracting ahead, while this worker %s", label, while_doing)
        threading.Thread(target=_fill, args=(run, work), name=f"extract-ahead {label}", daemon=True).start()
        return label

    def result(self, key: str, work: Work) -> Any:
        """``key``'s extract: the outcome of its run ahead (waited for), or ``work()`` run here and now."""
        with self._lock:
            self._due.pop(key, None)
            run = self._ahead.pop(key, None)  # taken once: a retry of a failed extract runs it again
            running = self._running
        if run is not None:
            return run.result()
        if running is not None:  # one extract at a time: the one running ahead finishes first
            running.exception()
        return work()

    def forget(self) -> None:
        """For a process that runs luigi more than once (tests; an embedding application): what the last run
        found due is not the next run's."""
        with self._lock:
            self._due, self._ahead, self._running = {}, {}, None


def _fill(run: Future[Any], work: Work) -> None:
    try:
        run.set_result(work())
    except BaseException as exc:  # handed to the task that takes it, which reports it as its own failure
        run.set_exception(exc)


extracts = ExtractAhead()
