"""Browser tests: the Django admin in real headless Chromium (Debian package)."""
