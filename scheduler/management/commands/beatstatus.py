"""Show which beat leads, how far it is behind the change log, and what fires next.

``--check`` is for health checks: exit 1 unless a leader holds an unexpired
lease (so a Docker HEALTHCHECK on any beat container reports the cluster's
beat as down when no process dispatches).
"""

from __future__ import annotations

import json as jsonlib

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Max
from django.utils import timezone

from scheduler.beat.lease import current_leader
from scheduler.models import ScheduleChange


class Command(BaseCommand):
    help = "Beat's state: leader, change-log lag, next due slots."

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="exit 1 unless a leader is alive")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args, check: bool, json: bool, **options):
        lease = current_leader()
        now = timezone.now()
        alive = bool(lease and lease.holder and lease.expires_at > now)
        head = ScheduleChange.objects.aggregate(head=Max("id"))["head"] or 0
        status = (lease.status if lease else None) or {}
        cursor = status.get("change_cursor")
        report = {
            "leader": lease.holder if lease and alive else None,
            "fencing_token": lease.token if lease else None,
            "lease_expires_in_s": round((lease.expires_at - now).total_seconds(), 1) if lease else None,
            "renewed_s_ago": round((now - lease.renewed_at).total_seconds(), 1)
            if lease and lease.renewed_at
            else None,
            "schedules": status.get("schedules"),
            "change_log_head": head,
            "change_log_lag": head - cursor if cursor is not None else None,
            "outbox_blocked": status.get("outbox_blocked"),
            "next_due": status.get("next_due", []),
        }
        if json:
            self.stdout.write(_dumps(report))
        else:
            self._print(report)
        if check and not alive:
            raise CommandError("no beat leads: the lease is expired or was never taken")

    def _print(self, r: dict) -> None:
        if r["leader"]:
            self.stdout.write(
                f"leader: {r['leader']} (token {r['fencing_token']}), lease expires in "
                f"{r['lease_expires_in_s']} s, renewed {r['renewed_s_ago']} s ago"
            )
        else:
            self.stdout.write(self.style.ERROR("leader: none (no beat holds an unexpired lease)"))
        self.stdout.write(f"schedules loaded: {r['schedules']}")
        self.stdout.write(f"change log: head {r['change_log_head']}, lag {r['change_log_lag']}")
        if r["outbox_blocked"]:
            self.stdout.write(self.style.WARNING("outbox: claimed runs wait for the broker"))
        self.stdout.write("next due:")
        for item in r["next_due"]:
            self.stdout.write(f"  {item['slot']}  {item['schedule']}  ({item['job']})")


def _dumps(value) -> str:
    return jsonlib.dumps(value, indent=2, default=str)
