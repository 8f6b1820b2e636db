"""Stopping cleanly on SIGTERM, the way AWS Batch, systemd and ``docker stop`` stop a worker.

By default SIGTERM kills the process at once and its server-side statements run on: a COPY or a commit
keeps its locks until PostgreSQL notices the dead socket. Inside ``cancel_on_sigterm()`` SIGTERM raises
``Terminated`` (a KeyboardInterrupt, which psycopg answers by cancelling the running statement on the
server) so the load's failure path drops its shadow and releases its lease before the process exits.

With ``--workers N`` luigi runs each task in a child process; the parent dies of SIGTERM and would leave
its children running. A child therefore asks the kernel (``PR_SET_PDEATHSIG``) for a SIGTERM of its own when
its parent dies, and stops the same way.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _running_program() -> ctypes.CDLL | None:
    """The running program's symbols, libc's among them, loaded once at import (in the worker, before luigi forks
    its task processes): ``ctypes.util.find_library`` would run ``ldconfig`` in every task process, twice."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):  # no dlopen(NULL) here
        return None


_PROGRAM = _running_program()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a task was running."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"stopped by signal {signum}")


def _die_with_parent() -> None:
    """In a luigi task process: get SIGTERM when the worker that forked us dies (Linux only)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    try:
        _PROGRAM.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # type: ignore[union-attr]
    except AttributeError:  # no prctl (not Linux), or no program handle
        return
    if os.getppid() != parent.pid:  # the parent died before the request took effect
        raise Terminated("the worker process that started this task is gone")


@contextmanager
def cancel_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM cancels the server-side work and stops the task (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _die_with_parent()
        yield
    except Terminated:
        log.error("stopped by SIGTERM: the running statements were cancelled on the server and the live table left as it was committed")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
