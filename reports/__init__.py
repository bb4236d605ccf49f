"""Reports: row-producing jobs, chunked under limits, rendered, stored and delivered.

A layer on top of ``jobs`` and ``scheduler`` (and ``alerts`` for the alert
digest): nothing below imports it.
"""
