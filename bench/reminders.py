#!/usr/bin/env python
"""Benchmark: reminder planning for N pumps and dispatch throughput into an SMTP sink.

Each figure is a ratio against a baseline measured in the same run (issue 3):

* planning: `notifications.services.plan_all(now)` over every pump, twice (the first run
  inserts the outbox, the second is the idempotent re-plan every sweep does), against one
  set-based SQL query that selects the same due pumps with their contacts;
* dispatch: `services.dispatch_due(now)` then `services.send_message(pk, now)` for each id,
  in this process, through Django's SMTP backend into an aiosmtpd sink on loopback, against
  plain `smtplib` sending the very same bytes over one connection.

It creates and migrates its own PostgreSQL database (default `bench_reminders`, dropped and
recreated each run), fills it with bulk inserts, and never touches the database named in
DATABASE_URL beyond connecting to it to create the bench database:

    DATABASE_URL=postgres://app:app@127.0.0.1:5432/app SECRET_KEY=x \\
        .venv/bin/python bench/reminders.py --pumps 100000

Options: --messages M (dispatch size), --profile (cProfile + per-query counts of the first
planning run; figures are then not written to RESULTS.md), --worker (also send M messages
through a real `celery -A pumptrack worker` process; needs CELERY_BROKER_URL=redis://...).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import os
import platform
import pstats
import random
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from pumptrack.progress import ProgressBar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
DEFAULT_NOW = "2027-03-01T15:00:00+00:00"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def progress_bar(label: str, total: int) -> ProgressBar:
    """A `pumptrack.progress.ProgressBar` on stderr: drawn on a terminal, silent in logs."""
    from pumptrack.progress import ProgressBar

    return ProgressBar(total, label=f"  {label}", stream=sys.stderr)


# --------------------------------------------------------------------------- database


def bench_database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def recreate_database(server_url: str, name: str) -> None:
    """DROP and CREATE the bench database, connected to the database DATABASE_URL names."""
    import psycopg
    from psycopg import sql

    if not re.fullmatch(r"bench_[a-z0-9_]+", name):
        raise SystemExit(f"refusing to drop {name!r}: the bench database name must start with bench_")
    parts = urlsplit(server_url)
    with psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username,
        password=parts.password,
        dbname=parts.path.lstrip("/") or "postgres",
        autocommit=True,
    ) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- data


@dataclass
class Seeded:
    clinics: int = 0
    patients: int = 0
    caregivers: int = 0
    pumps: int = 0
    active: int = 0
    refills: int = 0
    events: int = 0
    blocks: int = 0
    overdue: int = 0
    seconds: float = 0.0


def seed(n: int, now: datetime, rng: random.Random, past_days: int, future_days: int) -> Seeded:
    """N pumps with realistic histories, from the one load-data generator (bench/generate.py).

    Planning reads only the stored values, which the generator computes with `pumps.domain`
    as the services would. `past_days` and `future_days` shape the backlog: a share
    past / (past + future) of the patients missed their last visits, by up to `past_days`.
    """
    from bench.generate import Options, generate

    options = Options(
        pumps=n,
        clinics=max(4, min(40, n // 2500)),
        now=now,
        seed=rng.randrange(2**31),
        missed_share=past_days / max(1, past_days + future_days),
        missed_days=max(1, past_days),
        tag="Bench",
    )
    progress = progress_bar("pumps", n)
    made = generate(options, progress=progress)
    progress.close()
    return Seeded(
        clinics=made.clinics,
        patients=made.patients,
        caregivers=made.caregivers,
        pumps=made.pumps,
        active=made.active,
        refills=made.refills,
        events=made.events,
        blocks=made.blocks,
        overdue=made.overdue,
        seconds=made.seconds,
    )


# --------------------------------------------------------------------------- planning

# The baseline: one set-based query that finds the same due pumps planning finds (every
# active pump whose refill-by date minus a reminder stage has been reached in its clinic's
# zone, overdue pumps included, high-risk patients with the extra earlier stage), joined to
# the patient's and the safety caregivers' contacts; all rows fetched into Python.
BASELINE_SQL = """
WITH due AS (
    SELECT p.id AS pump_id, p.patient_id, p.refill_by, s.stage,
           pt.email, pt.phone, pt.language, pt.contact_by_email, pt.contact_by_sms,
           COALESCE(NULLIF(pt.time_zone, ''), c.time_zone) AS time_zone
    FROM pumps_pump p
    JOIN patients_patient pt ON pt.id = p.patient_id
    JOIN patients_clinic c ON c.id = pt.clinic_id
    CROSS JOIN LATERAL unnest(
        string_to_array(replace(c.reminder_days, ' ', ''), ',')::int[]
        || CASE WHEN (pt.sci_t6_or_above OR pt.communication_difficulty OR pt.withdrawal_history)
                     AND c.high_risk_extra_reminder_days > 0
                THEN ARRAY[c.high_risk_extra_reminder_days::int] ELSE '{}'::int[] END
    ) AS s(stage)
    WHERE p.status = 'active'
      AND p.refill_by IS NOT NULL
      AND p.refill_by - s.stage <= (%(now)s::timestamptz AT TIME ZONE c.time_zone)::date
)
SELECT d.pump_id, d.stage, d.refill_by, d.email, d.phone, d.language, d.time_zone,
       d.contact_by_email, d.contact_by_sms, cg.id, cg.email, cg.phone
FROM due d
LEFT JOIN patients_caregiver cg ON cg.patient_id = d.patient_id AND cg.receives_safety_messages
"""


def baseline_query(now: datetime) -> tuple[float, int, int]:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(BASELINE_SQL, {"now": now})
        rows = cursor.fetchall()
    seconds = time.perf_counter() - started
    return seconds, len(rows), len({r[0] for r in rows})


@dataclass
class PlanRun:
    seconds: float
    created: int
    updated: int
    cancelled: int
    escalations: int


def run_plan(now: datetime, label: str, total: int) -> PlanRun:
    from notifications import services

    progress = progress_bar(label, total)
    started = time.perf_counter()
    result = services.plan_all(now, progress=progress)
    seconds = time.perf_counter() - started
    progress.close()
    return PlanRun(seconds, result.created, result.updated, result.cancelled, result.escalations)


def _normalise(sql: str) -> str:
    sql = re.sub(r'"s\d+_x\d+"', '"s?"', sql)  # savepoint names
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\b\d+(\.\d+)?\b", "?", sql)
    sql = re.sub(r"\(\s*\?(\s*,\s*\?)*\s*\)", "(?…)", sql)
    sql = re.sub(r"(\(\?…\)\s*,\s*)+\(\?…\)", "(?…), …", sql)
    return re.sub(r"\s+", " ", sql)[:150]


def profiled(title: str, fn: Any, *args: Any) -> tuple[Any, str]:
    """Run fn under cProfile with every query captured; a Markdown report of both."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # Django keeps the last 9,000 queries only; a planning run makes far more.
    connection.queries_limit = 10_000_000
    connection.queries_log = deque(maxlen=connection.queries_limit)
    profiler = cProfile.Profile()
    with CaptureQueriesContext(connection) as captured:
        profiler.enable()
        result = fn(*args)
        profiler.disable()
    queries = captured.captured_queries
    counts: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    for q in queries:
        key = _normalise(q["sql"])
        counts[key] += 1
        spent[key] += float(q["time"])
    report = io.StringIO()
    report.write(f"\n### {title}: {len(queries)} queries, {sum(spent.values()):.1f} s waiting on them\n\n")
    report.write("| queries | seconds | statement (normalised) |\n|---:|---:|---|\n")
    for key, count in counts.most_common(15):
        report.write(f"| {count} | {spent[key]:.2f} | `{key}` |\n")
    path = Path(tempfile.gettempdir()) / f"bench_reminders_{re.sub(r'[^a-z0-9]+', '_', title.lower())}.prof"
    profiler.dump_stats(path)
    for order in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(25)
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        report.write(f"\n{title}, cProfile top 25 by {order} (full profile: {path}):\n\n```\n")
        report.write("\n".join(lines[-27:]))
        report.write("\n```\n")
    return result, report.getvalue()


# --------------------------------------------------------------------------- dispatch


class Sink:
    """An aiosmtpd handler that keeps the raw bytes of what it accepts (no parsing)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DispatchRun:
    messages: int = 0
    dispatch_seconds: float = 0.0
    send_seconds: float = 0.0
    outcomes: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.dispatch_seconds + self.send_seconds

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def stage_due_emails(now: datetime, m: int) -> int:
    """Leave exactly M due email messages for dispatch (fewer if planning made fewer).

    Planning leaves SMS and email due; SMS would go to the console backend, which this
    benchmark does not measure. The other due rows are parked a year ahead (this is the
    bench's own database).
    """
    from notifications.models import Channel, Message, Status

    due = Message.objects.filter(status=Status.PLANNED, due_at__lte=now)
    chosen = list(due.filter(channel=Channel.EMAIL).order_by("-critical", "due_at", "pk").values_list("pk", flat=True)[:m])
    due.exclude(pk__in=chosen).update(due_at=now + timedelta(days=365))
    return len(chosen)


def unpark_emails(now: datetime, m: int) -> int:
    from notifications.models import Channel, Message, Status

    parked = Message.objects.filter(status=Status.PLANNED, channel=Channel.EMAIL, due_at=now + timedelta(days=365))
    chosen = list(parked.order_by("pk").values_list("pk", flat=True)[:m])
    return Message.objects.filter(pk__in=chosen).update(due_at=now)


def run_dispatch(now: datetime, m: int) -> DispatchRun:
    from notifications import services

    run = DispatchRun()
    started = time.perf_counter()
    ids = services.dispatch_due(now, limit=m)
    run.dispatch_seconds = time.perf_counter() - started
    outcomes: Counter[str] = Counter()
    progress = progress_bar("send", len(ids))
    started = time.perf_counter()
    for pk in ids:
        outcomes[services.send_message(pk, now, worker="bench").outcome] += 1
        progress.advance()
    run.send_seconds = time.perf_counter() - started
    progress.close()
    run.messages = outcomes["sent"]
    run.outcomes = dict(outcomes)
    return run


def median(values: Any) -> float:
    return statistics.median(list(values))


def smtplib_one_connection(port: int, messages: list[tuple[str, list[str], bytes]]) -> float:
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for mail_from, rcpt_tos, data in messages:
            smtp.sendmail(mail_from, rcpt_tos, data)
    return time.perf_counter() - started


def smtplib_connection_each(port: int, messages: list[tuple[str, list[str], bytes]]) -> float:
    started = time.perf_counter()
    for mail_from, rcpt_tos, data in messages:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(mail_from, rcpt_tos, data)
    return time.perf_counter() - started


def run_worker(now: datetime, m: int, port: int, db_url: str, concurrency: int, settings_module: str) -> DispatchRun | str:
    """M messages through a real `celery -A pumptrack worker` process pool into the sink."""
    from django.conf import settings

    from notifications import services, tasks
    from notifications.models import Message, Status

    if not str(settings.CELERY_BROKER_URL).startswith(("redis://", "rediss://")):
        return f"skipped: needs CELERY_BROKER_URL=redis://... (is {settings.CELERY_BROKER_URL!r})"
    if unpark_emails(now, m) == 0:
        return "skipped: no email messages left to send"
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.gettempdir()) / f"{queue}.log"
    env = dict(
        os.environ,
        DATABASE_URL=db_url,
        DJANGO_SETTINGS_MODULE=settings_module,
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(port),
        EMAIL_USE_TLS="false",
        CELERY_TASK_DEFAULT_QUEUE=queue,
        PYTHONUNBUFFERED="1",
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            [
                sys.executable, "-m", "celery", "-A", "pumptrack", "worker", "-Q", queue,
                "--pool=prefork", f"--concurrency={concurrency}", "--without-mingle", "--without-gossip",
                "--without-heartbeat", "--loglevel=INFO", f"--hostname={queue}@%h",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                return f"skipped: worker did not start, see {log}"
            time.sleep(0.1)
        run = DispatchRun()
        started = time.perf_counter()
        ids = services.dispatch_due(now, limit=m)
        for pk in ids:
            tasks.send_message.apply_async((pk,), queue=queue)
        run.dispatch_seconds = time.perf_counter() - started
        pending = Message.objects.filter(pk__in=ids, status__in=[Status.DUE, Status.SENDING])
        deadline = time.monotonic() + 600
        while pending.exists():
            if time.monotonic() > deadline:
                return f"skipped: {pending.count()} messages still unsent after 10 minutes, see {log}"
            time.sleep(0.05)
        run.send_seconds = time.perf_counter() - started - run.dispatch_seconds
        rows = Counter(Message.objects.filter(pk__in=ids).values_list("status", flat=True))
        run.outcomes = dict(rows)
        in_task = [float(x) for x in re.findall(r"succeeded in ([0-9.]+)s", log.read_text(errors="replace"))]
        if in_task:
            run.outcomes["mean ms inside a task"] = round(statistics.mean(in_task) * 1000, 1)
        run.messages = rows.get(Status.SENT, 0)
        return run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    from django.db import connection
    from django.utils import timezone

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "notifications", "pumps", "patients", "pumptrack"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgres": pg,
        "commit": commit + (" (application code modified)" if dirty else ""),
        "date": timezone.now().strftime("%Y-%m-%d %H:%M UTC"),
    }


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:,.1f}×" if base else "n/a"


def table(rows: list[tuple[str, ...]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write_results(key: str, section: str) -> None:
    """Replace this size's section in RESULTS.md (or append it), keep the others."""
    start, end = f"<!-- run:{key} -->", f"<!-- /run:{key} -->"
    block = f"{start}\n{section.strip()}\n{end}\n"
    text = RESULTS.read_text() if RESULTS.exists() else RESULTS_HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)


RESULTS_HEADER = """# Reminder benchmark results

Written by `bench/reminders.py` (see `bench/README.md`): one section per pump count and
variant (spread, worker settings), the latest run replacing the previous one. Ratios are *ours ÷ baseline* in
seconds for the same work, measured in the same run: 1× would match the baseline, higher
is slower.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pumps", type=int, default=2000, help="patients with one pump each (default 2000)")
    parser.add_argument("--messages", type=int, default=2000, help="due email messages to send (default 2000)")
    parser.add_argument("--database", default="bench_reminders", help="bench database, dropped and recreated")
    parser.add_argument("--now", default=DEFAULT_NOW, help=f"the moment planning runs at (default {DEFAULT_NOW})")
    parser.add_argument("--past-days", type=int, default=60, help="refill-by dates spread this far back (overdue)")
    parser.add_argument("--future-days", type=int, default=60, help="... and this far ahead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile and count queries of the first planning run")
    parser.add_argument("--worker", action="store_true", help="also send through a celery worker process pool")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="worker pool size")
    parser.add_argument(
        "--worker-settings",
        default="pumptrack.settings",
        help="settings module for the worker only, to try a change there (importable, e.g. via PYTHONPATH)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()

    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("DATABASE_URL must point at PostgreSQL (the bench creates its own database on that server)")
    now = datetime.fromisoformat(args.now)
    if now.tzinfo is None:
        raise SystemExit("--now needs a UTC offset, e.g. 2027-03-01T15:00:00+00:00")

    say(f"creating database {args.database}")
    recreate_database(server_url, args.database)
    db_url = bench_database_url(server_url, args.database)
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from notifications.models import Escalation, Message

    call_command("migrate", verbosity=0)
    # Import the code under test now and name its commit now: others may commit during a run.
    import notifications.services
    import notifications.tasks  # noqa: F401

    info = machine()
    # aiosmtpd logs every SMTP command at INFO, and planning logs one line per escalation
    # raised (~1 a pump here): both would bury the report.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("notifications").setLevel(logging.ERROR)

    say(f"seeding {args.pumps} patients and pumps")
    seeded = seed(args.pumps, now, random.Random(args.seed), args.past_days, args.future_days)
    say(
        f"  {seeded.seconds:.1f} s: {seeded.clinics} clinics, {seeded.patients} patients, {seeded.caregivers} caregivers, "
        f"{seeded.pumps} pumps ({seeded.active} active, {seeded.overdue} overdue), {seeded.refills} refills, "
        f"{seeded.events} events, {seeded.blocks} contact blocks"
    )

    # ---- planning
    say("planning, baseline query")
    base_seconds, base_rows, base_pumps = baseline_query(now)  # cold: like the first run
    loads = [f"{os.getloadavg()[0]:.1f} before planning"]
    profile_report = ""
    if args.profile:
        first, profile_report = profiled("First planning run", run_plan, now, "plan 1 (profiled)", seeded.active)
    else:
        first = run_plan(now, "plan 1 (inserts)", seeded.active)
    messages_after_first = Message.objects.count()
    escalations_after_first = Escalation.objects.count()
    say(f"  first run {first.seconds:.1f} s; second run (re-plan)")
    if args.profile:
        second, report = profiled("Second planning run", run_plan, now, "plan 2 (profiled)", seeded.active)
        profile_report += report
    else:
        second = run_plan(now, "plan 2 (re-plan)", seeded.active)
    base2_seconds = median(baseline_query(now)[0] for _ in range(3))  # warm, like the second run
    loads.append(f"{os.getloadavg()[0]:.1f} after planning")

    # ---- dispatch
    from aiosmtpd.controller import Controller

    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD, settings.EMAIL_USE_TLS, settings.EMAIL_USE_SSL = "", "", False, False
    worker_run: DispatchRun | str | None = None
    try:
        staged = stage_due_emails(now, args.messages)
        say(f"dispatch: {staged} due email messages through dispatch_due + send_message")
        if args.profile:
            ours, report = profiled("Dispatch in process", run_dispatch, now, args.messages)
            profile_report += report
        else:
            ours = run_dispatch(now, args.messages)
        sent = list(sink.messages)
        if len(sent) != ours.messages:
            raise SystemExit(f"the sink received {len(sent)} messages, send_message reported {ours.messages} sent")
        say("dispatch: the same bytes through smtplib")
        sink.messages.clear()
        one_conn = median(smtplib_one_connection(port, sent) for _ in range(3))
        each_conn = smtplib_connection_each(port, sent)
        loads.append(f"{os.getloadavg()[0]:.1f} after dispatch")
        if args.worker:
            say(f"dispatch: {args.messages} more through a celery worker pool ({args.concurrency} processes)")
            sink.messages.clear()
            worker_run = run_worker(now, args.messages, port, db_url, args.concurrency, args.worker_settings)
            if isinstance(worker_run, DispatchRun) and len(sink.messages) != worker_run.messages:
                worker_run = f"sink received {len(sink.messages)}, outbox says {worker_run.messages} sent"
    finally:
        controller.stop()

    # ---- report
    n_sent = len(sent)
    planning_rows = [
        ("planning", "seconds", "baseline (s)", "ratio", "rows"),
        (
            "plan_all, first run (empty outbox)",
            f"{first.seconds:.2f}",
            f"{base_seconds:.3f}",
            ratio(first.seconds, base_seconds),
            f"{first.created} messages created, {first.escalations} escalations raised",
        ),
        (
            "plan_all, second run (re-plan, no change)",
            f"{second.seconds:.2f}",
            f"{base2_seconds:.3f}",
            ratio(second.seconds, base2_seconds),
            f"{second.created} created, {second.updated} updated, {second.cancelled} cancelled, {second.escalations} escalations",
        ),
    ]
    per_pump = f"{first.seconds / seeded.pumps * 1000:.2f} ms and {second.seconds / seeded.pumps * 1000:.2f} ms a pump"
    dispatch_rows = [
        ("dispatch", "seconds", "messages/s", "ratio (s ÷ baseline s)"),
        (
            f"dispatch_due + send_message × {n_sent}, in process",
            f"{ours.seconds:.2f}",
            f"{ours.rate:,.0f}",
            ratio(ours.seconds, one_conn),
        ),
        (f"baseline: smtplib, one connection, {n_sent} messages", f"{one_conn:.2f}", f"{n_sent / one_conn:,.0f}", "1.0×"),
        (
            "for scale: smtplib, one connection per message",
            f"{each_conn:.2f}",
            f"{n_sent / each_conn:,.0f}",
            ratio(each_conn, one_conn),
        ),
    ]
    if isinstance(worker_run, DispatchRun):
        dispatch_rows.insert(
            2,
            (
                f"dispatch_due + celery worker pool ({args.concurrency} processes), {worker_run.messages} messages",
                f"{worker_run.seconds:.2f}",
                f"{worker_run.rate:,.0f}",
                ratio(worker_run.seconds / max(worker_run.messages, 1), one_conn / n_sent),
            ),
        )
    notes = [
        f"Seeded in {seeded.seconds:.0f} s: {seeded.clinics} clinics, {seeded.patients} patients, {seeded.caregivers} caregivers, "
        f"{seeded.pumps} pumps ({seeded.active} active, {seeded.overdue} overdue; bench/generate.py histories, "
        f"--past-days {args.past_days} --future-days {args.future_days}), {seeded.refills} refills, {seeded.events} clinical events, {seeded.blocks} contact blocks.",
        f"Planning per pump: {per_pump}. Outbox after the first run: {messages_after_first} messages, "
        f"{escalations_after_first} escalations. Baseline query: {base_rows} rows for {base_pumps} due pumps.",
        f"Dispatch in process: dispatch_due {ours.dispatch_seconds:.2f} s, send loop {ours.send_seconds:.2f} s "
        f"({ours.send_seconds / max(n_sent, 1) * 1000:.1f} ms a message); outcomes {ours.outcomes}. "
        "Baselines: the warm query and smtplib over one connection are the median of 3 runs.",
        f"1-minute load average (other work on the machine skews every figure): {', '.join(loads)}.",
    ]
    if isinstance(worker_run, DispatchRun):
        notes.append(
            f"Worker pool: queueing {worker_run.dispatch_seconds:.2f} s, then {worker_run.send_seconds:.2f} s "
            f"until every row left due/sending; statuses {worker_run.outcomes}; worker settings {args.worker_settings}. "
            "Ratio compares seconds a message."
        )
    elif isinstance(worker_run, str):
        notes.append(f"Worker pool: {worker_run}.")
    conn_age = os.environ.get("DATABASE_CONN_MAX_AGE", "")
    settings_module = os.environ["DJANGO_SETTINGS_MODULE"]
    command = (
        "DATABASE_URL=postgres://app:app@127.0.0.1:5432/app SECRET_KEY=x "
        + ("CELERY_BROKER_URL=redis://127.0.0.1:6379/0 " if args.worker else "")
        + (f"DATABASE_CONN_MAX_AGE={conn_age} " if conn_age else "")
        + (f"DJANGO_SETTINGS_MODULE={settings_module} " if settings_module != "pumptrack.settings" else "")
        + ".venv/bin/python bench/reminders.py "
        + " ".join(sys.argv[1:])
    )
    section = "\n".join(
        [
            f"## {seeded.pumps:,} pumps, {n_sent:,} messages"
            + (
                ""
                if (args.past_days, args.future_days) == (60, 60)
                else f", refill-by -{args.past_days}..+{args.future_days} days"
            ),
            "",
            f"Run started {info['date']} at commit {info['commit']}; {info['nproc']} CPUs ({info['cpu']}), "
            f"Python {info['python']}, PostgreSQL {info['postgres']}; now = {now.isoformat()}.",
            "",
            "```",
            command,
            "```",
            "",
            table(planning_rows),
            "",
            table(dispatch_rows),
            "",
            *[f"- {n}" for n in notes],
        ]
    )
    print(section)
    if profile_report:
        print(profile_report)
    elif not args.no_write:
        spread = (args.past_days, args.future_days)
        key = f"{seeded.pumps}" + ("" if spread == (60, 60) else f"-past{spread[0]}-future{spread[1]}")
        key += f"-conn{conn_age}" if conn_age else ""
        key += "" if args.worker_settings == "pumptrack.settings" else f"-{args.worker_settings}"
        key += "" if settings_module == "pumptrack.settings" else f"-settings-{settings_module}"
        write_results(key, section)
        say(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
