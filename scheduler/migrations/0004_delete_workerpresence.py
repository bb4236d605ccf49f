# Worker presence moved to the jobs app (jobs.0004), keeping its table: state only.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("scheduler", "0003_worker_presence_started_at"),
        ("jobs", "0004_workerpresence"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="WorkerPresence")],
            database_operations=[],
        ),
    ]
