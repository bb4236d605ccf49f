"""The OpenAPI document is served, valid, and true: schemathesis calls every operation in-process.

schemathesis generates requests from the served document (valid ones, and
ones that break it), sends them through Django's WSGI app with a real token,
and checks that no response is a 5xx, that every status code, content type
and body is one the document declares.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from scheduler.models import BeatLease
from tests.support.api_client import token_for

OPENAPI = "/api/v1/openapi.json"
OPERATIONS = {
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/{name}/runs"),
    ("POST", "/api/v1/schedules/{schedule_id}/runs"),
    ("GET", "/api/v1/runs/{run_id}"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/health"),
}
EXAMPLES_PER_OPERATION = 25


@pytest.fixture
def document(db):
    response = Client(HTTP_HOST="localhost").get(OPENAPI)
    assert response.status_code == 200
    return response.json()


def test_the_document_is_valid_openapi_3_and_lists_every_operation(document):
    assert document["openapi"].startswith("3.1")
    OPENAPI_31_VALIDATOR.validate(document)  # the OpenAPI 3.1 meta-schema, as schemathesis bundles it
    served = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert served == OPERATIONS
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation["security"] == [{"BearerToken": []}], (method, path)
            responses = operation["responses"]
            assert "401" in responses, (method, path)
            success = [code for code in responses if code.startswith("2")]
            assert success, (method, path)
            for code, response in responses.items():
                assert "$ref" in response["content"]["application/json"]["schema"] or response["content"][
                    "application/json"
                ]["schema"].get("type"), (method, path, code)
            assert operation.get("description"), (method, path)
    assert document["components"]["securitySchemes"] == {"BearerToken": {"type": "http", "scheme": "bearer"}}


def test_the_docs_page_is_served(db):
    response = Client(HTTP_HOST="localhost").get("/api/v1/docs")
    assert response.status_code == 200 and OPENAPI.encode() in response.content


@pytest.mark.django_db(transaction=False)
def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(catalog, alice):
    # transaction=False: the requests run in this test's transaction, rolled back at its end, and
    # their on-commit publishing never fires (nothing reaches the broker).
    # A leading beat, so /health is a 200 (its 503 is a server error to schemathesis; tested elsewhere).
    BeatLease.objects.create(name="beat", holder="tests", expires_at=timezone.now() + timedelta(hours=1))
    schema = schemathesis.openapi.from_wsgi(OPENAPI, get_wsgi_application())
    schema.config.generation.update(allow_x00=False)  # NUL is refused by middleware as HTML (400)
    headers = {"Authorization": f"Bearer {token_for(alice)}", "Host": "localhost"}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    tested = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        tested.add((operation.method.upper(), operation.path))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case) -> None:
                case.call_and_validate(headers=headers, checks=checks)

            call()
    assert {(m, "/api/v1" + p if not p.startswith("/api") else p) for m, p in tested} == OPERATIONS
