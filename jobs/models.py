"""Run history, the job catalog and report records.

``JobRun`` is the one record of a slot: beat inserts it (status ``queued``) in
the same transaction that claims the slot, and its primary key is the Celery
task id, so every later step (start, retry, time limit, worker loss) finds the
same row. The unique constraint on (schedule, scheduled_for) is what makes a
slot run once, whatever number of beats or restarts.

Runs dispatched through ``jobs.client.dispatch`` (``origin`` manual or
client) are recorded the same way. One run by hand from a schedule names the
schedule too; its ``scheduled_for`` is when it was asked for, never on a
whole second, so it cannot take one of beat's slots (see ``dispatch``).
"""

from __future__ import annotations

import uuid

from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    SOFT_TIMEOUT = "soft_timeout", "soft timeout"
    HARD_TIMEOUT = "hard_timeout", "hard timeout"
    LOST = "lost"
    SKIPPED = "skipped"
    MISSED = "missed"


class RunOrigin(models.TextChoices):
    """Who started a run. Beat's claims write no origin and take the column's default."""

    BEAT = "beat", "beat: a schedule's slot"
    MANUAL = "manual", "manual: run now in the admin"
    CLIENT = "client", "client: dispatched by a service (jobs.client.dispatch)"


# A run in one of these states will not change again; a redelivered message
# for it is acknowledged and ignored.
FINISHED_STATUSES = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.SOFT_TIMEOUT,
        RunStatus.HARD_TIMEOUT,
        RunStatus.LOST,
        RunStatus.SKIPPED,
        RunStatus.MISSED,
    }
)
STARTABLE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RETRYING})
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RETRYING, RunStatus.RUNNING})


class JobRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    schedule = models.ForeignKey(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
        help_text="The schedule of a slot (beat) or of a run started by hand from it; "
        "empty for runs another service dispatched by job name.",
    )
    schedule_name = models.CharField(max_length=200, blank=True)
    # Database defaults, not Python ones: beat inserts its claims with raw SQL
    # naming only its own columns (scheduler.beat.dispatch.INSERT_COLUMNS).
    origin = models.CharField(
        max_length=16,
        choices=RunOrigin.choices,
        db_default=RunOrigin.BEAT,
        help_text="beat: a slot of the schedule; manual and client runs take no slot.",
    )
    requested_by = models.CharField(
        max_length=150,
        blank=True,
        db_default="",
        help_text="The admin user who ran it by hand (their username when they pressed it).",
    )
    job = models.CharField(max_length=200)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=200, blank=True)
    soft_time_limit = models.PositiveIntegerField(null=True, blank=True)
    hard_time_limit = models.PositiveIntegerField(null=True, blank=True)
    scheduled_for = models.DateTimeField(help_text="The slot, in UTC.")
    deadline = models.DateTimeField(
        null=True, blank=True, help_text="Not started by then: the run is recorded as missed."
    )
    enqueued_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the run was queued (claimed by beat, or dispatched); its message is sent "
        "right after that commit. Empty for runs that were never queued (missed, skipped).",
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    attempt = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True)
    error_type = models.CharField(max_length=255, blank=True)
    error_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    lateness_ms = models.IntegerField(
        null=True, blank=True, help_text="Start minus scheduled time, in milliseconds."
    )
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # A database default too: beat and the worker insert runs with raw SQL that names
    # only the columns they set.
    sentry_event_id = models.CharField(
        max_length=32,
        blank=True,
        default="",
        db_default="",
        help_text="The Sentry event of its failure, when Sentry is on.",
    )
    # Progress a running job reports (jobs.progress): done of total, and what it is
    # doing. Written at most once a second per run; empty for jobs that report none.
    progress_done = models.BigIntegerField(null=True, blank=True)
    progress_total = models.BigIntegerField(null=True, blank=True)
    progress_message = models.CharField(max_length=200, blank=True, default="", db_default="")
    progress_updated_at = models.DateTimeField(null=True, blank=True)
    # A run held back by its job's max_concurrency: since when, and for what. The
    # run stays queued meanwhile (no worker slot held, no attempt counted).
    waiting_since = models.DateTimeField(
        null=True, blank=True, help_text="When the run first waited for a concurrency slot."
    )
    waiting_for = models.CharField(
        max_length=300,
        blank=True,
        default="",
        db_default="",
        help_text="What the run waits for while it waits (empty once it started).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Not columns: what became of a dispatched run's message, set on the
    # instance that dispatching returns (a ``Delivery`` value, and why the
    # broker did not take it), and the priority its message carries
    # (``jobs.publishing.message_priority``).
    delivery: str
    delivery_error: str
    priority: int | None

    class Meta:
        ordering = ["-scheduled_for"]
        constraints = [
            # Its index also serves a schedule's history, newest first (read backwards):
            # every run's start and end update each index, so none is kept twice.
            models.UniqueConstraint(fields=["schedule", "scheduled_for"], name="one_run_per_slot"),
        ]
        indexes = [
            models.Index(fields=["-scheduled_for"], name="run_history"),
            models.Index(fields=["job", "-scheduled_for"], name="run_by_job"),
            # Only runs still waiting or running: the sweeps and the alert detector
            # look for those, and a run's end (most updates) then touches one index fewer.
            models.Index(
                fields=["status", "scheduled_for"],
                condition=models.Q(status__in=["queued", "retrying", "running"]),
                name="run_active",
            ),
            # The alert detector reads the runs that ended since its last cycle.
            models.Index(fields=["finished_at"], name="run_by_finish"),
            # Only runs that ended badly (few): the admin's "last run failed" filter,
            # the run list filtered on a failure and the dashboard's failing schedules
            # find them without scanning the history; a success writes no entry.
            models.Index(
                fields=["scheduled_for"],
                condition=models.Q(status__in=["failed", "soft_timeout", "hard_timeout", "lost"]),
                name="run_failed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job} @ {self.scheduled_for:%Y-%m-%d %H:%M:%S}Z [{self.status}]"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class OutboxBatch(models.Model):
    """Queued runs whose messages may not have reached the broker yet: the outbox.

    One row per claim (or dispatch), written in the transaction that queues
    the runs and deleted once the broker took every message. A crash or a
    broker outage in between leaves the row, and ``publish_outbox`` sends
    those runs again (a run that already started ignores the duplicate).
    One small row per batch instead of a second write of every run: a
    10,000-run burst used to spend a quarter of its time re-writing rows.
    """

    id = models.BigAutoField(primary_key=True)
    run_ids = models.JSONField(help_text="The batch's run ids (text UUIDs).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"outbox batch {self.id}: {len(self.run_ids)} runs"


class JobDefinition(models.Model):
    """One job of the catalog, as the workers that serve it published it.

    The admin and the API validate schedules against this table, so a web
    process never imports worker code to know which jobs exist.
    """

    name = models.CharField(max_length=200, unique=True)
    queue = models.CharField(max_length=200)
    parameters = models.JSONField(default=list, help_text="The job's signature: [{name, kind, required}].")
    soft_time_limit = models.PositiveIntegerField()
    hard_time_limit = models.PositiveIntegerField()
    max_retries = models.PositiveSmallIntegerField(default=0)
    max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many runs at once across all workers; empty: no limit."
    )
    rate_limit = models.CharField(
        max_length=32,
        blank=True,
        default="",
        db_default="",
        help_text="Celery's rate limit, per worker (e.g. 10/m); empty: none.",
    )
    doc = models.TextField(blank=True)
    published_by = models.CharField(max_length=255, blank=True)
    last_published_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RunSummaryReport(models.Model):
    """Per-job figures over a window, as the run-summary job computed them."""

    created_at = models.DateTimeField(auto_now_add=True)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    rows = models.JSONField(default=list)
    run = models.ForeignKey(JobRun, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Run summary {self.window_start:%Y-%m-%d %H:%M} – {self.window_end:%Y-%m-%d %H:%M} UTC"


class ConcurrencyGate(models.Model):
    """One row per concurrency key, locked by whoever takes or counts that key's leases.

    Locking it (an UPDATE) serializes the count-then-insert of
    ``jobs.concurrency.acquire`` on PostgreSQL and SQLite alike.
    """

    key = models.CharField(max_length=200, primary_key=True)
    touched_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.key


class ConcurrencyLease(models.Model):
    """One run (or report chunk) holding one of its key's ``max_concurrency`` places.

    A lease names the worker holding it and expires unless that worker's
    presence thread renews it, so a killed worker's places come back.
    """

    key = models.CharField(max_length=200, help_text="The job's name (a report's chunks share it).")
    holder = models.CharField(max_length=64, unique=True, help_text="The run id or chunk task id.")
    worker = models.CharField(max_length=255, blank=True)
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["key", "expires_at"], name="lease_by_key")]

    def __str__(self) -> str:
        return f"{self.key}: {self.holder} on {self.worker or '?'}"


class WorkerPresence(models.Model):
    """A live worker: which queues it consumes and which jobs it serves.

    ``started_at`` tells one process under a hostname from the next: a worker
    restarted after a crash publishes fresh presence under the same name, but
    a run's attempt that started before ``started_at`` was the dead process's.
    """

    hostname = models.CharField(max_length=255, primary_key=True)
    queues = models.JSONField(default=list)
    jobs = models.JSONField(default=list)
    last_seen_at = models.DateTimeField()
    started_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the worker process publishing this row started; empty: unknown "
        "(its attempts are not taken for alive).",
    )

    class Meta:
        # Created by the scheduler app before presence moved here; the table keeps its name.
        db_table = "scheduler_workerpresence"

    def __str__(self) -> str:
        return self.hostname


class RunTally(models.Model):
    """Counts of the runs that ended before ``jobs.tally``'s watermark, per (job, status).

    A rollup for ``/metrics``: a scrape adds these few rows to the runs that
    ended after the watermark (or have not ended) instead of scanning every
    run. One row with an empty job and status is the watermark itself
    (``tallied_before``); the others leave it empty. Written only by
    ``jobs.tally.advance``.
    """

    job = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, blank=True)
    runs = models.BigIntegerField(default=0)
    duration_count = models.BigIntegerField(default=0)
    duration_sum_ms = models.BigIntegerField(default=0)
    lateness_count = models.BigIntegerField(default=0)
    lateness_sum_ms = models.BigIntegerField(default=0)
    # Cumulative counts at or under each bound of jobs.tally's DURATION_BUCKETS / LATENESS_BUCKETS.
    duration_buckets = models.JSONField(default=list)
    lateness_buckets = models.JSONField(default=list)
    tallied_before = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "status"], name="one_tally_per_job_status")]

    def __str__(self) -> str:
        if not self.job:
            return f"runs tallied before {self.tallied_before}"
        return f"{self.job} [{self.status}]: {self.runs}"
