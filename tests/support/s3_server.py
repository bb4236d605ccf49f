"""A local S3-compatible server (moto's ``moto_server``) for the reports storage's S3 path.

``moto_server`` is a real HTTP server speaking S3's REST API on 127.0.0.1;
django-storages and boto3 talk to it exactly as to any S3-compatible store
(endpoint URL, bucket, keys). It comes with the development dependencies
(``moto[server]``); ``moto_server_command()`` finds it beside this Python,
else on the PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import free_port


def moto_server_command() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@contextmanager
def s3_server(timeout: float = 30.0) -> Iterator[str]:
    """Start ``moto_server`` on a free port; yield its endpoint URL; stop it (by its pid) at the end."""
    command = moto_server_command()
    if command is None:
        raise RuntimeError("moto_server is not installed")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(  # noqa: S603  (our own command line)
        [command, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(endpoint, timeout=1):  # noqa: S310  (a local URL)
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"moto_server did not answer at {endpoint} within {timeout} s"
                    ) from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
