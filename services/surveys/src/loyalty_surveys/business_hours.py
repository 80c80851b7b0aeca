"""Business-hours arithmetic: pure functions over a retailer's weekly opening hours and holidays.

Opening hours are local wall-clock times in the retailer's zone; the arithmetic runs on the real
(UTC) timeline, so a day on which clocks move counts the hours that really elapse. Local times that
do not exist (spring forward) resolve the way `zoneinfo` resolves them (fold=0), and any overlap
this creates is clamped away, so open intervals are always sorted and disjoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# A deadline more than this far away means the calendar is (nearly) always closed: a program error.
MAX_SEARCH_DAYS = 3700


class CalendarNeverOpen(ValueError):
    """The calendar has no opening hours within MAX_SEARCH_DAYS of the start."""


@dataclass(frozen=True, slots=True)
class OpenInterval:
    """Opening hours within one local day: [start, end); an end of 23:59:59.999999 means midnight."""

    start: time
    end: time

    def minutes(self) -> tuple[int, int]:
        end = 1440 if self.end == time(23, 59, 59, 999999) else self.end.hour * 60 + self.end.minute
        return self.start.hour * 60 + self.start.minute, end


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    zone: ZoneInfo
    weekly: tuple[tuple[OpenInterval, ...], ...]  # seven entries, Monday first
    holidays: frozenset[date]

    def __post_init__(self) -> None:
        if len(self.weekly) != 7:
            raise ValueError("weekly needs seven days, Monday first")

    def _local(self, day: date, minute: int) -> datetime:
        # Aware + timedelta is wall-clock arithmetic in Python; astimezone then resolves the offset.
        return (datetime.combine(day, time(0), tzinfo=self.zone) + timedelta(minutes=minute)).astimezone(UTC)

    def open_intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Sorted, disjoint UTC open intervals that end after `start`; the first is clipped to `start`."""
        _require_aware(start)
        first_day = start.astimezone(self.zone).date() - timedelta(days=1)
        last_end = datetime.min.replace(tzinfo=UTC)
        for offset in range(MAX_SEARCH_DAYS):
            day = first_day + timedelta(days=offset)
            if day in self.holidays:
                continue
            for interval in self.weekly[day.weekday()]:
                begin_minute, end_minute = interval.minutes()
                begin = max(self._local(day, begin_minute), last_end)
                end = self._local(day, end_minute)
                if end <= begin:
                    continue
                last_end = end
                if end <= start:
                    continue
                yield max(begin, start), end
        raise CalendarNeverOpen(f"no opening hours within {MAX_SEARCH_DAYS} days after {start.isoformat()}")

    def is_open(self, moment: datetime) -> bool:
        begin, _ = next(self.open_intervals(moment))
        return begin == moment.astimezone(UTC)


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("business-hours arithmetic needs timezone-aware datetimes")


def add_business_time(start: datetime, duration: timedelta, calendar: BusinessCalendar) -> datetime:
    """The moment when `duration` of open time has elapsed after `start` (UTC). Zero → `start`."""
    _require_aware(start)
    if duration < timedelta(0):
        raise ValueError("duration must not be negative")
    if duration == timedelta(0):
        return start.astimezone(UTC)
    remaining = duration
    for begin, end in calendar.open_intervals(start):
        span = end - begin
        if remaining <= span:
            return begin + remaining
        remaining -= span
    raise AssertionError("unreachable: open_intervals raises when exhausted")  # pragma: no cover


def business_time_between(start: datetime, end: datetime, calendar: BusinessCalendar) -> timedelta:
    """Open time within [start, end); zero when end <= start."""
    _require_aware(start)
    _require_aware(end)
    total = timedelta(0)
    if end <= start:
        return total
    for begin, close in calendar.open_intervals(start):
        if begin >= end:
            break
        total += min(close, end) - begin
    return total
