"""Business-hours deadline arithmetic: examples, then properties over random calendars and zones."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loyalty_surveys.business_hours import (
    BusinessCalendar,
    CalendarNeverOpen,
    OpenInterval,
    add_business_time,
    business_time_between,
)

BERLIN = ZoneInfo("Europe/Berlin")


def iv(a: str, b: str) -> OpenInterval:
    h1, m1 = map(int, a.split(":"))
    if b == "24:00":
        return OpenInterval(time(h1, m1), time(23, 59, 59, 999999))
    h2, m2 = map(int, b.split(":"))
    return OpenInterval(time(h1, m1), time(h2, m2))


def shop_calendar(holidays: frozenset[date] = frozenset(), zone: ZoneInfo = BERLIN) -> BusinessCalendar:
    weekdays = (iv("09:00", "18:00"),)
    return BusinessCalendar(
        zone=zone,
        weekly=(weekdays, weekdays, weekdays, weekdays, (iv("09:00", "17:00"),), (iv("10:00", "14:00"),), ()),
        holidays=holidays,
    )


def local(*args: int, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime(*args, tzinfo=zone)


def test_within_one_day() -> None:
    # Tuesday 10:00 + 3h = Tuesday 13:00
    assert add_business_time(local(2026, 11, 24, 10), timedelta(hours=3), shop_calendar()) == local(2026, 11, 24, 13)


def test_over_the_weekend() -> None:
    # Friday 16:00 + 8h: Fri 1h (to 17:00), Sat 4h (10-14), Sun closed, Mon 3h → Monday 12:00
    result = add_business_time(local(2026, 11, 27, 16), timedelta(hours=8), shop_calendar())
    assert result == local(2026, 11, 30, 12)


def test_start_outside_hours_waits_for_opening() -> None:
    # Sunday 20:00 + 1h → Monday 10:00
    assert add_business_time(local(2026, 11, 29, 20), timedelta(hours=1), shop_calendar()) == local(2026, 11, 30, 10)


def test_holidays_are_skipped() -> None:
    # Thu 2026-12-24 and Fri 2026-12-25 closed; Wed 17:00 + 2h → Wed 1h, Sat 26th 10:00 + 1h = 11:00
    holidays = frozenset({date(2026, 12, 24), date(2026, 12, 25)})
    result = add_business_time(local(2026, 12, 23, 17), timedelta(hours=2), shop_calendar(holidays))
    assert result == local(2026, 12, 26, 11)


def test_time_zone_of_the_retailer_counts_not_utc() -> None:
    # 08:30 UTC on Tuesday is 09:30 in Berlin (winter): open; in New York it is 03:30: closed until 09:00.
    start = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
    berlin = add_business_time(start, timedelta(hours=1), shop_calendar())
    new_york = add_business_time(start, timedelta(hours=1), shop_calendar(zone=ZoneInfo("America/New_York")))
    assert berlin == local(2026, 11, 24, 10, 30)
    assert new_york == datetime(2026, 11, 24, 10, 0, tzinfo=ZoneInfo("America/New_York"))


def test_daylight_saving_day_counts_real_hours() -> None:
    # Open round the clock; Berlin clocks jump 02:00 → 03:00 on 2027-03-28: 24 real hours from Saturday noon
    # end at 13:00 local on Sunday.
    always = (iv("00:00", "24:00"),)
    calendar = BusinessCalendar(zone=BERLIN, weekly=(always,) * 7, holidays=frozenset())
    assert add_business_time(local(2027, 3, 27, 12), timedelta(hours=24), calendar) == local(2027, 3, 28, 13)
    # and back in October (25-hour day): 24 real hours end at 11:00 local
    assert add_business_time(local(2027, 10, 30, 12), timedelta(hours=24), calendar) == local(2027, 10, 31, 11)


def test_between_counts_only_open_time() -> None:
    calendar = shop_calendar()
    assert business_time_between(local(2026, 11, 27, 16), local(2026, 11, 30, 12), calendar) == timedelta(hours=8)
    assert business_time_between(local(2026, 11, 30, 12), local(2026, 11, 27, 16), calendar) == timedelta(0)


def test_naive_and_negative_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_business_time(datetime(2026, 1, 1), timedelta(hours=1), shop_calendar())
    with pytest.raises(ValueError, match="negative"):
        add_business_time(local(2026, 1, 1), timedelta(hours=-1), shop_calendar())


def test_calendar_closed_forever_raises() -> None:
    closed = BusinessCalendar(zone=BERLIN, weekly=((),) * 7, holidays=frozenset())
    with pytest.raises(CalendarNeverOpen):
        add_business_time(local(2026, 1, 1), timedelta(hours=1), closed)


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/Moscow",
    "America/New_York",
    "America/Santiago",  # DST changes at midnight
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kathmandu",  # +05:45
    "Pacific/Apia",
]


@st.composite
def day_hours(draw: st.DrawFn) -> tuple[OpenInterval, ...]:
    # Up to three disjoint intervals on a 30-minute grid, sometimes up to midnight.
    cuts = sorted(draw(st.sets(st.integers(0, 48), max_size=6)))
    if len(cuts) % 2:
        cuts = cuts[:-1]
    intervals = []
    for a, b in zip(cuts[::2], cuts[1::2], strict=True):
        start = time(a // 2, 30 * (a % 2))
        end = time(23, 59, 59, 999999) if b == 48 else time(b // 2, 30 * (b % 2))
        intervals.append(OpenInterval(start, end))
    return tuple(intervals)


@st.composite
def calendars(draw: st.DrawFn) -> BusinessCalendar:
    weekly = tuple(draw(day_hours()) for _ in range(7))
    if not any(weekly):
        weekly = ((iv("09:00", "17:00"),), *weekly[1:])
    holidays = frozenset(draw(st.lists(st.dates(date(2026, 1, 1), date(2027, 12, 31)), max_size=40)))
    return BusinessCalendar(zone=ZoneInfo(draw(st.sampled_from(ZONES))), weekly=weekly, holidays=holidays)


starts = st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC))
durations = st.timedeltas(timedelta(0), timedelta(hours=120))
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(calendars(), starts, durations)
def test_deadline_is_exactly_the_duration_of_open_time_later(
    calendar: BusinessCalendar, start: datetime, duration: timedelta
) -> None:
    deadline = add_business_time(start, duration, calendar)
    assert deadline >= start
    assert deadline - start >= duration  # open time never runs faster than the wall clock
    assert business_time_between(start, deadline, calendar) == duration


@PROPERTY_SETTINGS
@given(calendars(), starts, st.timedeltas(timedelta(microseconds=1), timedelta(hours=120)))
def test_deadline_falls_in_open_time_never_on_a_holiday_or_closed_day(
    calendar: BusinessCalendar, start: datetime, duration: timedelta
) -> None:
    deadline = add_business_time(start, duration, calendar)
    just_before = deadline - timedelta(microseconds=1)
    assert calendar.is_open(just_before)
    local_day = just_before.astimezone(calendar.zone).date()
    assert local_day not in calendar.holidays
    assert calendar.weekly[local_day.weekday()], "deadline on a day without opening hours"


@PROPERTY_SETTINGS
@given(calendars(), starts, durations, durations)
def test_adding_is_monotone_and_additive(
    calendar: BusinessCalendar, start: datetime, first: timedelta, second: timedelta
) -> None:
    after_first = add_business_time(start, first, calendar)
    both = add_business_time(start, first + second, calendar)
    assert after_first <= both
    assert add_business_time(after_first, second, calendar) == both


@PROPERTY_SETTINGS
@given(calendars(), starts, starts, starts)
def test_between_is_additive_over_a_split(calendar: BusinessCalendar, a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    total = business_time_between(a, c, calendar)
    assert total == business_time_between(a, b, calendar) + business_time_between(b, c, calendar)
    assert timedelta(0) <= total <= c - a
