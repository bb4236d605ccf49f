"""HTTPS settings come from the environment: on for a deployment, off for the local commands.

A deployment (DEBUG off and an ``ALLOWED_HOSTS`` name beyond loopback) gets
the SSL redirect, secure session and CSRF cookies and HSTS without setting
anything, so ``check --deploy`` has no W004/W008/W012/W016; each can be turned
off explicitly, and then the warning is back. ``python3 run.py`` and the test
suite (DEBUG=0, loopback only, plain HTTP) keep working over http. ``/healthz``
answers over plain HTTP in every case (Docker's HEALTHCHECK).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

import pytest
from django.test import Client, override_settings

from settings import checks
from tests.support.env_settings import ROOT, child_env, settings_from_env

HTTPS_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "REQUIRE_SECRET_KEY": "1",
    "ALLOWED_HOSTS": "jobs.example.com",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "REVERSE_PROXY_COUNT": "1",
}
ALL_OFF = {"SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
HTTPS_SETTINGS = [
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_PROXY_SSL_HEADER",
]


def deploy_check_ids(env: dict[str, str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return set(re.findall(r"\(([a-z_]+\.[WE]\d{3})\)", result.stdout + result.stderr))


def test_a_deployment_passes_the_deploy_check_without_https_warnings():
    found = deploy_check_ids(PRODUCTION)
    assert not found & HTTPS_WARNINGS, found
    assert "scheduler.W002" not in found


def test_each_https_setting_can_be_turned_off_and_the_warning_comes_back():
    found = deploy_check_ids({**PRODUCTION, **ALL_OFF, "SECURE_HSTS_SECONDS": "0"})
    assert HTTPS_WARNINGS <= found, found


def test_https_off_turns_them_all_off():
    values = settings_from_env({**PRODUCTION, "HTTPS": "0"}, HTTPS_SETTINGS)
    assert values == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


def test_a_deployment_gets_a_year_of_hsts_and_the_proxy_header():
    values = settings_from_env(PRODUCTION, HTTPS_SETTINGS)
    assert values == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="python3 run.py: nothing set"),
        pytest.param({"ALLOWED_HOSTS": "localhost,127.0.0.1,::1"}, id="loopback names only"),
        pytest.param({"DEBUG": "1", "ALLOWED_HOSTS": "jobs.example.com"}, id="DEBUG"),
    ],
)
def test_the_local_set_up_keeps_plain_http(env):
    values = settings_from_env(env, HTTPS_SETTINGS)
    assert values == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_PROXY_SSL_HEADER": None,
    }


HTTPS_ON = {
    "SECURE_SSL_REDIRECT": True,
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
    "SECURE_HSTS_SECONDS": 3600,
    "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
}


@pytest.mark.django_db
@override_settings(**HTTPS_ON)
def test_with_https_on_plain_http_is_redirected_but_healthz_answers():
    client = Client()
    admin = client.get("/admin/login/")
    assert admin.status_code == 301
    assert admin["Location"] == "https://testserver/admin/login/"
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
@override_settings(**HTTPS_ON)
def test_behind_the_proxy_an_https_request_is_served_with_hsts():
    response = Client().get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=3600"
    assert "Secure" in str(response.cookies["csrftoken"])


@override_settings(SECURE_SSL_REDIRECT=True, REVERSE_PROXY_COUNT=1, SECURE_PROXY_SSL_HEADER=None)
def test_a_proxy_without_the_https_header_is_warned_about():
    assert [w.id for w in checks.check_proxy_tells_https()] == ["scheduler.W002"]
