"""The JSON API's tests: users with exactly some of the admin's permissions, their tokens, a client."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import Permission, User
from django.test import Client

from api.models import ApiToken


def user_with(username: str, *permissions: str) -> User:
    """A staff-less user holding exactly ``permissions`` ("app_label.codename")."""
    user = User.objects.create_user(username, f"{username}@example.com", "unused")
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=user.pk)  # permissions are cached per instance


def token_for(user: User, name: str = "tests") -> str:
    return ApiToken(user=user, name=name).set_new_secret()


class ApiClient:
    """Django's test client against ``/api/v1/``, sending a bearer token and JSON."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(
        self, method: str, path: str, body: Any = None, raw: str | None = None, **headers: str
    ) -> Any:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        extra = {"content_type": "application/json"} if data is not None else {}
        call = getattr(self.client, method.lower())
        url = path if path.startswith("http") or path.startswith("/") else f"/api/v1/{path}"
        return (
            call(url, data, headers={**self.headers, **headers}, **extra)
            if data is not None
            else call(url, headers={**self.headers, **headers})
        )

    def get(self, path: str, **headers: str) -> Any:
        return self.request("GET", path, **headers)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("PATCH", path, body, **kwargs)

    def delete(self, path: str, **headers: str) -> Any:
        return self.request("DELETE", path, **headers)
