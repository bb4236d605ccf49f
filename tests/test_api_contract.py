"""The OpenAPI document is served, valid, and true: schemathesis calls every operation in-process.

schemathesis generates requests from the served document (valid ones, and
ones that break it), sends them through Django's WSGI app with a real token,
and checks that no response is a 5xx, that every status code, content type
and body is one the document declares.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
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

from jobs.catalog import publish_catalog
from scheduler.documents import save_document
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
    ("GET", "/api/v1/schedules"),
    ("POST", "/api/v1/schedules"),
    ("GET", "/api/v1/schedules/{schedule_id}"),
    ("PUT", "/api/v1/schedules/{schedule_id}"),
    ("PATCH", "/api/v1/schedules/{schedule_id}"),
    ("DELETE", "/api/v1/schedules/{schedule_id}"),
    ("POST", "/api/v1/schedules/{schedule_id}/pause"),
    ("POST", "/api/v1/schedules/{schedule_id}/resume"),
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
                if code == "204":
                    assert "content" not in response, (method, path)
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert "$ref" in schema or schema.get("type"), (method, path, code)
            assert operation.get("description"), (method, path)
    assert document["components"]["securitySchemes"] == {"BearerToken": {"type": "http", "scheme": "bearer"}}


def test_the_docs_page_is_served(db):
    response = Client(HTTP_HOST="localhost").get("/api/v1/docs")
    assert response.status_code == 200 and OPENAPI.encode() in response.content


@pytest.fixture
def connections_kept():
    """Keep the test's connection open across WSGI requests, as Django's test client does.

    Django closes "old" connections when a request starts and finishes; inside
    the test's transaction that would close it and lose the transaction.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.usefixtures("connections_kept")
def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(alice):
    # Not transactional: the requests run in this test's transaction, rolled back at its end, and
    # their on-commit publishing never fires (nothing reaches the broker).
    publish_catalog(worker="tests")
    schedule = save_document(
        {
            "name": "contract",
            "job": "diagnostics.sleep",
            "kwargs": {"seconds": 0},
            "schedule": {"cron": "0 9 * * *"},
        }
    )
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
    statuses: dict[tuple[str, str], set[int]] = defaultdict(set)
    # DELETE last: the other operations need the schedule.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: op.method == "delete"
    )
    for operation in operations:
        tested.add((operation.method.upper(), operation.path))
        # Anything the document allows, then the same with a real schedule and job (bodies at random):
        # random ids and names alone would mostly meet 404s and unknown jobs.
        real = {"schedule_id": schedule.pk, "name": "diagnostics.sleep"}
        known = {name: real[name] for name in real if "{" + name + "}" in operation.path}
        variants = [(mode, {}) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        if known:
            variants += [(GenerationMode.POSITIVE, known), (GenerationMode.NEGATIVE, known)]
        for mode, path_parameters in variants:

            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case) -> None:
                response = case.call_and_validate(headers=headers, checks=checks)
                statuses[(case.operation.method.upper(), case.operation.path)].add(response.status_code)

            call()
    # The real schedule and job were reached, not only refusals.
    succeeded = {key for key, codes in statuses.items() if any(200 <= code < 300 for code in codes)}
    assert {
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/runs"),
        ("GET", "/api/v1/schedules"),
        ("GET", "/api/v1/schedules/{schedule_id}"),
        ("PATCH", "/api/v1/schedules/{schedule_id}"),
        ("POST", "/api/v1/schedules/{schedule_id}/runs"),
        ("POST", "/api/v1/schedules/{schedule_id}/resume"),
        ("DELETE", "/api/v1/schedules/{schedule_id}"),
        ("GET", "/api/v1/health"),
    } <= {(m, p if p.startswith("/api") else "/api/v1" + p) for m, p in succeeded}, dict(statuses)
    assert {(m, "/api/v1" + p if not p.startswith("/api") else p) for m, p in tested} == OPERATIONS
