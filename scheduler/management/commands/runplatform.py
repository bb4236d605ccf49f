"""Run the whole platform in the foreground: web, a prefork worker, beat and alertd.

What it does, in order: starts an embedded Redis when ``REDIS_URL`` is unset,
migrates, publishes the job catalog, creates the admin user (printing a
generated password once) and the default schedules, then starts the four
processes (alertd: the alert detector), and Flower when ``FLOWER_PORT`` is
set, and prefixes their output. A Flower without ``FLOWER_BASIC_AUTH`` is
refused before anything starts.

It supervises them like a process manager (:class:`Supervisor`): a child that
exits is logged at ERROR with its exit code and started again after a backoff
(1 s, doubling to 30 s while it keeps crashing), and the others keep serving.
Only a child that crashes ``CRASH_LIMIT`` times within ``CRASH_WINDOW_SECONDS``
makes it give up: every child is stopped and the command exits 1, because a
platform whose beat or worker cannot stay up must not look healthy. Ctrl-C (or
SIGTERM) stops every child and exits 0.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from scheduler.embedded_redis import redis_server_command, start_embedded_redis
from scheduler.management.commands.flower import basic_auth_problem
from scheduler.seeding import ensure_admin_user, seed_default_schedules

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15
POLL_SECONDS = 0.5
# A crashed child comes back after 1 s, then 2, 4, ... at most 30 s while it
# keeps crashing: quick after a one-off (an OOM kill, a broker blip), without
# spinning on a child that cannot start. One that then ran for
# CRASH_WINDOW_SECONDS starts over at 1 s.
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# Five crashes of one child within a minute are no bad luck but a broken
# configuration or dependency; restarting forever would hide it behind a
# platform that looks up. So the command stops and says which child.
CRASH_LIMIT = 5
CRASH_WINDOW_SECONDS = 60.0


def describe_exit(code: int) -> str:
    """``code 3``, or ``code -9 (SIGKILL)`` for a child killed by a signal."""
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


@dataclass
class Child:
    """One supervised process, how to start it again, and its recent crashes."""

    name: str
    start: Callable[[], subprocess.Popen]
    process: subprocess.Popen
    started_at: float
    crashes: deque[float] = field(default_factory=deque)
    streak: int = 0  # crashes since it last ran for a whole window: sets the backoff
    restart_at: float | None = None  # set while it waits out its backoff


class Supervisor:
    """Restarts children that exit, with exponential backoff; gives up on one that keeps crashing.

    ``check()`` is one look at every child and returns False when the platform
    must stop. Any exit counts as a crash, code 0 included: nothing here may
    end on its own while the platform runs. Times are ``time.monotonic()``
    seconds, or the ``now`` a caller passes (tests step time with it). A child
    waiting for its restart is not running; ``processes()`` still lists its
    old, finished process, so stopping the platform skips it.
    """

    def __init__(
        self,
        *,
        first_delay: float = FIRST_RESTART_DELAY,
        max_delay: float = MAX_RESTART_DELAY,
        crash_limit: int = CRASH_LIMIT,
        window: float = CRASH_WINDOW_SECONDS,
    ) -> None:
        self.first_delay, self.max_delay = first_delay, max_delay
        self.crash_limit, self.window = crash_limit, window
        self.children: list[Child] = []

    def add(
        self,
        name: str,
        start: Callable[[], subprocess.Popen],
        process: subprocess.Popen | None = None,
        now: float | None = None,
    ) -> Child:
        """Supervise ``name``: ``process`` if it is already running, else what ``start()`` returns."""
        child = Child(name, start, process or start(), time.monotonic() if now is None else now)
        self.children.append(child)
        return child

    def processes(self) -> list[tuple[str, subprocess.Popen]]:
        return [(child.name, child.process) for child in self.children]

    def check(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self.restart(child, now)
                continue
            code = child.process.poll()
            if code is not None and not self.crashed(child, code, now):
                return False
        return True

    def crashed(self, child: Child, code: int, now: float) -> bool:
        """Record the crash; schedule the restart, or return False past the limit."""
        if now - child.started_at >= self.window:
            child.streak = 0
        child.streak += 1
        child.crashes.append(now)
        while child.crashes[0] <= now - self.window:
            child.crashes.popleft()
        if len(child.crashes) >= self.crash_limit:
            logger.error(
                "%s exited with %s: %d crashes within %.0f s, giving up; stopping the platform",
                child.name,
                describe_exit(code),
                len(child.crashes),
                self.window,
            )
            return False
        delay = min(self.first_delay * 2 ** (child.streak - 1), self.max_delay)
        child.restart_at = now + delay
        logger.error(
            "%s exited with %s; restarting it in %.0f s (%d of %d crashes within %.0f s before giving up)",
            child.name,
            describe_exit(code),
            delay,
            len(child.crashes),
            self.crash_limit,
            self.window,
        )
        return True

    def restart(self, child: Child, now: float) -> None:
        child.process = child.start()
        child.started_at, child.restart_at = now, None
        logger.info("%s restarted (pid %d)", child.name, child.process.pid)


class Command(BaseCommand):
    help = "Run web, worker, beat and alertd (and an embedded Redis when REDIS_URL is unset)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.RUN_HOST)
        parser.add_argument("--port", type=int, default=settings.RUN_PORT)
        parser.add_argument("--concurrency", type=int, default=settings.WORKER_CONCURRENCY)

    def handle(self, *args, host: str, port: int, concurrency: int, **options):
        self.supervisor = Supervisor()
        self.stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        # Ctrl-C too, set here rather than left to Python's default: a process started
        # in the background by a shell without job control inherits SIGINT ignored,
        # and Python then installs no KeyboardInterrupt for it.
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
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
        if settings.FLOWER_PORT and (problem := basic_auth_problem(settings.FLOWER_BASIC_AUTH)):
            raise CommandError(f"FLOWER_PORT is set but {problem}: set FLOWER_BASIC_AUTH=user:password.")
        if settings.USES_EMBEDDED_REDIS:
            self.stdout.write(f"starting embedded Redis on 127.0.0.1:{settings.EMBEDDED_REDIS_PORT}")
            data_dir = settings.VAR_DIR / "redis"
            command = redis_server_command(settings.EMBEDDED_REDIS_PORT, data_dir, snapshots=True)
            # The first start waits for PING (migrate and the catalog come next);
            # a restart does not hold up the supervision loop.
            process = start_embedded_redis(settings.EMBEDDED_REDIS_PORT, data_dir, snapshots=True)
            self.supervisor.add("redis", lambda: self.spawn("redis", command), process)
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
            # The alert detector and notification sender (the alerts app), run as a
            # command: scheduler never imports alerts.
            "alertd": [python, str(settings.BASE_DIR / "manage.py"), "alertd"],
        }
        if settings.FLOWER_PORT:  # optional: the Celery monitor, behind FLOWER_BASIC_AUTH
            commands["flower"] = [python, str(settings.BASE_DIR / "manage.py"), "flower", "--address", host]
        for name, command in commands.items():
            self.supervisor.add(name, functools.partial(self.spawn, name, command))

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        threading.Thread(target=self.relay, args=(name, process), daemon=True).start()
        return process

    def relay(self, name: str, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.stdout.write(f"{name:>6} | {line.rstrip()}")

    def supervise(self) -> int:
        while not self.stopping.wait(POLL_SECONDS):
            if not self.supervisor.check():
                return 1
        return 0

    def stop_all(self) -> None:
        # Web, worker, beat and alertd first (the worker acks in-flight messages on a
        # warm shutdown), then the Redis they talk to.
        children = self.supervisor.processes()
        services = [(n, p) for n, p in children if n != "redis"]
        redis = [(n, p) for n, p in children if n == "redis"]
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
