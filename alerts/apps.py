from django.apps import AppConfig
from django.conf import settings


class AlertsConfig(AppConfig):
    """On-call alerting: incidents per schedule and for the system, their channels, Sentry Crons."""

    name = "alerts"

    def ready(self) -> None:
        from alerts import crons

        # Without a DSN nothing listens to the jobs signals, so a worker's run
        # pays one attribute test per signal and nothing else.
        if settings.SENTRY_DSN:
            crons.connect()
