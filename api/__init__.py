"""The JSON API (django-ninja): the job catalog, runs, schedules and health over HTTP, with tokens.

Nothing imports this app (an import-linter contract): it is a client of
``scheduler`` and ``jobs`` like the admin is, through the same services.
"""
