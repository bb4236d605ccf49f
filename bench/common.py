"""Shared pieces of the beat benchmark: paths, the bench database and broker, Django set-up.

Everything talks to 127.0.0.1 only: PostgreSQL on 5432 (user ``postgres``,
trust auth) and Redis on 6379, database number ``REDIS_DB`` (flushed by the
bench; the takeover run uses ``TAKEOVER_REDIS_DB`` instead, never another one).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PYTHON = sys.executable

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
SEED_DB = "bench_beat_seed"  # migrated and seeded once per size, used as a template
RUN_DB = "bench_beat"  # a fresh copy of the seed for every measured process
TAKEOVER_DB = "bench_takeover"  # the takeover run's own database (it may run beside the main bench)

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_DB = 9
TAKEOVER_REDIS_DB = 10  # the takeover run's broker database, apart from the main bench's
ALERTING_REDIS_DB = 14  # bench/alerting_latency.py's broker database
BURST_QUEUE = "bench_burst"
IDLE_QUEUE = "bench_idle"
LATENESS_QUEUE = "bench_lateness"
LATENESS_LIST = "bench:lateness:starts"
TAKEOVER_QUEUE = "bench_takeover"

# Interval schedules of the burst fire every day; the rest use these periods.
BURST_EVERY = (1, "days")


def database_url(name: str) -> str:
    return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def redis_url(db: int = REDIS_DB) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def bench_env(db_name: str, redis_db: int = REDIS_DB) -> dict[str, str]:
    """Environment for a Django process of the bench: its database, broker, quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in {"SENTRY_DSN", "BROKER_URL", "DEBUG"}}
    env.update(
        DJANGO_SETTINGS_MODULE="settings",
        DATABASE_URL=database_url(db_name),
        REDIS_URL=redis_url(redis_db),
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_checked(args: list[str], env: dict[str, str], what: str, timeout: float) -> None:
    """Run a bench step (a migrate, a seeding) in the repository; raise with its stderr if it fails."""
    import subprocess

    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")


def setup_django(db_name: str, redis_db: int = REDIS_DB) -> None:
    os.environ.update(bench_env(db_name, redis_db))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()


def admin_connection():
    """An autocommit connection to the ``postgres`` maintenance database."""
    return db_connection("postgres")


def db_connection(name: str):
    """An autocommit connection to database ``name``."""
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name, autocommit=True)


def drop_database(name: str) -> None:
    with admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(name: str, template: str | None = None) -> None:
    with admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')


def redis_client(db: int = REDIS_DB):
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=10)


def flush_bench_redis(db: int = REDIS_DB) -> None:
    """FLUSHDB on one of the bench's own Redis database numbers only."""
    assert db in (REDIS_DB, TAKEOVER_REDIS_DB, ALERTING_REDIS_DB)
    client = redis_client(db)
    assert client.connection_pool.connection_kwargs["db"] == db
    client.flushdb()


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, for the machine line of a result."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def proc_status() -> dict[str, float]:
    """VmRSS / VmHWM of this process in MB (Linux), and ru_maxrss."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def sleep_until(wall: float) -> None:
    """Sleep until ``time.time() >= wall`` (coarse sleep, then a short spin)."""
    while True:
        left = wall - time.time()
        if left <= 0:
            return
        if left > 0.002:
            time.sleep(left - 0.001)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}g}"


def ratio(theirs, ours) -> str:
    if theirs is None or ours is None or ours == 0:
        return "–"
    r = theirs / ours
    return f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def stop_process(process, timeout: float = 30.0) -> None:
    """SIGTERM a process the bench started (its pid only), SIGKILL it if it does not stop in ``timeout``."""
    import signal
    import subprocess

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def append_results(text: str) -> None:
    """Add a section to ``bench/results.md``."""
    with (REPO / "bench" / "results.md").open("a") as out:
        out.write("\n" + text)


def database_exists(name: str) -> bool:
    with admin_connection() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def seeded_runs(schedules: int) -> int:
    """The runs of a database seeded before; refuses one seeded at another number of schedules."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_celery_beat_periodictask")
        found = cursor.fetchone()[0]
        if found != schedules:
            raise SystemExit(f"--reuse-db: the database holds {found:,} schedules, not {schedules:,}")
        cursor.execute("SELECT count(*) FROM jobs_jobrun")
        return cursor.fetchone()[0]


def short_sql(sql: str, limit: int = 160) -> str:
    """A statement on one line, cut at ``limit`` characters, safe inside a markdown code span."""
    sql = " ".join(sql.split()).replace("`", "'")
    return sql if len(sql) <= limit else sql[: limit - 1] + "…"


def open_bench_database(name: str, redis_db: int = REDIS_DB, reuse: bool = False) -> bool:
    """Make database ``name`` this process's: created empty (or kept: ``reuse``), migrated, Django set up.

    Returns whether an earlier run's database was reused (``reuse`` and it exists).
    """
    reused = reuse and database_exists(name)
    if not reused:
        create_database(name)
    run_checked([PYTHON, "manage.py", "migrate", "-v0"], bench_env(name, redis_db), "migrate", 300)
    setup_django(name, redis_db)
    return reused


def close_bench_database(name: str, keep: bool) -> None:
    """Close this process's connections, then drop database ``name`` unless ``keep``."""
    from django.db import connections

    connections.close_all()
    if not keep:
        drop_database(name)
