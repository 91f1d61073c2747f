#!/usr/bin/env python
"""Benchmark: the planning sweep on generated databases of growing size (issue 6).

For each database (made by `bench/generate.py`, reused: generating 1,000,000 pumps takes
half an hour), in fresh child processes so each figure has its own peak RSS:

1. **baseline**: one set-based SQL query (`bench.reminders.BASELINE_SQL`) selecting every
   due pump with its contacts, all rows fetched: cold, then the median of three;
2. **first run**: the outbox emptied (TRUNCATE, bench databases only), then
   `notifications.services.plan_all(now)`, which inserts every planned message;
3. **re-plan**: `plan_all(now)` again, the no-change sweep every 15 minutes does;
4. **agreement**: the pumps with an open refill reminder or overdue message whose stage
   day has come in the clinic's zone are compared with the baseline's pumps; the only
   difference allowed is a pump nobody can be told about (no address at all), which the
   planner escalates instead.

    DATABASE_URL=postgres://app:app@127.0.0.1:5432/postgres SECRET_KEY=x \\
        .venv/bin/python bench/planning.py --database bench_10k --database bench_100k

It prints a Markdown table (seconds, ratio, ms a pump, peak RSS) and, with --write,
replaces the section "Planning at scale" in RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOW = "2027-03-01T15:00:00+00:00"
PHASES = ("baseline", "first", "replan", "agreement")


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Pumps the planner considers due: an open refill reminder whose stage day (refill-by
# minus the stage's days, "d7" → 7) has come in the clinic's zone, or an overdue message.
PLANNED_DUE_SQL = """
SELECT DISTINCT m.pump_id
FROM notifications_message m
JOIN patients_clinic c ON c.id = m.clinic_id
WHERE m.status IN ('planned', 'due', 'failed', 'suppressed')
  AND m.pump_id IS NOT NULL
  AND (m.kind = 'overdue'
       OR (m.kind = 'refill_reminder'
           AND substring(m.cycle from 11)::date - substring(m.stage from 2)::int
               <= (%(now)s::timestamptz AT TIME ZONE c.time_zone)::date))
"""

# Active pumps whose refill reminders reach nobody: the patient has no address, and the
# caregivers get refill reminders only for a high-risk patient (R12), so the planner has
# no row to write (it escalates instead); the baseline query lists them with empty contacts.
UNREACHABLE_SQL = """
SELECT p.id FROM pumps_pump p JOIN patients_patient pt ON pt.id = p.patient_id
WHERE p.status = 'active' AND pt.email = '' AND pt.phone = ''
  AND NOT ((pt.sci_t6_or_above OR pt.communication_difficulty OR pt.withdrawal_history)
           AND EXISTS (SELECT 1 FROM patients_caregiver cg
                       WHERE cg.patient_id = pt.id AND cg.receives_safety_messages AND (cg.email <> '' OR cg.phone <> '')))
"""


def child(phase: str, now_text: str) -> dict[str, Any]:
    """One phase in this (fresh) process; the parent reads the JSON it prints."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    import logging
    from datetime import datetime

    from django.db import connection

    from bench.reminders import BASELINE_SQL
    from notifications import services
    from pumps.models import Pump

    logging.getLogger("notifications").setLevel(logging.ERROR)  # one warning line per escalation otherwise
    now = datetime.fromisoformat(now_text)
    out: dict[str, Any] = {"active": Pump.objects.filter(status="active").count(), "pumps": Pump.objects.count()}
    if phase == "baseline":
        runs, due = [], set()
        for _ in range(4):
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute(BASELINE_SQL, {"now": now})
                rows = cursor.fetchall()
            runs.append(time.perf_counter() - started)
            due = {r[0] for r in rows}
        out |= {"cold": runs[0], "seconds": statistics.median(runs[1:]), "rows": len(rows), "due": sorted(due)}
    elif phase in ("first", "replan"):
        if phase == "first":
            name = connection.settings_dict["NAME"]
            if not re.fullmatch(r"bench_[a-z0-9_]+", name):
                raise SystemExit(f"refusing to empty the outbox of {name!r}: not a bench_ database")
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE notifications_message, notifications_escalation, notifications_attempt CASCADE")
                cursor.execute("VACUUM ANALYZE notifications_message")
        statements = [0]

        def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            statements[0] += 1
            return execute(sql, params, many, context)

        started, cpu_started = time.perf_counter(), time.process_time()
        with connection.execute_wrapper(count):
            result = services.plan_all(now)
        out |= {
            "seconds": time.perf_counter() - started,
            # This process's CPU time: steadier than wall time on a shared machine (the
            # database server's share is not in it).
            "cpu": time.process_time() - cpu_started,
            "created": result.created,
            "updated": result.updated,
            "cancelled": result.cancelled,
            "escalations": result.escalations,
            "queries": statements[0],
        }
        if phase == "first":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE notifications_message")
    elif phase == "agreement":
        with connection.cursor() as cursor:
            cursor.execute(PLANNED_DUE_SQL, {"now": now})
            out["planned_due"] = sorted(r[0] for r in cursor.fetchall())
            cursor.execute(UNREACHABLE_SQL)
            out["unreachable"] = sorted(r[0] for r in cursor.fetchall())
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_child(phase: str, url: str, now: str) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, __file__, "--child", phase, "--now", now],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


def measure(url: str, now: str, phases: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for phase in phases:
        print(f"  {urlsplit(url).path[1:]}: {phase} ...", file=sys.stderr, flush=True)
        results[phase] = run_child(phase, url, now)
        shown = {k: v for k, v in results[phase].items() if not isinstance(v, list)}
        print(f"    {shown}", file=sys.stderr, flush=True)
    if "baseline" in results and "agreement" in results:
        base = set(results["baseline"].pop("due"))
        planned = set(results["agreement"].pop("planned_due"))
        unreachable = set(results["agreement"].pop("unreachable"))
        results["agreement"] |= {
            "baseline_due": len(base),
            "planned_due": len(planned),
            "only_baseline": len(base - planned),
            "only_baseline_unreachable": len((base - planned) & unreachable),
            "only_planned": len(planned - base),
            "agree": planned == base - ((base - planned) & unreachable) and not (planned - base),
        }
    return results


def report(all_results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| pumps (active) | baseline SQL s (cold) | plan_all first run s | ratio | ms/pump | re-plan s | ratio | ms/pump | "
        "peak RSS: baseline / first / re-plan MB | queries (first / re-plan) | due pumps: SQL / planner (unreachable) | agree |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for _name, r in all_results.items():
        b, f, p, a = (r.get(k, {}) for k in PHASES)
        n = b.get("active") or f.get("active") or 0

        def cell(x: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(x[key]) if key in x else "–"

        def ratio(x: dict[str, Any], b: dict[str, Any] = b) -> str:
            return f"{x['seconds'] / b['seconds']:,.0f}×" if "seconds" in x and "seconds" in b else "–"

        def per(x: dict[str, Any], n: int = n) -> str:
            return f"{1000 * x['seconds'] / n:.2f}" if "seconds" in x and n else "–"

        lines.append(
            f"| {b.get('pumps', f.get('pumps', 0)):,} ({n:,}) | {cell(b, 'seconds', '{:.3f}')} ({cell(b, 'cold', '{:.3f}')}) "
            f"| {cell(f, 'seconds', '{:.1f}')} | {ratio(f)} | {per(f)} | {cell(p, 'seconds', '{:.1f}')} | {ratio(p)} | {per(p)} "
            f"| {cell(b, 'peak_rss_mb', '{:.0f}')} / {cell(f, 'peak_rss_mb', '{:.0f}')} / {cell(p, 'peak_rss_mb', '{:.0f}')} "
            f"| {cell(f, 'queries', '{}')} / {cell(p, 'queries', '{}')} "
            f"| {a.get('baseline_due', '–')} / {a.get('planned_due', '–')} ({a.get('only_baseline_unreachable', '–')}) "
            f"| {'yes' if a.get('agree') else 'NO' if a else '–'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", action="append", default=[], help="a generated bench_ database (repeat)")
    parser.add_argument("--now", default=DEFAULT_NOW)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.now)))
        return
    server = os.environ.get("DATABASE_URL")
    if not server or not args.database:
        raise SystemExit("set DATABASE_URL (server and credentials) and give --database bench_... at least once")
    phases = tuple(p for p in args.phases.split(",") if p)
    results = {}
    for name in args.database:
        results[name] = measure(database_url(server, name), args.now, phases)
        print(report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
