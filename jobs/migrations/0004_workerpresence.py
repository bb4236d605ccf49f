# Worker presence moved from the scheduler app to jobs (workers are what runs).
# The table stays where it is (db_table), so this only changes Django's state.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0003_run_origin"),
        ("scheduler", "0003_worker_presence_started_at"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="WorkerPresence",
                    fields=[
                        ("hostname", models.CharField(max_length=255, primary_key=True, serialize=False)),
                        ("queues", models.JSONField(default=list)),
                        ("jobs", models.JSONField(default=list)),
                        ("last_seen_at", models.DateTimeField()),
                        (
                            "started_at",
                            models.DateTimeField(
                                blank=True,
                                help_text="When the worker process publishing this row started; empty: unknown "
                                "(its attempts are not taken for alive).",
                                null=True,
                            ),
                        ),
                    ],
                    options={"db_table": "scheduler_workerpresence"},
                ),
            ],
            database_operations=[],
        ),
    ]
