"""The leader lease and its fencing token, on the real database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from scheduler.beat.lease import Lease, LeaseLost

pytestmark = pytest.mark.django_db


def test_only_one_process_holds_the_lease():
    a, b = Lease(ttl=10, holder="a"), Lease(ttl=10, holder="b")

    assert a.acquire_or_renew()
    assert not b.acquire_or_renew()
    assert a.acquire_or_renew()  # renewal


def test_a_standby_takes_an_expired_lease_with_a_higher_token():
    now = timezone.now()
    a, b = Lease(ttl=10, holder="a"), Lease(ttl=10, holder="b")
    a.acquire_or_renew(now)
    first_token = a.token

    assert b.acquire_or_renew(now + timedelta(seconds=11))
    assert b.token == first_token + 1


def test_a_deposed_leader_cannot_claim_even_before_it_notices():
    now = timezone.now()
    a, b = Lease(ttl=10, holder="a"), Lease(ttl=10, holder="b")
    a.acquire_or_renew(now)
    b.acquire_or_renew(now + timedelta(seconds=11))

    with pytest.raises(LeaseLost):
        a.fence(now + timedelta(seconds=12))
    assert not a.acquire_or_renew(now + timedelta(seconds=12))


def test_a_leader_past_its_expiry_cannot_claim_although_nobody_took_over():
    now = timezone.now()
    a = Lease(ttl=10, holder="a")
    a.acquire_or_renew(now)

    with pytest.raises(LeaseLost):
        a.fence(now + timedelta(seconds=11))


def test_releasing_lets_a_standby_lead_at_once():
    a, b = Lease(ttl=10, holder="a"), Lease(ttl=10, holder="b")
    a.acquire_or_renew()
    a.release()

    assert b.acquire_or_renew()
