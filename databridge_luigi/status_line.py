"""What a running task shows in luigid: its status message and progress, each update an RPC to luigid.

A small dataset's load passes its phases (lease, copy, finish, index, commit) in a fraction of a second. Sent as
they came, they were half of luigid's calls per dataset (8 of 16; bench/README.md, seventh session) and nobody
could read them. So an update in a task's first second waits on a timer until that second is over, and only the
latest one is sent: a long phase still shows within a second. After the first second, and for the final update
(100%), each goes at once, replacing any still waiting.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

QUIET_SECONDS = 1.0

SendMessage = Callable[[str], None]
SendPercent = Callable[[int], None]


class StatusLine:
    """One task's updates to luigid (a task object lives in one process; its run is one thread)."""

    def __init__(self, quiet_seconds: float = QUIET_SECONDS) -> None:
        self.quiet_seconds = quiet_seconds
        self._lock = threading.Lock()
        self._started: float | None = None
        self._waiting: tuple[str, int | None] | None = None
        self._timer: threading.Timer | None = None

    def show(self, message: str, percent: int | None, send: SendMessage, send_percent: SendPercent) -> None:
        with self._lock:
            now = time.monotonic()
            if self._started is None:
                self._started = now
            quiet_left = self.quiet_seconds - (now - self._started)
            if quiet_left > 0 and (percent is None or percent < 100):
                self._waiting = (message, percent)
                if self._timer is None:
                    self._timer = threading.Timer(quiet_left, self._send_waiting, args=(send, send_percent))
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._waiting = None
            _send(message, percent, send, send_percent)

    def drop_waiting(self) -> None:
        """Before a failure's own message: nothing still waiting may replace it."""
        with self._lock:
            self._waiting = None

    def _send_waiting(self, send: SendMessage, send_percent: SendPercent) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, None
            if waiting is None:
                return
            try:
                _send(*waiting, send, send_percent)
            except Exception:  # luigid unreachable: the next update, or the worker's own report, says the rest
                pass


def _send(message: str, percent: int | None, send: SendMessage, send_percent: SendPercent) -> None:
    send(message)
    if percent is not None:
        send_percent(percent)
