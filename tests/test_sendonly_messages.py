"""The client's messages are Celery's: for any arguments, eta and expiry, the headers Celery would write.

``tests/test_fast_path_pins.py`` pins beat's and dispatch's messages (no eta,
no expiry) to Celery's ``create_task_message``; this does the same for what
only the client sends (``eta``, ``expires``), over generated arguments and
times, and checks the client's own headers are only added, never replacing
one of Celery's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.serialization import loads, prepare_accept_content

from jobs.sendonly.messages import build_task_message
from settings.celery_app import app

CLIENT_HEADERS = {"schedule", "scheduled_for", "run_origin", "requested_by"}
ORIGIN = "billing-api@host"

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
zones = st.sampled_from(
    [UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]
)
moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=zones)


@settings(max_examples=150, deadline=None)
@given(
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=4),
    eta=st.none() | moments,
    expires_after=st.none() | st.integers(1, 10**6),
    limits=st.tuples(st.none() | st.integers(1, 100), st.none() | st.integers(101, 1000)),
)
def test_the_client_message_is_the_one_celery_builds(args, kwargs, eta, expires_after, limits):
    soft, hard = limits
    task_id = str(uuid.uuid4())
    expires = (
        (eta or datetime(2030, 1, 1, tzinfo=UTC)) + timedelta(seconds=expires_after)
        if expires_after
        else None
    )
    headers, body = build_task_message(
        task_id,
        "reports.run_summary",
        args,
        kwargs,
        soft_time_limit=soft,
        hard_time_limit=hard,
        origin=ORIGIN,
        schedule_id=None,
        scheduled_for=(eta or datetime(2030, 1, 1, tzinfo=UTC)).isoformat(),
        eta=eta.isoformat() if eta else None,
        expires=expires.isoformat() if expires else None,
        extra_headers={"run_origin": "client", "requested_by": "billing-api"},
    )
    celery = app.amqp.create_task_message(
        task_id,
        "reports.run_summary",
        args,
        kwargs,
        eta=eta,
        expires=expires,
        time_limit=hard,
        soft_time_limit=soft,
        root_id=None,
        parent_id=None,
        origin=ORIGIN,
        ignore_result=True,
    )

    assert CLIENT_HEADERS.isdisjoint(celery.headers), "Celery now sets a header of ours: rename ours"
    assert {k: v for k, v in headers.items() if k not in CLIENT_HEADERS} == celery.headers
    accept = prepare_accept_content(app.conf.accept_content)
    decoded = loads(body, "application/json", "utf-8", accept=accept)
    assert decoded[:2] == [args, kwargs]
    assert decoded[2] == celery.body[2]
