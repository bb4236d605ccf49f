"""Opaque cursors for keyset pagination: a page continues after the last row the client saw.

Never OFFSET: a page costs the same at any depth, and rows inserted or
deleted meanwhile neither repeat nor skip the rows that were already there.
A cursor is the last row's sort key, JSON in URL-safe base64; one that does
not decode is a 422 on the field ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.errors import ApiError


def encode(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode(cursor: str, length: int) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "The cursor is not one this API gave out.", "cursor") from exc
    if not isinstance(key, list) or len(key) != length:
        raise ApiError(422, "The cursor is not one this API gave out.", "cursor")
    return key
