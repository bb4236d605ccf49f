"""Heartbeat targets: an HTTP or TCP target that does not answer as expected fails the run."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobs.builtin.heartbeat import InvalidTarget, TargetCheckFailed, check_target, heartbeat


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_http_target_answering_the_expected_status_passes(http_base):
    result = check_target({"url": f"{http_base}/ok", "expect_status": 200, "timeout": 2})
    assert result["ok"] and result["status"] == 200


def test_an_http_target_answering_another_status_fails_with_the_reason(http_base):
    result = check_target({"url": f"{http_base}/down", "timeout": 2})
    assert not result["ok"]
    assert result["error"] == "expected HTTP 200, got 503"


def test_a_tcp_target_that_refuses_connections_fails(http_base):
    port = http_base.rsplit(":", 1)[1]
    assert check_target({"tcp": f"127.0.0.1:{port}"})["ok"]
    assert not check_target({"tcp": f"127.0.0.1:{closed_port()}", "timeout": 1})["ok"]


@pytest.mark.parametrize(
    "target", [{"url": "ftp://example.invalid/"}, {"tcp": "no-port"}, {"host": "x"}, "just a string"]
)
def test_a_malformed_target_is_a_clear_error(target):
    with pytest.raises(InvalidTarget):
        check_target(target)


@pytest.mark.django_db
def test_the_heartbeat_run_fails_when_any_target_fails(http_base):
    with pytest.raises(TargetCheckFailed, match="503"):
        heartbeat.run(targets=[{"url": f"{http_base}/ok"}, {"url": f"{http_base}/down"}])
