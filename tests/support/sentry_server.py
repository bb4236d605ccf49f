"""A local stand-in for Sentry's envelope endpoint, for the real sentry-sdk to post to.

Accepts ``POST /api/<project>/envelope/`` (gzip or plain), parses the envelope
(header line, then item header + payload pairs) and keeps every item, so tests
can assert on what a worker, beat or web process really sent. Binds 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def parse_envelope(body: bytes) -> list[dict[str, Any]]:
    """Items of an envelope as ``{"type": ..., "payload": ...}`` dicts."""
    items = []
    _header, _, rest = body.partition(b"\n")
    while rest.strip():
        item_header_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_header_line)
        length = item_header.get("length")
        if length is not None:
            payload, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        try:
            parsed: Any = json.loads(payload)
        except ValueError:
            parsed = payload
        items.append({"type": item_header.get("type"), "payload": parsed})
    return items


class FakeSentry:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path.startswith("/api/") and self.path.endswith("/envelope/")
                if ok:
                    with outer.lock:
                        outer.items.extend(parse_envelope(body))
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def start(self) -> FakeSentry:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [i["payload"] for i in self.items if i["type"] == "event"]

    def check_ins(self, monitor_slug: str) -> list[dict[str, Any]]:
        """The Sentry Crons check-ins received for ``monitor_slug`` (item type ``check_in``), in order."""
        with self.lock:
            items = [i["payload"] for i in self.items if i["type"] == "check_in"]
        return [c for c in items if c.get("monitor_slug") == monitor_slug]

    def wait_for_check_ins(
        self, monitor_slug: str, count: int, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` check-ins for ``monitor_slug`` arrived; fail with what did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.check_ins(monitor_slug)) >= count:
                return found
            time.sleep(0.2)
        raise AssertionError(
            f"fewer than {count} check-ins for {monitor_slug!r} within {timeout} s: "
            f"{self.check_ins(monitor_slug)!r}"
        )

    def wait_for_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.2)
        raise AssertionError(f"no matching Sentry event within {timeout} s; got {self.events()!r}")


def tags_of(event: dict[str, Any]) -> dict[str, str]:
    tags = event.get("tags") or {}
    if isinstance(tags, list):
        return {k: v for k, v in tags}
    return tags
