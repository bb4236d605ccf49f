"""When a schedule fires next: cron (with the cronie DST rule), anchored intervals, clocked.

Every function takes and returns aware UTC datetimes and answers "the first
slot strictly after ``after``", or ``None`` when the schedule never fires again.

Cron is evaluated by croniter (standard day-of-month/day-of-week OR rule) on
the schedule's local wall clock. Time is split into segments of constant UTC
offset; inside one, wall clock and UTC move together, so the next wall-clock
match maps straight to an instant. At the edges the cronie rule applies:

- A schedule is *wildcard* when its minute or hour field starts with ``*``,
  otherwise *fixed-time*.
- Spring forward: wall times in the gap do not exist. A fixed-time slot there
  fires once at the first instant after the gap (02:30 → 03:00); a wildcard
  schedule simply has no slot there.
- Fall back: wall times in the overlap happen twice. A fixed-time slot fires
  at the first occurrence only; a wildcard schedule fires at every real slot.
- Two fixed-time slots in one gap fire once, together, after it.

Speed (beat computes the first slot of every schedule at start-up, about
100,000 of them): croniter stays the authority on what an expression means —
it parses, validates and expands every field — but the search for the next
matching wall minute runs on those expanded field sets with integer
arithmetic (a few µs instead of croniter's tens of µs per ``get_next``).
Syntax whose meaning is not a plain set of values per field (``L``, ``W``,
``#``, seconds/year fields) is still searched by croniter itself.
``tests/test_cron_properties.py`` holds the fast path to croniter's
``get_next`` and the whole function to a minute-by-minute DST reference.
"""

from __future__ import annotations

import bisect
import calendar
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, cast
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterBadCronError, CroniterBadDateError, CroniterError

if TYPE_CHECKING:
    from croniter.croniter import ExpandedExpression

MINUTE = timedelta(minutes=1)
# A cron that needs more constant-offset segments than this to match once
# (about 30 years of twice-yearly DST changes) is treated as never firing.
MAX_SEGMENTS = 64

# Internally instants are whole seconds since the Unix epoch: UTC seconds for
# instants, "wall seconds" (UTC seconds + offset) for a zone's local clock.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)  # noqa: DTZ001 (the wall-clock epoch)
_EPOCH_ORDINAL = _EPOCH_NAIVE.toordinal()
_SECOND = timedelta(seconds=1)
_DAY = 86400
# croniter gives up after 50 years without a match; the fast path may stop
# searching at the same horizon (a satisfiable 5-field cron matches within 8).
_SEARCH_YEARS = 50


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


# --- Expressions ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Compiled:
    """One expression, parsed and expanded once by croniter.

    ``fast`` says the expression is five plain sets of values (what croniter's
    ``expanded`` holds for ``*``, lists, ranges, steps, names), so the next
    match can be computed from the sets below. Otherwise only ``matcher`` is
    meaningful and every search goes through croniter.
    """

    matcher: croniter
    fixed_time: bool
    fast: bool = False
    # Sorted minutes of the day (hour × 60 + minute) the expression matches.
    times: tuple[int, ...] = ()
    # Bit sets: bit m of ``months`` (1-12), bit d of ``days`` (1-31), bit w of
    # ``weekdays`` (0 = Sunday). A ``*`` field has every bit set.
    months: int = 0
    days: int = 0
    weekdays: int = 0
    # croniter's day rule: when neither day field expanded to ``*`` a day
    # matches if either does (the standard OR), otherwise both must.
    either_day: bool = False
    every_day: bool = False  # every date matches: only the time of day matters
    weekdays_only: bool = False  # every month and day of the month: only the weekday matters
    never: bool = False  # no date ever matches (say "31 2"): croniter raises, we return None
    # croniter objects keep the search position in themselves; one lock per
    # expression keeps set_current + get_next atomic if threads share it.
    lock: threading.Lock = field(default_factory=threading.Lock)


def _ints(values: ExpandedExpression) -> list[int]:
    """A plain field's values (``compile_cron`` checked they are all ints)."""
    return [value for value in values if isinstance(value, int)]


def _bits(values: ExpandedExpression, everything: int) -> int:
    if "*" in values:
        return everything
    bits = 0
    for value in _ints(values):
        bits |= 1 << value
    return bits


@lru_cache(maxsize=8192)
def _compile(expression: str) -> _Compiled:
    """Parse (croniter), classify (cronie rule) and precompute the field sets of ``expression``.

    Raises ``InvalidCron`` for anything ``parse_cron`` refuses, so beat and
    validation agree on what is a cron.
    """
    if len(expression.split()) != 5:
        raise InvalidCron(
            f"{expression!r} is not a valid cron expression: it needs 5 fields "
            "(minute hour day-of-month month day-of-week)"
        )
    try:
        matcher = croniter(expression, datetime(2000, 1, 1), day_or=True)  # noqa: DTZ001 (wall clock)
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise InvalidCron(f"{expression!r} is not a valid cron expression: {exc}") from exc
    fixed_time = not CronSpec(expression).is_wildcard
    # types-croniter says list[list[str]]; croniter holds what expand() returns: ints, "*" and "l".
    expanded = cast("list[ExpandedExpression]", matcher.expanded)
    plain = (
        len(expanded) == 5
        and not matcher.nth_weekday_of_month
        and not matcher.nearest_weekday
        # A field holding "*" is unrestricted whatever else it lists ("*,5"):
        # croniter's field search tests ``"*" in field``, its OR rule ``field[0]``,
        # and "*" sorts first. Anything else must be plain integers.
        and all("*" in f or all(type(v) is int for v in f) for f in expanded)
    )
    if not plain:
        return _Compiled(matcher, fixed_time)
    minutes = range(60) if "*" in expanded[0] else _ints(expanded[0])
    hours = range(24) if "*" in expanded[1] else _ints(expanded[1])
    all_months, all_days, all_weekdays = 0b1111111111110, (1 << 32) - 2, 0b1111111
    months = _bits(expanded[3], all_months)
    days = _bits(expanded[2], all_days)
    weekdays = _bits(expanded[4], all_weekdays)
    either_day = "*" not in expanded[2] and "*" not in expanded[4]
    # Only a day-of-month list with a ``*`` weekday can be unsatisfiable: with
    # the OR rule, or a weekday list alone, every month has every weekday.
    never = not either_day and not any(
        days & ((1 << calendar.monthrange(2000, m)[1] + 1) - 2)  # bits 1..length; 2000: Feb has 29
        for m in range(1, 13)
        if months >> m & 1
    )
    return _Compiled(
        matcher,
        fixed_time,
        fast=True,
        times=tuple(sorted(h * 60 + m for h in hours for m in minutes)),
        months=months,
        days=days,
        weekdays=weekdays,
        either_day=either_day,
        # "1-31" or "0-6" beside a restricted other day field is every day under
        # the OR rule ("0 0 1-31 * 1" fires daily), as croniter has it.
        every_day=months == all_months
        and (
            (days == all_days or weekdays == all_weekdays)
            if either_day
            else (days == all_days and weekdays == all_weekdays)
        ),
        weekdays_only=months == all_months and not either_day and days == all_days,
        never=never,
    )


def parse_cron(expression: str) -> None:
    """Raise ``InvalidCron`` unless ``expression`` is a valid five-field cron."""
    _compile(expression)


def _first_match_at_or_after(compiled: _Compiled, wall: int) -> int | None:
    """The first whole wall minute ≥ ``wall`` (wall seconds) that matches, or ``None``.

    Same answer as croniter's ``get_next`` from one second earlier (which is
    what the fallback asks); ``None`` when croniter would find nothing.
    """
    if not compiled.fast:
        return _croniter_match_at_or_after(compiled, wall)
    if compiled.never:
        return None
    day, second_of_day = divmod(wall, _DAY)
    times = compiled.times
    i = bisect.bisect_left(times, -(-second_of_day // 60))  # round up to a whole minute
    if i == len(times):  # nothing left today: the first time of a later day
        day, i = day + 1, 0
    if compiled.every_day:
        return day * _DAY + times[i] * 60
    ordinal = day + _EPOCH_ORDINAL
    if compiled.weekdays_only:
        # The next allowed weekday from this one on: no calendar needed.
        ring = ((compiled.weekdays | compiled.weekdays << 7) >> ordinal % 7) & 0x7F
        ahead = (ring & -ring).bit_length() - 1
        return (day + ahead) * _DAY + times[0 if ahead else i] * 60
    matching = _first_day_on_or_after(compiled, ordinal)
    if matching is None:
        return None
    if matching != ordinal:
        day, i = matching - _EPOCH_ORDINAL, 0
    return day * _DAY + times[i] * 60


_MONTH_LENGTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _first_day_on_or_after(compiled: _Compiled, ordinal: int) -> int | None:
    """The first date (proleptic ordinal) ≥ ``ordinal`` whose month, day and weekday match.

    Jumps instead of walking: to the next allowed month, then inside it to
    the next allowed day of the month and the next allowed weekday (both by
    bit arithmetic), combined by croniter's rule. Gives up, like croniter,
    after ``_SEARCH_YEARS`` years.
    """
    months, days, weekdays = compiled.months, compiled.days, compiled.weekdays
    start = date.fromordinal(ordinal)
    year, month, day = start.year, start.month, start.day
    last_year = year + _SEARCH_YEARS
    while True:
        if months >> month & 1:
            length = 29 if month == 2 and calendar.isleap(year) else _MONTH_LENGTH[month]
            later_days = days >> day  # bit k: day + k is allowed
            by_day = day + (later_days & -later_days).bit_length() - 1 if later_days else 99
            # Weekdays from today's on, as a 7-bit ring; ordinal 7 (0001-01-07) is a Sunday.
            ring = ((weekdays | weekdays << 7) >> ordinal % 7) & 0x7F
            by_weekday = day + (ring & -ring).bit_length() - 1
            # OR rule: whichever comes first. Otherwise at least one side is
            # "*" (it answers ``day`` itself), so the later one satisfies both.
            first = min(by_day, by_weekday) if compiled.either_day else max(by_day, by_weekday)
            if first <= length:
                return ordinal + first - day
        later_months = months >> (month + 1)
        if later_months:
            month += (later_months & -later_months).bit_length()
        else:
            year += 1
            if year > last_year:
                return None
            month = (months & -months).bit_length() - 1
        day = 1
        ordinal = date(year, month, 1).toordinal()


def _croniter_match_at_or_after(compiled: _Compiled, wall: int) -> int | None:
    start = _EPOCH_NAIVE + timedelta(seconds=wall - 1)
    with compiled.lock:
        compiled.matcher.set_current(start, force=True)
        try:
            match = compiled.matcher.get_next(datetime)
        except CroniterBadDateError:
            return None
    return (match - _EPOCH_NAIVE) // _SECOND


# --- Zones ---------------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _transitions(zone_key: str, year: int) -> tuple[datetime, ...]:
    """UTC instants in ``year`` at which the zone's UTC offset changes.

    Probed every 6 hours, then narrowed to the minute: two changes less than
    6 hours apart that cancel out would be missed (none in the tz database).
    """
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


@dataclass(frozen=True)
class _Offsets:
    """The offset changes of one zone that matter for instants in one UTC year.

    ``changes`` (UTC seconds) are those of the year before, the year and the
    year after; ``offsets[i]`` (seconds) holds from ``changes[i]`` on and
    ``initial`` before ``changes[0]``. Valid for instants in ``[low, high)``.
    """

    low: int
    high: int
    changes: tuple[int, ...]
    offsets: tuple[int, ...]
    initial: int
    horizon: int  # where a segment with no later change artificially ends (2 years on)


def _seconds(instant: datetime) -> int:
    return (instant - _EPOCH) // _SECOND


def _offset(instant: datetime, zone: ZoneInfo) -> int:
    """``zone``'s UTC offset at ``instant``, in seconds."""
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # an aware datetime always has one
    return offset // _SECOND


@lru_cache(maxsize=8192)
def _offsets(zone_key: str, year: int) -> _Offsets:
    zone = ZoneInfo(zone_key)
    changes = sum((_transitions(zone_key, y) for y in (year - 1, year, year + 1)), ())
    first = datetime(year - 1, 1, 1, tzinfo=UTC)
    return _Offsets(
        low=_seconds(datetime(year, 1, 1, tzinfo=UTC)),
        high=_seconds(datetime(year + 1, 1, 1, tzinfo=UTC)),
        changes=tuple(_seconds(c) for c in changes),
        offsets=tuple(_offset(c, zone) for c in changes),
        initial=_offset(first, zone),
        horizon=_seconds(datetime(year + 2, 1, 1, tzinfo=UTC)),
    )


# The last table used per zone: consecutive calls almost always stay in one year.
_recent_offsets: dict[str, _Offsets] = {}


def _offsets_at(zone_key: str, instant: int) -> _Offsets:
    table = _recent_offsets.get(zone_key)
    if table is None or not table.low <= instant < table.high:
        year = (_EPOCH + timedelta(seconds=instant)).year
        table = _recent_offsets[zone_key] = _offsets(zone_key, year)
    return table


# --- Slots ---------------------------------------------------------------------------------------


def next_cron_slot(spec: CronSpec, after: datetime) -> datetime | None:
    """The first slot of ``spec`` strictly after ``after`` (see the module rules).

    Slots are whole minutes of the wall clock, so the answer is at least one
    minute boundary after ``after``; ``None`` if the expression can never
    match (like "0 0 31 2 *"). A naive ``after`` is read as system local
    time. Raises ``InvalidCron`` for an expression ``parse_cron`` refuses and
    ``ZoneInfoNotFoundError`` for an unknown zone.
    """
    compiled = _compile(spec.expression)
    if after.tzinfo is not UTC:
        after = after.astimezone(UTC)
    # The next whole UTC minute, exactly (no float timestamp rounding).
    candidate = (after.toordinal() - _EPOCH_ORDINAL) * _DAY + after.hour * 3600 + after.minute * 60 + 60
    zone_key, fixed_time = spec.timezone, compiled.fixed_time
    table = _recent_offsets.get(zone_key)
    for _ in range(MAX_SEGMENTS):
        if table is None or not table.low <= candidate < table.high:
            table = _offsets_at(zone_key, candidate)
        # The constant-offset segment [start, end) holding the candidate.
        changes = table.changes
        i = bisect.bisect_right(changes, candidate)
        end = changes[i] if i < len(changes) else table.horizon
        offset = table.offsets[i - 1] if i else table.initial
        wall_from = candidate + offset
        if i and fixed_time:
            start = changes[i - 1]
            previous_offset = table.offsets[i - 2] if i > 1 else table.initial
            if offset > previous_offset and candidate == start:
                # Spring forward: wall times [start+prev, start+offset) never happened.
                gap_match = _first_match_at_or_after(compiled, start + previous_offset)
                if gap_match is not None and gap_match < wall_from:
                    return datetime.fromtimestamp(start, UTC)
            elif offset < previous_offset:
                # Fall back: wall times before start+prev already fired once.
                wall_from = max(wall_from, start + previous_offset)
        match = _first_match_at_or_after(compiled, wall_from)
        if match is None:
            return None
        if match < end + offset:
            return datetime.fromtimestamp(match - offset, UTC)
        candidate = end
    return None


@lru_cache(maxsize=16384)
def _next_cron_slot_after_minute(spec: CronSpec, minute: datetime) -> datetime | None:
    return next_cron_slot(spec, minute)


def shared_next_cron_slot(spec: CronSpec, after: datetime) -> datetime | None:
    """``next_cron_slot``, memoised on (spec, the whole UTC minute of ``after``).

    Exact, not approximate: ``next_cron_slot`` starts its search at the next
    whole UTC minute and reads nothing finer of ``after``. Schedules sharing
    an expression and zone usually resume after the same slot, so at a
    100,000-schedule load most of them share one computed answer, and one
    ``datetime`` object instead of one each.
    """
    if after.tzinfo is not UTC:
        after = after.astimezone(UTC)
    return _next_cron_slot_after_minute(spec, after.replace(second=0, microsecond=0))


def next_interval_slot(anchor: datetime, every: timedelta, after: datetime) -> datetime:
    """``anchor + k × every`` for the smallest k ≥ 0 with a slot strictly after ``after``.

    Anchored, so slots do not drift by dispatch latency or restarts.
    """
    if every <= timedelta(0):
        raise ValueError(f"an interval must be positive, got {every}")
    if after < anchor:
        return anchor
    periods = (after - anchor) // every + 1
    try:
        return anchor + periods * every
    except OverflowError:
        raise InvalidInterval(
            f"every {every} from {anchor:%Y-%m-%d %H:%M} UTC: its next slot falls past the year 9999"
        ) from None


INTERVAL_UNITS = {
    "days": timedelta(days=1),
    "hours": timedelta(hours=1),
    "minutes": timedelta(minutes=1),
    "seconds": timedelta(seconds=1),
    "microseconds": timedelta(microseconds=1),
}


class InvalidInterval(ValueError):
    """An interval that is not a positive number of a known unit."""


def interval_length(every: object, period: str) -> timedelta:
    """``every`` × ``period`` as a duration; ``InvalidInterval`` unless positive and of a known unit."""
    unit = INTERVAL_UNITS.get(period)
    if unit is None:
        raise InvalidInterval(f"{period!r} is not an interval unit: use one of {', '.join(INTERVAL_UNITS)}")
    if not isinstance(every, int) or isinstance(every, bool) or every <= 0:
        raise InvalidInterval(f"every {every!r} {period} is not an interval: give a whole number above 0")
    try:
        return every * unit
    except OverflowError:
        raise InvalidInterval(f"every {every} {period} is longer than any schedule can be") from None


def next_clocked_slot(clocked_time: datetime, after: datetime) -> datetime | None:
    """A one-off time: itself if still ahead, else never again."""
    return clocked_time if clocked_time > after else None
