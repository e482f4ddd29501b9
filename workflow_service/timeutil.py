"""UTC time as the service stores and returns it: RFC 3339, microseconds, `Z`."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

# An unencoded "+05:00" in a query string arrives as " 05:00".
_SPACE_OFFSET = re.compile(r"^(\S{16,}) (\d{2}:?\d{2})$")


def utc_now_text() -> str:
    """The current time in the stored form."""
    return to_text(datetime.now(timezone.utc))


def to_text(moment: datetime) -> str:
    """A datetime in the stored form, fixed width so text order is time order; naive means UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def parse_bound(text: str, upper: bool) -> str:
    """An inclusive bound from an ISO 8601 date or date-time (SPEC fine points).

    A date alone starts at 00:00 UTC for a lower bound and covers the whole day
    for an upper bound; no zone means UTC; an offset is converted to UTC.
    Raises ValueError for anything else.
    """
    text = _SPACE_OFFSET.sub(r"\1+\2", text.strip())
    if len(text) == 10:
        day = date.fromisoformat(text)
        if upper:
            return to_text(datetime.combine(day, time.max))
        return to_text(datetime.combine(day, time.min))
    if len(text) < 16 or text[10] not in "Tt ":
        raise ValueError("not an ISO 8601 date or date-time")
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        return to_text(datetime.fromisoformat(text))
    except OverflowError:  # an offset that pushes year 1 or 9999 out of range
        raise ValueError("date-time out of range") from None


def from_text(stamp: str) -> datetime:
    """A stored-form time as a naive UTC datetime."""
    return datetime.fromisoformat(stamp[:-1])


def later(stamp: str, seconds: float) -> str:
    """A stored-form time `seconds` after another stored-form time."""
    return to_text(from_text(stamp) + timedelta(seconds=seconds))
