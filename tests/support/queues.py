"""What waits in a queue, read the same way on Redis and on RabbitMQ.

Tests check what beat, the outbox or the send-only client published by
looking at the queue itself, before any worker takes it. On Redis a queue is
a list per priority step (kombu's layout: the queue's name, then the name
with ``\\x06\\x16`` and the step), read with LRANGE and left in place. On
RabbitMQ every waiting message is fetched with ``basic.get`` unacknowledged
and the channel is closed, which puts each back in its place (flagged
redelivered, which nothing here reads).

Order is not promised by any of these (Redis keeps priority steps apart);
tests compare sets or counts. A queue that does not exist holds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from jobs.limits import broker_is_redis


def _app():
    from scheduler.celery import app

    return app


def waiting_messages(queue: str) -> list[dict[str, Any]]:
    """The headers of every message waiting in ``queue``, none consumed."""
    with _app().connection_for_write() as conn:
        if broker_is_redis():
            return _redis_waiting(conn, queue)
        return _amqp_waiting(conn, queue)


def queued_ids(queue: str) -> list[str]:
    """The task ids (our run ids) of the messages waiting in ``queue``."""
    return [headers["id"] for headers in waiting_messages(queue)]


def queue_length(queue: str) -> int:
    return len(waiting_messages(queue))


def waiting_priorities(queue: str) -> dict[str, int]:
    """The broker priority of each message waiting in ``queue``, by task id, none consumed.

    On Redis the priority step whose list holds the message (what the worker
    pops by, 0 first); on RabbitMQ the message's ``priority`` property (higher
    first). A message sent without one counts as 0 on both.
    """
    with _app().connection_for_write() as conn:
        channel = conn.channel()
        found: dict[str, int] = {}
        try:
            if broker_is_redis():
                for step in channel.priority_steps:
                    for raw in channel.client.lrange(channel._q_for_pri(queue, step), 0, -1):
                        found[json.loads(raw)["headers"]["id"]] = step
                return found
            while (message := channel.basic_get(queue=queue, no_ack=False)) is not None:
                headers = message.properties.get("application_headers") or {}
                found[headers["id"]] = message.properties.get("priority") or 0
            return found
        except conn.channel_errors:
            return found  # AMQP 404: no such queue yet
        finally:
            if getattr(channel, "is_open", True):
                channel.close()  # on RabbitMQ every unacknowledged message goes back to its place


def empty_queues(names: Iterable[str]) -> None:
    """Drop every message waiting in ``names``; a queue not declared yet has nothing to drop."""
    with _app().connection_for_write() as conn:
        for name in names:
            channel = conn.channel()
            try:
                if broker_is_redis():
                    client = channel.client
                    client.delete(*_redis_lists(channel, name))
                else:
                    channel.queue_purge(name)
            except conn.channel_errors:
                pass  # AMQP 404: the queue does not exist yet (the error closed the channel)
            finally:
                channel.close()


def _redis_lists(channel: Any, queue: str) -> list[str]:
    return [channel._q_for_pri(queue, step) for step in channel.priority_steps]


def _redis_waiting(conn: Any, queue: str) -> list[dict[str, Any]]:
    channel = conn.channel()
    try:
        found: list[dict[str, Any]] = []
        for name in _redis_lists(channel, queue):
            found.extend(json.loads(raw)["headers"] for raw in channel.client.lrange(name, 0, -1))
        return found
    finally:
        channel.close()


def _amqp_waiting(conn: Any, queue: str) -> list[dict[str, Any]]:
    channel = conn.channel()
    found: list[dict[str, Any]] = []
    try:
        while (message := channel.basic_get(queue=queue, no_ack=False)) is not None:
            found.append(dict(message.properties.get("application_headers") or {}))
    except conn.channel_errors:
        return found  # 404: no such queue yet
    finally:
        if getattr(channel, "is_open", False):
            channel.close()  # every unacknowledged message goes back to its place
    return found
