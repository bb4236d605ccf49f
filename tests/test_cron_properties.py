"""Property tests for ``scheduler.beat.slots``: cron slots against an independent reference.

The reference here shares no code with ``slots.py`` (nor with croniter): its
own five-field parser and matcher, and a minute-by-minute walk in UTC that
converts every instant to the schedule's wall clock with zoneinfo and applies
the cronie DST rule of DESIGN.md ("Schedule semantics") literally:

- wildcard (minute or hour field starts with ``*``): every real UTC minute
  whose local wall time matches;
- fixed-time: a matching wall time that occurs twice (fall back) counts only
  at its first occurrence; matching wall times that do not exist (spring
  forward) fire once at the first instant after the gap, merged with any slot
  at that instant.

Windows of two to four days are placed around the 2026/2027 offset changes of
zones with odd offsets and half-hour DST, found by probing zoneinfo. A second
property pins the fast path of ``next_cron_slot`` to croniter's own
``get_next`` in UTC (croniter stays the authority on what an expression means),
and a third checks that interval slots are anchored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scheduler.beat import slots as slots_module
from scheduler.beat.slots import (
    CronSpec,
    InvalidCron,
    next_cron_slot,
    next_interval_slot,
    shared_next_cron_slot,
)

MINUTE = timedelta(minutes=1)

ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # +10:30/+11:00: a 30-minute DST shift
    "Asia/Kathmandu",  # +05:45, no DST
    "Asia/Kolkata",  # +05:30, no DST
    "America/St_Johns",  # -03:30 with DST
    "Pacific/Chatham",  # +12:45/+13:45, changes at 02:45/03:45 local
    "Europe/London",
    "UTC",
]


# --- The reference: an independent five-field cron matcher -------------------------------------

# (low, high) of each field; day-of-week 7 is Sunday like 0.
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def parse_field(text: str, low: int, high: int) -> frozenset[int]:
    """Values of one field: comma-separated ``*``, ``N``, ``N-M``, each with an optional ``/step``."""
    values: set[int] = set()
    for item in text.split(","):
        body, slash, step_text = item.partition("/")
        step = int(step_text) if slash else 1
        if body == "*":
            first, last = low, high
        elif "-" in body:
            first, last = (int(v) for v in body.split("-"))
        else:
            # "N/step" runs from N to the top of the field; a bare "N" is just N.
            first, last = int(body), (high if slash else int(body))
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class ReferenceCron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    either_day: bool  # both day fields restricted: the standard OR rule
    fixed_time: bool

    @classmethod
    def parse(cls, expression: str) -> ReferenceCron:
        fields = expression.split()
        minutes, hours, days, months, weekdays = (
            parse_field(text, *bounds) for text, bounds in zip(fields, BOUNDS, strict=True)
        )
        return cls(
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=frozenset(0 if d == 7 else d for d in weekdays),
            either_day=fields[2] != "*" and fields[4] != "*",
            fixed_time=not (fields[0].startswith("*") or fields[1].startswith("*")),
        )

    def matches(self, wall: datetime) -> bool:
        """Does this wall-clock minute match? (Only the wall fields are read, not the offset.)"""
        if wall.minute not in self.minutes or wall.hour not in self.hours or wall.month not in self.months:
            return False
        day = wall.day in self.days
        weekday = wall.isoweekday() % 7 in self.weekdays
        return (day or weekday) if self.either_day else (day and weekday)


def reference_slots(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every slot in [start, end), walking each UTC minute (start is a whole minute)."""
    cron, tz = ReferenceCron.parse(expression), ZoneInfo(zone)
    found: set[datetime] = set()
    previous_offset = (start - MINUTE).astimezone(tz).utcoffset()
    t = start
    while t < end:
        local = t.astimezone(tz)
        offset = local.utcoffset()
        # zoneinfo marks the second occurrence of a repeated wall time with fold=1.
        if cron.matches(local) and not (cron.fixed_time and local.fold == 1):
            found.add(t)
        if cron.fixed_time and offset > previous_offset:
            # Spring forward at t: wall times [t + previous, t + offset) never happened.
            wall, gap_end = (t + previous_offset).replace(tzinfo=None), (t + offset).replace(tzinfo=None)
            while wall < gap_end:
                if cron.matches(wall):
                    found.add(t)  # a set: merged with a slot already at t
                    break
                wall += MINUTE
        previous_offset = offset
        t += MINUTE
    return sorted(found)


@cache
def offset_changes(zone: str, year: int) -> tuple[datetime, ...]:
    """UTC instants (whole minutes) in ``year`` at which ``zone``'s offset changes, by probing."""
    tz = ZoneInfo(zone)

    def offset(t: datetime) -> timedelta:
        return t.astimezone(tz).utcoffset()

    changes = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    while t.year == year:
        if offset(t) != offset(t + timedelta(hours=1)):
            low, high = t, t + timedelta(hours=1)  # offset(low) != offset(high)
            while high - low > MINUTE:
                middle = low + (high - low) // 2 // MINUTE * MINUTE
                low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
            changes.append(high)
        t += timedelta(hours=1)
    return tuple(changes)


def test_the_reference_sees_the_known_offset_changes():
    """Sanity for the probe the windows rely on (dates from the tz database)."""
    assert offset_changes("Australia/Lord_Howe", 2026) == (
        datetime(2026, 4, 4, 15, 0, tzinfo=UTC),  # 02:00 +11 -> 01:30 +10:30
        datetime(2026, 10, 3, 15, 30, tzinfo=UTC),  # 02:00 +10:30 -> 02:30 +11
    )
    assert offset_changes("Pacific/Chatham", 2026) == (
        datetime(2026, 4, 4, 14, 0, tzinfo=UTC),  # 03:45 +13:45 -> 02:45 +12:45
        datetime(2026, 9, 26, 14, 0, tzinfo=UTC),  # 02:45 +12:45 -> 03:45 +13:45
    )
    assert offset_changes("Asia/Kathmandu", 2026) == ()


def test_the_reference_applies_the_cronie_rule_on_a_known_day():
    """Hand-checked: New York, spring forward 2026-03-08 (02:00 -> 03:00 EDT)."""
    day = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    got = reference_slots("30 2,3 * * *", "America/New_York", day, day + timedelta(hours=23))
    assert got == [datetime(2026, 3, 8, 7, 0, tzinfo=UTC), datetime(2026, 3, 8, 7, 30, tzinfo=UTC)]
    autumn = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    got = reference_slots("30 1 * * *", "America/New_York", autumn, autumn + timedelta(hours=25))
    assert got == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]  # 01:30 EDT, not 01:30 EST


# --- Strategies ----------------------------------------------------------------------------------

# The DST changes of the zones above happen between 00:00 and 04:00 local, so
# the hour and minute choices crowd there (02:30, 02:45, 03:00, 03:30 ...).
MINUTE_FIELDS = ["*", "*/7", "*/15", "*/30", "5,35", "10-20/5", "0", "15", "30", "45", "0,30", "15,45"]
HOUR_FIELDS = ["*", "2", "1-3", "*/2", "0", "1", "3", "2,3", "1-4/3", "12"]
DAY_FIELDS = ["*", "1", "15", "4", "5", "26", "27", "28"]
MONTH_FIELDS = ["*", "3", "4", "9", "10", "11", "3,4", "9-11"]
WEEKDAY_FIELDS = ["*", "1-5", "0,6", "0", "7", "6", "1"]


def field(choices: list[str], low: int, high: int) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(choices), st.integers(low, high).map(str))


cron_expressions = st.builds(
    lambda *fields: " ".join(fields),
    field(MINUTE_FIELDS, 0, 59),
    field(HOUR_FIELDS, 0, 23),
    field(DAY_FIELDS, 1, 31),
    st.sampled_from(MONTH_FIELDS),
    st.sampled_from(WEEKDAY_FIELDS),
)


@st.composite
def windows_around_an_offset_change(draw) -> tuple[str, datetime, datetime]:
    """(zone, start, end): 2-4 days holding one of the zone's 2026/2027 offset changes."""
    zone = draw(st.sampled_from(ZONES))
    year = draw(st.sampled_from([2026, 2027]))
    changes = offset_changes(zone, year)
    if changes:
        pivot = draw(st.sampled_from(changes))
    else:  # no DST: any day of the year
        pivot = datetime(year, 1, 1, tzinfo=UTC) + timedelta(days=draw(st.integers(0, 364)))
    length = timedelta(hours=draw(st.integers(48, 96)))
    lead = draw(st.integers(0, length // MINUTE - 1)) * MINUTE
    return zone, pivot - lead, pivot - lead + length


def window(zone: str, start: datetime, hours: int = 72) -> tuple[str, datetime, datetime]:
    return zone, start, start + timedelta(hours=hours)


# Explicit transition days: Lord Howe moves by 30 minutes (02:00 -> 02:30 in
# October, 02:00 -> 01:30 in April); Chatham changes at 02:45/03:45 local.
LORD_HOWE_SPRING = window("Australia/Lord_Howe", datetime(2026, 10, 2, 13, 0, tzinfo=UTC))
LORD_HOWE_AUTUMN = window("Australia/Lord_Howe", datetime(2026, 4, 3, 13, 0, tzinfo=UTC))
CHATHAM_SPRING = window("Pacific/Chatham", datetime(2026, 9, 25, 11, 15, tzinfo=UTC))
CHATHAM_AUTUMN = window("Pacific/Chatham", datetime(2026, 4, 3, 11, 15, tzinfo=UTC))


# --- Properties ----------------------------------------------------------------------------------


def implementation_slots(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    spec, found, t = CronSpec(expression, zone), [], start - timedelta(microseconds=1)
    while (t := next_cron_slot(spec, t)) is not None and t < end:
        found.append(t)
    return found


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expression=cron_expressions,
    case=windows_around_an_offset_change(),
    probes=st.lists(st.integers(0, 96 * 3600 * 10**6), max_size=4),
)
# Lord Howe, spring: 02:15 and 02:00 do not exist; both fire once, at 02:30.
@example(expression="15 2 * * *", case=LORD_HOWE_SPRING, probes=[])
@example(expression="0,15,30 2 * * *", case=LORD_HOWE_SPRING, probes=[])
@example(expression="*/10 2 * * *", case=LORD_HOWE_SPRING, probes=[])
# Lord Howe, autumn: 01:30-02:00 happens twice; fixed once, wildcard twice.
@example(expression="45 1 * * *", case=LORD_HOWE_AUTUMN, probes=[])
@example(expression="*/15 1 * * *", case=LORD_HOWE_AUTUMN, probes=[])
# Chatham, spring: 02:45-03:45 does not exist; 03:00 and 03:30 merge with 03:45.
@example(expression="0,30,45 3 * * *", case=CHATHAM_SPRING, probes=[])
@example(expression="50 2 * * 0", case=CHATHAM_SPRING, probes=[])
# Chatham, autumn: 02:45-03:45 happens twice.
@example(expression="50 2 * * *", case=CHATHAM_AUTUMN, probes=[])
@example(expression="30 * * * *", case=CHATHAM_AUTUMN, probes=[])
def test_cron_slots_match_a_minute_by_minute_reference(expression, case, probes):
    zone, start, end = case
    expected = reference_slots(expression, zone, start, end)
    assert implementation_slots(expression, zone, start, end) == expected
    # From any instant, not only from a slot: the first reference slot strictly after it.
    for micros in probes:
        after = start + timedelta(microseconds=micros) % (end - start)
        following = [s for s in expected if s > after]
        if following:
            assert next_cron_slot(CronSpec(expression, zone), after) == following[0]
            # The memoised form beat uses, keyed on the minute: the same answer.
            assert shared_next_cron_slot(CronSpec(expression, zone), after) == following[0]


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected_local"),
    [
        # Lord Howe, 2026-10-04: 02:00 +10:30 -> 02:30 +11:00. 02:15 fires at 02:30.
        ("15 2 * * *", "Australia/Lord_Howe", datetime(2026, 10, 3, 13, tzinfo=UTC), "2026-10-04 02:30+1100"),
        # Lord Howe, 2026-04-05: 02:00 +11:00 -> 01:30 +10:30. 01:45 fires at its first occurrence.
        ("45 1 * * *", "Australia/Lord_Howe", datetime(2026, 4, 4, 13, tzinfo=UTC), "2026-04-05 01:45+1100"),
        # Chatham, 2026-09-27: 02:45 +12:45 -> 03:45 +13:45. 03:00 and 03:30 fire once, at 03:45.
        ("0,30 3 * * *", "Pacific/Chatham", datetime(2026, 9, 26, 13, tzinfo=UTC), "2026-09-27 03:45+1345"),
        ("0,30 3 * * *", "Pacific/Chatham", datetime(2026, 9, 26, 14, tzinfo=UTC), "2026-09-28 03:00+1345"),
        # Chatham, 2026-04-05: 03:45 +13:45 -> 02:45 +12:45. 03:00 fires at its first occurrence only.
        ("0 3 * * *", "Pacific/Chatham", datetime(2026, 4, 4, 13, tzinfo=UTC), "2026-04-05 03:00+1345"),
        ("0 3 * * *", "Pacific/Chatham", datetime(2026, 4, 4, 13, 15, tzinfo=UTC), "2026-04-06 03:00+1245"),
    ],
)
def test_half_hour_and_odd_offset_transitions_follow_the_cronie_rule(expression, zone, after, expected_local):
    """The @examples above, spelled out: the reference and the implementation both say so."""
    tz = ZoneInfo(zone)
    slot = next_cron_slot(CronSpec(expression, zone), after)
    assert slot.astimezone(tz).strftime("%Y-%m-%d %H:%M%z") == expected_local
    assert reference_slots(expression, zone, slot - timedelta(hours=30), slot + MINUTE)[-1] == slot
    assert reference_slots(expression, zone, after + MINUTE, slot) == []  # and none before it


def any_field(low: int, high: int, names: list[str] = ()) -> st.SearchStrategy[str]:
    """One field in most of the syntax croniter accepts for it (some of it invalid on purpose)."""
    value = st.integers(low, high).map(str)
    if names:
        value = st.one_of(value, st.sampled_from(names))
    step = st.integers(1, high - low + 2).map(str)
    item = st.one_of(
        st.just("*"),
        value,
        st.tuples(value, value).map("-".join),  # includes wrapping ranges like 50-10
        st.tuples(st.sampled_from(["*"]) | value | st.tuples(value, value).map("-".join), step).map("/".join),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


MONTH_NAMES = ["jan", "feb", "mar", "apr", "jun", "sep", "oct", "dec"]
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

any_cron_expression = st.builds(
    lambda *fields: " ".join(fields),
    any_field(0, 59),
    any_field(0, 23),
    any_field(1, 31),
    any_field(1, 12, MONTH_NAMES),
    any_field(0, 7, DAY_NAMES),
)
# Syntax the fast path leaves to croniter: last day, nth weekday, nearest weekday.
exotic_cron_expression = st.sampled_from(
    ["0 0 L * *", "30 6 * * 5#2", "0 12 15W * *", "0 0 L 2 *", "15 3 * * L5", "@daily", "0 0 29 2 *"]
)


def croniter_next(expression: str, after: datetime) -> datetime | None:
    try:
        return croniter(expression, after, day_or=True).get_next(datetime)
    except CroniterBadDateError:
        return None


@settings(max_examples=1000, deadline=None)
@given(
    expression=st.one_of(any_cron_expression, exotic_cron_expression),
    after=st.datetimes(datetime(1999, 1, 1), datetime(2090, 1, 1), timezones=st.just(UTC)),
)
@example(expression="0 0 31 2,4 *", after=datetime(2026, 1, 1, tzinfo=UTC))  # never fires
@example(expression="0 0 29 2 *", after=datetime(2097, 3, 1, tzinfo=UTC))  # 2104: 2100 is no leap year
@example(expression="59 23 31 12 *", after=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
@example(expression="0 0 1-31 * 1", after=datetime(2026, 5, 5, 1, tzinfo=UTC))  # OR: every day
@example(expression="0 0 * * 0-7", after=datetime(2026, 5, 5, 1, tzinfo=UTC))
@example(expression="0 0 31 * 7", after=datetime(2026, 5, 5, 1, tzinfo=UTC))
def test_the_fast_path_agrees_with_croniter_get_next_in_utc(expression, after):
    try:
        croniter(expression, after, day_or=True)
        valid = len(expression.split()) == 5  # aliases like "@daily" are refused by parse_cron too
    except (CroniterError, ValueError, KeyError):
        valid = False
    if not valid:
        with pytest.raises(InvalidCron):
            next_cron_slot(CronSpec(expression, "UTC"), after)
        return
    spec, expected_after, actual_after = CronSpec(expression, "UTC"), after, after
    for _ in range(3):  # a few in a row: each from the previous slot
        expected, actual = croniter_next(expression, expected_after), next_cron_slot(spec, actual_after)
        assert actual == expected
        if expected is None:
            break
        expected_after = actual_after = expected


@settings(max_examples=300, deadline=None)
@given(expression=any_cron_expression)
def test_standard_syntax_takes_the_fast_path(expression):
    """The croniter comparison above is only evidence for the fast path if it is taken."""
    try:
        compiled = slots_module._compile(expression)
    except InvalidCron:
        return
    assert compiled.fast


@settings(max_examples=500, deadline=None)
@given(
    anchor=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    every=st.timedeltas(timedelta(microseconds=1), timedelta(days=800)),
    after=st.datetimes(datetime(1990, 1, 1), datetime(2110, 1, 1), timezones=st.just(UTC)),
)
@example(
    anchor=datetime(2026, 1, 1, tzinfo=UTC),
    every=timedelta(minutes=5),
    after=datetime(2026, 1, 1, tzinfo=UTC),
)
@example(
    anchor=datetime(2026, 1, 1, tzinfo=UTC),
    every=timedelta(minutes=5),
    after=datetime(2026, 1, 1, 0, 4, 59, 999999, tzinfo=UTC),
)
def test_interval_slots_are_anchored_and_the_first_strictly_after(anchor, every, after):
    slot = next_interval_slot(anchor, every, after)
    assert slot > after
    assert slot >= anchor
    assert (slot - anchor) % every == timedelta(0)
    assert slot == anchor or slot - every <= after
