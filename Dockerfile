# syntax=docker/dockerfile:1
# One image for web, worker, beat and flower (see docker-compose.yml).
# Guarantees: the dependencies are exactly uv.lock without the dev group; the
# process runs as uid 10001, never root, and cannot rewrite its own code; the
# admin's static files are built in; the container reports unhealthy when
# /healthz (database SELECT 1 + broker connection) does not answer 200.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN pip install "uv==0.13.9"
WORKDIR /app
# Only the lock is copied here, so a code change does not reinstall dependencies.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --python /usr/local/bin/python3.11

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/app/.venv/bin:$PATH" \
    VAR_DIR=/app/var
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/app \
       --shell /usr/sbin/nologin app
WORKDIR /app
# Same base image as the builder, so the venv's python symlink resolves.
COPY --from=builder /app/.venv /app/.venv
COPY . .
# The key is a throwaway: collectstatic needs settings, not secrets.
RUN SECRET_KEY=collectstatic-build-only python manage.py collectstatic --noinput \
    && mkdir -p /app/var && chown app:app /app/var
USER 10001:10001
EXPOSE 8000
# No curl in slim images. PORT (default 8000) lets tests point it elsewhere.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as r; sys.exit(r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4).status != 200)"]
CMD ["gunicorn", "scheduler.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-"]
