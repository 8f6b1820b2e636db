"""Cron schedules → dataset versions.

A scheduled dataset's *version* is its latest cron fire time at or before now (UTC), written in compact
ISO-8601 basic form (``20261124T110400Z``) so it is safe in staging keys and table markers. A dataset is due
when that version is not yet published; when the next fire time passes, a new version becomes due.
Manual datasets (``schedule_interval: false|null``) get a version only when asked for one.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from croniter import CroniterBadDateError, croniter

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
_VERSION_RE = re.compile(r"^\d{8}T\d{6}Z$")


class ScheduleError(ValueError):
    """A cron expression that cannot be evaluated."""


def check_cron(expression: str) -> None:
    """Raise ScheduleError unless ``expression`` is a 5-field cron (``#`` nth weekday, month names and ``00``
    are accepted, as the old Airflow configs used them)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron needs 5 fields (minute hour day month weekday), got {len(fields)}: {expression!r}")
    if not croniter.is_valid(expression):
        raise ScheduleError(f"not a valid cron expression: {expression!r}")
    try:  # valid syntax can still never fire (30 February)
        croniter(expression, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except CroniterBadDateError:
        raise ScheduleError(f"cron expression never fires: {expression!r}") from None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def latest_fire_time(expression: str, now: datetime | None = None) -> datetime:
    """The latest time ``expression`` fires at or before ``now`` (UTC)."""
    check_cron(expression)
    now = (now or utc_now()).astimezone(timezone.utc)
    # croniter.get_prev is strictly before its start: start one minute past now's minute to include now.
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return croniter(expression, start).get_prev(datetime).astimezone(timezone.utc)


def next_fire_time(expression: str, now: datetime | None = None) -> datetime:
    check_cron(expression)
    now = (now or utc_now()).astimezone(timezone.utc)
    return croniter(expression, now).get_next(datetime).astimezone(timezone.utc)


def format_version(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(VERSION_FORMAT)


def parse_version(version: str) -> datetime:
    if not _VERSION_RE.fullmatch(version):
        raise ScheduleError(f"version must look like 20261124T110400Z, got {version!r}")
    try:
        return datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ScheduleError(f"version {version!r} is not a real date and time") from None


def due_version(expression: str | None, now: datetime | None = None) -> str | None:
    """The version a dataset should be published at now, or None for a manual dataset."""
    if expression is None:
        return None
    return format_version(latest_fire_time(expression, now))


def forced_version(now: datetime | None = None) -> str:
    """The version used by ``--force``: now, to the second."""
    return format_version(now or utc_now())
