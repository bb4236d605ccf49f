"""One writer of a run's state: only ``jobs/runs.py`` changes ``JobRun.status`` (DESIGN.md, guarantee 9).

Every transition is a guarded UPDATE there, returning whether it won; a
second writer elsewhere would race the guards it does not know about. This
test reads the source with ``ast`` and fails, naming file and line, on a
status written anywhere else:

- ``.update(...)``, ``.bulk_update(...)``, ``.update_or_create(...)`` on a
  ``JobRun`` queryset (through local names too: ``qs = JobRun.objects...;
  qs.update(...)``) naming ``status``, or passing ``**`` fields that may hold it;
- a raw ``UPDATE`` of the run table;
- ``something.status = ...`` or ``setattr(something, "status", ...)`` in a
  module that uses ``JobRun`` (a read-then-``save()`` transition).

Creating a run is not a transition: a row is inserted with its first status
by the modules in ``CREATORS`` only (``JobRun(..., status=...)``,
``objects.create`` / ``bulk_create`` / ``get_or_create`` with a status).
Migrations, tests and benchmarks are not scanned.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The platform's code; tests and benchmarks seed their own databases.
SCANNED = ("jobs", "scheduler", "lib", "settings")
THE_WRITER = "jobs/runs.py"
# Modules that insert runs with their first status: beat's claim (raw SQL
# INSERT on PostgreSQL, the ORM elsewhere) and dispatch (one run, or a batch).
CREATORS = {
    "scheduler/beat/dispatch.py": "beat claims slots: runs inserted queued, skipped or missed",
    "jobs/dispatch.py": "dispatch: runs inserted queued",
}
RUN_TABLE = "jobs_jobrun"
UPDATES = {"update", "bulk_update", "update_or_create"}
CREATES = {"create", "bulk_create", "get_or_create", "update_or_create"}


def root_name(node: ast.AST, aliases: dict[str, ast.AST], depth: int = 0) -> str | None:
    """The name a call chain starts from (``JobRun`` in ``JobRun.objects.filter(...).update``).

    A local name bound to another chain (``dead = JobRun.objects.filter(...)``)
    is followed, so a queryset kept in a variable is still recognised.
    """
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            bound = aliases.get(node.id)
            if bound is not None and depth < 10:
                return root_name(bound, aliases, depth + 1)
            return node.id
        else:
            return None


def local_aliases(scope: ast.AST) -> dict[str, ast.AST]:
    """Names bound by simple assignments in ``scope`` (last one wins: good enough for a lint)."""
    aliases: dict[str, ast.AST] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            aliases[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            aliases[node.target.id] = node.value
    return aliases


def names_status(call: ast.Call) -> bool:
    """The call sets ``status``: by keyword, in a ``defaults=`` dict, a field list, or ``**`` fields."""
    for keyword in call.keywords:
        if keyword.arg is None or keyword.arg == "status":
            return True
        if keyword.arg in {"defaults", "create_defaults"} and mentions_status(keyword.value):
            return True
    return any(mentions_status(arg) for arg in call.args)


def mentions_status(node: ast.AST) -> bool:
    if isinstance(node, ast.Dict):
        return any(key is None or mentions_status(key) for key in node.keys)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return any(mentions_status(element) for element in node.elts)
    if isinstance(node, ast.Call):  # dict(status=...), JobRun(**...) in a bulk_create list
        return names_status(node)
    if isinstance(node, ast.ListComp | ast.GeneratorExp):
        return mentions_status(node.elt)
    return isinstance(node, ast.Constant) and node.value == "status"


def sql_text(node: ast.AST, aliases: dict[str, ast.AST]) -> str:
    """A string or f-string as SQL text, with ``{name}`` replaced by the table it names, if known."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return ""
    parts = []
    for value in node.values:
        if isinstance(value, ast.FormattedValue):
            bound = aliases.get(value.value.id) if isinstance(value.value, ast.Name) else value.value
            is_run_table = bound is not None and "JobRun._meta.db_table" in ast.unparse(bound)
            parts.append(RUN_TABLE if is_run_table else "{?}")
        else:
            parts.append(sql_text(value, aliases))
    return "".join(parts)


def status_writes(source: str, path: str) -> list[str]:
    """Where ``source`` (the module at ``path``) changes a run's status, or creates a run with one."""
    tree = ast.parse(source)
    uses_runs = "JobRun" in source
    found = []
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]
    seen: set[tuple[int, int]] = set()
    for scope in scopes:
        aliases = local_aliases(scope)
        for node in ast.walk(scope):
            where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
            if where in seen:
                continue
            line = f"{path}:{where[0]}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method = node.func.attr
                on_runs = root_name(node.func.value, aliases) == "JobRun"
                if on_runs and method in UPDATES and names_status(node):
                    found.append(f"{line}: {method}() of a JobRun queryset writes status")
                    seen.add(where)
                elif on_runs and method in CREATES and names_status(node) and path not in CREATORS:
                    found.append(f"{line}: {method}() creates a JobRun with a status (not a listed creator)")
                    seen.add(where)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "JobRun" and names_status(node) and path not in CREATORS:
                    found.append(f"{line}: JobRun(...) built with a status (not a listed creator)")
                    seen.add(where)
                elif (
                    node.func.id == "setattr"
                    and uses_runs
                    and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value == "status"
                ):
                    found.append(f"{line}: setattr(..., 'status', ...)")
                    seen.add(where)
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and uses_runs:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                    found.append(f"{line}: assigns .status")
                    seen.add(where)
            if isinstance(node, ast.Constant | ast.JoinedStr):
                text = " ".join(sql_text(node, aliases).lower().split())
                if f"update {RUN_TABLE}" in text or f'update "{RUN_TABLE}"' in text:
                    found.append(f"{line}: raw UPDATE of the run table")
                    seen.add(where)
    return found


def project_modules() -> list[Path]:
    return sorted(
        path for folder in SCANNED for path in (ROOT / folder).rglob("*.py") if "migrations" not in path.parts
    )


def test_it_finds_no_writer_of_a_runs_status_but_jobs_runs():
    writes = []
    for path in project_modules():
        relative = path.relative_to(ROOT).as_posix()
        if relative != THE_WRITER:
            writes += status_writes(path.read_text(), relative)

    assert writes == [], (
        "only jobs/runs.py changes JobRun.status: add a transition there (a guarded UPDATE "
        "returning whether it won) and call it:\n" + "\n".join(writes)
    )


def test_it_scans_the_modules_that_create_runs_and_the_writer_itself():
    scanned = {path.relative_to(ROOT).as_posix() for path in project_modules()}

    assert {THE_WRITER, "scheduler/beat/dispatch.py"} <= scanned
    # The scanner sees the writer's own transitions: it would see them anywhere else.
    assert len(status_writes((ROOT / THE_WRITER).read_text(), THE_WRITER)) >= 8


WRITES = {
    "an update on the manager": "JobRun.objects.filter(pk=1).update(status='failed')",
    "an update through a local queryset": "qs = JobRun.objects.filter(pk=1)\nqs.update(status='x')",
    "an update with ** fields": "JobRun.objects.filter(pk=1).update(**fields)",
    "a bulk update of the status field": "JobRun.objects.bulk_update(runs, ['status'])",
    "an update_or_create with a status default": (
        "JobRun.objects.update_or_create(pk=1, defaults={'status': 'failed'})"
    ),
    "a read then save": "run = JobRun.objects.get(pk=1)\nrun.status = 'failed'\nrun.save()",
    "a setattr": "run = JobRun.objects.get(pk=1)\nsetattr(run, 'status', 'failed')",
    "a raw update": "sql = f'UPDATE {JobRun._meta.db_table} SET status = 1'",
    "a raw update of a quoted name": "sql = f'UPDATE {ops.quote_name(JobRun._meta.db_table)} SET x = 1'",
    "a raw update naming the table": "cursor.execute('update jobs_jobrun set status = %s', ['x'])",
    "a run built with a status": "JobRun(job='x', status='queued').save()",
    "a run created with a status": "JobRun.objects.create(job='x', status='running')",
}


def test_it_catches_each_way_of_writing_a_status():
    for what, source in WRITES.items():
        assert status_writes(source, "scheduler/elsewhere.py"), f"not caught: {what}"


def test_it_lets_listed_creators_insert_runs_and_anyone_read_or_write_other_fields():
    creates = "JobRun(job='x', status='queued')\nJobRun.objects.bulk_create([JobRun(**row) for row in rows])"
    harmless = (
        "JobRun.objects.filter(status='queued').values_list('pk')\n"
        "JobRun.objects.filter(pk=1).update(schedule_name='x')\n"
        "ours = set()\nours.update(JobRun.objects.values_list('pk', flat=True))\n"
        "Incident.objects.filter(pk=1).update(status='resolved')\n"
        "sql = f'UPDATE {policies} SET last_slot_at = 1'\n"
    )

    assert status_writes(creates, "jobs/dispatch.py") == []
    assert status_writes(creates, "jobs/elsewhere.py") != []
    assert status_writes(harmless, "scheduler/elsewhere.py") == []
