"""Business dates are calendar days in the business time zone (Asia/Shanghai by default)."""

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


def business_date(instant: datetime, timezone: str) -> date:
    return instant.astimezone(ZoneInfo(timezone)).date()


# Dates and instants the service accepts from callers: wide enough for any business date, narrow enough that a
# day's arithmetic (± a few days, a shift to UTC) never leaves Python's or PostgreSQL's range.
EARLIEST = date(1900, 1, 1)
LATEST = date(9998, 12, 31)


def parse_day(text: str) -> date:
    """A ``YYYY-MM-DD`` date within [EARLIEST, LATEST]; ValueError otherwise."""
    day = date.fromisoformat(text)
    if len(text) != 10 or not EARLIEST <= day <= LATEST:
        raise ValueError(f"must be a date as YYYY-MM-DD from {EARLIEST} to {LATEST}")
    return day


def parse_instant(text: str) -> datetime:
    """An RFC 3339 timestamp with its offset within [EARLIEST, LATEST], in UTC; ValueError otherwise."""
    if len(text) > 40:
        raise ValueError("too long for a timestamp")
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError("needs its offset from UTC, e.g. +08:00 or Z")
    if not EARLIEST <= instant.date() <= LATEST:
        raise ValueError(f"must fall between {EARLIEST} and {LATEST}")
    return instant.astimezone(UTC)
