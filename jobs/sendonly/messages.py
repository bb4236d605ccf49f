"""Celery protocol-2 task messages, built and published without Celery's task machinery. No Django.

The one message format of the platform: beat's slots and ``jobs.dispatch``
(through ``jobs.publishing.task_message``) and the send-only client
(``jobs.sendonly.client``) all build their messages with ``build_task_message``
and publish them with ``publish_task_message``. Built directly, not through
``app.amqp.create_task_message`` (~110 µs a message), because beat publishes
thousands per tick; ``tests/test_fast_path_pins.py`` pins the result to what
Celery itself builds and sends.

Headers beyond Celery's, for the worker and for whoever inspects a queue:

- ``schedule``, ``scheduled_for``: the run's schedule (None for a client's)
  and the time it was due, ISO 8601;
- on the client's messages only, ``run_origin`` (``"client"``) and
  ``requested_by`` (the service that sent it): the worker records a run it
  has no row for with these (``jobs.runs.start_run``). Celery's own
  ``origin`` header is the sending process's node name, so ours is named apart.
"""

from __future__ import annotations

import json
from typing import Any

from celery.utils.saferepr import saferepr
from kombu import Exchange, Producer, Queue

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# The argument reprs Celery itself would write (``argsrepr``/``kwargsrepr``:
# what logs, Flower and event monitors show), per distinct repr. saferepr
# costs 15-70 µs where repr costs 4; beat sends thousands of runs with a few
# distinct argument lists, and two JSON values with one repr have one saferepr.
_CELERY_REPRS: dict[str, str] = {}
REPR_MAXSIZE = 1024  # celery.app.amqp.AMQP.argsrepr_maxsize / kwargsrepr_maxsize
REPR_MAXLEVELS = 3  # Celery's task_repr_maxlevels default


def celery_repr(value: Any) -> str:
    """``saferepr`` as Celery applies it to a task's arguments, remembered per plain ``repr``."""
    key = repr(value)
    found = _CELERY_REPRS.get(key)
    if found is None:
        if len(_CELERY_REPRS) >= 4096:
            _CELERY_REPRS.clear()
        found = _CELERY_REPRS[key] = saferepr(value, REPR_MAXSIZE, maxlevels=REPR_MAXLEVELS)
    return found


def build_task_message(
    task_id: str,
    job: str,
    args: list,
    kwargs: dict,
    *,
    soft_time_limit: int | None,
    hard_time_limit: int | None,
    origin: str,
    schedule_id: int | None,
    scheduled_for: str,
    eta: str | None = None,
    expires: str | None = None,
    extra_headers: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Celery message protocol 2 headers and JSON body of one task.

    ``task_id`` is the run's id; ``timelimit`` is ``[hard, soft]``; ``eta``
    and ``expires`` are ISO 8601 with an offset (what Celery writes), or None.
    ``extra_headers`` go after Celery's and ours (the client's).
    """
    headers: dict[str, Any] = {
        "lang": "py",
        "task": job,
        "id": task_id,
        "shadow": None,
        "eta": eta,
        "expires": expires,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [hard_time_limit, soft_time_limit],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": celery_repr(args or ()),  # Celery sends empty args as a tuple
        "kwargsrepr": celery_repr(kwargs),
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "schedule": schedule_id,
        "scheduled_for": scheduled_for,
    }
    if extra_headers:
        headers.update(extra_headers)
    return headers, json.dumps([args, kwargs, EMBED])


def publish_task_message(
    producer: Producer,
    headers: dict[str, Any],
    body: str,
    *,
    queue: str,
    priority: int | None,
    queue_max_priority: int | None = None,
) -> None:
    """Publish one built message to ``queue`` with the properties Celery's ``send_task`` gives it.

    The default exchange routes by queue name, on Redis and AMQP alike; no
    retrying (the caller decides what a failure means). On RabbitMQ the queue
    is declared first, as a Celery worker declares it (once per connection:
    kombu remembers), because RabbitMQ drops a message routed to a queue that
    does not exist yet, where Redis keeps it in a list for the first worker.
    ``queue_max_priority`` must be the workers' (``BROKER_QUEUE_MAX_PRIORITY``):
    RabbitMQ refuses a declaration whose arguments differ from the queue's.
    """
    producer.publish(
        body,
        exchange="",
        routing_key=queue,
        serializer=None,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        correlation_id=headers["id"],
        delivery_mode=2,
        priority=priority or 0,  # kombu's default when none is given
        retry=False,
        declare=None if on_redis(producer) else [celery_queue(queue, queue_max_priority)],
    )


def on_redis(producer: Producer) -> bool:
    connection = producer.connection
    return connection is not None and connection.transport.driver_type == "redis"


def celery_queue(name: str, max_priority: int | None = None) -> Queue:
    """The queue ``name`` as Celery's workers declare it (a direct exchange of its name).

    ``max_priority``: its ``x-max-priority`` (Celery's ``task_queue_max_priority``), none when falsy.
    """
    return Queue(name, Exchange(name), routing_key=name, max_priority=max_priority or None)
