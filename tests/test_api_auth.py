"""The API's tokens: stored hashed, shown once in the admin, revocable; permissions as in the admin."""

from __future__ import annotations

import hashlib
import re

import pytest

from api.models import ApiToken
from tests.support.api_client import ApiClient, token_for, user_with

pytestmark = pytest.mark.django_db


def test_no_token_is_a_401_in_the_error_shape(catalog):
    response = ApiClient(None).get("jobs")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["field"] is None and "Bearer" in body["message"]
    assert body["errors"] == [{"field": None, "message": body["message"]}]


def test_an_unknown_token_is_a_401():
    assert ApiClient("sj_not-a-token").get("jobs").status_code == 401


def test_a_revoked_token_is_a_401(catalog, django_user_model):
    user = user_with("viewer", "jobs.view_jobdefinition")
    token = token_for(user)
    assert ApiClient(token).get("jobs").status_code == 200
    ApiToken.objects.filter(user=user).update(revoked_at="2026-01-01T00:00:00Z")
    assert ApiClient(token).get("jobs").status_code == 401


def test_an_inactive_users_token_is_a_401(catalog):
    user = user_with("gone", "jobs.view_jobdefinition")
    token = token_for(user)
    user.is_active = False
    user.save()
    assert ApiClient(token).get("jobs").status_code == 401


def test_a_token_without_the_permission_is_a_403_naming_it(catalog):
    client = ApiClient(token_for(user_with("nobody")))
    for path in ("jobs", "runs", "runs/00000000-0000-0000-0000-000000000000"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "lacks the permission" in response.json()["message"]
    response = client.post("jobs/diagnostics.sleep/runs", {"args": [0]})
    assert response.status_code == 403
    assert "scheduler.run_schedule" in response.json()["message"]


def test_only_the_hash_and_a_prefix_are_stored_and_use_is_noted(catalog):
    user = user_with("viewer", "jobs.view_jobdefinition")
    secret = token_for(user)
    token = ApiToken.objects.get(user=user)
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(token.prefix) and len(token.prefix) < len(secret) // 3
    assert secret not in str([getattr(token, f.attname) for f in ApiToken._meta.concrete_fields])
    assert token.last_used_at is None
    ApiClient(secret).get("jobs")
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_the_admin_shows_a_new_token_once_and_it_works(alices_client, alice):
    response = alices_client.post(
        "/admin/api/apitoken/add/", {"user": alice.pk, "name": "billing service"}, follow=True
    )
    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    (secret,) = re.findall(r"\bsj_[\w-]{20,}", " ".join(shown))
    token = ApiToken.objects.get(name="billing service")
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert ApiClient(secret).get("jobs").status_code == 200
    # Never again: the token's page does not show it.
    page = alices_client.get(f"/admin/api/apitoken/{token.pk}/change/")
    assert secret not in page.content.decode() and token.prefix in page.content.decode()


def test_the_admin_revokes_tokens(alices_client, alice):
    secret = token_for(alice)
    token = ApiToken.objects.get(user=alice)
    response = alices_client.post(
        "/admin/api/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert ApiClient(secret).get("jobs").status_code == 401


def test_a_non_superuser_makes_tokens_only_for_themselves(client, alice):
    staff = user_with("staff", "api.add_apitoken", "api.view_apitoken", "api.change_apitoken")
    staff.is_staff = True
    staff.save()
    token_for(alice, "alice's")
    client.force_login(staff)
    response = client.post("/admin/api/apitoken/add/", {"user": alice.pk, "name": "as alice"})
    assert response.status_code == 200 and "user" in response.context["adminform"].form.errors
    assert not ApiToken.objects.filter(name="as alice").exists()
    assert "alice&#x27;s" not in client.get("/admin/api/apitoken/").content.decode()
    client.post("/admin/api/apitoken/add/", {"user": staff.pk, "name": "mine"})
    assert ApiToken.objects.get(name="mine").user == staff
