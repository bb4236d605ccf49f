"""The one place that reads the process environment.

Every setting that comes from outside goes through these helpers, so a typo in a
value fails at start with the variable's name in the message, not later in a
worker. A secret may be given as ``NAME_FILE`` (a path, as Docker secrets are
mounted) instead of ``NAME``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def envstr(name: str, default: str = "") -> str:
    """Return ``$NAME``, or the contents of the file named by ``$NAME_FILE``."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def envbool(name: str, default: bool = False) -> bool:
    """``$NAME`` as a boolean; unset or empty (compose's ``${NAME:-}``) gives ``default``."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no")


def envint(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} must be at most {maximum}")
    return value


def envfloat(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def envlist(name: str) -> list[str]:
    """A comma-separated list; blanks around items and empty items are dropped."""
    return [item.strip() for item in envstr(name).split(",") if item.strip()]


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def envheader(name: str, default_value: str = "https") -> tuple[str, str] | None:
    """An HTTP header and its value as Django's ``request.META`` spells them, or None when unset.

    ``X-Forwarded-Proto`` gives ``("HTTP_X_FORWARDED_PROTO", "https")``;
    ``X-Forwarded-Ssl: on`` gives ``("HTTP_X_FORWARDED_SSL", "on")``.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    header, _, value = raw.partition(":")
    header, value = header.strip(), value.strip() or default_value
    if not _HEADER_NAME.match(header):
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a header name: use e.g. X-Forwarded-Proto or 'X-Forwarded-Ssl: on'"
        )
    return "HTTP_" + header.upper().replace("-", "_"), value
