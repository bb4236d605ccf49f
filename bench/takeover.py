"""Leader failover with real beats: ``run.py --takeover-only`` (the default full run includes it).

For each lease (``BEAT_LEASE_SECONDS`` = 10, the default, then 2), on the
takeover run's own database (``TAKEOVER_DB``) and Redis database
(``TAKEOVER_REDIS_DB``), so it can run beside the main bench: ``n`` heartbeat
schedules every ``EVERY`` seconds (no worker: the messages pile up in a queue
that is emptied after each kill), two
``celery beat -S scheduler.beat.scheduler:DatabaseBeat`` processes, then
``kills`` times:

1. wait until one beat leads (the lease row names its pid) and has claimed
   runs, and the other has started as a standby;
2. wait a random part of a slot period, SIGKILL the leader (by its pid);
3. measure **takeover** = kill → the standby's log line "now LEADS" (the
   line's own timestamp), and **first claim** = kill → the earliest
   ``JobRun.created_at`` after the kill (the claiming tick's time, taken
   before its transaction commits; every run of the dead leader is older);
4. start a fresh standby for the next kill.

Afterwards every schedule must have exactly one run for each slot between
the latest first slot and the earliest last slot of any schedule. The unique
constraint (schedule, slot) makes two runs impossible (still counted); what
is checked is holes. Slots that fell in the gap are recorded ``missed`` by
the default catch-up policy (``latest``), which still counts as a run.

Expected: takeover within ``ttl + ttl / 3`` (see ``scheduler/beat/lease.py``),
compared with the bound 2 × lease. DatabaseScheduler has no failover (one
beat has no standby; two both send every task), so its column is n/a.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PYTHON,
    TAKEOVER_DB,
    TAKEOVER_QUEUE,
    TAKEOVER_REDIS_DB,
    bench_env,
    create_database,
    db_connection,
    drop_database,
    flush_bench_redis,
    fmt,
    redis_client,
    run_checked,
    setup_django,
)
from lateness import Proc  # noqa: E402

LEASES = (10, 2)  # BEAT_LEASE_SECONDS measured: the default, then the minimum
EVERY = 2  # seconds between a schedule's slots
BEAT = "scheduler.beat.scheduler:DatabaseBeat"
LEADS = "now LEADS"
STANDBY = "starting as a standby"
HEADING = "Leader failover (lease takeover, real beats)"
THEIRS = "n/a (no standby; two beats double-send)"


# --------------------------------------------------------------------------------------
# Processes and what they log
# --------------------------------------------------------------------------------------
def start_beat(name: str, lease: int, tmp: Path) -> Proc:
    env = bench_env(TAKEOVER_DB, TAKEOVER_REDIS_DB)
    env.update(BEAT_LEASE_SECONDS=str(lease), LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    cmd = [PYTHON, "-m", "celery", "-A", "scheduler", "beat", "--scheduler", BEAT, "--loglevel", "INFO"]
    cmd += ["--pidfile", str(tmp / f"{name}.pid"), "--schedule", str(tmp / f"{name}-schedule")]
    return Proc(name, cmd, env, tmp)


def logged_at(beat: Proc, text: str) -> float | None:
    """Epoch seconds of ``beat``'s first log line containing ``text`` (the line's local timestamp)."""
    for line in beat.log_path.read_text(errors="replace").splitlines():
        if text in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
    return None


def wait_for(what: str, probe, timeout: float, beats: list[Proc]):
    """Poll ``probe()`` until it returns something other than None; fail if a beat exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        for beat in beats:
            if not beat.alive():
                raise RuntimeError(f"{beat.name} exited while waiting for {what}:\n{beat.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"no {what} within {timeout:.0f} s")


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------
def prepare_database() -> None:
    create_database(TAKEOVER_DB)
    run_checked(
        [PYTHON, "manage.py", "migrate", "-v0"], bench_env(TAKEOVER_DB, TAKEOVER_REDIS_DB), "migrate", 600
    )


def seed_schedules(n: int) -> None:
    """Replace everything by ``n`` schedules every ``EVERY`` s (``seed.seed_every``, in a subprocess)."""
    run_checked(
        [PYTHON, str(Path(__file__)), "seed", str(n)],
        bench_env(TAKEOVER_DB, TAKEOVER_REDIS_DB),
        "seeding",
        120,
    )


def leader_pid(conn) -> int | None:
    """Pid of the holder of the unexpired lease, if any."""
    row = conn.execute(
        "SELECT holder FROM scheduler_beatlease WHERE name = 'beat' AND holder <> '' AND expires_at > now()"
    ).fetchone()
    return int(row[0].split(":")[1]) if row else None


def first_claim_after(conn, wall: float) -> float | None:
    """Epoch seconds of the earliest run claimed after ``wall``, if any."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(created_at)) FROM jobs_jobrun WHERE created_at > to_timestamp(%s)",
        (wall,),
    ).fetchone()
    return float(row[0]) if row[0] is not None else None


SLOT_CHECK = """
WITH per AS (
    SELECT schedule_id, min(scheduled_for) AS lo, max(scheduled_for) AS hi
    FROM jobs_jobrun GROUP BY schedule_id
), win AS (SELECT max(lo) AS first, min(hi) AS last FROM per)
SELECT
    extract(epoch FROM win.last - win.first),
    count(DISTINCT (r.schedule_id, r.scheduled_for))
        FILTER (WHERE mod(extract(epoch FROM r.scheduled_for), %(every)s) = 0),
    count(*) FILTER (WHERE r.status = 'missed'),
    (SELECT count(*) FROM (
        SELECT 1 FROM jobs_jobrun GROUP BY schedule_id, scheduled_for HAVING count(*) > 1
    ) AS twice)
FROM win LEFT JOIN jobs_jobrun r ON r.scheduled_for BETWEEN win.first AND win.last
GROUP BY win.first, win.last
"""


def check_slots(conn, n: int) -> dict:
    """Slots between the latest first and the earliest last slot: expected, holes, two runs, missed."""
    span, found, missed, doubled = conn.execute(SLOT_CHECK, {"every": EVERY}).fetchone()
    expected = n * (int(span) // EVERY + 1)
    return {"slots_checked": expected, "holes": expected - found, "doubled": doubled, "missed": missed}


# --------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------
def leader_among(conn, beats: list[Proc]) -> Proc | None:
    pid = leader_pid(conn)
    return next((beat for beat in beats if beat.proc.pid == pid), None)


def current_leader(conn, beats: list[Proc], timeout: float) -> Proc:
    """The beat holding the lease, once it has claimed runs and the other beat stands by."""
    leader = wait_for("leader", lambda: leader_among(conn, beats), timeout, beats)
    led = wait_for("LEADS line", lambda: logged_at(leader, LEADS), timeout, beats)
    wait_for("claim by the leader", lambda: first_claim_after(conn, led), timeout, beats)
    for beat in beats:
        wait_for("standby", lambda b=beat: logged_at(b, STANDBY), 60, beats)
    return leader


def one_takeover(conn, beats: list[Proc], lease: int, rng: random.Random) -> dict:
    """SIGKILL the leader at a random moment of a slot period; time the standby's takeover.

    Returns seconds from the kill to the standby's "now LEADS" line and to the
    first run it claims. ``beats`` loses the killed leader.
    """
    timeout = 2 * lease + 30
    leader = current_leader(conn, beats, timeout)
    time.sleep(rng.uniform(0, EVERY))
    os.kill(leader.proc.pid, signal.SIGKILL)
    killed = time.time()
    leader.proc.wait(timeout=10)
    leader.stop()
    beats.remove(leader)
    (standby,) = beats
    led = wait_for("takeover", lambda: logged_at(standby, LEADS), timeout, beats)
    claimed = wait_for("claim after the kill", lambda: first_claim_after(conn, killed), timeout, beats)
    return {"takeover_s": led - killed, "first_claim_s": claimed - killed}


def measure_lease(lease: int, n: int, kills: int, log) -> dict:
    """``kills`` takeovers with BEAT_LEASE_SECONDS = ``lease``, then the slot check."""
    seed_schedules(n)
    flush_bench_redis(TAKEOVER_REDIS_DB)
    broker = redis_client(TAKEOVER_REDIS_DB)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-takeover-{lease}s-"))
    log(f"  lease {lease} s: beat logs in {tmp}")
    beats = [start_beat(f"beat-{i}", lease, tmp) for i in range(2)]
    rng = random.Random(20240601 + lease)
    rounds = []
    try:
        with db_connection(TAKEOVER_DB) as conn:
            for k in range(kills):
                rounds.append(one_takeover(conn, beats, lease, rng))
                log(
                    f"  lease {lease} s, kill {k + 1}: takeover {rounds[-1]['takeover_s']:.2f} s, "
                    f"first claim {rounds[-1]['first_claim_s']:.2f} s"
                )
                broker.delete(TAKEOVER_QUEUE)  # nobody consumes it: keep the broker small
                if k < kills - 1:
                    beats.append(start_beat(f"beat-{k + 2}", lease, tmp))
            time.sleep(2 * EVERY)  # the last leader runs whole slots after its catch-up
    finally:
        for beat in beats:
            beat.stop()
    with db_connection(TAKEOVER_DB) as conn:
        slots = check_slots(conn, n)
    log(f"  lease {lease} s: {slots}")
    return {"lease": lease, "rounds": rounds, **slots}


def median_max(values: list[float]) -> str:
    return f"{fmt(statistics.median(values))} / {fmt(max(values))}" if values else "–"


def table_rows(result: dict) -> list[str]:
    """The section's rows for one lease (ours; DatabaseScheduler n/a)."""
    lease = result["lease"]
    if "error" in result:
        return [f"| lease {lease} s: FAILED ({result['error']}) | – | {THEIRS} |"]
    takeover = [r["takeover_s"] for r in result["rounds"]]
    claim = [r["first_claim_s"] for r in result["rounds"]]
    bound = 2 * lease
    within = f"{'yes' if max(takeover) <= bound else 'NO'} / {'yes' if max(claim) <= bound else 'NO'}"
    return [
        f'| lease {lease} s: kill → standby logs "now LEADS", median / max (s) | '
        f"{median_max(takeover)} | {THEIRS} |",
        f"| lease {lease} s: kill → first run claimed by the new leader, median / max (s) | "
        f"{median_max(claim)} | {THEIRS} |",
        f"| lease {lease} s: max takeover / max first claim ≤ 2 × lease ({bound} s) | {within} | {THEIRS} |",
        f"| lease {lease} s: slots with two runs / holes (of slots checked) | {result['doubled']} / "
        f"{result['holes']} (of {result['slots_checked']:,}) | {THEIRS} |",
    ]


def section(results: list[dict], n: int, kills: int, seconds: float) -> str:
    lines = [
        "",
        f"## {HEADING}",
        "",
        f"{n:,} schedules every {EVERY} s; two `celery beat -S {BEAT}`; the leader SIGKILLed {kills} times "
        "per lease at a random moment of a slot period, a fresh standby started after each takeover. "
        'Takeover = kill → the standby\'s "now LEADS" log line; first claim = kill → the earliest '
        "`JobRun.created_at` after it. Slots checked: every schedule's slots between the latest first "
        "and the earliest last slot; slots in the gap count when recorded `missed` (catch-up `latest`).",
        "",
        "| measure | ours | DatabaseScheduler |",
        "|---|---:|---|",
    ]
    for result in results:
        lines += table_rows(result)
    lines += ["", "Notes:"]
    for r in results:
        if "rounds" in r:
            lines.append(
                f"- lease {r['lease']} s, n = {len(r['rounds'])}: takeover (s) "
                + ", ".join(fmt(x["takeover_s"]) for x in r["rounds"])
                + "; first claim (s) "
                + ", ".join(fmt(x["first_claim_s"]) for x in r["rounds"])
                + f"; runs recorded missed (start-up and takeover gaps): {r['missed']:,}."
            )
    lines.append(
        f"- measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s; load average at the end: "
        + " / ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    return "\n".join(lines) + "\n"


def run(n: int, kills: int, log, keep_db: bool = False) -> str:
    """The takeover section of the report: each lease in ``LEASES``, ``kills`` kills each."""
    began = time.monotonic()
    log(f"leader failover: {n:,} schedules, {kills} kills per lease, leases {LEASES} s")
    results = []
    try:
        prepare_database()
        for lease in LEASES:
            try:
                results.append(measure_lease(lease, n, kills, log))
            except Exception as exc:  # noqa: BLE001 (report it, keep the other lease's result)
                log(f"  lease {lease} s failed: {exc}")
                results.append({"lease": lease, "error": str(exc).splitlines()[0][:300]})
    except Exception as exc:  # noqa: BLE001 (the database could not be prepared: report, do not stop run.py)
        log(f"  leader failover not measured: {exc}")
        results = [{"lease": lease, "error": str(exc).splitlines()[0][:300]} for lease in LEASES]
    finally:
        flush_bench_redis(TAKEOVER_REDIS_DB)
        if not keep_db:
            drop_database(TAKEOVER_DB)
    return section(results, n, kills, time.monotonic() - began)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "seed":
    setup_django(TAKEOVER_DB, TAKEOVER_REDIS_DB)
    import seed

    seed.seed_every(int(sys.argv[2]), EVERY, TAKEOVER_QUEUE)
