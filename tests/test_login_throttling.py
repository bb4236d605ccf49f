"""Login throttling (django-axes): wrong passwords lock a username from one address for a while.

Reported: 20 wrong passwords in 7 s, then the right one logged in. Now, after
``LOGIN_FAILURE_LIMIT`` failures (default 5) for one username from one client
address, even the right password is refused for ``LOGIN_LOCKOUT_MINUTES``
(default 15) with a 429 page that says so. The requests go through the real
admin login form, middleware and database handler.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.utils import timezone

from tests.support.env_settings import settings_from_env

USERNAME = "ops"
PASSWORD = "right-password-123"  # noqa: S105
LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Every attempt hashes a password; the default hasher costs ~0.3 s on the CI machine."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user(USERNAME, password=PASSWORD, is_staff=True, is_superuser=True)


def attempt(client: Client, password: str, username: str = USERNAME, **headers):
    return client.post(LOGIN, {"username": username, "password": password}, **headers)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_the_defaults_are_five_failures_and_fifteen_minutes():
    values = settings_from_env({}, ["AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME"])
    assert values == {"AXES_FAILURE_LIMIT": 5, "AXES_COOLOFF_TIME": "0:15:00"}


def test_it_refuses_the_right_password_after_the_failure_limit(staff_user):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt(client, "wrong").status_code == 200  # the form again, with its error
    assert attempt(client, "wrong").status_code == 429  # the failure that reaches the limit locks
    response = attempt(client, PASSWORD)
    assert response.status_code == 429
    assert not logged_in(client)
    text = response.content.decode()
    assert f"Login locked: too many failed attempts ({settings.AXES_FAILURE_LIMIT})" in text
    assert f"Try again in {settings.AXES_COOLOFF_TIME.seconds // 60} minutes" in text
    assert "Scheduled jobs" in text  # the admin's look, not a bare error


def test_the_reported_burst_of_twenty_does_not_get_through(staff_user):
    client = Client()
    statuses = [attempt(client, f"guess-{i}").status_code for i in range(20)]
    allowed = settings.AXES_FAILURE_LIMIT - 1
    assert statuses == [200] * allowed + [429] * (20 - allowed)
    assert attempt(client, PASSWORD).status_code == 429
    assert not logged_in(client)


def test_it_lets_the_user_in_again_after_the_lockout(staff_user):
    client = Client()
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        for _ in range(settings.AXES_FAILURE_LIMIT):
            attempt(client, "wrong")
        assert attempt(client, PASSWORD).status_code == 429
        clock.move_to(start + settings.AXES_COOLOFF_TIME + dt.timedelta(seconds=1))
        assert attempt(client, PASSWORD).status_code == 302
    assert logged_in(client)


def test_a_success_before_the_limit_resets_the_count(staff_user):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt(client, "wrong")
    assert attempt(client, PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt(client, "wrong")
    assert attempt(client, PASSWORD).status_code == 302


def test_the_lock_holds_only_for_that_username_from_that_address(staff_user):
    get_user_model().objects.create_user("other", password=PASSWORD, is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(Client(), "wrong", REMOTE_ADDR="203.0.113.7")
    assert attempt(Client(), PASSWORD, REMOTE_ADDR="203.0.113.7").status_code == 429
    assert attempt(Client(), PASSWORD, REMOTE_ADDR="198.51.100.9").status_code == 302
    assert attempt(Client(), PASSWORD, username="other", REMOTE_ADDR="203.0.113.7").status_code == 302


def test_the_limit_and_the_lockout_come_from_the_environment():
    env = {"LOGIN_FAILURE_LIMIT": "3", "LOGIN_LOCKOUT_MINUTES": "60"}
    values = settings_from_env(env, ["AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME"])
    assert values == {"AXES_FAILURE_LIMIT": 3, "AXES_COOLOFF_TIME": "1:00:00"}


PROXY = "10.0.0.2"  # REMOTE_ADDR of every request that came through the proxy


@pytest.fixture(scope="module")
def one_proxy_settings() -> dict:
    """The client-address settings a process computes with REVERSE_PROXY_COUNT=1."""
    names = ["AXES_IPWARE_META_PRECEDENCE_ORDER", "AXES_IPWARE_PROXY_COUNT"]
    return settings_from_env({"REVERSE_PROXY_COUNT": "1"}, names)


@pytest.fixture
def behind_one_proxy(one_proxy_settings):
    with override_settings(**one_proxy_settings):
        yield


def test_behind_a_proxy_it_locks_the_client_not_the_proxy(staff_user, behind_one_proxy):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(Client(), "wrong", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.7")
    locked = attempt(Client(), PASSWORD, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert locked.status_code == 429
    other_client = attempt(Client(), PASSWORD, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.9")
    assert other_client.status_code == 302


def test_behind_a_proxy_a_forged_forwarded_for_cannot_escape_the_lock(staff_user, behind_one_proxy):
    # A client that sends its own X-Forwarded-For: the proxy appends the real
    # address, so the chain is longer than one proxy makes, and the client
    # counts as the proxy's address, whatever it claims.
    for i in range(settings.AXES_FAILURE_LIMIT):
        attempt(Client(), "wrong", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 203.0.113.7")
    forged = attempt(Client(), PASSWORD, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.7")
    assert forged.status_code == 429


def test_without_a_proxy_a_forwarded_for_header_is_ignored(staff_user):
    for i in range(settings.AXES_FAILURE_LIMIT):
        attempt(Client(), "wrong", REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    forged = attempt(Client(), PASSWORD, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert forged.status_code == 429
