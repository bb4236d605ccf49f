from __future__ import annotations

from django.core.management.base import BaseCommand

from jobs.catalog import publish_catalog


class Command(BaseCommand):
    help = "Publish the job catalog (names, queues, signatures, limits) to the database."

    def handle(self, *args, **options):
        count = publish_catalog(worker="manage.py")
        self.stdout.write(f"published {count} jobs")
