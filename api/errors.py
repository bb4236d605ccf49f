"""One error shape for every refusal: ``{"message", "field", "errors": [{"field", "message"}]}``.

``field`` is where the fault is, as a dotted path into the request
(``"kwargs.amount"``, ``"schedule.cron"``, ``"cursor"``), or null when the
request as a whole is refused (no token, no permission, not found). Every
refusal is a 4xx; handlers here cover ninja's own errors (bad JSON, wrong
types, authentication) and Django's ``ValidationError`` raised by the
services the API calls (unknown job, invalid cron, unknown time zone…).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser

# Where ninja says a parameter came from: the first element of a pydantic location.
SOURCES = {"body", "query", "path", "header", "cookie", "form", "file"}
# The views' names for a schema taking the whole body or query string: not part of a field's path.
AGGREGATE_PARAMETERS = {"payload", "filters"}
NUL = "\x00"


class FieldError(Schema):
    field: str | None
    message: str


class ErrorOut(Schema):
    message: str
    field: str | None
    errors: list[FieldError]


class ApiError(Exception):
    """A refusal with its status; raised by the endpoints."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def responses(*statuses: int) -> dict[int, type[ErrorOut]]:
    """The error responses an operation can give, for its ``response=`` (the document lists them)."""
    return dict.fromkeys((401, *statuses), ErrorOut)


def error_body(errors: list[tuple[str | None, str]]) -> dict[str, Any]:
    field, message = errors[0]
    return {"message": message, "field": field, "errors": [{"field": f, "message": m} for f, m in errors]}


def field_of(location: tuple[Any, ...] | list[Any]) -> str | None:
    """A pydantic error location as a dotted path into the request.

    ("body", "payload", "kwargs", "days") → "kwargs.days"; ("query", "limit") → "limit".
    """
    parts = list(location)
    if parts and parts[0] in SOURCES:
        parts.pop(0)
        if parts and parts[0] in AGGREGATE_PARAMETERS:
            parts.pop(0)  # the view's parameter name, which the client never sees
    return ".".join(str(part) for part in parts) or None


def django_errors(exc: DjangoValidationError) -> list[tuple[str | None, str]]:
    if hasattr(exc, "error_dict"):
        return [
            (None if field == "__all__" else field, message)
            for field, messages in exc.message_dict.items()
            for message in messages
        ] or [(None, "Invalid.")]
    return [(None, message) for message in exc.messages] or [(None, "Invalid.")]


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


class StrictJsonParser(Parser):
    """ninja's JSON parser, refusing what PostgreSQL would refuse later with a 500: NUL in a string.

    (``scheduler.middleware`` refuses NUL in paths, query strings and forms; a
    JSON body is not a form, so it is checked here.)
    """

    def parse_body(self, request: HttpRequest) -> Any:
        data = json.loads(request.body)
        if _contains_nul(data):
            raise HttpError(400, "The JSON body contains a NUL character (\\u0000), which cannot be stored.")
        return data


def install_handlers(api: NinjaAPI) -> None:
    def refused(request: HttpRequest, status: int, errors: list[tuple[str | None, str]]) -> HttpResponse:
        response = api.create_response(request, error_body(errors), status=status)
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    def on_api_error(request: HttpRequest, exc: Any) -> HttpResponse:
        return refused(request, exc.status, [(exc.field, exc.message)])

    def on_http_error(request: HttpRequest, exc: Any) -> HttpResponse:
        message = str(exc)
        if isinstance(exc, AuthenticationError):
            message = "Authentication required: send Authorization: Bearer <token> with a live API token."
        elif exc.status_code == 400 and message.startswith("Cannot parse request body"):
            message = f"The body is not valid JSON ({message})."
        return refused(request, exc.status_code, [(None, message)])

    def on_validation_error(request: HttpRequest, exc: Any) -> HttpResponse:
        errors = [(field_of(error.get("loc", ())), str(error.get("msg", "Invalid."))) for error in exc.errors]
        return refused(request, 422, errors or [(None, "Invalid request.")])

    def on_django_validation_error(request: HttpRequest, exc: Any) -> HttpResponse:
        return refused(request, 422, django_errors(exc))

    def on_not_found(request: HttpRequest, exc: Any) -> HttpResponse:
        return refused(request, 404, [(None, str(exc) or "Not found.")])

    api.add_exception_handler(ApiError, on_api_error)
    api.add_exception_handler(HttpError, on_http_error)
    api.add_exception_handler(NinjaValidationError, on_validation_error)
    api.add_exception_handler(DjangoValidationError, on_django_validation_error)
    api.add_exception_handler(Http404, on_not_found)
