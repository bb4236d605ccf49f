"""The routing table a send-only process reads: the job catalog the workers publish to Redis. No Django.

Workers publish the catalog at start (``jobs.catalog.publish_catalog``) to
the database (``JobDefinition``) and, written by the same call, to one Redis
hash here: key ``CATALOG_KEY``, one field per job name, each value the JSON
of a ``JobRoute`` (queue, default limits, the parameters ``JobDefinition.parameters``
holds, when it was published and by whom, and the longest hard limit the
workers' broker allows). Nothing else writes it, so it cannot drift from
what the workers serve; a job no worker has published is not in it.

Which Redis: the broker's, when the broker is Redis; with RabbitMQ, the
platform's ``REDIS_URL`` (``catalog_redis_url`` on the worker's side; the
client is told it with ``catalog_url``).

Fields are only added or replaced: a job that a deploy removes keeps its
entry (as its ``JobDefinition`` row stays), and a message sent to it would
wait unread; delete the field by hand (``HDEL beatplatform:catalog NAME``)
when retiring a job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

CATALOG_KEY = "beatplatform:catalog"


@dataclass(frozen=True)
class JobRoute:
    """Where a job's messages go and what a call must look like, as a worker published it."""

    name: str
    queue: str
    soft_time_limit: int | None
    hard_time_limit: int | None
    parameters: list[dict[str, Any]] = field(default_factory=list)
    published_at: str = ""
    published_by: str = ""
    max_hard_time_limit: int | None = None  # the broker's redelivery allows no longer (jobs.limits)

    def to_json(self) -> str:
        return json.dumps(
            {
                "queue": self.queue,
                "soft_time_limit": self.soft_time_limit,
                "hard_time_limit": self.hard_time_limit,
                "parameters": self.parameters,
                "published_at": self.published_at,
                "published_by": self.published_by,
                "max_hard_time_limit": self.max_hard_time_limit,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, name: str, text: str | bytes) -> JobRoute:
        data = json.loads(text)
        return cls(
            name=name,
            queue=data["queue"],
            soft_time_limit=data.get("soft_time_limit"),
            hard_time_limit=data.get("hard_time_limit"),
            parameters=data.get("parameters") or [],
            published_at=data.get("published_at", ""),
            published_by=data.get("published_by", ""),
            max_hard_time_limit=data.get("max_hard_time_limit"),
        )


def write_routes(client: redis.Redis, routes: Iterable[JobRoute]) -> int:
    """Add or replace ``routes`` in the catalog hash, in one command; return how many."""
    items: list[str] = []
    for route in routes:
        items += [route.name, route.to_json()]
    if items:
        client.hset(CATALOG_KEY, items=items)
    return len(items) // 2


def read_routes(client: redis.Redis) -> dict[str, JobRoute]:
    """Every published job's route, by name (an entry that does not parse is left out)."""
    routes = {}
    for raw_name, raw_value in client.hgetall(CATALOG_KEY).items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        try:
            routes[name] = JobRoute.from_json(name, raw_value)
        except (ValueError, KeyError, TypeError):
            continue  # written by a newer or broken publisher: as if unpublished
    return routes


class RoutingTable:
    """The catalog hash as this process last read it, trusted for ``ttl`` seconds.

    A name the copy does not know is always read again at once (a job
    published a moment ago is found); a job re-published with a new queue,
    limits or signature is seen within ``ttl``. ``route(name, fresh=True)``
    reads again regardless (the client does before refusing arguments).
    """

    def __init__(self, client: redis.Redis, ttl: float = 5.0) -> None:
        self._client = client
        self._ttl = ttl
        self._routes: dict[str, JobRoute] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def routes(self, *, fresh: bool = False) -> dict[str, JobRoute]:
        with self._lock:
            if fresh or time.monotonic() - self._read_at >= self._ttl:
                self._routes = read_routes(self._client)
                self._read_at = time.monotonic()
            return self._routes

    def route(self, name: str, *, fresh: bool = False) -> JobRoute | None:
        found = self.routes(fresh=fresh).get(name)
        if found is None and not fresh:
            found = self.routes(fresh=True).get(name)
        return found
