from django.apps import AppConfig


class AlertsConfig(AppConfig):
    """On-call alerting: incidents per schedule and for the system, their channels, Sentry Crons."""

    name = "alerts"
