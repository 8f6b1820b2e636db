"""What a running task sends to luigid: a short task's phases wait out its first second, a long phase still shows."""
from __future__ import annotations

import time

from databridge_luigi.status_line import StatusLine


class Luigid:
    """Stands for the task's two luigid calls: records what arrives, and when."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.updates: list[tuple[str, object, float]] = []

    def message(self, text: str) -> None:
        self.updates.append(("message", text, time.monotonic() - self.started))

    def percent(self, value: int) -> None:
        self.updates.append(("percent", value, time.monotonic() - self.started))

    def sent(self) -> list[tuple[str, object]]:
        return [(kind, value) for kind, value, _ in self.updates]


def test_a_short_task_sends_only_its_final_update():
    luigid, line = Luigid(), StatusLine(quiet_seconds=0.3)
    for phase in ("taking the lease", "copying 10 rows", "finishing", "committing"):
        line.show(phase, None, luigid.message, luigid.percent)
    line.show("published 10 rows", 100, luigid.message, luigid.percent)
    time.sleep(0.5)  # past the quiet second: nothing left waiting
    assert luigid.sent() == [("message", "published 10 rows"), ("percent", 100)]


def test_a_long_phase_shows_when_the_quiet_second_ends():
    luigid, line = Luigid(), StatusLine(quiet_seconds=0.3)
    line.show("taking the lease", None, luigid.message, luigid.percent)
    line.show("copying 1000000 rows", 5, luigid.message, luigid.percent)
    time.sleep(0.6)
    assert luigid.sent() == [("message", "copying 1000000 rows"), ("percent", 5)]  # the latest, once
    assert 0.25 <= luigid.updates[0][2] < 0.55
    line.show("finishing", None, luigid.message, luigid.percent)  # after the quiet second: at once
    assert luigid.sent()[-1] == ("message", "finishing")


def test_a_failure_drops_what_still_waits():
    luigid, line = Luigid(), StatusLine(quiet_seconds=0.3)
    line.show("copying 10 rows", None, luigid.message, luigid.percent)
    line.drop_waiting()  # on_failure, before it sends the error line itself
    time.sleep(0.5)
    assert luigid.sent() == []


def test_luigid_unreachable_when_the_timer_fires_is_not_an_error():
    line = StatusLine(quiet_seconds=0.1)

    def refused(_: object) -> None:
        raise ConnectionRefusedError("luigid is down")

    line.show("copying 10 rows", None, refused, refused)
    time.sleep(0.3)  # the timer thread swallowed it; a later update still tries again
    try:
        line.show("published", 100, refused, refused)
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("an update sent in the task's own thread must still raise")
