"""Run the whole platform in the foreground: web, a prefork worker and beat.

What it does, in order: starts an embedded Redis when ``REDIS_URL`` is unset,
migrates, publishes the job catalog, creates the admin user (printing a
generated password once) and the default schedules, then starts the three
processes and prefixes their output. Ctrl-C (or SIGTERM) stops every child;
if any child dies, the others are stopped too and the command exits non-zero,
because a platform without its beat or worker must not look healthy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from scheduler.embedded_redis import start_embedded_redis
from scheduler.seeding import ensure_admin_user, seed_default_schedules

STOP_GRACE_SECONDS = 15


class Command(BaseCommand):
    help = "Run web, worker and beat (and an embedded Redis when REDIS_URL is unset)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.RUN_HOST)
        parser.add_argument("--port", type=int, default=settings.RUN_PORT)
        parser.add_argument("--concurrency", type=int, default=settings.WORKER_CONCURRENCY)

    def handle(self, *args, host: str, port: int, concurrency: int, **options):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        try:
            self.prepare()
            self.start_processes(host, port, concurrency)
            self.stdout.write(
                self.style.SUCCESS(f"platform running: http://{host}:{port}/admin/  (Ctrl-C stops it)")
            )
            exit_code = self.supervise()
        except KeyboardInterrupt:
            exit_code = 0
        finally:
            self.stop_all()
        if exit_code:
            sys.exit(exit_code)

    def prepare(self) -> None:
        if settings.USES_EMBEDDED_REDIS:
            self.stdout.write(f"starting embedded Redis on 127.0.0.1:{settings.EMBEDDED_REDIS_PORT}")
            redis_process = start_embedded_redis(
                settings.EMBEDDED_REDIS_PORT, settings.VAR_DIR / "redis", snapshots=True
            )
            self.children.append(("redis", redis_process))
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        password = ensure_admin_user()
        if password:
            self.stdout.write(
                self.style.WARNING(
                    f"admin user {settings.ADMIN_USERNAME!r} created; password (shown once): {password}"
                )
            )
        for name in seed_default_schedules():
            self.stdout.write(f"seeded schedule: {name}")

    def start_processes(self, host: str, port: int, concurrency: int) -> None:
        python = sys.executable
        commands = {
            "web": [
                python,
                "-m",
                "gunicorn",
                "scheduler.wsgi:application",
                "--bind",
                f"{host}:{port}",
                "--workers",
                "2",
                "--access-logfile",
                "-",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "scheduler",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--queues",
                "default,heartbeat,reports",
                "--loglevel",
                "INFO",
                "--hostname",
                "worker@%h",
            ],
            "beat": [python, "-m", "celery", "-A", "scheduler", "beat", "--loglevel", "INFO"],
        }
        for name, command in commands.items():
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            )
            self.children.append((name, process))
            threading.Thread(target=self.relay, args=(name, process), daemon=True).start()

    def relay(self, name: str, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.stdout.write(f"{name:>6} | {line.rstrip()}")

    def supervise(self) -> int:
        while not self.stopping.is_set():
            for name, process in self.children:
                code = process.poll()
                if code is not None:
                    self.stderr.write(f"{name} exited with code {code}; stopping the platform")
                    return code or 1
            time.sleep(0.5)
        return 0

    def stop_all(self) -> None:
        # Web, worker and beat first (the worker acks in-flight messages on a
        # warm shutdown), then the Redis they talk to.
        services = [(n, p) for n, p in self.children if n != "redis"]
        redis = [(n, p) for n, p in self.children if n == "redis"]
        for group in (services, redis):
            for _, process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for name, process in group:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.stderr.write(f"{name} did not stop in {STOP_GRACE_SECONDS} s; killing it")
                    process.kill()
                    process.wait()
        self.stdout.write("platform stopped")
