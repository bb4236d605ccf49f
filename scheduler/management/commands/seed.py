from __future__ import annotations

from django.core.management.base import BaseCommand

from scheduler.seeding import ensure_admin_user, seed_default_schedules


class Command(BaseCommand):
    help = "Create the admin user and the default schedules if they do not exist."

    def handle(self, *args, **options):
        password = ensure_admin_user()
        if password:
            self.stdout.write(self.style.WARNING(f"admin user created; password (shown once): {password}"))
        for name in seed_default_schedules():
            self.stdout.write(f"seeded schedule: {name}")
