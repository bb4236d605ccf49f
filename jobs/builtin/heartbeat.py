"""The heartbeat job: proof that beat → broker → worker → database is alive.

A successful run is itself the proof; its result records the lateness (start
minus scheduled time). Optional targets are checked too, and any failing
target fails the run, so on-call hears of it:

- ``{"url": "https://…", "expect_status": 200, "timeout": 5}``
- ``{"tcp": "host:port", "timeout": 5}``
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

from celery import current_task

from jobs.framework import job
from jobs.models import JobRun
from jobs.sendonly import names


class TargetCheckFailed(RuntimeError):
    """One or more heartbeat targets did not answer as expected."""


class InvalidTarget(ValueError):
    """A target that is neither ``{"url": …}`` nor ``{"tcp": "host:port"}``."""


def check_http(url: str, expect_status: int = 200, timeout: float = 5.0) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise InvalidTarget(f"target url {url!r} must start with http:// or https://")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return {"url": url, "ok": False, "error": str(getattr(exc, "reason", exc))}
    elapsed_ms = int((time.monotonic() - started) * 1000)
    ok = status == expect_status
    result = {"url": url, "ok": ok, "status": status, "elapsed_ms": elapsed_ms}
    if not ok:
        result["error"] = f"expected HTTP {expect_status}, got {status}"
    return result


def check_tcp(address: str, timeout: float = 5.0) -> dict[str, Any]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidTarget(f"tcp target {address!r} must look like host:port")
    started = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return {"tcp": address, "ok": False, "error": str(exc)}
    return {"tcp": address, "ok": True, "elapsed_ms": int((time.monotonic() - started) * 1000)}


def check_target(target: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(target, dict):
        raise InvalidTarget(f"a target must be a JSON object, got {target!r}")
    timeout = float(target.get("timeout", 5))
    if "url" in target:
        return check_http(target["url"], int(target.get("expect_status", 200)), timeout)
    if "tcp" in target:
        return check_tcp(str(target["tcp"]), timeout)
    raise InvalidTarget(f"a target needs 'url' or 'tcp', got keys {sorted(target)}")


@job(names.HEARTBEAT, queue="heartbeat", soft_time_limit=30, hard_time_limit=45)
def heartbeat(targets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Prove the pipeline is alive; check optional HTTP/TCP targets."""
    run_id = current_task.request.id if current_task else None  # None when called directly
    lateness_ms = (
        JobRun.objects.filter(pk=run_id).values_list("lateness_ms", flat=True).first() if run_id else None
    )
    results = [check_target(t) for t in targets or []]
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise TargetCheckFailed("; ".join(f"{r.get('url') or r.get('tcp')}: {r['error']}" for r in failed))
    return {"lateness_ms": lateness_ms, "targets": results}
