"""Helpers that are not an app: small, generic, importable from every app (they import none)."""
