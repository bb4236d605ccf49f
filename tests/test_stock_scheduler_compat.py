"""django-celery-beat's stock scheduler keeps working on our database during a migration.

Its ``DatabaseScheduler`` saves ``last_run_at`` / ``total_run_count`` after each
dispatch. Such a save changes nothing that defines a schedule, so it must not
be refused by our validation (legacy rows, written before this app or with
``bulk_create``, may name a job that is not in the catalog) nor appended to the
change log (our beat would rebuild the entry for nothing). A save that changes
a defining field is still validated: bad input is refused and nothing is saved.
"""

from __future__ import annotations

import time

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from jobs.catalog import publish_catalog
from scheduler.celery import app
from scheduler.models import ScheduleChange
from tests.support.processes import Service, celery
from tests.support.queues import empty_queues, queue_length

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN_JOB = "legacy.unknown_job"


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


@pytest.fixture
def every_minute() -> IntervalSchedule:
    return IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)


def create_legacy_task(name: str, interval: IntervalSchedule, **fields) -> PeriodicTask:
    """A row written the way old data was: ``bulk_create``, so no signal validated or recorded it."""
    fields = {"task": UNKNOWN_JOB, **fields}
    PeriodicTask.objects.bulk_create([PeriodicTask(name=name, interval=interval, **fields)])
    return PeriodicTask.objects.get(name=name)


@pytest.fixture
def legacy_task(every_minute) -> PeriodicTask:
    return create_legacy_task("legacy", every_minute, kwargs='{"region": "eu"}')


@pytest.fixture
def stock_scheduler():
    """django-celery-beat's scheduler in-process, as ``celery beat -S ...DatabaseScheduler`` builds it.

    ``lazy``: no default entries (``celery.backend_cleanup`` is not a catalog job).
    Its finalizer is cancelled at the end: it would run ``sync()`` whenever the
    object is garbage-collected, i.e. in the middle of some later test.
    """
    scheduler = DatabaseScheduler(app=app, lazy=True)
    yield scheduler
    scheduler._finalize.cancel()


def change_count() -> int:
    return ScheduleChange.objects.count()


class TestBookkeepingSaves:
    """What the stock scheduler writes after a dispatch; most of these rows are legacy ones."""

    def test_model_entry_save_stores_the_run(self, legacy_task):
        dispatched = next(ModelEntry(legacy_task, app=app))  # what the stock scheduler does on dispatch

        dispatched.save()

        stored = PeriodicTask.objects.get(pk=legacy_task.pk)
        assert stored.last_run_at == dispatched.last_run_at
        assert stored.total_run_count == 1

    def test_database_scheduler_sync_stores_the_run(self, legacy_task, stock_scheduler):
        entry = stock_scheduler.schedule["legacy"]
        stock_scheduler.reserve(entry)  # marks it dirty, as a dispatch does

        stock_scheduler.sync()

        assert not stock_scheduler._dirty, "sync left entries unsaved"
        stored = PeriodicTask.objects.get(pk=legacy_task.pk)
        assert stored.last_run_at is not None
        assert stored.total_run_count == 1

    def test_it_records_no_schedule_change(self, legacy_task):
        before = change_count()

        next(ModelEntry(legacy_task, app=app)).save()

        assert change_count() == before

    def test_a_valid_task_records_no_schedule_change_either(self, every_minute):
        task = PeriodicTask.objects.create(name="valid", task="heartbeat", interval=every_minute)
        before = change_count()

        next(ModelEntry(task, app=app)).save()

        assert PeriodicTask.objects.get(pk=task.pk).total_run_count == 1
        assert change_count() == before, "our beat would rebuild the entry for nothing"

    def test_a_save_with_update_fields_of_bookkeeping_only_reads_no_stored_row(self, legacy_task):
        legacy_task.total_run_count = 7
        before = change_count()

        with CaptureQueriesContext(connection) as queries:
            legacy_task.save(update_fields=["total_run_count", "last_run_at"])

        # django-celery-beat's validate_unique still runs its own queries; none reads the row's columns.
        assert not [q["sql"] for q in queries if '"django_celery_beat_periodictask"."args"' in q["sql"]]
        assert PeriodicTask.objects.get(pk=legacy_task.pk).total_run_count == 7
        assert change_count() == before

    def test_a_description_edit_is_neither_refused_nor_recorded(self, legacy_task):
        before = change_count()
        legacy_task.description = "kept until the job is ported"

        legacy_task.save()

        assert PeriodicTask.objects.get(pk=legacy_task.pk).description == "kept until the job is ported"
        assert change_count() == before

    def test_a_blank_queue_stored_without_save_is_the_same_schedule(self, every_minute):
        """``PeriodicTask.save()`` turns a blank queue into None; that normalisation is not an edit."""
        task = create_legacy_task("legacy blank queue", every_minute, queue="")

        next(ModelEntry(task, app=app)).save()

        assert PeriodicTask.objects.get(pk=task.pk).total_run_count == 1


class TestDisablingALegacyTask:
    """The stock scheduler disables rows itself: expired, one-off done, or args it cannot parse."""

    def test_disabling_is_accepted_and_recorded(self, legacy_task):
        before = change_count()
        legacy_task.enabled = False

        legacy_task.save()

        assert not PeriodicTask.objects.get(pk=legacy_task.pk).enabled
        assert change_count() > before, "beat must hear that the schedule stopped"

    def test_the_stock_scheduler_disables_a_row_whose_args_are_not_json(self, every_minute, stock_scheduler):
        task = create_legacy_task("legacy bad args", every_minute, task="heartbeat", args="[1,")

        stock_scheduler.all_as_schedule()  # building the entry disables the row (ModelEntry._disable)

        assert not PeriodicTask.objects.get(pk=task.pk).enabled

    def test_disabling_together_with_another_edit_is_validated(self, legacy_task):
        legacy_task.enabled = False
        legacy_task.kwargs = '{"region": "us"}'

        with pytest.raises(ValidationError, match=f"Unknown job '{UNKNOWN_JOB}'"):
            legacy_task.save()

        stored = PeriodicTask.objects.get(pk=legacy_task.pk)
        assert (stored.enabled, stored.kwargs) == (True, '{"region": "eu"}')


class TestEditingADefiningFieldIsStillValidated:
    def test_new_arguments_for_an_unknown_job_are_refused_and_nothing_is_saved(self, legacy_task):
        before = change_count()
        legacy_task.kwargs = '{"region": "us"}'

        with pytest.raises(ValidationError, match=f"Unknown job '{UNKNOWN_JOB}'"):
            legacy_task.save()

        assert PeriodicTask.objects.get(pk=legacy_task.pk).kwargs == '{"region": "eu"}'
        assert change_count() == before

    def test_a_known_job_with_arguments_that_do_not_bind_is_refused(self, legacy_task):
        legacy_task.task = "reports.run_summary"  # kwargs still {"region": "eu"}

        with pytest.raises(ValidationError, match="do not fit reports.run_summary"):
            legacy_task.save()

        assert PeriodicTask.objects.get(pk=legacy_task.pk).task == UNKNOWN_JOB

    def test_update_fields_naming_a_defining_field_is_validated(self, legacy_task):
        legacy_task.queue = "reports"

        with pytest.raises(ValidationError, match=f"Unknown job '{UNKNOWN_JOB}'"):
            legacy_task.save(update_fields=["queue", "last_run_at"])

        assert PeriodicTask.objects.get(pk=legacy_task.pk).queue is None

    def test_a_valid_fix_is_saved_and_recorded(self, legacy_task):
        before = change_count()
        legacy_task.task, legacy_task.kwargs = "reports.run_summary", '{"window_hours": 6}'

        legacy_task.save()

        assert PeriodicTask.objects.get(pk=legacy_task.pk).task == "reports.run_summary"
        assert ScheduleChange.objects.filter(task_id=legacy_task.pk).exists()
        assert change_count() > before


# No test worker consumes this queue, so it shows exactly what the stock beat sent.
STOCK_QUEUE = "stock-scheduler-compat"
STOCK_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"


def wait_until(condition, timeout: float, what: str, service: Service) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if service.process.poll() is not None:
            raise AssertionError(f"{service.name} exited before {what}:\n{service.log()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"not {what} within {timeout} s:\n{service.log()[-4000:]}")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_stock_beat_process_dispatches_and_syncs(service_env, logs_dir):
    """``celery beat -S django_celery_beat.schedulers:DatabaseScheduler`` on our database.

    Its first dispatch syncs at once (``_last_sync`` is unset) and SIGTERM syncs
    again, so both the valid task and the legacy one must have their runs stored.
    """
    empty_queues([STOCK_QUEUE])
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    valid = PeriodicTask.objects.create(
        name="stock valid", task="heartbeat", interval=every_second, queue=STOCK_QUEUE
    )
    legacy = create_legacy_task("stock legacy", every_second, queue=STOCK_QUEUE)
    changes_before = change_count()
    beat = Service(
        "stock-beat",
        celery("beat", "--scheduler", STOCK_SCHEDULER, "--loglevel", "INFO"),
        service_env,
        logs_dir,
    )
    try:
        wait_until(
            lambda: all(f"Sending due task {t.name} " in beat.log() for t in (valid, legacy)),
            timeout=25,
            what="both tasks dispatched",
            service=beat,
        )
    finally:
        returncode = beat.stop()
    try:
        log = beat.log()
        assert returncode == 0, log[-4000:]
        assert "Message Error" not in log, log[-4000:]  # what an exception in the dispatch-time sync logs
        # No result backend, no celery.backend_cleanup entry for our validation to refuse.
        assert "backend_cleanup" not in log, log[-4000:]
        assert queue_length(STOCK_QUEUE) >= 2
        for task in (valid, legacy):
            stored = PeriodicTask.objects.get(pk=task.pk)
            assert stored.total_run_count >= 1, f"{task.name}: run not stored\n{log[-4000:]}"
            assert stored.last_run_at is not None
        assert change_count() == changes_before, "the stock scheduler's bookkeeping was recorded as changes"
    finally:
        empty_queues([STOCK_QUEUE])
