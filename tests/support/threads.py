"""Calls raced against each other: each in its own thread, all let go at the same moment.

For tests of guarded writes (two processes advancing one watermark, eight
opening one incident): the calls meet at a barrier, then run at once, each on
its own database connection, closed when its call ends (Django opens one per
thread; a test database cannot be dropped while one is left open).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def at_once(*calls: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """What each call returned, in the order given; re-raises the first call's error, once all ended.

    A call still running after ``timeout`` seconds fails the test.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"a raced call still ran after {timeout} s"
    if errors:
        raise errors[0]
    return results
