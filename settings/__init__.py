"""Django settings for the scheduled-jobs platform.

Everything that varies between a laptop and production comes from the
environment, read through :mod:`settings.env`. With nothing set, a fresh clone
runs on SQLite (WAL mode) under ``var/`` and an embedded Redis server started by
``manage.py runplatform``. Production sets ``DATABASE_URL``, ``REDIS_URL`` (or
``BROKER_URL`` for RabbitMQ), ``SECRET_KEY`` and ``DEBUG=0``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from settings.env import envbool, envfloat, envheader, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DEBUG", default=False)
SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and envbool("REQUIRE_SECRET_KEY", default=False):
        raise ImproperlyConfigured("SECRET_KEY is required in production (or SECRET_KEY_FILE)")
    # A fixed development key: fine for the embedded set-up, refused by the
    # production check (scheduler.W001) so it never ships unnoticed.
    SECRET_KEY = "dev-insecure-key-set-SECRET_KEY-in-production"  # noqa: S105

# Loopback is always allowed: container health checks call http://127.0.0.1/healthz.
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
ALLOWED_HOSTS = sorted({"127.0.0.1", "localhost"} | set(envlist("ALLOWED_HOSTS")))
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

# --- HTTPS ------------------------------------------------------------------------
# A site served to any host beyond loopback, outside DEBUG, is a deployment and
# must be HTTPS only: redirect, secure cookies, HSTS. The two local commands
# (python3 run.py, python3 run.py test) serve http://127.0.0.1 with DEBUG=0 and
# loopback hosts only, so they keep plain HTTP. Each setting can be set on its own.
HTTPS = envbool("HTTPS", default=not DEBUG and bool(set(ALLOWED_HOSTS) - LOOPBACK_HOSTS))
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", default=HTTPS)
# Docker's HEALTHCHECK calls http://127.0.0.1:8000/healthz from inside the container.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", default=HTTPS)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", default=False)
# Behind a proxy that ends TLS, the header it sets on HTTPS requests (e.g.
# X-Forwarded-Proto); without it every request looks like plain HTTP and the
# redirect loops. The proxy must overwrite the header, never pass a client's on.
SECURE_PROXY_SSL_HEADER = envheader("SECURE_PROXY_SSL_HEADER")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "auditlog",
    "django_celery_beat",
    "scheduler",
    "jobs",
    "alerts",
    "reports",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before sessions, CSRF and every view: nothing below sees a NUL byte.
    "scheduler.middleware.RefuseNulBytesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After authentication: a schedule's change history records who made each edit.
    "auditlog.middleware.AuditlogMiddleware",
    # Last: turns a login refused for lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# --- Login throttling (django-axes) -------------------------------------------------
# After LOGIN_FAILURE_LIMIT wrong passwords for one username from one client
# address, that pair is refused for LOGIN_LOCKOUT_MINUTES, even with the right
# password; every further failure restarts the wait. A success resets the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "scheduler.lockout.lockout_response"
AXES_VERBOSE = False  # no banner in every process; failures are still logged
# Failed attempts (AccessAttempt) are what throttling counts; an AccessLog row per login would
# grow for ever with nothing pruning it.
AXES_DISABLE_ACCESS_LOG = True
# The client address: REMOTE_ADDR, unless web sits behind REVERSE_PROXY_COUNT
# proxies that each append to X-Forwarded-For. Then the client is the entry that
# the first proxy appended; a chain of another length (a client that sent its
# own X-Forwarded-For) counts as the nearest proxy's address, so a forged
# header can neither pick an address nor escape a lockout.
REVERSE_PROXY_COUNT = envint("REVERSE_PROXY_COUNT", 0, minimum=0)
AXES_IPWARE_META_PRECEDENCE_ORDER: tuple[str, ...]
if REVERSE_PROXY_COUNT:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
    # django-ipware counts the proxies named inside the header: all but the nearest one.
    AXES_IPWARE_PROXY_COUNT = REVERSE_PROXY_COUNT - 1
else:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)

ROOT_URLCONF = "scheduler.urls"
WSGI_APPLICATION = "scheduler.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
# WAL lets web, worker and beat read while one of them writes; IMMEDIATE takes
# the write lock at BEGIN, so two writers queue on the timeout instead of
# failing half-way with "database is locked".
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}
DATABASE_URL = envstr("DATABASE_URL")
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from exc
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = SQLITE_OPTIONS
    # Tests hand the database to worker and beat subprocesses, so the test
    # database must be a file, never SQLite's in-memory default; one per test
    # run, so two runs side by side do not delete each other's.
    _test_db = Path(DATABASES["default"]["NAME"]).with_name(f"test-db-{os.getpid()}.sqlite3")
    DATABASES["default"]["TEST"] = {"NAME": str(_test_db)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Time -----------------------------------------------------------------------
# All times are stored in UTC; schedules carry their own IANA time zone.
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
LANGUAGE_CODE = "en-us"

# --- Static files (the admin) ---------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every request until collectstatic ran
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # the admin works before collectstatic too

# --- Reports (renderings, storage, retention, delivery) -----------------------------
# Where report files are kept: a directory under VAR_DIR by default; any Django
# storage by configuration, e.g. S3-compatible (django-storages):
#   REPORTS_STORAGE_BACKEND=storages.backends.s3.S3Storage AWS_STORAGE_BUCKET_NAME=reports
#   AWS_S3_ENDPOINT_URL=https://s3.example.com AWS_S3_REGION_NAME=eu-central-1
#   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… (or the machine's IAM role), AWS_LOCATION=prefix/
REPORTS_STORAGE_BACKEND = envstr("REPORTS_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")
_reports_storage_options: dict[str, Any] = {}
if REPORTS_STORAGE_BACKEND == "storages.backends.s3.S3Storage":
    _reports_storage_options = {
        "bucket_name": envstr("AWS_STORAGE_BUCKET_NAME"),
        "endpoint_url": envstr("AWS_S3_ENDPOINT_URL") or None,
        "region_name": envstr("AWS_S3_REGION_NAME") or None,
        "access_key": envstr("AWS_ACCESS_KEY_ID") or None,
        "secret_key": envstr("AWS_SECRET_ACCESS_KEY") or None,
        "location": envstr("AWS_LOCATION"),
        # Never overwrite a key in place: a report stored again gets a new name.
        "file_overwrite": False,
        "default_acl": None,  # the bucket's own policy; files are served through the app
    }
elif REPORTS_STORAGE_BACKEND == "django.core.files.storage.FileSystemStorage":
    _reports_storage_options = {"location": str(VAR_DIR / "reports")}
STORAGES["reports"] = {"BACKEND": REPORTS_STORAGE_BACKEND, "OPTIONS": _reports_storage_options}
REPORT_RETENTION_DAYS = envint("REPORT_RETENTION_DAYS", 30, minimum=1)
# One report's bound, whatever its formats (ReportTooLarge past it: narrow the window).
REPORT_MAX_ROWS = envint("REPORT_MAX_ROWS", 5_000_000, minimum=1)
# The HTML page shows at most this many rows and says "showing N of M" above them.
REPORT_HTML_MAX_ROWS = envint("REPORT_HTML_MAX_ROWS", 10_000, minimum=1)
# XLSX: Excel's sheet holds 1,048,575 rows under the header.
REPORT_XLSX_MAX_ROWS = envint("REPORT_XLSX_MAX_ROWS", 1_048_575, minimum=1, maximum=1_048_575)
# Tries per report destination inside the run, and the pauses between them (seconds;
# the last one repeats). Still failing: the run fails, and alerting pages.
REPORT_DELIVERY_ATTEMPTS = envint("REPORT_DELIVERY_ATTEMPTS", 3, minimum=1)
REPORT_DELIVERY_BACKOFF_SECONDS = (1.0, 4.0)

# --- Broker -----------------------------------------------------------------------
EMBEDDED_REDIS_PORT = envint("EMBEDDED_REDIS_PORT", 6389, minimum=1)
REDIS_URL = envstr("REDIS_URL")
USES_EMBEDDED_REDIS = not REDIS_URL
if not REDIS_URL:
    REDIS_URL = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
# RabbitMQ is supported too: BROKER_URL=amqp://... ; Redis stays the default.
CELERY_BROKER_URL = envstr("BROKER_URL") or REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# RabbitMQ has no visibility timeout: it gives an unacknowledged message back
# when the channel that took it closes, and it closes a channel whose delivery
# stays unacknowledged past its consumer_timeout (30 min by default). Tell us
# the server's value (seconds; 0: the server has it off), so hard limits stay
# within it (jobs/limits.py).
BROKER_CONSUMER_TIMEOUT = envint("BROKER_CONSUMER_TIMEOUT", 1800, minimum=0)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    # A message is redelivered only if unacked for longer than the longest hard
    # limit; shorter would run a slow job twice. Jobs enforce MAX_HARD_TIME_LIMIT.
    "visibility_timeout": envint("BROKER_VISIBILITY_TIMEOUT", 3 * 3600, minimum=60),
}
# Lower case, so not a setting: code asks jobs.limits.broker_is_redis(), which
# follows the broker URL as configured at the time (tests override it).
_broker_is_redis = CELERY_BROKER_URL.split("://", 1)[0].lower().startswith("redis")
if _broker_is_redis:
    if CELERY_BROKER_URL.startswith("redis://"):
        # kombu's Redis transport, except that a channel keeps its connection
        # parameters: with kombu 5.7 a worker whose Redis went down while a job ran
        # died restoring the job's message (lib/redis_transport.py says how).
        CELERY_BROKER_TRANSPORT = "lib.redis_transport:Transport"
    # One list per message priority 0-9 (kombu's default has 4 levels: 0, 3, 6, 9,
    # so 1 and 2 would count as 0); the worker pops the lowest level first, so on
    # Redis 0 goes first (jobs.publishing.validate_priority).
    CELERY_BROKER_TRANSPORT_OPTIONS["priority_steps"] = list(range(10))
    BROKER_QUEUE_MAX_PRIORITY = 0  # not a queue argument on Redis
else:
    # RabbitMQ honours message priorities only on queues declared with x-max-priority
    # (higher goes first); workers, beat and the send-only client declare every queue
    # with this value (0: none). RabbitMQ refuses to re-declare an existing queue with
    # other arguments: a queue made without it must be drained and deleted once (README).
    BROKER_QUEUE_MAX_PRIORITY = envint("BROKER_QUEUE_MAX_PRIORITY", 10, minimum=0, maximum=255)
    CELERY_TASK_QUEUE_MAX_PRIORITY = BROKER_QUEUE_MAX_PRIORITY or None
    if envbool("BROKER_CONFIRM_PUBLISH", True):
        # A publish returns once the broker has the message (publisher confirms), so
        # a run taken out of the outbox was really sent. One round trip per message:
        # a 10,000-slot burst takes ~9x Redis's time (bench/broker_burst.py); 0 trades
        # that guarantee for speed.
        CELERY_BROKER_TRANSPORT_OPTIONS["confirm_publish"] = True
# A job keeps running through a broker outage (its run is recorded in the
# database, not in Redis) instead of being killed; Celery 6 flips this default.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False

# JSON only: a pickle on the broker is remote code execution.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
# Our run history (jobs.JobRun) is the result store; Celery results are not kept,
# but for the chunks of a chunked report: a chord (reports.chunking) counts its
# parts in the result backend, Redis (RESULT_BACKEND to point elsewhere, e.g.
# when BROKER_URL is RabbitMQ and REDIS_URL is not set).
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = envstr("RESULT_BACKEND") or REDIS_URL
# No result backend, so nothing to expire: without this, django-celery-beat's
# stock scheduler (used during a migration to ours) adds a
# ``celery.backend_cleanup`` task for a job outside our catalog, which our
# validation refuses with an error at every start.
CELERY_RESULT_EXPIRES = None
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
# Redelivery is harmless (runs are claimed with a conditional UPDATE), so ack
# late and give a message back when its worker dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes a worker's database connection before and after
# every task unless this is set (it reads CELERY_DB_REUSE_MAX: celery/fixups/
# django.py), and opening one was a third of a run's cost on the worker
# (bench/worker_throughput.py). Kept open instead, and recycled by Django's
# own rules at each task's edges (CONN_MAX_AGE, a broken or mid-transaction
# connection, one that died while the worker was idle:
# jobs.framework.check_connections_before_task); the fixup still closes it
# after this many tasks. SQLite (the embedded default, CONN_MAX_AGE 0) keeps
# Celery's close after every task.
CELERY_DB_REUSE_MAX = None if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 1000
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = ("jobs.framework.route_to_job_queue",)
CELERY_BEAT_SCHEDULER = "scheduler.beat.scheduler:DatabaseBeat"
CELERY_BEAT_MAX_LOOP_INTERVAL = envint("BEAT_MAX_LOOP_INTERVAL", 1, minimum=1)
# One beat leads under this lease; a standby takes over within ~1.33 × it.
BEAT_LEASE_SECONDS = envint("BEAT_LEASE_SECONDS", 10, minimum=2)
# Safety net for edits made with raw SQL (the change log covers the ORM).
BEAT_RECONCILE_SECONDS = envint("BEAT_RECONCILE_SECONDS", 300, minimum=5)
DJANGO_CELERY_BEAT_TZ_AWARE = True

# --- Jobs -------------------------------------------------------------------------
JOB_DEFAULT_SOFT_TIME_LIMIT = envint("JOB_DEFAULT_SOFT_TIME_LIMIT", 300, minimum=1)
JOB_DEFAULT_HARD_TIME_LIMIT = envint("JOB_DEFAULT_HARD_TIME_LIMIT", 360, minimum=1)
# A message not started this long after its slot is not executed (run: missed).
JOB_DEFAULT_STARTING_DEADLINE = envint("JOB_DEFAULT_STARTING_DEADLINE", 3600, minimum=1)
# How often a worker re-publishes its presence; one silent for 90 s counts as dead.
WORKER_PRESENCE_REFRESH_SECONDS = envint("WORKER_PRESENCE_REFRESH_SECONDS", 30, minimum=1)
# The shortest interval a schedule may have (seconds): below it, a schedule is a flood.
SCHEDULE_MIN_INTERVAL_SECONDS = envfloat("SCHEDULE_MIN_INTERVAL_SECONDS", 1.0)
RUN_TRACEBACK_LIMIT = 8000  # characters of traceback kept on a run
RUN_RESULT_LIMIT = 4000  # characters of JSON result summary kept on a run

# --- On-call alerting (the alerts app; `manage.py alertd` detects and delivers) ----
# Seconds between reminders while an incident stays open (a policy may override).
ALERT_REMINDER_SECONDS = envint("ALERT_REMINDER_SECONDS", 3600, minimum=0)
# Beat is down when no leader has renewed the lease for this long (seconds).
ALERT_BEAT_DOWN_AFTER = envint("ALERT_BEAT_DOWN_AFTER", 60, minimum=1)
# How often the detector looks (seconds); detection latency is about this.
ALERT_CHECK_INTERVAL = envfloat("ALERT_CHECK_INTERVAL", 5.0)
# The admin's address as a person's browser reaches it, for links in alerts.
PUBLIC_URL = envstr("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Every call to a channel (HTTP, SMTP) gives up after this many seconds.
ALERT_SEND_TIMEOUT = envfloat("ALERT_SEND_TIMEOUT", 10.0)
# A notification is retried with backoff (base doubling up to max, seconds) and
# recorded failed after this many attempts (10: about 50 minutes).
ALERT_MAX_ATTEMPTS = envint("ALERT_MAX_ATTEMPTS", 10, minimum=1)
ALERT_RETRY_BASE_SECONDS = envint("ALERT_RETRY_BASE_SECONDS", 10, minimum=1)
ALERT_RETRY_MAX_SECONDS = envint("ALERT_RETRY_MAX_SECONDS", 900, minimum=1)
# The email channel's server (Django's SMTP backend).
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS")
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "beatplatform@localhost")

# --- runplatform (the embedded, all-in-one run command) ---------------------------
RUN_HOST = envstr("HOST", "127.0.0.1")
RUN_PORT = envint("PORT", 8000, minimum=1)
WORKER_CONCURRENCY = envint("WORKER_CONCURRENCY", 2, minimum=1)

# --- Flower (optional): run.py starts it when FLOWER_PORT is set ------------------------
# Flower reads FLOWER_BASIC_AUTH ("user:password", several comma-separated) itself;
# `manage.py flower` refuses to start without it.
FLOWER_PORT = envint("FLOWER_PORT", 0, minimum=0)
FLOWER_BASIC_AUTH = envstr("FLOWER_BASIC_AUTH")

# --- Prometheus (/metrics): off (a 404) unless METRICS_TOKEN is set; scrapes send it as a bearer token.
METRICS_TOKEN = envstr("METRICS_TOKEN")
# 0: no per-schedule series (cardinality bounded by jobs, statuses and queues, not schedules).
METRICS_PER_SCHEDULE = envbool("METRICS_PER_SCHEDULE", True)

# --- Admin user for the embedded set-up ----------------------------------------------
ADMIN_USERNAME = envstr("ADMIN_USERNAME", "admin")
ADMIN_PASSWORD = envstr("ADMIN_PASSWORD")
ADMIN_EMAIL = envstr("ADMIN_EMAIL", "admin@example.com")

# --- Sentry ---------------------------------------------------------------------------
SENTRY_DSN = envstr("SENTRY_DSN")
SENTRY_ENVIRONMENT = envstr("SENTRY_ENVIRONMENT", "development" if DEBUG else "production")
SENTRY_TRACES_SAMPLE_RATE = envfloat("SENTRY_TRACES_SAMPLE_RATE", 0.0)
# Where people open Sentry (e.g. https://acme.sentry.io), for the run page's link to
# a failure's event; the DSN names the ingest host, not the web one.
SENTRY_WEB_URL = envstr("SENTRY_WEB_URL").rstrip("/")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

from lib.sentry import init_sentry  # noqa: E402  (needs the values above)

init_sentry(SENTRY_DSN, environment=SENTRY_ENVIRONMENT, traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE)
