"""``manage.py schedules export`` / ``schedules apply``: schedules as code (real PostgreSQL).

Export → apply on an empty database → export yields the same YAML; every
entry is validated before anything changes (one bad entry among 1,000:
nothing changes, the error names the entry and the field); applying twice
changes nothing the second time; --dry-run changes nothing; --prune deletes;
the change log gets a row per applied schedule.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
import yaml
from auditlog.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.catalog import publish_catalog
from scheduler.documents import save_document
from scheduler.models import ScheduleChange, SchedulePolicy

pytestmark = pytest.mark.django_db

JOB = "reports.run_summary"


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


def command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("schedules", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def entry(number: int, **overrides) -> dict:
    base = {
        "slug": f"report-{number:04d}",
        "name": f"report {number:04d}",
        "job": JOB,
        "schedule": {"cron": f"{number % 60} {number % 24} * * *", "timezone": "Europe/Berlin"},
        "policy": {"queue": "reports", "grace": 120},
    }
    base.update(overrides)
    return base


def write(tmp_path: Path, docs: list[dict], name: str = "schedules.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(docs, sort_keys=False))
    return str(path)


def test_apply_creates_then_a_second_apply_changes_nothing(tmp_path):
    path = write(tmp_path, [entry(1), entry(2, schedule={"every": 5, "period": "minutes"})])
    changes_before = ScheduleChange.objects.count()

    out, _ = command("apply", path)
    assert "create report-0001 (report 0001)" in out and "create report-0002" in out
    assert PeriodicTask.objects.count() == 2
    assert SchedulePolicy.objects.get(slug="report-0001").queue == "reports"
    logged = set(ScheduleChange.objects.filter(pk__gt=0).values_list("task_id", flat=True))
    assert ScheduleChange.objects.count() > changes_before
    assert set(PeriodicTask.objects.values_list("pk", flat=True)) <= logged

    audited = LogEntry.objects.get_for_objects(PeriodicTask.objects.all()).count()
    assert audited >= 2  # auditlog saw each create

    again, _ = command("apply", path)
    assert "no changes" in again and "0 to create, 0 to update, 0 to delete, 2 unchanged" in again
    assert LogEntry.objects.get_for_objects(PeriodicTask.objects.all()).count() == audited


def test_export_to_a_file_is_what_stdout_gets(tmp_path):
    command("apply", write(tmp_path, [entry(2), entry(1)]))
    out, _ = command("export")
    command("export", str(tmp_path / "out.yaml"))
    assert (tmp_path / "out.yaml").read_text() == out
    assert [doc["slug"] for doc in yaml.safe_load(out)] == ["report-0001", "report-0002"]


def test_an_update_prints_each_changed_field_before_and_after(tmp_path):
    command("apply", write(tmp_path, [entry(1)]))
    out, _ = command(
        "apply", write(tmp_path, [entry(1, schedule={"cron": "30 9 * * 1-5", "timezone": "Europe/Berlin"})])
    )
    assert "update report-0001 (report 0001)" in out
    assert 'schedule.cron: "1 1 * * *" → "30 9 * * 1-5"' in out
    assert PeriodicTask.objects.get(name="report 0001").crontab.hour == "9"


def test_dry_run_changes_nothing(tmp_path):
    out, _ = command("apply", write(tmp_path, [entry(1)]), "--dry-run")
    assert "create report-0001" in out and "dry run: nothing changed" in out
    assert not PeriodicTask.objects.exists()


def test_prune_deletes_what_the_file_leaves_out_and_without_it_they_stay(tmp_path):
    command("apply", write(tmp_path, [entry(1), entry(2)]))
    only_one = write(tmp_path, [entry(1)], "one.yaml")

    kept, _ = command("apply", only_one)
    assert "1 left alone" in kept and "report-0002" in kept
    assert PeriodicTask.objects.count() == 2

    pruned, _ = command("apply", only_one, "--prune")
    assert "delete report-0002 (report 0002)" in pruned
    assert list(PeriodicTask.objects.values_list("name", flat=True)) == ["report 0001"]


def test_one_invalid_entry_among_1000_changes_nothing_and_is_named(tmp_path):
    docs = [entry(n) for n in range(1000)]
    docs[637] = entry(637, schedule={"cron": "0 25 * * *"})
    path = write(tmp_path, docs)
    crontabs = CrontabSchedule.objects.count()

    started = time.monotonic()
    with pytest.raises(CommandError, match="1 invalid entry: nothing changed") as caught:
        out, err = StringIO(), StringIO()
        call_command("schedules", "apply", path, stdout=out, stderr=err)
    elapsed = time.monotonic() - started

    assert "entry 638 (slug 'report-0637', name 'report 0637'): schedule.cron:" in err.getvalue()
    assert caught.value.returncode == 1
    assert not PeriodicTask.objects.exists()
    assert CrontabSchedule.objects.count() == crontabs
    assert elapsed < 20, f"validating 1,000 entries took {elapsed:.1f} s"
    print(f"validated 1,000 entries in {elapsed:.1f} s")


def test_bad_files_are_clear_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- slug: [unclosed\n")
    with pytest.raises(CommandError, match="Not valid YAML"):
        command("apply", str(bad_yaml))
    with pytest.raises(CommandError, match="YAML list"):
        command("apply", write(tmp_path, {"slug": "x"}))  # type: ignore[arg-type]
    with pytest.raises(CommandError, match="Cannot read"):
        command("apply", str(tmp_path / "missing.yaml"))
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("schedules", "apply", write(tmp_path, [entry(1), entry(1, name="x")]), stderr=err)
    assert "slug: Slug 'report-0001' is also entry 1" in err.getvalue()


def future(minutes: int) -> str:
    return (datetime.now(UTC).replace(microsecond=0) + timedelta(days=30, minutes=minutes)).isoformat()


generated = st.lists(
    st.builds(
        lambda n, kind, minutes, enabled, queue: entry(
            n,
            enabled=enabled,
            policy={"queue": queue},
            schedule=(
                {"cron": f"{n % 60} * * * mon-fri", "timezone": "America/New_York"}
                if kind == 0
                else {"every": n + 1, "period": "hours", "anchor": future(minutes)}
                if kind == 1
                else {"at": future(minutes)}
            ),
        ),
        st.integers(0, 999),
        st.integers(0, 2),
        st.integers(1, 10_000),
        st.booleans(),
        st.sampled_from(["", "default", "reports"]),
    ),
    max_size=6,
    unique_by=lambda doc: doc["slug"],
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=generated)
def test_export_apply_on_an_empty_database_export_is_the_same_yaml(tmp_path, docs):
    for doc in docs:
        save_document(doc)
    first, _ = command("export")
    PeriodicTask.objects.all().delete()

    path = tmp_path / "exported.yaml"
    path.write_text(first)
    command("apply", str(path))
    second, _ = command("export")
    PeriodicTask.objects.all().delete()

    assert second == first
    assert [doc["slug"] for doc in yaml.safe_load(first) or []] == sorted(doc["slug"] for doc in docs)
