"""Schedules over the API: the document shape, the admin's validation, the change log, pause and resume."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.catalog import publish_catalog
from scheduler.models import BeatLease, ScheduleChange, SchedulePolicy
from tests.support.api_client import ApiClient, token_for, user_with

pytestmark = pytest.mark.django_db

EDITOR = (
    "django_celery_beat.view_periodictask",
    "django_celery_beat.add_periodictask",
    "django_celery_beat.change_periodictask",
    "django_celery_beat.delete_periodictask",
    "scheduler.pause_schedule",
)


def document(**changes):
    return {
        "name": "nightly sleep",
        "job": "diagnostics.sleep",
        "kwargs": {"seconds": 1},
        "schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
        "policy": {"soft_time_limit": 30, "hard_time_limit": 40, "overlap": "skip"},
        **changes,
    }


@pytest.fixture
def editor():
    publish_catalog(worker="tests")
    return ApiClient(token_for(user_with("editor", *EDITOR)))


def create(client: ApiClient, **changes) -> dict:
    response = client.post("schedules", document(**changes))
    assert response.status_code == 201, response.content
    return response.json()


def test_create_returns_the_document_and_records_the_change(editor):
    created = create(editor)
    assert created["url"].endswith(f"/api/v1/schedules/{created['id']}")
    assert created["name"] == "nightly sleep" and created["job"] == "diagnostics.sleep"
    assert created["schedule"] == {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}
    assert created["policy"]["hard_time_limit"] == 40 and created["policy"]["overlap"] == "skip"
    assert created["slug"] and created["paused"] is None
    assert ScheduleChange.objects.filter(task_id=created["id"]).exists()  # beat hears of it
    assert editor.get(f"schedules/{created['id']}").json() == created


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({"schedule": {"cron": "0 0 30 2 *"}}, "schedule.cron"),  # never fires
        ({"schedule": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone"),
        ({"job": "no.such.job"}, "job"),
        ({"kwargs": {"seconds": "long"}}, None),
        ({"policy": {"soft_time_limit": 100, "hard_time_limit": 50}}, "policy.hard_time_limit"),
        ({"policy": {"polcy": 1}}, "policy.polcy"),
        ({"colour": "red"}, "colour"),
        ({"args": "nope"}, "args"),
        ({"enabled": "perhaps"}, "enabled"),
    ],
)
def test_invalid_documents_are_422s_naming_the_field_and_save_nothing(editor, changes, field):
    response = editor.post("schedules", document(**changes))
    assert response.status_code == 422, response.content
    error = response.json()
    if field is not None:
        assert error["field"] == field, error
    assert error["message"]
    assert not PeriodicTask.objects.filter(name="nightly sleep").exists()


def test_bad_json_is_a_400(editor):
    response = editor.post("schedules", raw="{nope")
    assert response.status_code == 400 and "JSON" in response.json()["message"]


def test_put_replaces_and_patch_merges(editor):
    created = create(editor)
    url = f"schedules/{created['id']}"
    patched = editor.patch(url, {"policy": {"jitter": 5}, "enabled": False}).json()
    assert patched["policy"]["jitter"] == 5 and patched["policy"]["hard_time_limit"] == 40
    assert patched["enabled"] is False and patched["schedule"] == created["schedule"]
    replaced = editor.put(url, document(schedule={"every": 10, "period": "minutes"}, slug=created["slug"]))
    assert replaced.status_code == 200, replaced.content
    body = replaced.json()
    assert body["schedule"]["every"] == 10 and body["policy"]["jitter"] == 0  # left out: the default
    assert body["enabled"] is True and body["slug"] == created["slug"]
    refused = editor.patch(url, {"schedule": {"cron": "0 25 * * *"}})
    assert refused.status_code == 422 and refused.json()["field"] == "schedule.cron"
    assert editor.get(url).json() == body  # the refused patch changed nothing


def test_delete(editor):
    created = create(editor)
    assert editor.delete(f"schedules/{created['id']}").status_code == 204
    assert not PeriodicTask.objects.filter(pk=created["id"]).exists()
    assert editor.delete(f"schedules/{created['id']}").status_code == 404


def test_pause_with_a_note_and_an_end_then_resume(editor):
    created = create(editor)
    until = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    paused = editor.post(
        f"schedules/{created['id']}/pause", {"note": "deploy freeze", "until": until.isoformat()}
    )
    assert paused.status_code == 200, paused.content
    assert paused.json()["paused"] == {"note": "deploy freeze", "until": until.isoformat(), "by": "editor"}
    policy = SchedulePolicy.objects.get(task_id=created["id"])
    assert policy.pause_note == "deploy freeze" and policy.paused_until == until
    resumed = editor.post(f"schedules/{created['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"note": ""}, "note"),
        ({"note": "x", "until": "2001-01-01T00:00:00+00:00"}, "until"),
        ({"note": "x", "until": "2099-01-01T00:00:00"}, "until"),
        ({"note": "x", "until": "someday"}, "until"),
        ({}, "note"),
    ],
)
def test_a_bad_pause_is_a_422_and_changes_nothing(editor, body, field):
    created = create(editor)
    response = editor.post(f"schedules/{created['id']}/pause", body)
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field, response.json()
    assert SchedulePolicy.objects.get(task_id=created["id"]).paused_at is None


def test_schedule_pages_by_cursor(editor):
    ids = [create(editor, name=f"s{i}")["id"] for i in range(7)]
    seen, url = [], "schedules?limit=3"
    while url:
        page = editor.get(url).json()
        seen += [item["id"] for item in page["items"]]
        url = page["next"]
    assert seen == sorted(ids)
    assert len(editor.get("schedules?enabled=false").json()["items"]) == 0
    assert len(editor.get("schedules?job=diagnostics.sleep").json()["items"]) == 7


def test_permissions_match_the_admins(editor):
    created = create(editor)
    viewer = ApiClient(token_for(user_with("viewer", "django_celery_beat.view_periodictask")))
    assert viewer.get(f"schedules/{created['id']}").status_code == 200
    assert viewer.post("schedules", document(name="other")).status_code == 403
    assert viewer.patch(f"schedules/{created['id']}", {"enabled": False}).status_code == 403
    assert viewer.delete(f"schedules/{created['id']}").status_code == 403
    assert viewer.post(f"schedules/{created['id']}/pause", {"note": "x"}).status_code == 403
    assert viewer.post(f"schedules/{created['id']}/runs").status_code == 403
    nobody = ApiClient(token_for(user_with("nobody")))
    assert nobody.get("schedules").status_code == 403


def test_health_says_what_is_down(editor):
    response = editor.get("health")
    assert response.status_code == 503  # no beat leads in a test
    assert response.json() == {
        "status": "unhealthy",
        "database": "ok",
        "broker": "ok",
        "beat": {"status": "failing", "leader": None, "lease_expires_at": None},
    }
    expires = timezone.now() + timedelta(seconds=10)
    BeatLease.objects.create(name="beat", holder="beat-1", expires_at=expires)
    response = editor.get("health")
    assert response.status_code == 200
    assert response.json()["beat"]["leader"] == "beat-1" and response.json()["status"] == "ok"
    BeatLease.objects.filter(name="beat").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert editor.get("health").json()["beat"]["status"] == "failing"  # the leader's lease ran out
