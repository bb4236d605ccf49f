"""Schedule documents (scheduler.documents): the admin's validation by document path, saving, round trips.

Real PostgreSQL; the job catalog published as a worker does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django_celery_beat.models import CrontabSchedule, IntervalSchedule
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.catalog import publish_catalog
from scheduler.documents import document_of, normalize_document, save_document, validate_document
from scheduler.models import ScheduleChange

pytestmark = pytest.mark.django_db

JOB = "reports.run_summary"


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


def doc(**overrides):
    base = {
        "slug": "weekday-report",
        "name": "weekday report",
        "job": JOB,
        "schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
    }
    base.update(overrides)
    return base


def errors_of(document, existing=None) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        validate_document(document, existing)
    return caught.value.message_dict


class TestValidationByPath:
    def test_a_valid_document_passes(self):
        validate_document(doc())

    @pytest.mark.parametrize(
        ("override", "path"),
        [
            ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
            ({"schedule": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone"),
            ({"schedule": {"cron": "0 0 30 2 *"}}, "schedule.cron"),
            ({"schedule": {"every": 0, "period": "seconds"}}, "schedule.every"),
            ({"schedule": {"at": "2001-01-01T00:00:00+00:00"}}, "schedule.at"),
            ({"schedule": {"at": "2099-01-01T00:00:00"}}, "schedule.at"),
            ({"schedule": {"cron": "* * * * *", "every": 5}}, "schedule"),
            ({"job": "no.such.job"}, "job"),
            ({"args": [1, 2, 3, 4, 5, 6, 7]}, "args"),
            ({"args": "nope"}, "args"),
            ({"policy": {"soft_time_limit": 100, "hard_time_limit": 50}}, "policy.hard_time_limit"),
            ({"policy": {"starting_deadline": 0}}, "policy.starting_deadline"),
            ({"policy": {"catchup": "sometimes"}}, "policy.catchup"),
            ({"policy": {"polcy": 1}}, "policy.polcy"),
            ({"slug": "not a slug!"}, "slug"),
            ({"colour": "red"}, "colour"),
            ({"name": ""}, "name"),
        ],
    )
    def test_each_error_names_its_path(self, override, path):
        errors = errors_of(doc(**override))
        assert path in errors, errors

    def test_a_taken_name_or_slug_is_refused(self):
        save_document(doc())
        assert "name" in errors_of(doc(slug="other"))
        assert "slug" in errors_of(doc(name="other name"))


class TestSaving:
    def test_save_records_the_change_log_and_reuses_identical_rows(self):
        before = ScheduleChange.objects.count()
        first = save_document(doc())
        second = save_document(doc(slug="second", name="second"))
        assert first.crontab_id == second.crontab_id
        assert CrontabSchedule.objects.filter(minute="0", hour="9", day_of_week="1-5").count() == 1
        assert ScheduleChange.objects.count() > before

    def test_update_of_an_existing_schedule_keeps_its_slug(self):
        task = save_document(doc())
        save_document(doc(schedule={"every": 5, "period": "minutes"}), task)
        task.refresh_from_db()
        assert task.crontab_id is None and task.interval is not None
        assert document_of(task)["slug"] == "weekday-report"

    def test_an_invalid_document_saves_nothing(self):
        rows = IntervalSchedule.objects.count()
        with pytest.raises(ValidationError):
            save_document(doc(schedule={"every": 7, "period": "minutes"}, job="no.such.job"))
        assert IntervalSchedule.objects.count() == rows


def future(minutes: int) -> str:
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30, minutes=minutes)
    return moment.isoformat()


schedules = st.one_of(
    st.builds(
        lambda m, h, zone: {"cron": f"{m} {h} * * *", "timezone": zone},
        st.integers(0, 59),
        st.integers(0, 23),
        st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]),
    ),
    st.builds(
        lambda every, period, offset: {"every": every, "period": period, "anchor": future(offset)},
        st.integers(1, 50),
        st.sampled_from(["minutes", "hours", "days"]),
        st.integers(0, 1000),
    ),
    st.builds(lambda offset: {"at": future(offset)}, st.integers(1, 10_000)),
)
policies = st.fixed_dictionaries(
    {},
    optional={
        "queue": st.sampled_from(["", "default", "reports"]),
        "catchup": st.sampled_from(["latest", "all", "none"]),
        "overlap": st.sampled_from(["allow", "skip", "replace"]),
        "soft_time_limit": st.integers(10, 100),
        "grace": st.integers(60, 600),
        "failures_before_alert": st.integers(1, 5),
        "remind_every": st.none() | st.integers(0, 3600),
    },
)
documents = st.builds(
    lambda schedule, policy, enabled, priority, description: doc(
        schedule=schedule, policy=policy, enabled=enabled, priority=priority, description=description
    ),
    schedules,
    policies,
    st.booleans(),
    st.none() | st.integers(0, 9),
    st.text(alphabet="abc xyz", max_size=20),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_a_saved_document_reads_back_as_its_normalized_self(document):
    task = save_document(document)
    try:
        assert document_of(task) == normalize_document(document)
    finally:
        task.delete()


def test_validating_leaves_the_existing_task_and_its_policy_as_they_were():
    task = save_document(doc())
    before = document_of(task)
    with pytest.raises(ValidationError):
        validate_document(doc(name="renamed", schedule={"every": 0}, policy={"grace": 5}), task)
    validate_document(doc(name="renamed", policy={"queue": "other"}), task)
    assert document_of(task) == before
