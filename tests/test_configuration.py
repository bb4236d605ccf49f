"""Configuration invariants: system checks, migrations in step with models, env parsing."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import override_settings

from settings import checks
from settings.env import envbool, envheader, envint, envlist, envstr


def test_the_system_checks_pass_with_the_shipped_settings():
    call_command("check", fail_level="WARNING")


@pytest.mark.django_db
def test_the_migrations_match_the_models():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@override_settings(TIME_ZONE="Europe/Berlin")
def test_a_time_zone_other_than_utc_is_an_error():
    assert [e.id for e in checks.check_time_zone_is_utc()] == ["scheduler.E001"]


@override_settings(CELERY_ACCEPT_CONTENT=["json", "pickle"])
def test_accepting_pickle_is_an_error():
    assert [e.id for e in checks.check_json_only_serializers()] == ["scheduler.E003"]


@override_settings(CELERY_TASK_SERIALIZER="pickle")
def test_a_pickle_task_serializer_is_an_error():
    assert [e.id for e in checks.check_json_only_serializers()] == ["scheduler.E004"]


@override_settings(CELERY_BROKER_URL="http://example.invalid/")
def test_a_broker_url_that_is_not_redis_or_amqp_is_an_error():
    assert [e.id for e in checks.check_broker_url()] == ["scheduler.E005"]


@override_settings(CELERY_BROKER_URL="http://broker-user:hunter2@broker.internal:8080/vhost")
def test_it_names_only_the_scheme_of_a_bad_broker_url():
    [error] = checks.check_broker_url()
    text = f"{error.msg} {error.hint}"
    assert "'http'" in text
    for secret in ("hunter2", "broker-user", "broker.internal", "8080", "vhost"):
        assert secret not in text


def test_env_helpers_name_the_variable_in_their_errors(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='maybe' is not a boolean"):
        envbool("SOME_FLAG")
    monkeypatch.setenv("SOME_COUNT", "ten")
    with pytest.raises(ImproperlyConfigured, match="SOME_COUNT='ten' is not a whole number"):
        envint("SOME_COUNT", 1)


def test_a_secret_can_come_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("MY_SECRET_FILE", str(secret))
    assert envstr("MY_SECRET") == "from-file"


def test_a_proxy_header_is_read_as_django_spells_it(monkeypatch):
    monkeypatch.setenv("PROXY_HEADER", "X-Forwarded-Proto")
    assert envheader("PROXY_HEADER") == ("HTTP_X_FORWARDED_PROTO", "https")
    monkeypatch.setenv("PROXY_HEADER", "X-Forwarded-Ssl: on")
    assert envheader("PROXY_HEADER") == ("HTTP_X_FORWARDED_SSL", "on")
    monkeypatch.setenv("PROXY_HEADER", "X Forwarded Proto")
    with pytest.raises(ImproperlyConfigured, match="PROXY_HEADER='X Forwarded Proto' is not a header name"):
        envheader("PROXY_HEADER")
    monkeypatch.delenv("PROXY_HEADER")
    assert envheader("PROXY_HEADER") is None


def test_a_list_drops_blanks(monkeypatch):
    monkeypatch.setenv("SOME_LIST", " a.example, ,b.example,")
    assert envlist("SOME_LIST") == ["a.example", "b.example"]


def test_an_empty_boolean_is_its_default(monkeypatch):
    # docker-compose passes ${HTTPS:-} as an empty string when the variable is unset.
    monkeypatch.setenv("SOME_FLAG", "")
    assert envbool("SOME_FLAG", default=True) is True
    assert envbool("SOME_FLAG", default=False) is False
    monkeypatch.setenv("SOME_FLAG", "off")
    assert envbool("SOME_FLAG", default=True) is False
