"""kombu's Redis transport, with channels that can still reach Redis after their connection let go.

Why it exists: with celery/kombu 5.7.0, a worker whose Redis went away while
a job ran (its message unacked: we ack late) stopped with ``AttributeError:
'NoneType' object has no attribute 'hostname'``, and did not come back when
Redis did. The sequence, all inside kombu and Celery:

1. Celery's consumer handles the lost connection with ``Connection.collect()``
   and then ``Connection.close()``
   (``celery/worker/consumer/consumer.py``, ``on_connection_error_after_connected``).
2. ``collect()`` closes the channels and then detaches the transport from the
   connection (``transport.client = None``). kombu's Redis ``Channel.close()``
   stops at its first failing Redis call (reading the BRPOP in flight,
   deleting the remote-control box's auto-delete fanout binding) before it
   marks itself closed, and the transport stops closing channels at the first
   one that raises; so the consumer's channel is still open afterwards.
3. ``close()`` closes that channel again. Closing gives its unacked messages
   back to Redis, and the client for that is built from connection
   parameters read off the detached transport: ``None.hostname``. That is no
   connection error, so Celery calls it unrecoverable and the worker shuts
   down. The late ack of the job that was running fails the same way.

What this changes: a channel computes its connection parameters once and
keeps them (a channel is bound to one broker for its whole life). Restoring
and acknowledging on a channel whose connection was detached then reach
Redis if it is back, or fail with an ordinary connection error, which kombu
and Celery already handle (the message then stays in Redis's unacked hash
and is redelivered after the visibility timeout). Used for ``redis://``
broker URLs through ``CELERY_BROKER_TRANSPORT`` (settings); ``rediss://``,
Sentinel and AMQP keep kombu's own transports.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before kombu's __init__, which already opens the pool (PING).
        self._kept_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if asynchronous not in self._kept_connparams:
            # celery-types' kombu stubs leave out this private method of the Redis channel.
            kept = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
            self._kept_connparams[asynchronous] = kept
        # A copy: redis-py's pool keeps the dict it is given.
        return dict(self._kept_connparams[asynchronous])


class Transport(kombu_redis.Transport):
    Channel = Channel
