"""A NUL byte anywhere in a request is answered 400, never a 500.

PostgreSQL refuses NUL in text (``DataError: ... cannot contain NUL (0x00)
characters``), so a NUL reaching a query, e.g. an admin filter
``?status__exact=%00``, was a server error. The middleware answers every such
request 400 before a view runs; the admin URL from the bug report is checked
on the database the suite runs on (PostgreSQL in CI).
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client


@pytest.fixture
def admin_client(db) -> Client:
    user = get_user_model().objects.create_superuser("nul-admin", "nul-admin@example.com", "unused-pw-123")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_it_answers_400_to_a_nul_in_an_admin_filter(admin_client):
    response = admin_client.get("/admin/jobs/jobrun/?status__exact=%00")
    assert response.status_code == 400


def test_the_same_filter_without_a_nul_still_works(admin_client):
    assert admin_client.get("/admin/jobs/jobrun/?status__exact=queued").status_code == 200


def test_it_answers_400_to_a_nul_in_a_search(admin_client):
    assert admin_client.get("/admin/jobs/jobrun/?q=abc%00def").status_code == 400


def test_it_answers_400_to_a_nul_in_a_query_parameter_name(admin_client):
    assert admin_client.get("/admin/jobs/jobrun/?a%00b=1").status_code == 400


def test_it_answers_400_to_a_nul_in_the_path(admin_client):
    assert admin_client.get("/admin/jobs/jobrun/%00/change/").status_code == 400


def test_it_answers_400_to_a_nul_in_posted_form_data(admin_client):
    response = admin_client.post("/admin/django_celery_beat/crontabschedule/add/", {"minute": "0\x00"})
    assert response.status_code == 400


def test_it_answers_400_to_a_nul_in_a_multipart_form(admin_client):
    response = admin_client.post(
        "/admin/django_celery_beat/crontabschedule/add/", {"minute": "0\x00"}, format="multipart"
    )
    assert response.status_code == 400


@pytest.mark.django_db
def test_it_answers_400_to_a_nul_in_a_cookie():
    # An octal escape in a quoted cookie value is decoded by Django's cookie parser.
    cookie = 'sessionid="abcdefgh\\000ijklmnop"'
    assert Client(raise_request_exception=False).get("/admin/", HTTP_COOKIE=cookie).status_code == 400


@pytest.mark.django_db
def test_it_answers_400_to_a_nul_on_a_public_url():
    assert Client(raise_request_exception=False).get("/healthz?x=%00").status_code == 400
