"""Cron schedules → dataset versions (databridge_luigi/schedule.py). All crons are UTC, as in the old system."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from databridge_luigi.schedule import (
    ScheduleError,
    check_cron,
    due_version,
    forced_version,
    format_version,
    latest_fire_time,
    next_fire_time,
    parse_version,
    utc_now,
)

UTC = timezone.utc
QUARTERLY = "0 5 * Jan,Apr,Jul,Oct 0#1"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- latest fire time ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, now, expected", [
    # the exact-minute boundary: a fire time equal to now is the latest one
    ("4 11 * * *", at(2026, 11, 24, 11, 4), at(2026, 11, 24, 11, 4)),
    ("4 11 * * *", at(2026, 11, 24, 11, 4, 0, 1), at(2026, 11, 24, 11, 4)),
    ("4 11 * * *", at(2026, 11, 24, 11, 4, 59, 999999), at(2026, 11, 24, 11, 4)),
    ("4 11 * * *", at(2026, 11, 24, 11, 3, 59, 999999), at(2026, 11, 23, 11, 4)),
    ("4 11 * * *", at(2026, 11, 24, 11, 5), at(2026, 11, 24, 11, 4)),
    ("4 11 * * *", at(2026, 1, 1, 0, 0), at(2025, 12, 31, 11, 4)),  # across a year
    # a leading "00" minute
    ("00 15 * * *", at(2026, 11, 24, 14, 59), at(2026, 11, 23, 15, 0)),
    ("00 15 * * *", at(2026, 11, 24, 15, 0), at(2026, 11, 24, 15, 0)),
    # monthly, first of the month
    ("0 7 1 * *", at(2026, 3, 1, 6, 59), at(2026, 2, 1, 7, 0)),
    ("0 7 1 * *", at(2026, 3, 1, 7, 0), at(2026, 3, 1, 7, 0)),
    ("0 7 1 * *", at(2026, 3, 31, 23, 59), at(2026, 3, 1, 7, 0)),
    # weekly (Saturday, Sunday, Monday)
    ("0 15 * * 6", at(2026, 11, 24, 12, 0), at(2026, 11, 21, 15, 0)),
    ("0 10 * * 0", at(2026, 11, 24, 12, 0), at(2026, 11, 22, 10, 0)),
    ("0 8 * * 1", at(2026, 11, 23, 7, 59), at(2026, 11, 16, 8, 0)),
    # Tue–Sat range: on Monday the latest is Saturday; on Sunday too
    ("25 8 * * 2-6", at(2026, 11, 23, 12, 0), at(2026, 11, 21, 8, 25)),
    ("25 8 * * 2-6", at(2026, 11, 22, 12, 0), at(2026, 11, 21, 8, 25)),
    ("25 8 * * 2-6", at(2026, 11, 24, 8, 25), at(2026, 11, 24, 8, 25)),
    # first Sunday of Jan/Apr/Jul/Oct at 05:00
    (QUARTERLY, at(2026, 11, 24, 12, 0), at(2026, 10, 4, 5, 0)),
    (QUARTERLY, at(2026, 4, 5, 4, 59), at(2026, 1, 4, 5, 0)),
    (QUARTERLY, at(2026, 4, 5, 5, 0), at(2026, 4, 5, 5, 0)),
    (QUARTERLY, at(2026, 4, 12, 5, 0), at(2026, 4, 5, 5, 0)),  # the second Sunday does not fire
])
def test_latest_fire_time(expression, now, expected):
    got = latest_fire_time(expression, now)
    assert got == expected
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert got <= now


def test_latest_fire_time_converts_aware_non_utc_now():
    new_york = ZoneInfo("America/New_York")
    # 06:04 in New York on 24 Nov 2026 is 11:04 UTC
    assert latest_fire_time("4 11 * * *", datetime(2026, 11, 24, 6, 4, tzinfo=new_york)) == at(2026, 11, 24, 11, 4)
    assert latest_fire_time("4 11 * * *", datetime(2026, 11, 24, 6, 3, tzinfo=new_york)) == at(2026, 11, 23, 11, 4)


def test_crons_are_utc_across_daylight_saving_changes():
    # US clocks change on 8 Mar and 1 Nov 2026; a UTC cron does not move.
    for day in (at(2026, 3, 7), at(2026, 3, 8), at(2026, 3, 9), at(2026, 10, 31), at(2026, 11, 1), at(2026, 11, 2)):
        assert latest_fire_time("4 11 * * *", day + timedelta(hours=12)) == day + timedelta(hours=11, minutes=4)


def test_latest_fire_time_defaults_to_now():
    before = utc_now()
    got = latest_fire_time("* * * * *")
    assert got <= utc_now()
    assert before - timedelta(minutes=1) < got


def test_first_sunday_every_quarter():
    fires = []
    moment = at(2025, 1, 1)
    while True:
        moment = next_fire_time(QUARTERLY, moment)
        if moment.year > 2028:
            break
        fires.append(moment)
    assert len(fires) == 16  # four a year, 2025–2028
    for fire in fires:
        assert fire.month in (1, 4, 7, 10)
        assert fire.weekday() == 6 and fire.day <= 7  # the first Sunday
        assert (fire.hour, fire.minute) == (5, 0)
    assert fires[:4] == [at(2025, 1, 5, 5), at(2025, 4, 6, 5), at(2025, 7, 6, 5), at(2025, 10, 5, 5)]


def test_weekday_range_is_tuesday_to_saturday():
    days = set()
    moment = at(2026, 11, 1)
    for _ in range(15):
        moment = next_fire_time("25 8 * * 2-6", moment)
        days.add(moment.strftime("%a"))
        assert (moment.hour, moment.minute) == (8, 25)
    assert days == {"Tue", "Wed", "Thu", "Fri", "Sat"}


def test_double_zero_minute_same_as_zero():
    now = at(2026, 11, 24, 16, 0)
    assert latest_fire_time("00 15 * * *", now) == latest_fire_time("0 15 * * *", now) == at(2026, 11, 24, 15, 0)
    assert next_fire_time("00 15 * * *", now) == at(2026, 11, 25, 15, 0)


def test_next_fire_time_is_strictly_after_now():
    assert next_fire_time("4 11 * * *", at(2026, 11, 24, 11, 4)) == at(2026, 11, 25, 11, 4)
    assert next_fire_time("4 11 * * *", at(2026, 11, 24, 11, 3, 59)) == at(2026, 11, 24, 11, 4)
    assert next_fire_time("0 7 1 * *", at(2026, 12, 15)) == at(2027, 1, 1, 7, 0)


@pytest.mark.parametrize("expression", ["4 11 * * *", "*/15 * * * *", "0 7 1 * *", QUARTERLY, "25 8 * * 2-6", "00 15 * * *"])
def test_latest_and_next_bracket_now(expression):
    rng = random.Random(20261124)
    start = at(2025, 1, 1)
    for _ in range(200):
        now = start + timedelta(seconds=rng.randrange(3 * 365 * 86400), microseconds=rng.randrange(10**6))
        latest, following = latest_fire_time(expression, now), next_fire_time(expression, now)
        assert latest <= now < following, now
        # nothing fires strictly between them
        assert next_fire_time(expression, latest) == following


# --- versions -----------------------------------------------------------------------------------------------

def test_due_version_none_for_manual():
    assert due_version(None) is None
    assert due_version(None, at(2026, 11, 24)) is None


def test_due_version_is_latest_fire_time_formatted():
    assert due_version("4 11 * * *", at(2026, 11, 24, 11, 4, 30)) == "20261124T110400Z"
    assert due_version("4 11 * * *", at(2026, 11, 24, 11, 3, 59)) == "20261123T110400Z"
    assert due_version(QUARTERLY, at(2026, 11, 24)) == "20261004T050000Z"


@pytest.mark.parametrize("expression", ["4 11 * * *", "0 7 1 * *", QUARTERLY, "25 8 * * 2-6", "*/5 * * * *"])
def test_due_version_rolls_over_when_next_fire_time_passes(expression):
    now = at(2026, 11, 24, 12, 34, 56)
    current = due_version(expression, now)
    following = next_fire_time(expression, now)
    assert due_version(expression, following - timedelta(microseconds=1)) == current
    assert due_version(expression, following) == format_version(following) != current
    assert parse_version(due_version(expression, following)) > parse_version(current)


@pytest.mark.parametrize("moment, text", [
    (at(2026, 11, 24, 11, 4), "20261124T110400Z"),
    (at(1999, 12, 31, 23, 59, 59), "19991231T235959Z"),
    (datetime(2026, 11, 24, 6, 4, 5, tzinfo=ZoneInfo("America/New_York")), "20261124T110405Z"),
    (datetime(2026, 7, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), "20260630T230000Z"),
])
def test_version_round_trip(moment, text):
    assert format_version(moment) == text
    assert parse_version(text) == moment
    assert parse_version(text).tzinfo is not None
    assert format_version(parse_version(text)) == text


def test_format_version_drops_microseconds():
    assert format_version(at(2026, 11, 24, 11, 4, 5, 999999)) == "20261124T110405Z"


def test_forced_version():
    assert forced_version(at(2026, 11, 24, 11, 4, 5, 123)) == "20261124T110405Z"
    now = utc_now()
    parsed = parse_version(forced_version())
    assert abs(parsed - now) < timedelta(seconds=5)


@pytest.mark.parametrize("text", [
    "", "20261124T110400", "2026-11-24T11:04:00Z", "20261124t110400z", " 20261124T110400Z",
    "20261124T110400Z ", "20261124T1104Z", "20261124110400Z", "v20261124T110400Z", "manual",
])
def test_parse_version_rejects_malformed(text):
    with pytest.raises(ScheduleError, match="20261124T110400Z"):
        parse_version(text)


@pytest.mark.parametrize("text", ["20261324T110400Z", "20260230T000000Z", "20261124T110400Z\n"],
                         ids=["month-13", "feb-30", "trailing-newline"])
def test_parse_version_rejects_impossible_versions_with_schedule_error(text):
    # These pass the shape check (``$`` also matches before a final newline) and then fail in strptime with a
    # bare ValueError; callers that catch ScheduleError for a bad --version would miss them.
    with pytest.raises(ScheduleError):
        parse_version(text)


# --- check_cron ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression", [
    "4 11 * * *", "00 15 * * *", "0 7 1 * *", QUARTERLY, "25 8 * * 2-6", "0 15 * * 6", "0 10 * * 0",
    "*/15 * * * *", "0 0 * * 7", "0 5 * jan,apr sun", "0 5 L * *",
])
def test_check_cron_accepts(expression):
    check_cron(expression)
    latest_fire_time(expression, at(2026, 11, 24))


@pytest.mark.parametrize("expression, message", [
    ("", "5 fields"),
    ("   ", "5 fields"),
    ("@daily", "5 fields"),
    ("0 11 * *", "got 4"),
    ("0 0 5 * * *", "got 6"),
    ("61 * * * *", "not a valid cron"),
    ("0 24 * * *", "not a valid cron"),
    ("0 0 32 * *", "not a valid cron"),
    ("0 0 * 13 *", "not a valid cron"),
    ("0 0 * Foo *", "not a valid cron"),
    ("0 0 * * 8", "not a valid cron"),
    ("0 0 * * 0#6", "not a valid cron"),
    ("*/0 * * * *", "not a valid cron"),
    ("every day at noon please", "not a valid cron"),
])
def test_check_cron_rejects(expression, message):
    with pytest.raises(ScheduleError, match=message):
        check_cron(expression)
    with pytest.raises(ScheduleError):
        latest_fire_time(expression, at(2026, 11, 24))
    with pytest.raises(ScheduleError):
        due_version(expression, at(2026, 11, 24))


def test_schedule_error_is_a_value_error():
    assert issubclass(ScheduleError, ValueError)


@pytest.mark.parametrize("expression", ["0 5 30 2 *", "0 5 31 4 *"], ids=["30-february", "31-april"])
def test_check_cron_rejects_expression_that_never_fires(expression):
    # croniter.is_valid accepts these, but get_prev then raises CroniterBadDateError (not a ScheduleError)
    # from latest_fire_time, so `validate` passes a config that `plan` and PublishAll cannot schedule.
    with pytest.raises(ScheduleError):
        check_cron(expression)
