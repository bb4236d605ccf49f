"""``manage.py alertd``: the alert detector and the notification sender, in one loop.

Every ``ALERT_CHECK_INTERVAL`` seconds: one detector cycle
(``alerts.detector``: opens, pages, reminds and resolves incidents), then
one delivery pass (``alerts.delivery.deliver_due``: sends the notifications
that are due, with retries). Run as many as you like: every incident change
and every notification claim is guarded, so each happens once.

Outages are waited out like beat does: a database error is logged once per
outage (not once per cycle), the connections are dropped, and the next cycle
tries again; nothing here makes the process exit. An unexpected error is
logged with its traceback (once until a cycle succeeds) and the loop goes
on. SIGTERM or SIGINT stops it after the cycle in progress.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, InterfaceError, close_old_connections, connections

from alerts.detector import Detector

logger = logging.getLogger("alerts.alertd")

OUTAGES = (DatabaseError, InterfaceError, OSError)


def deliver_due() -> int:
    from alerts.delivery import deliver_due as deliver

    return deliver()


class Command(BaseCommand):
    help = "Detect alert conditions and deliver notifications, every ALERT_CHECK_INTERVAL seconds."

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between cycles (default: ALERT_CHECK_INTERVAL).",
        )
        parser.add_argument("--once", action="store_true", help="Run one cycle and exit.")
        parser.add_argument(
            "--no-deliver", action="store_true", help="Detect only; leave notifications to another process."
        )

    def handle(self, *args, interval: float | None, once: bool, no_deliver: bool, **options):
        interval = settings.ALERT_CHECK_INTERVAL if interval is None else interval
        if interval <= 0:
            raise ValueError(f"--interval must be above 0 seconds, got {interval}")
        self.stopping = threading.Event()
        self.failing = False
        self.last_unexpected = ""
        if not once:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stopping.set())
        detector = Detector()
        logger.info("alertd ready: a cycle every %.1f s", interval)
        while True:
            started = time.monotonic()
            self.cycle(detector, deliver=not no_deliver)
            if once or self.stopping.wait(max(0.0, interval - (time.monotonic() - started))):
                break
        connections.close_all()
        logger.info("alertd stopped")

    def cycle(self, detector: Detector, *, deliver: bool) -> None:
        try:
            close_old_connections()
            report = detector.run_cycle()
            delivered = deliver_due() if deliver else 0
        except OUTAGES as exc:
            if not self.failing:
                logger.error("alertd: cannot reach the database (%s); retrying every cycle", exc)
                self.failing = True
            for conn in connections.all():
                conn.close_if_unusable_or_obsolete()
            return
        except Exception as exc:  # noqa: BLE001 (the detector must outlive a bug of its own)
            text = f"{type(exc).__name__}: {exc}"
            if text != self.last_unexpected:
                logger.exception("alertd: unexpected error in a cycle (%s); carrying on", text)
                self.last_unexpected = text
            for conn in connections.all():
                conn.close_if_unusable_or_obsolete()
            return
        if self.failing:
            logger.warning("alertd: the database is back; carrying on")
            self.failing = False
        self.last_unexpected = ""
        if report.opened or report.resolved or report.reminded or report.escalated or delivered:
            logger.info("alertd cycle: %s; delivered %d", report.summary(), delivered)
