"""Our Redis transport closes, restores and acks after Celery let go of a dead connection.

What Celery's worker does when Redis dies under it (``collect()``, then
``close()``), replayed on a kombu connection shaped like the worker's: a
consumer holding an unacked message with a BRPOP in flight, and the
remote-control box (an auto-delete fanout queue) on a second channel. With
kombu's own transport the ``close()`` raises ``AttributeError: 'NoneType'
object has no attribute 'hostname'``, which stops the worker.
"""

from __future__ import annotations

import signal

import pytest
import redis
from django.conf import settings
from kombu import Connection, Queue
from kombu.pidbox import Mailbox

from scheduler.embedded_redis import start_embedded_redis
from tests.support.broker import redis_broker_only
from tests.support.processes import free_port

pytestmark = pytest.mark.slow


@redis_broker_only(
    "our transport is chosen for a redis:// BROKER_URL only; with RabbitMQ the app uses kombu's "
    "py-amqp transport (the test below runs on its own embedded Redis either way)",
)
def test_the_app_uses_our_transport_for_redis_urls():
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert settings.CELERY_BROKER_TRANSPORT == "lib.redis_transport:Transport"


def test_a_channel_restores_and_acks_after_its_connection_was_collected(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_embedded_redis(port, tmp_path, append_only=True)
    connection = Connection(url, transport="lib.redis_transport:Transport")
    try:
        with Connection(url) as publisher:
            publisher.SimpleQueue("jobs").put({"n": 1})
        delivered = []
        consumer = connection.Consumer(
            [Queue("jobs")], callbacks=[lambda _body, message: delivered.append(message)], accept=["json"]
        )
        consumer.consume()
        Mailbox("celery", type="fanout", accept=["json"]).Node("w@test", channel=connection.channel()).listen(
            callback=lambda *_: None
        )
        for _ in range(10):  # the first events may be the box's subscription replies
            if delivered:
                break
            connection.drain_events(timeout=1)
        assert len(delivered) == 1
        # What the worker's event loop does between deliveries (kombu internals).
        connection.default_channel._brpop_start()

        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        connection.collect(socket_timeout=1)
        connection.close()  # kombu's own transport: AttributeError here

        server = start_embedded_redis(port, tmp_path, append_only=True)
        client = redis.Redis(port=port)
        assert client.hlen("unacked") == 1
        delivered[0].ack()  # the job finished after Redis came back
        assert client.hlen("unacked") == 0
        assert client.llen("jobs") == 0
    finally:
        server.kill()
        server.wait(timeout=10)
