"""The cronie DST rule, as a table: three zones, both transition days, four schedules.

Fixed-time schedules (minute and hour fields not starting with ``*``) fire once
per day: a slot in the spring gap fires at the first instant after it, a slot
in the autumn overlap fires at its first occurrence. Wildcard schedules fire at
every real slot: none in the gap, twice in the overlap.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from scheduler.beat.slots import CronSpec, next_cron_slot

# (zone, spring-forward day, autumn fall-back day), 2026.
ZONES = [
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1)),
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25)),
    ("Australia/Sydney", date(2026, 10, 4), date(2026, 4, 5)),
]


def local_slots_on(expression: str, zone: str, day: date) -> list[str]:
    """Every slot whose instant falls on ``day`` in ``zone``, as local 'HH:MM+offset'."""
    tz = ZoneInfo(zone)
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    end = (datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(days=1)).astimezone(UTC)
    slots, t = [], start - timedelta(seconds=1)
    while (t := next_cron_slot(CronSpec(expression, zone), t)) is not None and t < end:
        slots.append(t.astimezone(tz).strftime("%H:%M%z"))
    return slots


# Local wall times of the transitions: the gap and the repeated hour.
GAP = {"America/New_York": ("02", "03"), "Europe/Berlin": ("02", "03"), "Australia/Sydney": ("02", "03")}
REPEATED_HOUR = {"America/New_York": "01", "Europe/Berlin": "02", "Australia/Sydney": "02"}


@pytest.mark.parametrize(("zone", "spring", "autumn"), ZONES)
class TestSpringForward:
    def test_a_fixed_time_slot_in_the_gap_fires_once_at_the_end_of_the_gap(self, zone, spring, autumn):
        assert [s[:5] for s in local_slots_on("30 2 * * *", zone, spring)] == ["03:00"]

    def test_a_fixed_time_slot_outside_the_gap_fires_once(self, zone, spring, autumn):
        assert [s[:5] for s in local_slots_on("30 1 * * *", zone, spring)] == ["01:30"]

    def test_an_hourly_wildcard_has_no_slot_in_the_gap(self, zone, spring, autumn):
        hours = [s[:2] for s in local_slots_on("30 * * * *", zone, spring)]
        assert len(hours) == 23
        assert "02" not in hours

    def test_a_quarter_hourly_wildcard_fires_at_every_real_quarter(self, zone, spring, autumn):
        slots = local_slots_on("*/15 * * * *", zone, spring)
        assert len(slots) == 23 * 4
        assert not [s for s in slots if s.startswith("02:")]


@pytest.mark.parametrize(("zone", "spring", "autumn"), ZONES)
class TestFallBack:
    def test_a_fixed_time_slot_in_the_repeated_hour_fires_once_at_the_first_occurrence(
        self, zone, spring, autumn
    ):
        hour = REPEATED_HOUR[zone]
        slots = local_slots_on(f"30 {int(hour)} * * *", zone, autumn)
        assert len(slots) == 1
        first_offset = datetime(
            autumn.year, autumn.month, autumn.day, int(hour), 30, fold=0, tzinfo=ZoneInfo(zone)
        ).strftime("%z")
        assert slots == [f"{hour}:30{first_offset}"]

    def test_a_fixed_time_slot_outside_the_repeated_hour_fires_once(self, zone, spring, autumn):
        assert len(local_slots_on("30 5 * * *", zone, autumn)) == 1

    def test_an_hourly_wildcard_fires_in_both_occurrences_of_the_repeated_hour(self, zone, spring, autumn):
        slots = local_slots_on("30 * * * *", zone, autumn)
        assert len(slots) == 25
        assert len([s for s in slots if s.startswith(REPEATED_HOUR[zone])]) == 2

    def test_a_quarter_hourly_wildcard_fires_at_every_real_quarter(self, zone, spring, autumn):
        slots = local_slots_on("*/15 * * * *", zone, autumn)
        assert len(slots) == 25 * 4
        assert len(set(slots)) == len(slots)
