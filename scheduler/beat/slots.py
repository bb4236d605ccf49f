"""When a schedule fires next: cron (with the cronie DST rule), anchored intervals, clocked.

Every function takes and returns aware UTC datetimes and answers "the first
slot strictly after ``after``", or ``None`` when the schedule never fires again.

Cron is evaluated by croniter (standard day-of-month/day-of-week OR rule) on
the schedule's local wall clock. Time is split into segments of constant UTC
offset; inside one, wall clock and UTC move together, so croniter's next match
maps straight to an instant. At the edges the cronie rule applies:

- A schedule is *wildcard* when its minute or hour field starts with ``*``,
  otherwise *fixed-time*.
- Spring forward: wall times in the gap do not exist. A fixed-time slot there
  fires once at the first instant after the gap (02:30 → 03:00); a wildcard
  schedule simply has no slot there.
- Fall back: wall times in the overlap happen twice. A fixed-time slot fires
  at the first occurrence only; a wildcard schedule fires at every real slot.
- Two fixed-time slots in one gap fire once, together, after it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterBadCronError, CroniterBadDateError, CroniterError

MINUTE = timedelta(minutes=1)
# A cron that needs more constant-offset segments than this to match once
# (about 30 years of twice-yearly DST changes) is treated as never firing.
MAX_SEGMENTS = 64


class InvalidCron(ValueError):
    """A cron expression croniter cannot parse."""


@dataclass(frozen=True)
class CronSpec:
    """A five-field cron expression on the wall clock of an IANA time zone."""

    expression: str
    timezone: str = "UTC"

    @property
    def is_wildcard(self) -> bool:
        minute, hour = self.expression.split()[:2]
        return minute.startswith("*") or hour.startswith("*")


@lru_cache(maxsize=65536)
def _matcher(expression: str) -> croniter:
    try:
        return croniter(expression, datetime(2000, 1, 1), day_or=True)  # noqa: DTZ001 (wall clock)
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise InvalidCron(f"{expression!r} is not a valid cron expression: {exc}") from exc


def parse_cron(expression: str) -> None:
    """Raise ``InvalidCron`` unless ``expression`` is a valid five-field cron."""
    if len(expression.split()) != 5:
        raise InvalidCron(
            f"{expression!r} is not a valid cron expression: it needs 5 fields "
            "(minute hour day-of-month month day-of-week)"
        )
    _matcher(expression)


def _first_match_at_or_after(expression: str, wall: datetime) -> datetime | None:
    matcher = _matcher(expression)
    matcher.set_current(wall - timedelta(seconds=1), force=True)
    try:
        return matcher.get_next(datetime)
    except CroniterBadDateError:
        return None


@lru_cache(maxsize=8192)
def _transitions(zone_key: str, year: int) -> tuple[datetime, ...]:
    """UTC instants in ``year`` at which the zone's UTC offset changes."""
    zone = ZoneInfo(zone_key)
    found = []
    step = timedelta(hours=6)
    t = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    before = t.astimezone(zone).utcoffset()
    while t < end:
        nxt = t + step
        after = nxt.astimezone(zone).utcoffset()
        if after != before:
            lo, hi = t, nxt  # offset(lo) == before, offset(hi) != before
            while hi - lo > MINUTE:
                mid = lo + (hi - lo) / 2
                mid = mid.replace(second=0, microsecond=0)
                if mid <= lo:
                    mid = lo + MINUTE
                if mid.astimezone(zone).utcoffset() == before:
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        before = after
        t = nxt
    return tuple(found)


def _segment(zone_key: str, instant: datetime) -> tuple[datetime | None, datetime]:
    """The constant-offset segment [start, end) holding ``instant``.

    ``start`` is the last offset change at or before the instant (``None`` if
    none in the previous year); ``end`` is the next change, or an artificial
    boundary two years on, where the offset does not change.
    """
    year = instant.year
    changes = _transitions(zone_key, year - 1) + _transitions(zone_key, year) + _transitions(
        zone_key, year + 1
    )
    i = bisect.bisect_right(changes, instant)
    start = changes[i - 1] if i else None
    end = changes[i] if i < len(changes) else datetime(year + 2, 1, 1, tzinfo=UTC)
    return start, end


def next_cron_slot(spec: CronSpec, after: datetime) -> datetime | None:
    """The first slot of ``spec`` strictly after ``after`` (see the module rules)."""
    zone = ZoneInfo(spec.timezone)
    fixed_time = not spec.is_wildcard
    candidate = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    for _ in range(MAX_SEGMENTS):
        start, end = _segment(spec.timezone, candidate)
        offset = candidate.astimezone(zone).utcoffset()
        wall_from = (candidate + offset).replace(tzinfo=None)
        if start is not None:
            previous_offset = (start - MINUTE).astimezone(zone).utcoffset()
            if fixed_time and offset > previous_offset and candidate == start:
                # Spring forward: wall times [start+prev, start+offset) never happened.
                gap_from = (start + previous_offset).replace(tzinfo=None)
                gap_match = _first_match_at_or_after(spec.expression, gap_from)
                if gap_match is not None and gap_match < wall_from:
                    return start
            if fixed_time and offset < previous_offset:
                # Fall back: wall times before start+prev already fired once.
                wall_from = max(wall_from, (start + previous_offset).replace(tzinfo=None))
        match = _first_match_at_or_after(spec.expression, wall_from)
        if match is None:
            return None
        wall_end = (end + offset).replace(tzinfo=None)
        if match < wall_end:
            return match.replace(tzinfo=UTC) - offset
        candidate = end
    return None


def next_interval_slot(anchor: datetime, every: timedelta, after: datetime) -> datetime:
    """``anchor + k × every`` for the smallest k ≥ 0 with a slot strictly after ``after``.

    Anchored, so slots do not drift by dispatch latency or restarts.
    """
    if every <= timedelta(0):
        raise ValueError(f"an interval must be positive, got {every}")
    if after < anchor:
        return anchor
    periods = (after - anchor) // every + 1
    return anchor + periods * every


def next_clocked_slot(clocked_time: datetime, after: datetime) -> datetime | None:
    """A one-off time: itself if still ahead, else never again."""
    return clocked_time if clocked_time > after else None
